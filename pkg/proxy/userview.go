package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/atelier-run/atelier/pkg/wire"
)

// eventBuffer is how many live events may wait for a view's loop. Live
// events are lossy by design: past this NATS drops them (slow consumer)
// instead of slowing the agent or the other participants.
const eventBuffer = 4096

// maxTrackedJobsPerSocket bounds what a socket remembers about messages it
// was sent (see sentState); entries are dropped when a job ends.
const maxTrackedJobsPerSocket = 256

// maxEarlyNodes bounds the executing nodes a view keeps for jobs whose
// record it has not seen yet (see userView.earlyNode): normally a few,
// for jobs just claimed; events for jobs that never get a record only
// push each other out.
const maxEarlyNodes = 64

// errViewClosed is returned when a view ends while a request waits for it.
var errViewClosed = errors.New("participant view closed")

// viewRegistry holds the participants' views, created on first use and
// evicted when idle.
type viewRegistry struct {
	p *Proxy

	mu    sync.Mutex
	views map[string]*userView
}

func newViewRegistry(p *Proxy) *viewRegistry {
	return &viewRegistry{p: p, views: map[string]*userView{}}
}

// get returns user's view, creating it on first use, once its initial state
// is loaded (bounded by ctx). A view is in use while requests wait for it
// to load: the janitor does not evict it from under them (its load can
// take longer than ViewIdleTimeout).
func (r *viewRegistry) get(ctx context.Context, user string) (*userView, error) {
	return r.getThen(ctx, user, nil)
}

// getThen is get that, when then is not nil and the view is loaded, runs
// then under the view's lock at the moment the request stops waiting for
// it: what then takes (a socket's place) keeps the view in use with no gap
// in which the janitor could evict it.
func (r *viewRegistry) getThen(ctx context.Context, user string, then func(v *userView)) (*userView, error) {
	r.mu.Lock()
	v, ok := r.views[user]
	if !ok {
		if r.p.bg.Err() != nil {
			r.mu.Unlock()
			return nil, errViewClosed
		}
		v = newUserView(r.p, user)
		r.views[user] = v
		r.p.wg.Add(1)
		go v.run()
	}
	// Counted under r.mu, which the janitor holds while it evicts.
	v.mu.Lock()
	v.waiting++
	v.mu.Unlock()
	r.mu.Unlock()

	var err error
	select {
	case <-v.ready:
		err = v.err
	case <-ctx.Done():
		err = fmt.Errorf("wait for job state of %s: %w", user, ctx.Err())
	}
	v.mu.Lock()
	v.waiting--
	v.lastUsed = time.Now()
	if err == nil && then != nil {
		then(v)
	}
	v.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return v, nil
}

// remove forgets v if it is still the registered view of its user.
func (r *viewRegistry) remove(v *userView) {
	r.mu.Lock()
	if r.views[v.user] == v {
		delete(r.views, v.user)
	}
	r.mu.Unlock()
}

// janitor evicts views that had no socket and no request for
// ViewIdleTimeout: their watch and subscription cost the broker.
func (r *viewRegistry) janitor() {
	defer r.p.wg.Done()
	idle := r.p.cfg.ViewIdleTimeout
	tick := time.NewTicker(max(idle/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-r.p.bg.Done():
			return
		case now := <-tick.C:
			r.mu.Lock()
			for user, v := range r.views {
				if v.idleSince(now) > idle {
					delete(r.views, user)
					v.cancel()
				}
			}
			r.mu.Unlock()
		}
	}
}

func (r *viewRegistry) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for user, v := range r.views {
		delete(r.views, user)
		v.cancel()
	}
}

