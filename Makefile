# cardmeter — `make help` lists the targets.
SHELL := /bin/bash
GO    ?= go
DATA  ?= .data
export CARDMETER_DATA := $(DATA)

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

deps: ## install and start what the pipeline and tests need (ClickHouse, docker-compose for validation)
	@bash deploy/local/deps.sh
	@bash deploy/local/clickhouse.sh start

build: ## build every binary into bin/
	$(GO) build -o bin/ ./services/...

run: deps ## start the whole pipeline: embedded JetStream, local ClickHouse, API on 127.0.0.1:8080
	$(GO) run ./services/cardmeter run --data-dir $(DATA) $(ARGS)

run-manual: deps ## the same with a manual clock (PUT /v1/clock moves time)
	$(GO) run ./services/cardmeter run --data-dir $(DATA) --clock manual $(ARGS)

test: deps ## run every test with the race detector against real JetStream and ClickHouse (one server, and two replicas with ZooKeeper)
	@bash deploy/local/clickhouse-cluster.sh start
	$(GO) vet ./...
	@mkdir -p $(DATA)
	@$(GO) test -race -count=1 -timeout 20m -v ./... 2>&1 | tee $(DATA)/test.log \
	  | grep -E '^(--- FAIL|FAIL|ok |panic:|\s+[a-z_]+_test\.go:[0-9]+:)'; st=$${PIPESTATUS[0]}; \
	  echo "$$(grep -c '^--- PASS' $(DATA)/test.log) passed, $$(grep -c '^--- FAIL' $(DATA)/test.log) failed"; \
	  exit $$st

fuzz: ## run each fuzz target for FUZZTIME (default 30s)
	@for t in FuzzCSVReader FuzzNDJSONReader FuzzJSONArrayReader FuzzFastJSONAgrees FuzzDecodeChunk FuzzParseTimeAgrees; do \
	  $(GO) test ./pkg/cdr -run '^$$' -fuzz "^$$t$$" -fuzztime $${FUZZTIME:-30s} || exit 1; done
	$(GO) test ./pkg/card -run '^$$' -fuzz '^FuzzFold$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./pkg/event -run '^$$' -fuzz '^FuzzUnmarshalAccepted$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./pkg/webhook -run '^$$' -fuzz '^FuzzParseRetryAfter$$' -fuzztime $${FUZZTIME:-30s}

bench: deps ## the benchmarks: micro-benchmarks, replay and memory, then the load harness (report in .data/bench-report.md)
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/card
	$(GO) run ./services/bench -replay -cards $${BENCH_CARDS:-1000000} -records $${BENCH_RECORDS:-10000000}
	$(GO) run ./services/bench -index -cards $${BENCH_INDEX_CARDS:-100000} -ids-per-card $${BENCH_INDEX_IDS:-2000}
	$(GO) run ./services/bench -index -cards 1000000 -ids-per-card 10
	$(GO) run ./services/bench -webhooks
	@mkdir -p $(DATA)
	$(GO) run ./services/bench $(BENCH_ARGS) | tee $(DATA)/bench-report.md

chaos: ## fault campaign on the real all-in-one: kill -9, SIGTERM and start-up kills and ClickHouse stops under load, then check nothing acknowledged was lost or doubled (CHAOS_ARGS, e.g. -duration 20m -kills 120)
	@bash deploy/local/clickhouse.sh install
	$(GO) run ./services/chaos -workdir $(DATA)/chaos $(CHAOS_ARGS)

chaos-handover: deps ## hand-over campaign: two projectors share the partitions, one is killed (kill -9) 20 times under load; hand-over and re-spread times, nothing lost or doubled (HANDOVER_ARGS, e.g. -handover-kills 40)
	$(GO) run ./services/chaos -workdir $(DATA)/handover -handover-kills 20 $(HANDOVER_ARGS)

screenshots: deps ## the console's browser test, writing each page's screenshot to docs/screenshots/
	CARDMETER_SCREENSHOTS=$(CURDIR)/docs/screenshots $(GO) test -count=1 -run 'TestConsoleInABrowser$$' ./pkg/app

lint: ## gofmt and go vet
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

cluster: ## a cluster on this machine: three nats-server nodes (R3), two ingest, projector, sink and clock processes, the local ClickHouse; prints where the API is
	@bash deploy/local/cluster.sh start

cluster-stop: ## stop what `make cluster` started
	@bash deploy/local/cluster.sh stop

compose-check: ## validate docker-compose.yml without a Docker engine
	docker-compose -f docker-compose.yml config -q

clickhouse-stop: ## stop the local ClickHouse
	@bash deploy/local/clickhouse.sh stop

clean: ## remove the local data folder (JetStream files, ClickHouse data) and binaries
	-@bash deploy/local/cluster.sh stop
	-@bash deploy/local/clickhouse-cluster.sh stop
	-@bash deploy/local/clickhouse.sh stop
	rm -rf $(DATA) bin

.PHONY: help deps build run run-manual test bench chaos chaos-handover fuzz screenshots lint cluster cluster-stop compose-check clickhouse-stop clean
