package comfysim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/atelier-run/atelier/pkg/comfyapi"
)

// The executor follows execution.py / main.py: one worker thread takes the
// lowest (number, prompt_id) item, executes its graph in ExecutionList
// order, reuses cached node outputs (CLASSIC cache: entries of the previous
// prompt whose input signature is unchanged), reports each step over the
// WebSocket, writes history and then announces completion.

// cacheEntry is a cached node result: its outputs and, for nodes with UI
// output, the UI dict and meta that the history shows.
type cacheEntry struct {
	outputs []any
	ui      object // nil: the node produced no UI output
	meta    object
}

// outputCache maps an input signature to a node result.
type outputCache struct {
	mu      sync.Mutex
	entries map[string]*cacheEntry
	reset   bool
}

func newOutputCache() *outputCache {
	return &outputCache{entries: map[string]*cacheEntry{}}
}

// requestReset drops the cache before the next prompt (POST /free
// free_memory).
func (c *outputCache) requestReset() {
	c.mu.Lock()
	c.reset = true
	c.mu.Unlock()
}

// prepare applies a pending reset and keeps only entries whose signature is
// part of the new prompt, as CLASSIC caching's clean_unused().
func (c *outputCache) prepare(sigs map[string]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reset {
		c.entries = map[string]*cacheEntry{}
		c.reset = false
	}
	keep := map[string]bool{}
	for _, sig := range sigs {
		keep[sig] = true
	}
	for sig := range c.entries {
		if !keep[sig] {
			delete(c.entries, sig)
		}
	}
}

func (c *outputCache) get(sig string) *cacheEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.entries[sig]
}

func (c *outputCache) set(sig string, e *cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries[sig] = e
}

// execError is a node failure reported as execution_error.
type execError struct {
	typ       string // exception_type
	msg       string // str(ex)
	tips      string
	traceback []any
}

func (e *execError) Error() string { return e.typ + ": " + e.msg }

// errCrashed stops an execution without any further event (FaultCrash).
var errCrashed = errors.New("simulated crash")

// execution is the state of one prompt run.
type execution struct {
	s        *Server
	it       *queueItem
	ctx      context.Context
	sid      string
	hasSID   bool
	preview  bool
	messages []any
	progress object // node id -> NodeProgressState, in touch order
	sigs     map[string]string
	results  map[string]*cacheEntry
	executed []string
	ui       object // node id -> {"meta", "output"}, in execution order
	aborted  bool
}

func (s *Server) worker(ctx context.Context) {
	for {
		it := s.nextItem(ctx.Done())
		if it == nil {
			return
		}
		if s.cfg.OnDequeue != nil {
			s.cfg.OnDequeue(it.id)
		}
		if crashed := s.runPrompt(ctx, it); crashed {
			return
		}
	}
}

func nowMillis() int64 { return time.Now().UnixMilli() }

// runPrompt executes one queue item and records it (execute + task_done).
// It reports whether the simulator crashed (FaultCrash) meanwhile.
func (s *Server) runPrompt(parent context.Context, it *queueItem) bool {
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	s.mu.Lock()
	s.interrupt = cancel
	s.mu.Unlock()

	e := &execution{s: s, it: it, ctx: ctx, results: map[string]*cacheEntry{}}
	e.sid, e.hasSID = it.clientID()
	method := s.cfg.PreviewMethod
	if v, ok := it.extra.Str("preview_method"); ok && v != "" && v != "default" {
		method = v
	}
	e.preview = method != "none"

	if s.cfg.OnExecute != nil {
		s.cfg.OnExecute(it.id)
	}
	success := e.run()

	s.mu.Lock()
	s.interrupt = nil
	s.runningNode = ""
	if e.aborted {
		// A crash: the process is gone, nothing is recorded or sent.
		s.running = nil
		s.mu.Unlock()
		return true
	}
	statusStr := comfyapi.HistorySuccess
	if !success {
		statusStr = comfyapi.HistoryError
	}
	outputs, meta := object{}, object{}
	for _, m := range e.ui {
		o := m.Value.(object)
		out, _ := o.Get("output")
		mt, _ := o.Get("meta")
		outputs = append(outputs, member{m.Key, out})
		meta = append(meta, member{m.Key, mt})
	}
	messages := e.messages
	if messages == nil {
		messages = []any{}
	}
	s.history.put(it.id, object{
		{"prompt", it.tuple()},
		{"outputs", outputs},
		{"status", object{{"status_str", statusStr}, {"completed", success}, {"messages", messages}}},
		{"meta", meta},
	})
	s.running = nil
	if s.cfg.OnDone != nil {
		s.cfg.OnDone(it.id, success)
	}
	s.broadcastStatusLocked()
	if e.hasSID {
		s.hub.sendJSON(e.sid, comfyapi.MsgExecuting, object{{"node", nil}, {"prompt_id", it.id}})
	}
	s.mu.Unlock()
	s.log.Info().Str("prompt_id", it.id).Str("status", statusStr).Msg("prompt executed")
	return false
}