// userView is one participant's cached view of their jobs in JOBS, kept
// current by a KV watch on <user>.>, plus their open WebSockets. The same
// loop that applies JOBS changes relays the live events, so a socket gets
// both in one order.
type userView struct {
	p    *Proxy
	user string

	ctx    context.Context
	cancel context.CancelFunc
	ready  chan struct{} // closed once the initial state is loaded (or err)
	err    error         // set before ready is closed, if loading failed

	mu       sync.Mutex
	jobs     map[string]*jobEntry
	pending  int // jobs in queued, dispatched or running
	reported int // queue_remaining of the last status broadcast
	sockets  map[*socket]struct{}
	bySID    map[string]*socket
	// sent is what each client id was sent per job (see sentState); a
	// client id's entry lives while it has a socket or a job in flight.
	sent map[string]map[string]*sentState
	// submitting are prompts published (or being published) whose record
	// has not reached the view yet: they count against the participant's
	// cap on unfinished prompts. Entries expire (submitTTL) in case a
	// record never comes.
	submitting map[string]time.Time
	// earlyNode is the executing node of jobs whose live events came
	// before their record did (the agent runs a job the moment the broker
	// answers its claim; the JOBS watch may deliver that change later),
	// handed to the job's entry when it arrives. Bounded by
	// maxEarlyNodes.
	earlyNode map[string]string
	// Owned by the loop (run): the JOBS bucket, whether the initial load
	// is over, and the jobs whose record was looked up because their
	// events came first (bounded by maxEarlyNodes).
	kv       jetstream.KeyValue
	loaded   bool
	looked   map[string]struct{}
	reserved int // sockets being accepted
	waiting  int // requests waiting in get for the initial load
	lastUsed time.Time
	closed   bool
}

type jobEntry struct {
	rec wire.JobRecord
	// rev is the JOBS revision rec comes from: a change the watch
	// delivers after the record was read directly (lookUp) is older.
	rev uint64
	// execNode is the node the job's live events last said was executing,
	// for the "executing" message a reconnecting socket gets (§3.1).
	execNode string
}

func newUserView(p *Proxy, user string) *userView {
	v := &userView{
		p:          p,
		user:       user,
		ready:      make(chan struct{}),
		jobs:       map[string]*jobEntry{},
		sockets:    map[*socket]struct{}{},
		bySID:      map[string]*socket{},
		sent:       map[string]map[string]*sentState{},
		submitting: map[string]time.Time{},
		earlyNode:  map[string]string{},
		looked:     map[string]struct{}{},
		lastUsed:   time.Now(),
	}
	v.ctx, v.cancel = context.WithCancel(p.bg)
	return v
}

func (v *userView) idleSince(now time.Time) time.Duration {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.sockets) > 0 || v.reserved > 0 || v.waiting > 0 {
		return 0
	}
	return now.Sub(v.lastUsed)
}

func (v *userView) run() {
	defer v.p.wg.Done()
	log := v.p.log.With().Str("user", v.user).Logger()
	initial := true
	fail := func(err error) {
		v.err = err
		close(v.ready)
		initial = false
	}
	defer func() {
		v.p.views.remove(v)
		v.cancel()
		if initial {
			fail(errViewClosed)
		}
		v.closeSockets("job state watch ended; reconnect")
	}()

	kv, err := v.p.bucket(v.ctx, wire.BucketJobs)
	if err != nil {
		fail(fmt.Errorf("open job state: %w", err))
		return
	}
	v.kv = kv
	events := make(chan *nats.Msg, eventBuffer)
	sub, err := v.p.cfg.Conn.ChanSubscribe(wire.UserEventSubjects(v.user), events)
	if err != nil {
		fail(fmt.Errorf("subscribe to live events: %w", err))
		return
	}
	defer func() { _ = sub.Unsubscribe() }()
	// Make sure the server has the subscription before the view says it is
	// ready: events published right after a socket opens must reach it.
	fctx, fcancel := context.WithTimeout(v.ctx, v.p.cfg.RequestTimeout)
	err = v.p.cfg.Conn.FlushWithContext(fctx)
	fcancel()
	if err != nil {
		fail(fmt.Errorf("subscribe to live events: %w", err))
		return
	}
	w, err := kv.Watch(v.ctx, wire.UserJobKeys(v.user))
	if err != nil {
		fail(fmt.Errorf("watch job state: %w", err))
		return
	}
	defer stopWatcher(w)
	v.p.wg.Add(1)
	go v.queuePositions()

	for {
		select {
		case <-v.ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				log.Warn().Msg("job state watch ended")
				return
			}
			if e == nil {
				if initial {
					v.mu.Lock()
					v.reported = v.pending
					v.mu.Unlock()
					initial = false
					v.loaded = true
					close(v.ready)
				}
				continue
			}
			// An agent publishes a job's live events before the report
			// that ends it, so they reach this connection before the JOBS
			// change the report becomes: relay them first. (select picks
			// among ready cases at random, and a job's final state drops
			// whatever live event of it comes after.)
			v.drainEvents(events)
			v.applyEntry(e, initial)
		case m := <-events:
			v.applyEvent(m)
		}
	}
}

