package metrics

import (
	"encoding/json"

	"github.com/atelier-run/atelier/pkg/wire"
)

// JobChanged implements broker.Observer. It runs on the broker's core
// goroutine, so it only updates counters and a map.
func (m *Metrics) JobChanged(prev wire.JobState, rec wire.JobRecord) {
	key := rec.Key()
	pool := rec.Pool
	m.mu.Lock()
	if rec.State.Final() {
		delete(m.jobs, key)
	} else {
		m.jobs[key] = jobInfo{user: rec.User, pool: pool, state: rec.State}
	}
	m.mu.Unlock()

	if prev == rec.State {
		return // outputs added, or a reload that found nothing new
	}
	// prev "" is a job taken in: new, or replayed from SUBMIT after a
	// broker restart. Only a fresh one counts as submitted.
	if prev == "" {
		if rec.State == wire.StateQueued && rec.Releases == 0 && rec.Attempt == 0 {
			m.submitted.WithLabelValues(pool).Inc()
		}
		return
	}
	switch {
	case rec.State == wire.StateRunning:
		// The wait is measured once, to the first start; a retry's second
		// start would count the first attempt's run as waiting.
		if rec.Attempt == 1 && !rec.StartedAt.IsZero() && !rec.CreatedAt.IsZero() {
			m.wait.WithLabelValues(pool).Observe(nonNegative(rec.StartedAt.Sub(rec.CreatedAt).Seconds()))
		}
	case prev == wire.StateRunning && rec.State == wire.StateDispatched:
		m.retries.WithLabelValues(pool).Inc()
	case rec.State.Final():
		m.finished.WithLabelValues(pool, string(rec.State)).Inc()
		if prev == wire.StateRunning && !rec.StartedAt.IsZero() && !rec.FinishedAt.IsZero() {
			m.run.WithLabelValues(pool, string(rec.State)).Observe(nonNegative(rec.FinishedAt.Sub(rec.StartedAt).Seconds()))
		}
		if rec.State == wire.StateSucceeded {
			if n := countOutputFiles(rec.Outputs); n > 0 {
				m.outputs.WithLabelValues(pool).Add(float64(n))
			}
		}
	}
}

// AgentSeen implements broker.Observer.
func (m *Metrics) AgentSeen(hb wire.Heartbeat) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a := m.agents[hb.Agent]
	if a == nil {
		a = &agentInfo{}
		m.agents[hb.Agent] = a
	}
	a.hb, a.lastSeen, a.lost = hb, m.cfg.Now(), false
}

// AgentLost implements broker.Observer. The agent stays in the metrics
// with atelier_agent_up 0, so an alert on it can fire.
func (m *Metrics) AgentLost(agent string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if a := m.agents[agent]; a != nil {
		a.lost = true
	}
}

// countOutputFiles counts the files in a job's outputs: every list of
// {filename, …} objects in a node's output (images, gifs, video, audio).
func countOutputFiles(outputs map[string]json.RawMessage) int {
	n := 0
	for _, raw := range outputs {
		var node map[string]json.RawMessage
		if json.Unmarshal(raw, &node) != nil {
			continue
		}
		for _, v := range node {
			var files []struct {
				Filename string `json:"filename"`
			}
			if json.Unmarshal(v, &files) != nil {
				continue
			}
			for _, f := range files {
				if f.Filename != "" {
					n++
				}
			}
		}
	}
	return n
}

func nonNegative(f float64) float64 {
	if f < 0 {
		return 0
	}
	return f
}