// addMessage is PromptExecutor.add_message: timestamped, recorded for
// history, sent to the prompt's client (or to all when broadcast).
func (e *execution) addMessage(event string, data object, broadcast bool) {
	data = append(data, member{"timestamp", nowMillis()})
	e.messages = append(e.messages, []any{event, data})
	if e.hasSID || broadcast {
		e.s.mu.Lock()
		e.s.hub.sendJSON(e.sid, event, data)
		e.s.mu.Unlock()
	}
}

// sendClient sends an event only when the prompt has a client
// (executing, executed).
func (e *execution) sendClient(event string, data object) {
	if !e.hasSID {
		return
	}
	e.s.mu.Lock()
	e.s.hub.sendJSON(e.sid, event, data)
	e.s.mu.Unlock()
}

// sendProgress sends progress-type events: to the client, or broadcast
// when the prompt has none.
func (e *execution) sendProgress(event string, data object) {
	e.s.mu.Lock()
	e.s.hub.sendJSON(e.sid, event, data)
	e.s.mu.Unlock()
}

// node returns the prompt node object.
func (e *execution) node(id string) object {
	n, _ := nodeObject(e.it.prompt, id)
	return n
}

func (e *execution) def(id string) *nodeDef {
	class, _ := e.node(id).Get("class_type")
	d, _ := e.s.lookupClass(class)
	return d
}

func (e *execution) inputs(id string) object {
	v, _ := e.node(id).Get("inputs")
	o, _ := v.(object)
	return o
}

// signature is the cache key of a node: class, IS_CHANGED and inputs, with
// links replaced by the upstream node's signature.
func (e *execution) signature(id string, visiting map[string]bool) string {
	if sig, ok := e.sigs[id]; ok {
		return sig
	}
	if visiting[id] {
		return "cycle:" + id
	}
	visiting[id] = true
	defer delete(visiting, id)
	d := e.def(id)
	inputs := e.inputs(id)
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00", d.name)
	if d.isChanged != nil {
		fmt.Fprintf(h, "changed=%s\x00", d.isChanged(e.s, inputs))
	}
	names := inputs.Keys()
	sort.Strings(names)
	for _, name := range names {
		v, _ := inputs.Get(name)
		if link, ok := isLink(v); ok && len(link) == 2 {
			from, _ := link[0].(string)
			fmt.Fprintf(h, "%s=link(%s,%s)\x00", name, e.signature(from, visiting), pyRepr(link[1]))
			continue
		}
		fmt.Fprintf(h, "%s=%s\x00", name, mustPyJSON(v))
	}
	sig := hex.EncodeToString(h.Sum(nil))
	e.sigs[id] = sig
	return sig
}

// run executes the graph; it reports whether the prompt succeeded.
func (e *execution) run() bool {
	id := e.it.id
	e.addMessage(comfyapi.MsgExecutionStart, object{{"prompt_id", id}}, false)

	e.sigs = map[string]string{}
	for _, m := range e.it.prompt {
		e.signature(m.Key, map[string]bool{})
	}
	e.s.cache.prepare(e.sigs)
	cached := []any{}
	var currentOutputs []any
	for _, m := range e.it.prompt {
		currentOutputs = append(currentOutputs, m.Key)
		if e.s.cache.get(e.sigs[m.Key]) != nil {
			cached = append(cached, m.Key)
		}
	}
	e.addMessage(comfyapi.MsgExecutionCached, object{{"nodes", cached}, {"prompt_id", id}}, false)

	list := newExecList(e)
	for _, o := range e.it.outputs {
		list.addNode(o)
	}
	for !list.empty() {
		nodeID, ok := list.stage()
		if !ok {
			e.fail(list.blamed(), currentOutputs, &execError{typ: "graph.DependencyCycleError", msg: "Dependency cycle detected", traceback: []any{}})
			return false
		}
		err := e.execute(nodeID)
		if errors.Is(err, errCrashed) {
			e.aborted = true
			return false
		}
		if err != nil {
			e.fail(nodeID, currentOutputs, err)
			return false
		}
		list.complete(nodeID)
	}
	e.addMessage(comfyapi.MsgExecutionSuccess, object{{"prompt_id", id}}, false)
	return true
}