// drainEvents relays the live events already received, without waiting.
func (v *userView) drainEvents(events <-chan *nats.Msg) {
	for {
		select {
		case m := <-events:
			v.applyEvent(m)
		default:
			return
		}
	}
}

// stopWatcher stops w and drains its channel: the client library blocks
// its delivery goroutine on a full channel.
func stopWatcher(w jetstream.KeyWatcher) {
	_ = w.Stop()
	go func() {
		for range w.Updates() {
		}
	}()
}

// applyEntry applies one JOBS change and, after the initial load, turns the
// job's transition into ComfyUI messages.
func (v *userView) applyEntry(e jetstream.KeyValueEntry, initial bool) {
	id, ok := strings.CutPrefix(e.Key(), v.user+".")
	if !ok {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	prev := v.jobs[id]
	if prev != nil && e.Revision() <= prev.rev {
		return // already applied: read directly before the watch had it
	}
	if e.Operation() != jetstream.KeyValuePut {
		if prev != nil {
			delete(v.jobs, id)
			if prev.rec.State.Pending() {
				v.pending--
			}
			if !initial {
				v.broadcastStatusLocked(false)
			}
		}
		return
	}
	delete(v.submitting, id)
	var rec wire.JobRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		v.p.log.Error().Err(err).Str("key", e.Key()).Msg("undecodable job record ignored")
		return
	}
	// The key is authoritative: it is what the watch filtered on.
	rec.ID, rec.User = id, v.user
	withoutUserPaths(&rec)
	next := &jobEntry{rec: rec, rev: e.Revision()}
	if prev != nil && rec.State == wire.StateRunning {
		next.execNode = prev.execNode
	}
	if n, ok := v.earlyNode[id]; ok {
		delete(v.earlyNode, id)
		if next.execNode == "" && !rec.State.Final() {
			next.execNode = n
		}
	}
	v.jobs[id] = next
	if prev != nil && prev.rec.State.Pending() {
		v.pending--
	}
	if rec.State.Pending() {
		v.pending++
	}
	if initial {
		return
	}
	var old *wire.JobRecord
	if prev != nil {
		old = &prev.rec
	}
	v.emitTransitionLocked(old, &rec)
}

// emitTransitionLocked sends the durable ComfyUI messages of one job change
// (old is nil for a job this view had not seen), in the order of
// comfyui-api.md §3.5: execution_start, executed …, then the final
// message, status and executing null.
func (v *userView) emitTransitionLocked(old, rec *wire.JobRecord) {
	var oldState wire.JobState
	if old != nil {
		oldState = old.State
	}
	s := v.bySID[rec.ClientID]
	if rec.ClientID == "" {
		s = nil
	}
	final := rec.State.Final() && !oldState.Final()
	started := rec.State == wire.StateRunning || !rec.StartedAt.IsZero()
	if !final {
		// A new count first: ComfyUI's status of the enqueue and of the
		// dequeue precede execution_start.
		v.broadcastStatusLocked(false)
	}

	if s != nil && started && (rec.State == wire.StateRunning || final) {
		st := s.track(rec.ID)
		if !st.start {
			st.start = true
			v.sendLocked(s, textFrame("execution_start", map[string]any{
				"prompt_id": rec.ID, "timestamp": millis(rec.StartedAt)}))
		}
	}
	// While the job runs, executed comes from the live events, in
	// ComfyUI's order; the record fills in at the end what they lost.
	if s != nil && final {
		v.sendExecutedLocked(s, rec)
	}
	if final {
		cancelledEarly := rec.State == wire.StateCancelled && !started
		if s != nil && !cancelledEarly {
			st := s.track(rec.ID)
			if !st.terminal {
				st.terminal = true
				typ, data := terminalMessage(rec)
				v.sendLocked(s, textFrame(typ, data))
			}
		}
		v.broadcastStatusLocked(true)
		if s != nil && !cancelledEarly {
			v.sendLocked(s, textFrame("executing", map[string]any{"node": nil, "prompt_id": rec.ID}))
		}
		if m := v.sent[rec.ClientID]; m != nil {
			delete(m, rec.ID)
			if len(m) == 0 && v.bySID[rec.ClientID] == nil {
				delete(v.sent, rec.ClientID)
			}
		}
	}
}

