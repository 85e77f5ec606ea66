// Package external is the runtime for ComfyUIs something else runs (a
// ComfyUI started by hand, another supervisor): the agent only attaches.
package external

import (
	"context"
	"errors"

	"github.com/atelier-run/atelier/pkg/agent/runtime"
)

// Runtime attaches to ComfyUI instances that something else runs. It
// cannot restart them: a hung external ComfyUI is only interrupted.
type Runtime struct {
	URLs []string
}

// Start returns one endpoint per URL.
func (e *Runtime) Start(context.Context) ([]runtime.Endpoint, error) {
	if len(e.URLs) == 0 {
		return nil, errors.New("external runtime: no ComfyUI URLs")
	}
	out := make([]runtime.Endpoint, len(e.URLs))
	for i, u := range e.URLs {
		out[i] = runtime.Endpoint{Slot: runtime.SlotName(i), GPUIndex: -1, URL: u}
	}
	return out, nil
}

// Stop does nothing: external ComfyUIs are not ours to stop.
func (e *Runtime) Stop(context.Context) error { return nil }

var _ runtime.Runtime = (*Runtime)(nil)
