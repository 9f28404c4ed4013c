package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/broker"
)

// Store keeps the subscriptions in the webhooks bucket, one key each.
type Store struct{ kv jetstream.KeyValue }

// NewStore wraps the webhooks bucket.
func NewStore(kv jetstream.KeyValue) *Store { return &Store{kv: kv} }

// ErrNotFound is a subscription that does not exist.
var ErrNotFound = errors.New("no such webhook")

// Get reads a subscription and its revision.
func (s *Store) Get(ctx context.Context, id string) (*Subscription, uint64, error) {
	e, err := s.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, err
	}
	sub, err := decode(e.Value())
	return sub, e.Revision(), err
}

func decode(b []byte) (*Subscription, error) {
	var sub Subscription
	if err := json.Unmarshal(b, &sub); err != nil {
		return nil, fmt.Errorf("a webhook that is not one: %w", err)
	}
	return &sub, nil
}

// Put writes a subscription by compare-and-set on rev (0: it must not
// exist), and returns the new revision.
func (s *Store) Put(ctx context.Context, sub *Subscription, rev uint64) (uint64, error) {
	b, err := json.Marshal(sub)
	if err != nil {
		return 0, err
	}
	if rev == 0 {
		return s.kv.Create(ctx, sub.ID, b)
	}
	return s.kv.Update(ctx, sub.ID, b, rev)
}

// Delete removes a subscription.
func (s *Store) Delete(ctx context.Context, id string) error {
	if _, _, err := s.Get(ctx, id); err != nil {
		return err
	}
	return s.kv.Delete(ctx, id)
}

// List reads every subscription, by id.
func (s *Store) List(ctx context.Context) ([]*Subscription, error) {
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var out []*Subscription
	for k := range lister.Keys() {
		sub, _, err := s.Get(ctx, k)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, sub)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Update reads a subscription, changes it and writes it back, again from
// the read while another writer got there first.
func (s *Store) Update(ctx context.Context, id string, change func(*Subscription) error) (*Subscription, error) {
	for {
		sub, rev, err := s.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		if err := change(sub); err != nil {
			return nil, err
		}
		_, err = s.Put(ctx, sub, rev)
		if err == nil {
			return sub, nil
		}
		var apiErr *jetstream.APIError
		lost := errors.Is(err, jetstream.ErrKeyRevisionMismatch) || (errors.As(err, &apiErr) &&
			(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant))
		if !lost {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
}

// Attempts lists subscription id's last delivery attempts, newest first,
// at most limit.
func Attempts(ctx context.Context, js jetstream.JetStream, id string, limit int) ([]Attempt, error) {
	st, err := js.Stream(ctx, broker.StreamAttempts)
	if err != nil {
		return nil, err
	}
	subject := broker.AttemptsSubject(id)
	last, err := st.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return []Attempt{}, nil
	}
	if err != nil {
		return nil, err
	}
	// at most the stream's 1,000 per webhook, read in batches of what is
	// there (a pull for more would wait out its time); the reader goes
	// away 5 s after its last use
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return nil, err
	}
	left := int(info.State.Subjects[subject])
	c, err := js.OrderedConsumer(ctx, broker.StreamAttempts, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject},
		InactiveThreshold: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	var all []Attempt
	for done := false; !done; {
		batch, err := c.Fetch(max(1, min(256, left)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			left--
			var a Attempt
			if json.Unmarshal(m.Data(), &a) == nil {
				all = append(all, a)
			}
			if meta, err := m.Metadata(); err == nil && meta.Sequence.Stream >= last.Sequence {
				done = true
			}
		}
		if err := batch.Error(); err != nil {
			return nil, err
		}
		if n == 0 && !done {
			return nil, errors.New("the attempts stream gave nothing up to its last attempt")
		}
	}
	out := make([]Attempt, 0, min(limit, len(all)))
	for i := len(all) - 1; i >= 0 && len(out) < limit; i-- {
		out = append(out, all[i])
	}
	return out, nil
}