// sendExecutedLocked sends "executed" for each output node of rec the socket
// has not been sent yet (by the live events or an earlier change): the live
// stream is lossy, the record is not.
func (v *userView) sendExecutedLocked(s *socket, rec *wire.JobRecord) {
	if len(rec.Outputs) == 0 {
		return
	}
	nodes := make([]string, 0, len(rec.Outputs))
	for n := range rec.Outputs {
		nodes = append(nodes, n)
	}
	slices.SortFunc(nodes, compareNodeIDs)
	st := s.track(rec.ID)
	for _, n := range nodes {
		if _, done := st.executed[n]; done {
			continue
		}
		st.executed[n] = struct{}{}
		v.sendLocked(s, textFrame("executed", map[string]any{
			"node": n, "display_node": displayNode(rec, n), "output": rec.Outputs[n], "prompt_id": rec.ID}))
	}
}

// displayNode is the node's display id from the history meta, else the node
// id itself (they differ only for expanded nodes and subgraphs).
func displayNode(rec *wire.JobRecord, node string) string {
	var meta struct {
		DisplayNode string `json:"display_node"`
	}
	if raw, ok := rec.Meta[node]; ok && json.Unmarshal(raw, &meta) == nil && meta.DisplayNode != "" {
		return meta.DisplayNode
	}
	return node
}

// terminalMessage is the final WebSocket message of a finished job.
func terminalMessage(rec *wire.JobRecord) (string, any) {
	ts := millis(rec.FinishedAt)
	switch rec.State {
	case wire.StateSucceeded:
		return "execution_success", map[string]any{"prompt_id": rec.ID, "timestamp": ts}
	case wire.StateFailed:
		if len(rec.Error) > 0 && !isNull(rec.Error) {
			return "execution_error", rec.Error
		}
		if m := findMessage(rec.Messages, "execution_error"); m != nil {
			return "execution_error", m
		}
		return "execution_error", synthesizedError(rec)
	default: // interrupted, cancelled
		if m := findMessage(rec.Messages, "execution_interrupted"); m != nil {
			return "execution_interrupted", m
		}
		return "execution_interrupted", map[string]any{
			"prompt_id": rec.ID, "node_id": nil, "node_type": nil, "executed": []string{}, "timestamp": ts}
	}
}

// synthesizedError is an execution_error payload for a job that failed
// without a ComfyUI error (the agent gave up, the broker timed it out): the
// frontend shows exception_message in its error dialog.
func synthesizedError(rec *wire.JobRecord) map[string]any {
	reason := rec.Reason
	if reason == "" {
		reason = "the job failed"
	}
	return map[string]any{
		"prompt_id": rec.ID, "node_id": "", "node_type": "", "executed": []string{},
		"exception_message": reason, "exception_type": "AtelierError", "traceback": []string{},
		"current_inputs": map[string]any{}, "current_outputs": []string{},
		"timestamp": millis(rec.FinishedAt),
	}
}

// findMessage returns the data of the last [event, data] pair of type typ.
func findMessage(msgs []json.RawMessage, typ string) json.RawMessage {
	for i := len(msgs) - 1; i >= 0; i-- {
		var pair []json.RawMessage
		if json.Unmarshal(msgs[i], &pair) != nil || len(pair) != 2 {
			continue
		}
		var t string
		if json.Unmarshal(pair[0], &t) == nil && t == typ {
			return pair[1]
		}
	}
	return nil
}

func millis(t time.Time) int64 {
	if t.IsZero() {
		t = time.Now()
	}
	return t.UnixMilli()
}

// broadcastStatusLocked sends status (without sid) to every socket when the
// participant's queue_remaining changed, or always when force is set (the
// status of §3.5 step 6 between a job's final message and executing null).
func (v *userView) broadcastStatusLocked(force bool) {
	if !force && v.pending == v.reported {
		return
	}
	v.reported = v.pending
	f := statusFrame(v.pending, "")
	for s := range v.sockets {
		v.sendLocked(s, f)
	}
}