// fail reports an execution error or interruption (handle_execution_error).
func (e *execution) fail(nodeID string, currentOutputs []any, err error) {
	class, _ := e.node(nodeID).Get("class_type")
	executed := anyStrings(e.executed)
	var ee *execError
	if !errors.As(err, &ee) {
		// Interrupted (or the simulator is closing, which ComfyUI would
		// not survive either; reporting an interruption is the closest).
		e.addMessage(comfyapi.MsgExecutionInterrupted, object{
			{"prompt_id", e.it.id}, {"node_id", nodeID}, {"node_type", class}, {"executed", executed},
		}, true)
		return
	}
	if currentOutputs == nil {
		currentOutputs = []any{}
	}
	tb := ee.traceback
	if tb == nil {
		tb = []any{}
	}
	e.addMessage(comfyapi.MsgExecutionError, object{
		{"prompt_id", e.it.id},
		{"node_id", nodeID},
		{"node_type", class},
		{"executed", executed},
		{"exception_message", ee.msg + "\n" + ee.tips},
		{"exception_type", ee.typ},
		{"traceback", tb},
		{"current_inputs", e.currentInputs(nodeID)},
		{"current_outputs", currentOutputs},
	}, false)
}

// currentInputs formats the failing node's inputs as format_value does:
// scalars as-is, everything else as its str().
func (e *execution) currentInputs(nodeID string) object {
	out := object{}
	for _, m := range e.inputs(nodeID) {
		if link, ok := isLink(m.Value); ok && len(link) == 2 {
			from, _ := link[0].(string)
			var v any
			if r := e.result(from); r != nil {
				if i, exc := tupleIndex(link[1], len(r.outputs)); exc == nil {
					v = r.outputs[i]
				}
			}
			out = append(out, member{m.Key, []any{describeValue(v)}})
			continue
		}
		out = append(out, member{m.Key, []any{m.Value}})
	}
	return out
}

// progressState renders the progress_state snapshot of all non-pending
// nodes.
func (e *execution) progressState() object {
	nodes := object{}
	for _, m := range e.progress {
		st := m.Value.(object)
		state, _ := st.Str("state")
		if state == "pending" {
			continue
		}
		v, _ := st.Get("value")
		mx, _ := st.Get("max")
		nodes = append(nodes, member{m.Key, object{
			{"value", v}, {"max", mx}, {"state", state}, {"node_id", m.Key}, {"prompt_id", e.it.id},
			{"display_node_id", m.Key}, {"parent_node_id", nil}, {"real_node_id", m.Key},
		}})
	}
	return object{{"prompt_id", e.it.id}, {"nodes", nodes}}
}

func (e *execution) setProgress(id, state string, value, max any) {
	if max == nil {
		if st, ok := e.progress.Get(id); ok {
			max, _ = st.(object).Get("max")
		} else {
			max = 1
		}
		value = max
	}
	e.progress.Set(id, object{{"state", state}, {"value", value}, {"max", max}})
	e.sendProgress(comfyapi.MsgProgressState, e.progressState())
}

// execute runs (or replays from cache) one node.
func (e *execution) execute(id string) error {
	sig := e.sigs[id]
	if c := e.s.cache.get(sig); c != nil {
		// A cached output node: re-send its old UI output.
		var out any
		if c.ui != nil {
			out = c.ui
			e.ui.Set(id, object{{"meta", c.meta}, {"output", c.ui}})
		}
		e.sendClient(comfyapi.MsgExecuted, object{{"node", id}, {"display_node", id}, {"output", out}, {"prompt_id", e.it.id}})
		e.setProgress(id, "finished", nil, nil)
		e.results[id] = c
		return nil
	}

	e.setProgress(id, "running", pyFloat(0), pyFloat(1))
	e.s.mu.Lock()
	e.s.runningNode = id
	if e.hasSID {
		e.s.hub.sendJSON(e.sid, comfyapi.MsgExecuting, object{{"node", id}, {"display_node", id}, {"prompt_id", e.it.id}})
	}
	e.s.mu.Unlock()

	// before_node_execution(): the interrupt flag is checked here.
	if err := e.checkInterrupt(); err != nil {
		return err
	}
	d := e.def(id)
	args := map[string]any{}
	for _, m := range e.inputs(id) {
		if link, ok := isLink(m.Value); ok && len(link) == 2 {
			from, _ := link[0].(string)
			r := e.result(from)
			if r == nil {
				return &execError{typ: "KeyError", msg: pyStrRepr(from)}
			}
			i, exc := tupleIndex(link[1], len(r.outputs))
			if exc != nil {
				return &execError{typ: exc.Type, msg: exc.Msg}
			}
			args[m.Key] = r.outputs[i]
			continue
		}
		args[m.Key] = m.Value
	}
	nc := &nodeCtx{e: e, id: id, def: d, args: args}
	if err := nc.fault(0); err != nil {
		return err
	}
	outs, ui, err := d.run(nc)
	if err != nil {
		return err
	}
	entry := &cacheEntry{outputs: outs}
	if len(ui) > 0 {
		entry.ui = ui
		entry.meta = object{{"node_id", id}, {"display_node", id}, {"parent_node", nil}, {"real_node_id", id}}
		e.ui.Set(id, object{{"meta", entry.meta}, {"output", ui}})
		e.sendClient(comfyapi.MsgExecuted, object{{"node", id}, {"display_node", id}, {"output", ui}, {"prompt_id", e.it.id}})
	}
	e.results[id] = entry
	e.s.cache.set(sig, entry)
	e.setProgress(id, "finished", nil, nil)
	e.executed = append(e.executed, id)
	return nil
}

