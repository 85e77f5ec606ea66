package comfysim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// Fault injection lets tests make the simulated GPU misbehave the ways a
// real ComfyUI does: slow to come up, stuck, dead, or failing a node. It is
// simulator-only: Go callers use SetFault, other processes POST /sim/fault
// (a route ComfyUI does not have, deliberately outside /api).

// FaultKind selects a misbehaviour.
type FaultKind string

const (
	// FaultNone clears any fault.
	FaultNone FaultKind = "none"
	// FaultSlowStart makes every route answer 503 until Delay has passed
	// since the fault was set, like a ComfyUI that is still importing
	// nodes. (The binary's --sim-startup-delay instead delays listening,
	// which clients see as connection refused.)
	FaultSlowStart FaultKind = "slow_start"
	// FaultHang freezes the running prompt at the fault point: no further
	// events, no completion, until it is interrupted (then it ends with
	// execution_interrupted) or the simulator is closed.
	FaultHang FaultKind = "hang"
	// FaultCrash kills the "process" at the fault point: Config.OnCrash
	// is called (the binary exits with status 1 there); if that returns,
	// the simulator closes itself abruptly. No further event or history
	// entry is produced.
	FaultCrash FaultKind = "crash"
	// FaultExecutionError raises an exception in the node: the prompt ends
	// with execution_error carrying Message and ExceptionType.
	FaultExecutionError FaultKind = "execution_error"
	// FaultOOM raises torch.OutOfMemoryError in the node, with ComfyUI's
	// out-of-memory tips appended to the message.
	FaultOOM FaultKind = "oom"
)

// Fault describes an injected fault. The zero value is "no fault".
type Fault struct {
	Kind FaultKind `json:"kind"`
	// Node restricts the fault to a node id or class_type ("" = the first
	// node that executes).
	Node string `json:"node,omitempty"`
	// After is the sampler step (1-based) at which the fault fires inside
	// the node; 0 fires right after the node's "executing" message. Nodes
	// without steps only honour 0.
	After int `json:"after,omitempty"`
	// Message is the exception text of FaultExecutionError (default
	// "Simulated failure") or FaultOOM (default: a CUDA allocator message).
	Message string `json:"message,omitempty"`
	// ExceptionType overrides exception_type (default "RuntimeError", or
	// "torch.OutOfMemoryError" for FaultOOM).
	ExceptionType string `json:"exception_type,omitempty"`
	// Delay is the FaultSlowStart duration. Over HTTP it is a Go duration
	// string ("2s") or a number of milliseconds.
	Delay time.Duration `json:"-"`
	// Count limits how many prompts the fault fires in; 0 = until cleared.
	Count int `json:"count,omitempty"`
}

type faultJSON struct {
	Kind          FaultKind       `json:"kind"`
	Node          string          `json:"node,omitempty"`
	After         int             `json:"after,omitempty"`
	Message       string          `json:"message,omitempty"`
	ExceptionType string          `json:"exception_type,omitempty"`
	Delay         json.RawMessage `json:"delay,omitempty"`
	Count         int             `json:"count,omitempty"`
}

// MarshalJSON writes Delay as a duration string.
func (f Fault) MarshalJSON() ([]byte, error) {
	j := faultJSON{Kind: f.Kind, Node: f.Node, After: f.After, Message: f.Message, ExceptionType: f.ExceptionType, Count: f.Count}
	if j.Kind == "" {
		j.Kind = FaultNone
	}
	if f.Delay != 0 {
		j.Delay, _ = json.Marshal(f.Delay.String())
	}
	return json.Marshal(j)
}

// UnmarshalJSON accepts Delay as a duration string or milliseconds.
func (f *Fault) UnmarshalJSON(data []byte) error {
	var j faultJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return err
	}
	*f = Fault{Kind: j.Kind, Node: j.Node, After: j.After, Message: j.Message, ExceptionType: j.ExceptionType, Count: j.Count}
	if len(j.Delay) > 0 {
		var s string
		if err := json.Unmarshal(j.Delay, &s); err == nil {
			d, err := time.ParseDuration(s)
			if err != nil {
				return fmt.Errorf("delay: %w", err)
			}
			f.Delay = d
		} else {
			var ms float64
			if err := json.Unmarshal(j.Delay, &ms); err != nil {
				return fmt.Errorf("delay: want a duration string or milliseconds")
			}
			f.Delay = time.Duration(ms * float64(time.Millisecond))
		}
	}
	return nil
}

