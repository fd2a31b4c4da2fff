# baton — common tasks. `make test` is what CI runs.
GO      ?= go
BIN     ?= ./baton
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
FUZZTIME ?= 20s

.PHONY: build run test fuzz bench bench-compare lint clean

## build: the static baton binary
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/baton

## run: baton on the example config with built-in demo backends (curl localhost:8080/)
run:
	$(GO) run ./cmd/baton demo

## test: vet, every test with the race detector, then a short fuzz run of the request parser
test: lint
	$(GO) test -race -count=1 ./...
	$(MAKE) fuzz

## fuzz: arbitrary request bytes through baton, and arbitrary config files, for FUZZTIME each
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzRequestFraming$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 10s ./config

## bench: request-path benchmarks with allocation counts
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

## bench-compare: baton beside HAProxy, NGINX and Caddy (needs root for apt and the shared bench kit)
bench-compare: build
	../shared/bench/compare.sh --bin $(BIN)

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -f $(BIN)