// result returns a node's outputs: computed in this run, or cached from an
// earlier prompt (cached nodes are never staged).
func (e *execution) result(id string) *cacheEntry {
	if r := e.results[id]; r != nil {
		return r
	}
	return e.s.cache.get(e.sigs[id])
}

// checkInterrupt returns the interruption, if any.
func (e *execution) checkInterrupt() error {
	if e.ctx.Err() != nil {
		return context.Cause(e.ctx)
	}
	return nil
}

// sleep waits d or until the prompt is interrupted.
func (e *execution) sleep(d time.Duration) error {
	if d <= 0 {
		return e.checkInterrupt()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-e.ctx.Done():
		return context.Cause(e.ctx)
	}
}

// execList is comfy_execution.graph.ExecutionList: a topological dissolve
// with ComfyUI's "UX friendly" pick order.
type execList struct {
	e          *execution
	pending    []string
	isPending  map[string]bool
	blockCount map[string]int
	blocking   map[string][]string // from -> blocked nodes, in link order
}

func newExecList(e *execution) *execList {
	return &execList{e: e, isPending: map[string]bool{}, blockCount: map[string]int{}, blocking: map[string][]string{}}
}

func (l *execList) cached(id string) bool {
	return l.e.s.cache.get(l.e.sigs[id]) != nil
}

func (l *execList) addNode(start string) {
	stack := []string{start}
	type link struct{ from, to string }
	var links []link
	for len(stack) > 0 {
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if l.isPending[id] {
			continue
		}
		l.isPending[id] = true
		l.pending = append(l.pending, id)
		l.blockCount[id] = 0
		l.blocking[id] = nil
		if l.cached(id) {
			// A cached node never reads its inputs.
			continue
		}
		for _, m := range l.e.inputs(id) {
			if lk, ok := isLink(m.Value); ok && len(lk) == 2 {
				from, _ := lk[0].(string)
				if !l.cached(from) {
					stack = append(stack, from)
				}
				links = append(links, link{from, id})
			}
		}
	}
	for _, lk := range links {
		if l.cached(lk.from) {
			continue
		}
		l.addNode(lk.from)
		if !contains(l.blocking[lk.from], lk.to) {
			l.blocking[lk.from] = append(l.blocking[lk.from], lk.to)
			l.blockCount[lk.to]++
		}
	}
}

func (l *execList) empty() bool { return len(l.pending) == 0 }

// stage picks the next node, or reports a cycle.
func (l *execList) stage() (string, bool) {
	var ready []string
	for _, id := range l.pending {
		if l.blockCount[id] == 0 {
			ready = append(ready, id)
		}
	}
	if len(ready) == 0 {
		return "", false
	}
	isOutput := func(id string) bool { return l.e.def(id).outputNode }
	for _, id := range ready {
		if isOutput(id) {
			return id, true
		}
	}
	// The VAEDecode -> preview case.
	for _, id := range ready {
		for _, b := range l.blocking[id] {
			if isOutput(b) {
				return id, true
			}
		}
	}
	// The VAELoader -> VAEDecode -> preview case.
	for _, id := range ready {
		for _, b := range l.blocking[id] {
			for _, b1 := range l.blocking[b] {
				if isOutput(b1) {
					return id, true
				}
			}
		}
	}
	return ready[0], true
}

func (l *execList) complete(id string) {
	for i, p := range l.pending {
		if p == id {
			l.pending = append(l.pending[:i], l.pending[i+1:]...)
			break
		}
	}
	delete(l.isPending, id)
	for _, b := range l.blocking[id] {
		l.blockCount[b]--
	}
	delete(l.blocking, id)
}

// blamed is the node reported for a dependency cycle.
func (l *execList) blamed() string {
	if len(l.pending) == 0 {
		return ""
	}
	return l.pending[0]
}

// describeValue is str(x) of a node value for current_inputs.
func describeValue(v any) any {
	switch t := v.(type) {
	case nil:
		return nil
	case interface{ describe() string }:
		return t.describe()
	default:
		return strings.TrimSpace(fmt.Sprint(t))
	}
}