func (f Fault) validate() error {
	switch f.Kind {
	case "", FaultNone, FaultSlowStart, FaultHang, FaultCrash, FaultExecutionError, FaultOOM:
	default:
		return fmt.Errorf("unknown fault kind %q", f.Kind)
	}
	if f.After < 0 || f.Count < 0 || f.Delay < 0 {
		return fmt.Errorf("after, count and delay must not be negative")
	}
	return nil
}

// SetFault installs f, replacing any previous fault. A hang already in
// progress is not released by clearing the fault; interrupt it.
func (s *Server) SetFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = f
	s.faultArm = time.Now()
	s.log.Info().Str("kind", string(f.Kind)).Str("node", f.Node).Int("after", f.After).Msg("fault set")
}

// CurrentFault returns the installed fault.
func (s *Server) CurrentFault() Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fault
}

func (s *Server) handleSetFault(w http.ResponseWriter, r *http.Request) {
	var f Fault
	if err := json.NewDecoder(r.Body).Decode(&f); err != nil {
		http.Error(w, "invalid fault: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := f.validate(); err != nil {
		http.Error(w, "invalid fault: "+err.Error(), http.StatusBadRequest)
		return
	}
	s.SetFault(f)
	writeJSON(w, http.StatusOK, s.CurrentFault())
}

func (s *Server) handleGetFault(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.CurrentFault())
}

// slowStart answers 503 while a FaultSlowStart is in effect (the fault
// routes stay reachable so tests can clear it).
func (s *Server) slowStart(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		starting := s.fault.Kind == FaultSlowStart && time.Since(s.faultArm) < s.fault.Delay
		s.mu.Unlock()
		if starting && r.URL.Path != "/sim/fault" {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "503: ComfyUI simulator is starting", http.StatusServiceUnavailable)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// oomMessage is what torch's caching allocator says on an H100.
const oomMessage = "Allocation on device 0 would exceed allowed memory. (out of memory)\n" +
	"Currently allocated     : 76.21 GiB\n" +
	"Requested               : 4.00 GiB\n" +
	"Device limit            : 79.19 GiB\n" +
	"Free (according to CUDA): 1.12 GiB\n" +
	"PyTorch limit (set by user-supplied memory fraction)\n" +
	"                        : 17179869184.00 GiB"

const oomTips = "This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might have accidentally set the batch_size to a large number."

// fault fires the installed fault if it targets this node at this step.
func (nc *nodeCtx) fault(step int) error {
	s := nc.s()
	s.mu.Lock()
	f := s.fault
	matches := false
	switch f.Kind {
	case FaultHang, FaultCrash, FaultExecutionError, FaultOOM:
		matches = (f.Node == "" || f.Node == nc.id || f.Node == nc.def.name) && f.After == step
	}
	if matches && f.Count > 0 {
		s.fault.Count--
		if s.fault.Count == 0 {
			s.fault = Fault{Kind: FaultNone}
		}
	}
	s.mu.Unlock()
	if !matches {
		return nil
	}
	s.log.Warn().Str("kind", string(f.Kind)).Str("node", nc.id).Int("step", step).Msg("fault fired")
	tb := []any{
		"  File \"/ComfyUI/execution.py\", line 496, in execute\n    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, input_data_all, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n",
		"  File \"/ComfyUI/execution.py\", line 315, in get_output_data\n    return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION, allow_interrupt=True, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n",
		"  File \"/ComfyUI/execution.py\", line 289, in _async_map_node_over_list\n    await process_inputs(input_dict, i)\n",
		"  File \"/ComfyUI/execution.py\", line 277, in process_inputs\n    result = f(**inputs)\n",
	}
	switch f.Kind {
	case FaultHang:
		<-nc.e.ctx.Done()
		return nc.e.checkInterrupt()
	case FaultCrash:
		s.crash()
		return errCrashed
	case FaultOOM:
		typ := f.ExceptionType
		if typ == "" {
			typ = "torch.OutOfMemoryError"
		}
		msg := f.Message
		if msg == "" {
			msg = oomMessage
		}
		return &execError{typ: typ, msg: msg, tips: oomTips, traceback: tb}
	default:
		typ := f.ExceptionType
		if typ == "" {
			typ = "RuntimeError"
		}
		msg := f.Message
		if msg == "" {
			msg = "Simulated failure"
		}
		return &execError{typ: typ, msg: msg, traceback: tb}
	}
}

// crash makes the simulator die: OnCrash (the binary exits), or an abrupt
// in-process close.
func (s *Server) crash() {
	s.log.Error().Msg("simulated crash")
	if s.cfg.OnCrash != nil {
		s.cfg.OnCrash()
	}
	// If the process is still alive, die as far as clients can tell.
	// Close waits for the worker, which is the caller: do it aside.
	go func() { _ = s.Close() }()
}
