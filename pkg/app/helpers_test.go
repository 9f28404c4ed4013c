package app

import (
	"time"

	"github.com/cardmeter/cardmeter/pkg/sink"
)

func sinkConfigForTests() sink.Config {
	return sink.Config{BatchRows: 1000, FlushInterval: 100 * time.Millisecond}
}
