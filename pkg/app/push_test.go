package app

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/push"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// The CLI's push end to end on the real pipeline: a gzip file with good,
// bad, duplicate and late records, interrupted after two batches and
// resumed; the card state and ClickHouse count each good record once.
func TestPushFileEndToEnd(t *testing.T) {
	ch := testenv.ClickHouse(t)
	p, c := securedPipeline(t, func(cfg *Config) {
		cfg.Roles = AllRoles
		cfg.ClickHouse, cfg.Sink = ch, sinkConfigForTests()
		cfg.API.Batch.MaxRecords = 0 // defaults
	})
	_ = p
	for i := 3; i <= 5; i++ {
		c.must(c.send("PUT", "/v1/cards/"+iccid(i), tokBilling, "application/json", fmt.Sprintf(`{"account_id":"acct%d","plan_id":"p","carrier":"cmcc"}`, i)), 200)
	}
	cards := []string{iccid(1), iccid(3), iccid(4), iccid(5)}
	want := map[string]uint64{}
	var buf bytes.Buffer
	buf.WriteString("record_id,iccid,start_time,end_time,bytes_up,bytes_down,apn\n")
	good := 0
	for i := 0; i < 2500; i++ {
		card := cards[i%len(cards)]
		b := uint64(100 + i)
		want[card] += b
		fmt.Fprintf(&buf, "g%d,%s,2026-03-0%dT10:00:00+08:00,2026-03-0%dT10:30:00+08:00,%d,%d,\"cm,iot\"\n", i, card, 1+i%9, 1+i%9, b/2, b-b/2)
		good++
		if i%250 == 0 { // a bad record now and then
			bad := card[:len(card)-1] + string('0'+(card[len(card)-1]-'0'+1)%10)
			fmt.Fprintf(&buf, "b%d,%s,2026-03-05T10:00:00+08:00,2026-03-05T10:30:00+08:00,1,1,\n", i, bad)
			fmt.Fprintf(&buf, "n%d,%s,2026-03-05T10:00:00+08:00,2026-03-05T10:30:00+08:00,-1,1,\n", i, card)
		}
	}
	for i := 0; i < 20; i++ { // re-sent records, same content
		card := cards[i%len(cards)]
		b := uint64(100 + i)
		fmt.Fprintf(&buf, "g%d,%s,2026-03-0%dT10:00:00+08:00,2026-03-0%dT10:30:00+08:00,%d,%d,\"cm,iot\"\n", i, card, 1+i%9, 1+i%9, b/2, b-b/2)
	}
	late := map[string]uint64{}
	for i := 0; i < 30; i++ { // late: February, a closed cycle
		card := cards[i%len(cards)]
		late[card] += 1000
		fmt.Fprintf(&buf, "late%d,%s,2026-02-20T10:00:00+08:00,2026-02-20T10:30:00+08:00,500,500,\n", i, card)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "usage.csv.gz")
	var gzBuf bytes.Buffer
	zw := gzip.NewWriter(&gzBuf)
	_, _ = zw.Write(buf.Bytes())
	_ = zw.Close()
	if err := os.WriteFile(file, gzBuf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	interrupted := errors.New("interrupted")
	cfg := push.Config{URL: c.base, Token: tokCMCC, BatchRecords: 500, Wait: true,
		AfterBatch: func(_ string, batch int) error {
			if batch == 1 {
				return interrupted
			}
			return nil
		}}
	first, err := push.Run(context.Background(), cfg, []string{file})
	if !errors.Is(err, interrupted) || first.Batches != 2 {
		t.Fatalf("first run: %v, %+v", err, first)
	}
	cfg.AfterBatch = nil
	var out bytes.Buffer
	cfg.Progress = &out
	sum, err := push.Run(context.Background(), cfg, []string{file})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "resuming after 1000 records") {
		t.Fatalf("did not resume: %s", out.String())
	}
	if sum.Accepted != good+30 || sum.Late != 30 || sum.Duplicates != 20 || sum.Rejected != 20 || sum.Records != 2500+20+20+30 {
		t.Fatalf("summary %+v", sum)
	}
	if sum.Reasons["iccid: check digit is wrong (Luhn)"] != 10 || sum.Reasons["bytes_up: not a non-negative integer"] != 10 {
		t.Fatalf("reasons %v", sum.Reasons)
	}
	if len(sum.Examples) == 0 || sum.Examples[0].Line != 3 || sum.Examples[0].RecordID != "b0" {
		t.Fatalf("first rejection located at %+v, want line 3", sum.Examples)
	}
	// pushing again: already done
	again, err := push.Run(context.Background(), cfg, []string{file})
	if err != nil || again.Records != sum.Records {
		t.Fatalf("re-run: %v %+v", err, again)
	}

	// the cards count each good record once; late ones in their closed cycle
	for _, card := range cards {
		got := c.must(c.send("GET", "/v1/cards/"+card, tokRead, "", ""), 200)
		if u := uint64(got.body["cycle"].(map[string]any)["usage_bytes"].(float64)); u != want[card] {
			t.Errorf("card %s usage %d, want %d", card, u, want[card])
		}
	}
	conn := testenv.ClickHouseConn(t, ch)
	testenv.Eventually(t, 30*time.Second, func() error {
		rows, err := conn.Query(context.Background(), "SELECT iccid, late, count(), sum(bytes_up + bytes_down) FROM usage_records GROUP BY iccid, late")
		if err != nil {
			return err
		}
		defer rows.Close()
		n := 0
		for rows.Next() {
			var id string
			var isLate uint8
			var cnt, sum uint64
			if err := rows.Scan(&id, &isLate, &cnt, &sum); err != nil {
				return err
			}
			n += int(cnt)
			w := want[id]
			if isLate == 1 {
				w = late[id]
			}
			if sum != w {
				return fmt.Errorf("card %s late=%d: %d bytes in ClickHouse, want %d", id, isLate, sum, w)
			}
		}
		if n != good+30 {
			return fmt.Errorf("%d rows in ClickHouse, want %d", n, good+30)
		}
		return nil
	})
}
