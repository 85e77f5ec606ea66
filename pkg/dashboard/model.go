package dashboard

import (
	"encoding/json"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
)

// model is the dashboard's picture, fed by the watchers and read by the
// HTTP handlers. Everything in it is guarded by mu.
type model struct {
	cfg *Config

	mu sync.Mutex
	// version grows with every change; changed is closed (and replaced)
	// on every change, so pushers wait on it instead of polling.
	version uint64
	changed chan struct{}

	jobs     map[string]*jobEntry // JOBS key → unfinished job
	recent   []*jobEntry          // finished jobs, newest last, bounded
	failed   []*jobEntry          // failed jobs, newest last, bounded
	finished map[string]bool      // JOBS keys of finished jobs already counted
	perUser  map[string]*[2]int   // user → {succeeded, failed} in the history
	hourly   map[int64]*HourCount // unix hour → finished in that hour
	progress map[string]*Progress // job id → live progress
	// lastHour are the finish times of the jobs that succeeded or failed
	// in the last hour (pruned as they age), for the current throughput.
	lastHour []finishMark

	agents map[string]*agentEntry

	depth []DepthPoint
	// depthVersion grows with each change of depth (what saveDepth
	// compares).
	depthVersion uint64
	api          bool
	paused       bool
	policy       string
	positions    map[string]int // job id → position, from the broker API
	catalogs     int
	live         map[string]bool // agents the broker counts as live; nil: unknown
}

type jobEntry struct {
	rec  wire.JobRecord
	view []OutputRef
	err  string
}

type finishMark struct {
	at     time.Time
	failed bool
}

type agentEntry struct {
	hb   wire.Heartbeat
	seen time.Time
}

func newModel(cfg *Config) *model {
	return &model{
		cfg: cfg, changed: make(chan struct{}),
		jobs: map[string]*jobEntry{}, finished: map[string]bool{}, perUser: map[string]*[2]int{},
		hourly: map[int64]*HourCount{}, progress: map[string]*Progress{}, agents: map[string]*agentEntry{},
		positions: map[string]int{}, catalogs: -1,
	}
}

// touch records a change; callers hold mu.
func (m *model) touch() {
	m.version++
	close(m.changed)
	m.changed = make(chan struct{})
}

// wait returns a channel closed at the next change after version v (at
// once if there was one already), and the current version.
func (m *model) wait(v uint64) (<-chan struct{}, uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.version != v {
		c := make(chan struct{})
		close(c)
		return c, m.version
	}
	return m.changed, m.version
}

// putJob applies a JOBS entry.
func (m *model) putJob(rec wire.JobRecord) {
	// The prompt can be megabytes and the dashboard never shows it.
	rec.Prompt, rec.ExtraData, rec.Messages, rec.Meta, rec.Inputs = nil, nil, nil, nil, nil
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.touch()
	key := rec.Key()
	e := &jobEntry{rec: rec, view: outputRefs(rec.Outputs), err: errorText(rec)}
	if !rec.State.Final() {
		m.jobs[key] = e
		if rec.State != wire.StateRunning {
			delete(m.progress, rec.ID)
		}
		m.sampleDepthLocked()
		return
	}
	delete(m.jobs, key)
	delete(m.progress, rec.ID)
	delete(m.positions, rec.ID)
	m.sampleDepthLocked()
	if m.finished[key] {
		return // seen again (a watcher restart): count it once
	}
	m.finished[key] = true
	m.recent = appendBounded(m.recent, e, m.cfg.RecentJobs)
	u := m.perUser[rec.User]
	if u == nil {
		u = &[2]int{}
		m.perUser[rec.User] = u
	}
	switch rec.State {
	case wire.StateSucceeded:
		u[0]++
	case wire.StateFailed:
		u[1]++
		m.failed = appendBounded(m.failed, e, m.cfg.FailedJobs)
	}
	if rec.State == wire.StateSucceeded || rec.State == wire.StateFailed {
		at := rec.FinishedAt
		if at.IsZero() {
			at = m.cfg.Now()
		}
		m.lastHour = append(m.lastHour, finishMark{at: at, failed: rec.State == wire.StateFailed})
		m.pruneLastHourLocked()
		h := at.Truncate(time.Hour)
		c := m.hourly[h.Unix()]
		if c == nil {
			c = &HourCount{Hour: h.UTC()}
			m.hourly[h.Unix()] = c
		}
		if rec.State == wire.StateSucceeded {
			c.Succeeded++
		} else {
			c.Failed++
		}
	}
}

