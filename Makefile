# Strait. `make test` is what CI runs; see README.md.
GO        ?= go
BIN       := bin/strait
PKGS      := ./...
PROTOS    := $(shell find controlplane -name '*.proto')

FUZZTIME  ?= 10s
FUZZ      := ./controlplane/state:FuzzApplyCommand ./controlplane/api:FuzzRegisterRequest \
             ./trust/ca:FuzzParseCSR ./meshname:FuzzValidLabel ./cmd/strait/cli:FuzzParseConfig \
             ./trust/jointoken:FuzzParse ./trust/bundleendpoint:FuzzParse ./federation/token:FuzzDecode ./dns:FuzzServeDNS \
             ./federation/replication:FuzzImportEvents ./dns:FuzzFastPath ./gateway:FuzzParseHeader ./internal/tunnelmux:FuzzSession ./gateway:FuzzParseClientHello \
             ./cloud/aws:FuzzParseDiscovery ./federation/peeraddr:FuzzCheck ./internal/passthrough:FuzzRead \
             ./controlplane/api:FuzzValidateEntry ./agent:FuzzAttestation \
             ./federation/replication:FuzzImportGateways ./gateway:FuzzCompile
# Targets whose every input crosses real sockets (an upstream resolver, an
# HTTPS server, a tunnel, a server's API): about a hundred inputs a second, so CI's smoke
# gives them fewer (FUZZSLOWTIME); `make fuzz FUZZTIME=1m` runs them as long.
FUZZSLOW  := ./dns:FuzzForward ./trust/bundleendpoint:FuzzFetch ./gateway:FuzzIngressHeader ./controlplane/api:FuzzAccept
FUZZSLOWTIME ?= $(FUZZTIME)

.PHONY: all build provider test test-long golden fuzz lint fmt generate bench bench-compare bench-smoke bench-dns bench-gateway bench-hostile demo scenarios clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/strait

## provider: the Terraform provider (see terraform/README.md).
provider:
	$(GO) build -o bin/terraform-provider-strait ./cmd/terraform-provider-strait

## test: the suite CI runs (race detector on, real clusters on loopback).
test:
	$(GO) test -race -count=1 -timeout 15m $$($(GO) list ./... | grep -v /scenarios)

## scenarios: multi-site scenarios on network namespaces (root; see scenarios/README.md).
scenarios:
	$(GO) test -count=1 -v -timeout 10m ./scenarios/

## test-long: also the long fuzz smoke and chaos runs.
test-long:
	STRAIT_LONG=1 $(GO) test -race -count=1 -timeout 40m $(PKGS)

## golden: rewrite the golden files (xDS resources, --json output) from the current output;
## review their diff before committing (internal/golden).
golden:
	$(GO) test ./controlplane/xds ./cmd/strait/cli -update

## fuzz: every fuzz target for FUZZTIME each (CI runs a short smoke).
fuzz:
	@set -e; for t in $(FUZZ); do pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "fuzz $$pkg $$fn ($(FUZZTIME))"; \
		$(GO) test $$pkg -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME); done; \
	for t in $(FUZZSLOW); do pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "fuzz $$pkg $$fn ($(FUZZSLOWTIME))"; \
		$(GO) test $$pkg -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZSLOWTIME); done

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

## generate: recreate the committed protobuf code (needs protoc, protoc-gen-go, protoc-gen-go-grpc).
generate:
	protoc --proto_path=. \
		--go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative \
		$(PROTOS)

## bench: the benchmarks behind BENCHMARKS.md.
bench:
	taskset -c 1 $(GO) test ./trust/ca/ -run '^$$' -bench 'KeyChoice|SignCSR' -count 5
	$(GO) test ./agent/ -run '^$$' -bench 'Rotate10k' -benchtime 1x -count 3 -timeout 30m
	$(GO) test ./controlplane/ -run '^$$' -bench 'Register|Memory' -benchtime 1x -count 3 -timeout 30m
	$(GO) test ./controlplane/ -run '^$$' -bench 'Propagation' -benchtime 5x -count 5 -timeout 20m
	$(GO) test ./gateway/ -run '^$$' -bench 'DataPath' -benchtime 1x -count 3
	$(GO) test ./gateway/ -run '^$$' -bench 'NewConnections' -benchtime 1x -count 5
	$(GO) test ./controlplane/ -run '^$$' -bench 'XDSPush' -benchtime 10x -count 3

## bench-compare: two builds before/after in one session, interleaved (binary size, gateway RSS, the
## control plane benchmarks, benchstat), a Markdown block in bench/compare-out.md; see BENCHMARKS.md.
## make bench-compare OLD=<rev> [NEW=HEAD] [COUNT=3]; QUICK=1 only checks that the harness runs.
NEW   ?= HEAD
COUNT ?= 3
bench-compare:
	@test -n "$(OLD)" || { echo "usage: make bench-compare OLD=<rev> [NEW=HEAD] [COUNT=3]" >&2; exit 2; }
	bench/compare.sh $(OLD) $(NEW) $(COUNT)

## bench-smoke: one short iteration of the quick benchmarks, so that they keep running (CI).
bench-smoke:
	$(GO) test ./gateway/ ./dns/ ./trust/ca/ -run '^$$' -bench 'DataPath|Packet|ServeDNS|SignCSR' -benchtime 1x

## bench-gateway: the data path against wireguard-go and per-connection mTLS between two namespaces (root;
## apt-get install iperf3 wireguard-tools; go install golang.zx2c4.com/wireguard@latest).
bench-gateway:
	bench/gateway.sh 10 3

## bench-dns: mesh DNS against NSD with dnsperf (apt-get install nsd dnsperf dnsutils).
bench-dns:
	bench/dns.sh 10000 10 10

## bench-hostile: RSS, fds and goroutines of a site's server and gateway, and a healthy peer's calls,
## while a fake peer and an anonymous client flood it (issue 14's Measure section; loopback only).
## STRAIT=<binary> measures another build (e.g. an older commit's) the same way.
STRAIT ?= $(BIN)
bench-hostile: build
	$(GO) build -o bin/hostile ./bench/hostile
	bin/hostile bench -strait $(STRAIT)

## demo: two federated sites on this machine (strait demo --sites 3 for three).
demo: build
	$(BIN) demo

clean:
	rm -rf bin
