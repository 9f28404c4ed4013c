package webhook_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/webhook"
)

func TestFilterSubjectsDoNotOverlap(t *testing.T) {
	for _, c := range []struct {
		types []string
		want  string
	}{
		{[]string{"cardmeter.card.stopped.v1"}, "[cardmeter.events.card.stopped.*]"},
		{[]string{"cardmeter.card.*", "cardmeter.card.stopped.v1", "cardmeter.usage.warning.v1"}, "[cardmeter.events.card.> cardmeter.events.usage.warning.*]"},
		{[]string{"cardmeter.card.stopped.v1", "cardmeter.card.stopped.v2"}, "[cardmeter.events.card.stopped.*]"},
		{[]string{"cardmeter.*", "cardmeter.card.*"}, "[cardmeter.events.>]"},
		{[]string{"cardmeter.card.stopped.*", "cardmeter.card.resumed.v1"}, "[cardmeter.events.card.resumed.* cardmeter.events.card.stopped.>]"},
	} {
		sub := webhook.Subscription{EventTypes: c.types}
		if got := fmt.Sprint(sub.FilterSubjects()); got != c.want {
			t.Errorf("%v: %s, want %s", c.types, got, c.want)
		}
	}
	sub := webhook.Subscription{EventTypes: []string{"cardmeter.card.stopped.v1", "cardmeter.usage.*"}}
	for typ, want := range map[string]bool{"cardmeter.card.stopped.v1": true, "cardmeter.card.stopped.v2": false,
		"cardmeter.usage.warning.v1": true, "cardmeter.card.resumed.v1": false} {
		if sub.Matches(typ) != want {
			t.Errorf("Matches(%s) = %v", typ, !want)
		}
	}
}

func TestValidateNamesTheField(t *testing.T) {
	ok := webhook.Subscription{ID: "crm-1", URL: "https://example.com/hook", EventTypes: []string{"cardmeter.card.*"}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for field, change := range map[string]func(*webhook.Subscription){
		"id":          func(s *webhook.Subscription) { s.ID = "a.b" },
		"url":         func(s *webhook.Subscription) { s.URL = "ftp://example.com/" },
		"event_types": func(s *webhook.Subscription) { s.EventTypes = []string{"cardmeter.v1"} },
		"parallel":    func(s *webhook.Subscription) { s.Parallel = 1000 },
	} {
		s := ok
		change(&s)
		var fe *webhook.FieldError
		if err := s.Validate(); !errors.As(err, &fe) || fe.Field != field {
			t.Errorf("%s: %v", field, err)
		}
	}
	s := ok
	s.URL = "https://user:pw@example.com/"
	if err := s.Validate(); err == nil {
		t.Error("credentials in the URL accepted")
	}
}

// The documented algorithm, computed here by hand: HMAC-SHA256 keyed with
// the base64-decoded secret over "id.timestamp.body", base64, "v1,".
func TestSignatureIsStandardWebhooks(t *testing.T) {
	// the Standard Webhooks specification's example
	secret := "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	ts := time.Unix(1614265330, 0)
	got, err := webhook.Sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", ts, []byte(`{"test": 2432232314}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Fatalf("signature %s, want %s", got, want)
	}
	if err := webhook.Verify(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", "v1,bm9wZQ== "+got, []byte(`{"test": 2432232314}`), ts, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := webhook.Verify(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", got, []byte(`{"test": 2432232315}`), ts, time.Minute); err == nil {
		t.Fatal("a changed body verified")
	}
}

// Deliveries to loopback, private and link-local addresses are refused
// at connection time (after the name resolves), unless allowed.
func TestPrivateAddressesAreRefused(t *testing.T) {
	for addr, refused := range map[string]bool{"127.0.0.1": true, "10.1.2.3": true, "192.168.0.10": true, "172.16.5.4": true,
		"169.254.169.254": true, "100.64.0.1": true, "::1": true, "fe80::1": true, "fd00::1": true, "0.0.0.0": true,
		"93.184.215.14": false, "2606:2800:21f:cb07:6820:80da:af6b:8b2c": false, "::ffff:127.0.0.1": true,
		"64:ff9b::a00:5": true, "64:ff9b::5db8:d70e": false, "198.18.0.1": true, "240.0.0.1": true} {
		if got := webhook.Refused(netip.MustParseAddr(addr)) != ""; got != refused {
			t.Errorf("%s refused: %v, want %v", addr, got, refused)
		}
	}
	rcv := newReceiver(t)
	for _, url := range []string{rcv.srv.URL, strings.Replace(rcv.srv.URL, "127.0.0.1", "localhost", 1)} {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, url, nil)
		_, err := webhook.Client(time.Second, false).Do(req)
		var re *webhook.RefusedError
		if !errors.As(err, &re) {
			t.Fatalf("%s: %v, want refused", url, err)
		}
		req, _ = http.NewRequestWithContext(context.Background(), http.MethodPost, url, nil)
		resp, err := webhook.Client(time.Second, true).Do(req)
		if err != nil {
			t.Fatalf("%s with private addresses allowed: %v", url, err)
		}
		resp.Body.Close()
	}
}
