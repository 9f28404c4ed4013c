package query

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
)

// Ask sends a Request to the projector answering on subject
// (broker.QuerySubject of the partition) and returns its Reply. With no
// responder (no instance holds the partition this moment: one is handing
// it over, or a lease is passing after a crash) it asks again until ctx
// ends.
func Ask(ctx context.Context, nc *nats.Conn, subject string, q Request) (*Reply, error) {
	b, _ := json.Marshal(q)
	var m *nats.Msg
	err := backoff.Retry(func() error {
		var err error
		m, err = nc.RequestWithContext(ctx, subject, b)
		if err != nil && !errors.Is(err, nats.ErrNoResponders) {
			return backoff.Permanent(err)
		}
		return err
	}, backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithInitialInterval(50*time.Millisecond),
		backoff.WithMaxInterval(time.Second), backoff.WithMaxElapsedTime(0)), ctx))
	if err != nil {
		return nil, err
	}
	var reply Reply
	if err := json.Unmarshal(m.Data, &reply); err != nil {
		return nil, err
	}
	return &reply, nil
}