// deleteJob applies a deleted JOBS key (a job forgotten from the history).
func (m *model) deleteJob(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.touch()
	if e := m.jobs[key]; e != nil {
		delete(m.progress, e.rec.ID)
	}
	delete(m.jobs, key)
	drop := func(list []*jobEntry) []*jobEntry {
		out := list[:0]
		for _, e := range list {
			if e.rec.Key() != key {
				out = append(out, e)
			}
		}
		return out
	}
	m.recent, m.failed = drop(m.recent), drop(m.failed)
	m.sampleDepthLocked()
}

func appendBounded(list []*jobEntry, e *jobEntry, n int) []*jobEntry {
	list = append(list, e)
	if len(list) > n {
		list = append(list[:0], list[len(list)-n:]...)
	}
	return list
}

// putAgent applies an AGENTS entry; at is when the broker stored it.
func (m *model) putAgent(hb wire.Heartbeat, at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.touch()
	m.agents[hb.Agent] = &agentEntry{hb: hb, seen: at}
}

func (m *model) deleteAgent(agent string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.touch()
	delete(m.agents, agent)
}

// event applies a live event of agent's job; only the job's current
// attempt on that agent counts, as the proxy does.
func (m *model) event(agent, user, job string, ev wire.Event) {
	if ev.Type != "progress" && ev.Type != "executing" {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.jobs[wire.JobKey(user, job)]
	if e == nil || e.rec.State != wire.StateRunning || e.rec.Agent != agent || (ev.Attempt != 0 && ev.Attempt != e.rec.Attempt) {
		return
	}
	p := m.progress[job]
	if p == nil {
		p = &Progress{}
		m.progress[job] = p
	}
	switch ev.Type {
	case "progress":
		var d struct {
			Value int    `json:"value"`
			Max   int    `json:"max"`
			Node  string `json:"node"`
		}
		if json.Unmarshal(ev.Data, &d) != nil {
			return
		}
		p.Value, p.Max = d.Value, d.Max
		if d.Node != "" {
			p.Node = d.Node
		}
	case "executing":
		var d struct {
			Node *string `json:"node"`
		}
		if json.Unmarshal(ev.Data, &d) != nil || d.Node == nil {
			return
		}
		if *d.Node != p.Node {
			p.Node, p.Value, p.Max = *d.Node, 0, 0
		}
	}
	m.touch()
}

// setQueues applies the broker API's answer (nil: the API did not answer).
func (m *model) setQueues(q *wire.QueuesReply) {
	m.mu.Lock()
	defer m.mu.Unlock()
	api, paused, policy := false, false, ""
	positions := map[string]int{}
	if q != nil {
		api, paused, policy = true, q.Paused, q.Policy
		for _, j := range q.Jobs {
			if j.Position > 0 {
				positions[j.ID] = j.Position
			}
		}
	}
	if api == m.api && paused == m.paused && policy == m.policy && equalPositions(positions, m.positions) {
		return
	}
	m.api, m.paused, m.policy, m.positions = api, paused, policy, positions
	m.touch()
}

func equalPositions(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// setLive applies the broker's own list of live agents and catalogs.
func (m *model) setLive(agents []string, catalogs int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	live := map[string]bool{}
	for _, a := range agents {
		live[a] = true
	}
	m.live, m.catalogs = live, catalogs
}

// sampleDepthLocked appends the current depth to the series, merging
// points less than a second apart so a burst of submissions is one step.
func (m *model) sampleDepthLocked() {
	var waiting, running int
	for _, e := range m.jobs {
		if e.rec.State == wire.StateRunning {
			running++
		} else {
			waiting++
		}
	}
	now := m.cfg.Now().UnixMilli()
	p := DepthPoint{T: now, Waiting: waiting, Running: running}
	n := len(m.depth)
	if n > 0 && m.depth[n-1].Waiting == waiting && m.depth[n-1].Running == running {
		return
	}
	m.depthVersion++
	if n > 1 && now-m.depth[n-2].T < 1000 {
		m.depth[n-1] = p
		return
	}
	m.depth = append(m.depth, p)
	if len(m.depth) > m.cfg.DepthPoints {
		m.thinDepthLocked()
	}
}

// thinDepthLocked thins the older half of the series: every other point
// goes, the recent half keeps its detail.
func (m *model) thinDepthLocked() {
	half := len(m.depth) / 2
	thin := m.depth[:0:0]
	for i := 0; i < half; i += 2 {
		thin = append(thin, m.depth[i])
	}
	m.depth = append(thin, m.depth[half:]...)
}

// snapshot builds the picture at now.
func (m *model) snapshot() Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.cfg.Now()
	s := Snapshot{At: now.UTC(), API: m.api, Paused: m.paused, Policy: m.policy, Catalogs: m.catalogs}
	t := newTally(m.perUser)
	s.Queue = m.queueLocked(&s.Totals, t, now)
	s.Agents = m.agentsLocked(&s.Totals, t, now)
	s.Pools, s.Users = t.lists()
	for i := len(m.recent) - 1; i >= 0; i-- {
		s.Recent = append(s.Recent, m.jobView(m.recent[i], now))
	}
	for i := len(m.failed) - 1; i >= 0; i-- {
		s.Failed = append(s.Failed, m.jobView(m.failed[i], now))
	}
	s.Depth = m.depthLocked(now)
	s.Hourly = m.hourlyLocked(now)
	m.pruneLastHourLocked()
	for _, f := range m.lastHour {
		if f.failed {
			s.Totals.FailedLastHour++
		} else {
			s.Totals.DoneLastHour++
		}
	}
	s.sort()
	return s
}

// tally counts jobs and slots per pool and per participant while the
// snapshot is built.
type tally struct {
	pools   map[string]*PoolDepth
	users   map[string]*UserDepth
	perUser map[string]*[2]int
}

// newTally starts with every participant who has finished jobs.
func newTally(perUser map[string]*[2]int) *tally {
	t := &tally{pools: map[string]*PoolDepth{}, users: map[string]*UserDepth{}, perUser: perUser}
	for u := range perUser {
		t.user(u)
	}
	return t
}

func (t *tally) pool(p string) *PoolDepth {
	if t.pools[p] == nil {
		t.pools[p] = &PoolDepth{Pool: p}
	}
	return t.pools[p]
}

func (t *tally) user(u string) *UserDepth {
	if t.users[u] == nil {
		t.users[u] = &UserDepth{User: u}
		if c := t.perUser[u]; c != nil {
			t.users[u].Succeeded, t.users[u].Failed = c[0], c[1]
		}
	}
	return t.users[u]
}

func (t *tally) lists() (pools []PoolDepth, users []UserDepth) {
	for _, p := range t.pools {
		pools = append(pools, *p)
	}
	for _, u := range t.users {
		users = append(users, *u)
	}
	return pools, users
}

// queueLocked lists the unfinished jobs in dispatch order (at most
// QueueRows) and counts them.
func (m *model) queueLocked(tot *Totals, t *tally, now time.Time) []JobView {
	queue := make([]JobView, 0, len(m.jobs))
	for _, e := range m.jobs {
		r := e.rec
		p, u := t.pool(r.Pool), t.user(r.User)
		switch r.State {
		case wire.StateQueued:
			p.Queued++
			u.Queued++
			tot.Queued++
		case wire.StateDispatched:
			p.Dispatched++
			u.Dispatched++
			tot.Dispatched++
		case wire.StateRunning:
			p.Running++
			u.Running++
			tot.Running++
		}
		queue = append(queue, m.jobView(e, now))
	}
	sort.Slice(queue, func(i, j int) bool { return queueLess(queue[i], queue[j]) })
	if len(queue) > m.cfg.QueueRows {
		queue = queue[:m.cfg.QueueRows]
	}
	return queue
}

// agentsLocked lists the agents with their slots and live progress, and
// counts the slots of those not lost. An agent silent for twenty times
// AgentLostAfter is long gone and no longer listed.
func (m *model) agentsLocked(tot *Totals, t *tally, now time.Time) []AgentView {
	var agents []AgentView
	for _, a := range m.agents {
		hb := a.hb
		age := now.Sub(a.seen)
		if age > 20*m.cfg.AgentLostAfter {
			continue
		}
		v := AgentView{Agent: hb.Agent, Pool: hb.Pool, Version: hb.Version, Draining: hb.Draining,
			HeartbeatAge: max(0, age.Seconds()), StartedAt: hb.StartedAt, ScratchBytes: hb.ScratchBytes,
			Lost: age > m.cfg.AgentLostAfter || (m.live != nil && !m.live[hb.Agent] && age > time.Second)}
		p := t.pool(hb.Pool)
		for _, sl := range hb.Slots {
			sv := slotView(sl)
			if pr := m.progress[sl.JobID]; sl.JobID != "" && pr != nil {
				cp := *pr
				sv.Progress = &cp
			}
			v.Slots = append(v.Slots, sv)
			if !v.Lost {
				countSlot(p, tot, sl)
			}
		}
		if !v.Lost {
			tot.Agents++
		}
		agents = append(agents, v)
	}
	return agents
}

// depthLocked is the depth series with a last point at now.
func (m *model) depthLocked(now time.Time) []DepthPoint {
	depth := append(append([]DepthPoint(nil), m.depth...), DepthPoint{T: now.UnixMilli()})
	if n := len(m.depth); n > 0 {
		last := m.depth[n-1]
		depth[n] = DepthPoint{T: now.UnixMilli(), Waiting: last.Waiting, Running: last.Running}
	}
	return depth
}

// hourlyLocked is the last 24 hours' counts, oldest first, with empty
// hours filled in.
func (m *model) hourlyLocked(now time.Time) []HourCount {
	hour := now.Truncate(time.Hour)
	hourly := make([]HourCount, 0, 24)
	for i := 23; i >= 0; i-- {
		h := hour.Add(-time.Duration(i) * time.Hour)
		c := HourCount{Hour: h.UTC()}
		if hc := m.hourly[h.Unix()]; hc != nil {
			c = *hc
		}
		hourly = append(hourly, c)
	}
	return hourly
}

// pruneLastHourLocked drops finish marks older than an hour. Marks come
// roughly in finish order (the history replay is in key order, so not
// strictly): the scan keeps any younger mark wherever it is.
func (m *model) pruneLastHourLocked() {
	cut := m.cfg.Now().Add(-time.Hour)
	out := m.lastHour[:0]
	for _, f := range m.lastHour {
		if f.at.After(cut) {
			out = append(out, f)
		}
	}
	m.lastHour = out
}

func (m *model) jobView(e *jobEntry, now time.Time) JobView {
	r := e.rec
	v := JobView{ID: r.ID, User: r.User, Pool: r.Pool, State: r.State, Number: r.Number, Bumped: r.Bumped,
		Attempt: r.Attempt, Agent: r.Agent, Slot: r.Slot, CreatedAt: r.CreatedAt, StartedAt: r.StartedAt,
		FinishedAt: r.FinishedAt, Outputs: e.view, Error: e.err, Position: m.positions[r.ID]}
	end := now
	if !r.FinishedAt.IsZero() {
		end = r.FinishedAt
	}
	if !r.StartedAt.IsZero() {
		v.WaitS = r.StartedAt.Sub(r.CreatedAt).Seconds()
		v.RunS = end.Sub(r.StartedAt).Seconds()
	} else {
		v.WaitS = end.Sub(r.CreatedAt).Seconds()
	}
	v.WaitS, v.RunS = max(0, v.WaitS), max(0, v.RunS)
	if p := m.progress[r.ID]; p != nil && r.State == wire.StateRunning {
		cp := *p
		v.Progress = &cp
	}
	return v
}

// queueLess orders unfinished jobs: running, then dispatched, then queued
// by the broker's position (bumped first, then submission order when the
// broker API did not say).
func queueLess(a, b JobView) bool {
	rank := func(s wire.JobState) int {
		switch s {
		case wire.StateRunning:
			return 0
		case wire.StateDispatched:
			return 1
		}
		return 2
	}
	if rank(a.State) != rank(b.State) {
		return rank(a.State) < rank(b.State)
	}
	if (a.Position > 0) != (b.Position > 0) {
		return a.Position > 0
	}
	if a.Position != b.Position {
		return a.Position < b.Position
	}
	if a.Bumped != b.Bumped {
		return a.Bumped
	}
	return a.Number < b.Number
}

// outputRefs lists the files of a job's outputs: every list of
// {filename, subfolder, type} objects in a node's output.
func outputRefs(outputs map[string]json.RawMessage) []OutputRef {
	nodes := make([]string, 0, len(outputs))
	for id := range outputs {
		nodes = append(nodes, id)
	}
	sort.Strings(nodes)
	var refs []OutputRef
	for _, id := range nodes {
		var node map[string]json.RawMessage
		if json.Unmarshal(outputs[id], &node) != nil {
			continue
		}
		for _, v := range node {
			var files []OutputRef
			if json.Unmarshal(v, &files) != nil {
				continue
			}
			for _, f := range files {
				if f.Filename == "" {
					continue
				}
				if f.Type == "" {
					f.Type = "output"
				}
				f.Image = isImage(f.Filename)
				refs = append(refs, f)
			}
		}
	}
	return refs
}

func isImage(name string) bool {
	switch strings.ToLower(path.Ext(name)) {
	case ".png", ".jpg", ".jpeg", ".webp", ".gif":
		return true
	}
	return false
}

// errorText is the line an instructor needs: ComfyUI's exception (type and
// message, with the node) or the broker's reason.
func errorText(r wire.JobRecord) string {
	if len(r.Error) > 0 {
		var e struct {
			ExceptionType    string `json:"exception_type"`
			ExceptionMessage string `json:"exception_message"`
			NodeType         string `json:"node_type"`
			NodeID           string `json:"node_id"`
		}
		if json.Unmarshal(r.Error, &e) == nil && (e.ExceptionMessage != "" || e.ExceptionType != "") {
			s := strings.TrimSpace(e.ExceptionType + ": " + e.ExceptionMessage)
			s = strings.TrimPrefix(s, ": ")
			if e.NodeType != "" {
				s += " (node " + e.NodeID + " " + e.NodeType + ")"
			}
			return s
		}
	}
	return r.Reason
}
