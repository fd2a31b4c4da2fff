# baton — common tasks. `make test` is what CI runs.
GO      ?= go
BIN     ?= ./baton
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
FUZZTIME ?= 20s

.PHONY: build run test fuzz bench bench-compare lint screenshot vendor-uplot clean

## build: the static baton binary
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/baton

## run: baton demo: the example config on demo servers, and a release story (curl localhost:8080/)
run:
	$(GO) run ./cmd/baton demo

## test: vet, every test with the race detector, then a short fuzz run of the parsers
test: lint
	$(GO) test -race -count=1 ./...
	$(MAKE) fuzz

## fuzz: arbitrary request bytes through baton for FUZZTIME; config files, and backend response heads and chunked bodies against net/http, for 10s each
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzRequestFraming$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzResponseHead$$' -fuzztime 10s ./internal/h1
	$(GO) test -run '^$$' -fuzz '^FuzzChunkedBody$$' -fuzztime 10s ./internal/h1
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 10s ./config

## bench: request-path benchmarks with allocation counts
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

## bench-compare: baton beside HAProxy, NGINX and Caddy (needs root for apt and the shared bench kit)
bench-compare: build
	../shared/bench/compare.sh --bin $(BIN)

## screenshot: docs/release-view.png, live-requests.png and backend-monitor.png, the dashboard during a canary (needs Chromium)
screenshot:
	BATON_BROWSER_TESTS=required BATON_SCREENSHOT=$(CURDIR)/docs/release-view.png $(GO) test -count=1 -run '^TestDashboard(LiveRequestsAndMonitor)?$$' ./admin

## vendor-uplot: refresh the dashboard's chart library from the npm registry (UPLOT_VERSION)
UPLOT_VERSION ?= 1.6.32
vendor-uplot:
	tmp=$$(mktemp -d) && cd $$tmp && npm pack --silent uplot@$(UPLOT_VERSION) >/dev/null && tar xzf uplot-$(UPLOT_VERSION).tgz && \
	cp package/dist/uPlot.iife.min.js package/dist/uPlot.min.css $(CURDIR)/admin/ui/vendor/ && \
	cp package/LICENSE $(CURDIR)/admin/ui/vendor/uPlot.LICENSE && rm -rf $$tmp
	@echo "uPlot $(UPLOT_VERSION) vendored in admin/ui/vendor"

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -f $(BIN)
