package app

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/broker"
)

// The embedded NATS server lets in only its users (before, anyone who
// reached 127.0.0.1:4222 could publish usage or payments around every
// token check, or read every stream): no credentials, or wrong ones, are
// refused; the subscriber reads the emitted events through its named
// durable consumer and can neither publish into the log, read the inputs,
// use another consumer nor delete its own; the admin user (for tools) can.
func TestEmbeddedNATSLetsInOnlyItsUsers(t *testing.T) {
	subPass, adminPass := broker.NewPassword(), broker.NewPassword()
	p, c := securedPipeline(t, func(cfg *Config) {
		cfg.NATS.SubscriberPassword, cfg.NATS.AdminPassword, cfg.NATS.SubscriberConsumers = subPass, adminPass, []string{"notify"}
	})
	url := p.embedded.ClientURL()
	for name, opts := range map[string][]nats.Option{
		"no credentials":        nil,
		"a wrong password":      {nats.UserInfo(broker.UserSubscriber, adminPass)},
		"the process's user":    {nats.UserInfo(broker.UserProcess, "guess")},
		"an unknown user":       {nats.UserInfo("root", "root")},
		"the admin without one": {nats.UserInfo(broker.UserAdmin, "")},
	} {
		nc, err := nats.Connect(url, opts...)
		if err == nil {
			nc.Close()
			t.Errorf("%s: connected", name)
		} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Errorf("%s: %v, want an authorization violation", name, err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sub, err := nats.Connect(url, nats.UserInfo(broker.UserSubscriber, subPass), nats.CustomInboxPrefix(broker.InboxPrefix(broker.UserSubscriber)))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	sjs, _ := jetstream.New(sub)
	cons, err := sjs.CreateOrUpdateConsumer(ctx, broker.StreamEvents, jetstream.ConsumerConfig{Durable: "notify",
		FilterSubject: broker.EventSubject("card.stopped", ">"), AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatalf("the subscriber's consumer: %v", err)
	}
	c.must(c.send("POST", "/v1/cards/"+iccid(1)+"/stop", tokAdmin, "application/json", `{"operator":"noc"}`), 200)
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for m := range batch.Messages() {
		got++
		if !strings.HasSuffix(m.Subject(), iccid(1)) {
			t.Errorf("event on %s", m.Subject())
		}
		if err := m.Ack(); err != nil {
			t.Errorf("ack: %v", err)
		}
	}
	if got != 1 {
		t.Fatalf("the subscriber got %d stopped events, want 1 (%v)", got, batch.Error())
	}

	meter, err := p.JS.Stream(ctx, broker.StreamMeter)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := meter.Info(ctx)
	short, cancelShort := context.WithTimeout(ctx, time.Second)
	defer cancelShort()
	if _, err := sjs.Publish(short, broker.UsageSubject(0), []byte("x")); err == nil {
		t.Error("the subscriber published usage")
	}
	if _, err := sjs.Publish(short, broker.EventSubject("card.resumed", iccid(1)), []byte("{}")); err == nil {
		t.Error("the subscriber published an event")
	}
	after, _ := meter.Info(ctx)
	if after.State.LastSeq != before.State.LastSeq {
		t.Errorf("METER moved from %d to %d", before.State.LastSeq, after.State.LastSeq)
	}
	if _, err := sjs.Stream(short, broker.StreamMeter); err == nil {
		t.Error("the subscriber read METER's info")
	}
	if _, err := sjs.CreateOrUpdateConsumer(short, broker.StreamEvents, jetstream.ConsumerConfig{Durable: "another"}); err == nil {
		t.Error("the subscriber made a consumer it was not given")
	}
	if err := sjs.DeleteConsumer(short, broker.StreamEvents, "notify"); err == nil {
		t.Error("the subscriber deleted its consumer")
	}
	if _, err := sjs.KeyValue(short, broker.BucketDir); err == nil {
		t.Error("the subscriber opened the directory bucket")
	}

	admin, err := nats.Connect(url, nats.UserInfo(broker.UserAdmin, adminPass))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ajs, _ := jetstream.New(admin)
	if _, err := ajs.Stream(ctx, broker.StreamMeter); err != nil {
		t.Errorf("the admin: %v", err)
	}
}