// lookUp reads the record of a job whose live events came before the JOBS
// watch delivered it, and applies it. An agent runs a job the moment the
// broker answers its claim, so its first events can overtake the job's
// queued and running changes; applied first, the record sends what
// ComfyUI sends before a prompt's events (the status with the new queue
// length, execution_start), and the watch's copies are then dropped as
// old (jobEntry.rev). Runs on the loop, without the view's lock.
func (v *userView) lookUp(jobID string) {
	if !v.loaded || v.kv == nil {
		return
	}
	v.mu.Lock()
	_, known := v.jobs[jobID]
	v.mu.Unlock()
	if known {
		return
	}
	if _, done := v.looked[jobID]; done {
		return
	}
	if len(v.looked) >= maxEarlyNodes {
		clear(v.looked)
	}
	v.looked[jobID] = struct{}{}
	ctx, cancel := context.WithTimeout(v.ctx, v.p.cfg.RequestTimeout)
	defer cancel()
	e, err := v.kv.Get(ctx, v.user+"."+jobID)
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			v.p.log.Debug().Err(err).Str("user", v.user).Str("job", jobID).Msg("reading the record of a job whose events came first")
		}
		return
	}
	v.applyEntry(e, false)
}

// applyEvent relays one live event to the socket it is for.
func (v *userView) applyEvent(m *nats.Msg) {
	// evt.<agent>.<user>.<job>
	tok := strings.Split(m.Subject, ".")
	if len(tok) != 4 || tok[2] != v.user {
		return
	}
	agent, jobID := tok[1], tok[3]
	var ev wire.Event
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		v.p.log.Debug().Err(err).Str("subject", m.Subject).Msg("undecodable event dropped")
		return
	}
	if ev.JobID != "" && ev.JobID != jobID {
		return
	}
	switch ev.Type {
	case "status", "feature_flags", "logs":
		// The agent's ComfyUI queue is not the participant's.
		return
	}

	v.lookUp(jobID)

	v.mu.Lock()
	defer v.mu.Unlock()
	entry := v.jobs[jobID]
	clientID := ev.ClientID
	if entry != nil {
		rec := &entry.rec
		if rec.State.Final() {
			return // the job is over; its final messages went out already
		}
		if rec.State == wire.StateRunning {
			// Only the current attempt speaks: a stale agent may still
			// be relaying after the job moved on.
			if rec.Agent != "" && rec.Agent != agent {
				return
			}
			if rec.Attempt != 0 && ev.Attempt != 0 && rec.Attempt != ev.Attempt {
				return
			}
		}
		if clientID == "" {
			clientID = rec.ClientID
		}
	}

	var node *string
	if ev.Type == "executing" || ev.Type == "executed" {
		var d struct {
			Node        *string `json:"node"`
			DisplayNode *string `json:"display_node"`
		}
		if json.Unmarshal(ev.Data, &d) != nil {
			return
		}
		node = d.Node
		if ev.Type == "executing" {
			if d.Node == nil {
				// "executing null" ends the prompt: it is sent after the
				// final message and status, from the job's final state.
				return
			}
			n := *d.Node
			if d.DisplayNode != nil {
				n = *d.DisplayNode
			}
			if entry != nil {
				entry.execNode = n
			} else {
				if _, known := v.earlyNode[jobID]; !known && len(v.earlyNode) >= maxEarlyNodes {
					for k := range v.earlyNode { // drop an arbitrary entry
						delete(v.earlyNode, k)
						break
					}
				}
				v.earlyNode[jobID] = n
			}
		}
	}

	if clientID == "" {
		// ComfyUI broadcasts these when a prompt has no client; the rest
		// goes nowhere (comfyui-api.md §3.2).
		switch ev.Type {
		case "progress", "progress_state", "execution_interrupted", "":
			for s := range v.sockets {
				v.sendEventLocked(s, jobID, &ev, node)
			}
		}
		return
	}
	if s := v.bySID[clientID]; s != nil {
		v.sendEventLocked(s, jobID, &ev, node)
	}
}

func (v *userView) sendEventLocked(s *socket, jobID string, ev *wire.Event, node *string) {
	if ev.Type == "" {
		if len(ev.Binary) == 0 {
			return
		}
		if b := adaptBinary(ev.Binary, s.previewMetadata.Load()); b != nil {
			v.sendLocked(s, frame{binary: true, data: b})
		}
		return
	}
	st := s.track(jobID)
	switch ev.Type {
	case "execution_start":
		if st.start {
			return
		}
		st.start = true
	case "execution_success", "execution_error", "execution_interrupted":
		if st.terminal {
			return
		}
		st.terminal = true
	case "executed":
		if node != nil {
			if _, done := st.executed[*node]; done {
				return
			}
			st.executed[*node] = struct{}{}
		}
	}
	data := ev.Data
	if len(data) == 0 {
		data = json.RawMessage("{}")
	}
	v.sendLocked(s, textFrame(ev.Type, data))
}

