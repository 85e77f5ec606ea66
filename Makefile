# Atelier — see README.md.
GO      ?= go
BIN     ?= bin
PKGS    := ./...
BINARIES := atelier-broker atelier-proxy atelier-agent atelier-comfysim atelier-devstack
# Static binaries for the FROM scratch images: nodynamic keeps
# github.com/gen2brain/webp from linking them dynamically (purego) even
# with CGO_ENABLED=0.
STATIC  := CGO_ENABLED=0 $(GO) build -tags nodynamic

.PHONY: all build run test vet fmt-check doccheck staticcheck bench clean

all: build

build:
	@mkdir -p $(BIN)
	$(STATIC) -o $(BIN)/atelier-broker ./broker
	$(STATIC) -o $(BIN)/atelier-proxy ./frontend-proxy
	$(STATIC) -o $(BIN)/atelier-agent ./agent
	$(STATIC) -o $(BIN)/atelier-comfysim ./comfysim
	$(STATIC) -o $(BIN)/atelier-devstack ./tools/devstack

# The whole system on the embedded default: broker with embedded NATS, proxy,
# one agent with two simulated GPUs. Data under ./data (ATELIER_DATA).
run: build
	$(BIN)/atelier-devstack --bin $(BIN)

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# A comment or document citing a file or section that does not exist
# (a section number that was renumbered, a renamed .go file) fails the build.
doccheck:
	$(GO) run ./tools/doccheck .

# staticcheck at a pinned version, installed from the module proxy when it
# is not on this machine yet (.ci/run installs it first).
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(or $(shell $(GO) env GOBIN),$(shell $(GO) env GOPATH)/bin)/staticcheck

staticcheck:
	@test -x $(STATICCHECK) || $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(STATICCHECK) $(PKGS)

# The GB-sized transfers skip themselves under -race (ten times slower) and
# run in a second pass without it.
test: vet fmt-check doccheck staticcheck
	$(GO) test -race -count=1 -timeout 25m $(PKGS)
	$(GO) test -count=1 -timeout 10m -run '^TestLargeOutputs$$' -v ./pkg/filetransfer/

# Benchmarks print each figure beside its reference measured in the same run.
bench:
	$(GO) test -run '^$$' -bench 'SubmitToComfy|RawJetStream' -benchtime 200x -timeout 30m ./test/bench/
	$(GO) test -run '^$$' -bench 'IdleGap|OutputTransfer|LargeOutputMemory' -benchtime 1x -timeout 30m ./test/bench/
	$(GO) test -run '^$$' -bench . -benchtime 2000x ./pkg/scheduler/
	$(GO) test -run '^$$' -bench QueuedJobMemory -benchtime 1x -timeout 30m ./pkg/broker/
	$(GO) test -run '^$$' -bench DispatchQueuedJobs -benchtime 3x -timeout 30m ./pkg/broker/

clean:
	rm -rf $(BIN)
