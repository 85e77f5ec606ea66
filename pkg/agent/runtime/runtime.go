// Package runtime is where each of the agent's slots gets its ComfyUI
// from. A Runtime starts (or attaches to) one ComfyUI per slot and
// returns their endpoints; the agent runs jobs against them and never
// cares how they run. Runtimes that own their ComfyUIs also implement
// Supervisor, so the agent's watchdogs can restart a hung one.
//
// The implementations, one package each: external (ComfyUIs something
// else runs), process (one child process per GPU), docker (one container
// per GPU through the Docker Engine API) and simulated (the built-in
// ComfyUI simulator, for the demo and tests).
package runtime

import (
	"context"
	"errors"
	"strconv"
)

// DefaultBasePort is ComfyUI's own port: the process and docker runtimes
// put the first slot's ComfyUI there, the next ones on the ports after it.
const DefaultBasePort = 8188

// Endpoint is one slot's ComfyUI.
type Endpoint struct {
	// Slot names the slot, e.g. "gpu0".
	Slot string
	// GPU describes the device, e.g. "NVIDIA H100 80GB HBM3".
	GPU string
	// GPUIndex is the device's nvidia-smi index, -1 when unknown; GPUUUID
	// its UUID. They match the slot to GPUStats readings.
	GPUIndex int
	GPUUUID  string
	// URL is ComfyUI's base URL.
	URL string
	// OutputDir and TempDir are ComfyUI's output and temp folders on this
	// host, when the runtime knows them: the agent then reads outputs in
	// place instead of copying them through /view ("": it cannot).
	OutputDir, TempDir string
	// InputDir is ComfyUI's input folder on this host, when the runtime
	// knows it: the agent then links inputs there from its cache instead
	// of uploading them through ComfyUI's /upload/image, which holds a
	// whole file in memory and refuses one over --max-upload-size.
	InputDir string
}

// Runtime provides and supervises the ComfyUI instances of the slots. The
// agent runs jobs against the endpoints and never cares how they run.
type Runtime interface {
	// Start brings up one ComfyUI per slot (or attaches to running ones)
	// and returns their endpoints. It does not wait for them to be
	// healthy: each slot waits for its own ComfyUI, so one slow or broken
	// GPU does not hold the others back.
	Start(ctx context.Context) ([]Endpoint, error)
	// Stop stops what Start started.
	Stop(ctx context.Context) error
}

// Supervisor is implemented by runtimes that own their ComfyUI instances
// (process, docker, simulated). The agent uses it for its watchdogs: a
// hung or out-of-memory ComfyUI is restarted, and a slot learns at once
// that its ComfyUI died instead of waiting for timeouts.
type Supervisor interface {
	// Restart stops the slot's ComfyUI and starts a new one. It returns
	// once the new one is started, not necessarily healthy.
	Restart(ctx context.Context, slot string) error
	// Exited returns a channel that is closed when the slot's current
	// ComfyUI instance exits. Each instance has its own channel: ask
	// again after a restart.
	Exited(slot string) <-chan struct{}
}

// ErrUnknownSlot is returned for a slot the runtime does not run.
var ErrUnknownSlot = errors.New("unknown slot")

// SlotName names the slot of the GPU with the given index: "gpu0", "gpu1" …
func SlotName(gpuIndex int) string { return "gpu" + strconv.Itoa(gpuIndex) }