// submitTTL bounds how long a published prompt counts against the cap
// before its record shows up: the broker takes a prompt in within
// milliseconds, unless it dropped it.
const submitTTL = 30 * time.Second

// reserveSubmit counts prompt id against the participant's cap on
// unfinished prompts (max, 0: none) before it is published; false when the
// participant is at the cap. Counting the ones still on their way keeps
// two prompts sent at once from both passing.
func (v *userView) reserveSubmit(id string, max int) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := time.Now()
	for k, at := range v.submitting {
		if now.Sub(at) > submitTTL {
			delete(v.submitting, k)
		}
	}
	if max > 0 && v.pending+len(v.submitting) >= max {
		return false
	}
	v.submitting[id] = now
	return true
}

// releaseSubmit forgets a reservation whose prompt was not published.
func (v *userView) releaseSubmit(id string) {
	v.mu.Lock()
	delete(v.submitting, id)
	v.mu.Unlock()
}

// queueRemaining is ComfyUI's queue_remaining for the participant.
func (v *userView) queueRemaining() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.pending
}

// records returns copies of the records whose state matches keep.
func (v *userView) records(keep func(wire.JobState) bool) []wire.JobRecord {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]wire.JobRecord, 0, len(v.jobs))
	for _, e := range v.jobs {
		if keep(e.rec.State) {
			out = append(out, e.rec)
		}
	}
	return out
}

// record returns the job's record, if known.
func (v *userView) record(id string) (wire.JobRecord, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	e, ok := v.jobs[id]
	if !ok {
		return wire.JobRecord{}, false
	}
	return e.rec, true
}

// withoutUserPaths takes the agent's per-user folder ("<user>/", which it
// puts in front of every file name and filename_prefix on the GPU box) out
// of what ComfyUI reported about a failed run, so that the participant sees
// their own names, as in the prompt they sent: the inputs of the failing
// node (current_inputs) and the exception text, in the execution_error
// payload and in the history's status messages.
func withoutUserPaths(rec *wire.JobRecord) {
	prefix := rec.User + "/"
	clean := func(raw json.RawMessage) json.RawMessage {
		if len(raw) == 0 || !strings.Contains(string(raw), prefix) {
			return raw
		}
		var m map[string]json.RawMessage
		if json.Unmarshal(raw, &m) != nil {
			return raw
		}
		for _, k := range []string{"current_inputs", "exception_message"} {
			if v, ok := m[k]; ok {
				m[k] = stripPrefix(v, prefix)
			}
		}
		b, err := marshalJSON(m)
		if err != nil {
			return raw
		}
		return b
	}
	rec.Error = clean(rec.Error)
	for i, msg := range rec.Messages {
		var pair []json.RawMessage
		if !strings.Contains(string(msg), prefix) || json.Unmarshal(msg, &pair) != nil || len(pair) != 2 {
			continue
		}
		var typ string
		if json.Unmarshal(pair[0], &typ) != nil || typ != "execution_error" {
			continue
		}
		if b, err := marshalJSON([]json.RawMessage{pair[0], clean(pair[1])}); err == nil {
			rec.Messages[i] = b
		}
	}
}

// stripPrefix removes prefix where a path starts in the strings of v (a
// whole string, or a path after a space, quote or colon in a message).
func stripPrefix(v json.RawMessage, prefix string) json.RawMessage {
	var x any
	if json.Unmarshal(v, &x) != nil {
		return v
	}
	var walk func(any) any
	walk = func(x any) any {
		switch t := x.(type) {
		case string:
			t = strings.TrimPrefix(t, prefix)
			for _, sep := range []string{" ", "'", "\"", ":", "("} {
				t = strings.ReplaceAll(t, sep+prefix, sep)
			}
			return t
		case []any:
			for i := range t {
				t[i] = walk(t[i])
			}
		case map[string]any:
			for k := range t {
				t[k] = walk(t[k])
			}
		}
		return x
	}
	b, err := marshalJSON(walk(x))
	if err != nil {
		return v
	}
	return b
}
