package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
)

func (b *Broker) serveHTTP() error {
	mux := b.mux
	mux.HandleFunc("GET /healthz", b.handleHealth)
	mux.HandleFunc("GET /api/status", b.handleStatus)
	mux.HandleFunc("GET /api/admin/usage", b.handleUsage)
	mux.HandleFunc("POST /api/admin/{op}", b.handleAdmin)
	mux.HandleFunc("GET /api/admin/{op}", b.handleAdmin)
	// The instructor's dashboard, when mounted, is the front page.
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/dashboard/", http.StatusFound)
	})
	ln, err := net.Listen("tcp", b.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("broker: listen %s: %w", b.cfg.HTTPAddr, err)
	}
	b.httpLn = ln
	b.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := b.httpSrv.Serve(ln); err != nil && err != http.ErrServerClosed {
			b.log.Error().Err(err).Msg("http server")
		}
	}()
	return nil
}

func (b *Broker) handleHealth(w http.ResponseWriter, r *http.Request) {
	if !b.ready.Load() || !b.nc.IsConnected() {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

// Status is the broker's picture of the workshop, as GET /api/status
// answers it. That route needs no login (health checks, the status
// command without credentials), so without the admin token it leaves out
// who the participants are: Users is empty and slots show no user or job.
type Status struct {
	Queued   map[string]int         `json:"queued"`   // pool → queued jobs
	InFlight map[string]int         `json:"inflight"` // pool → dispatched or running
	Finished map[wire.JobState]int  `json:"finished"` // since the broker started
	Agents   []wire.Heartbeat       `json:"agents"`
	Users    map[string]UserSummary `json:"users"`
	// Participants counts the users with unfinished jobs.
	Participants int    `json:"participants"`
	Catalogs     int    `json:"catalogs"` // agents whose catalog is known
	Paused       bool   `json:"paused"`
	Policy       string `json:"policy"`
}

// UserSummary is one participant's unfinished jobs.
type UserSummary struct {
	Queued  int `json:"queued"`
	Running int `json:"running"`
}

// Status returns the current picture.
func (b *Broker) Status(ctx context.Context) (Status, error) {
	var st Status
	err := b.do(ctx, func() {
		st = Status{
			Queued: map[string]int{}, InFlight: map[string]int{}, Finished: map[wire.JobState]int{}, Users: map[string]UserSummary{},
			Paused: b.state.paused, Policy: string(b.state.sched.Policy()),
		}
		for _, e := range b.state.jobs {
			u := st.Users[e.rec.User]
			switch e.rec.State {
			case wire.StateQueued:
				st.Queued[e.rec.Pool]++
				u.Queued++
			case wire.StateDispatched, wire.StateRunning:
				st.InFlight[e.rec.Pool]++
				u.Running++
			}
			st.Users[e.rec.User] = u
		}
		for k, v := range b.state.counts {
			st.Finished[k] = v
		}
		st.Participants = len(st.Users)
		st.Catalogs = len(b.state.catalogs)
		for _, a := range b.state.agents {
			st.Agents = append(st.Agents, a.hb)
		}
	})
	return st, err
}

func (b *Broker) handleStatus(w http.ResponseWriter, r *http.Request) {
	st, err := b.Status(r.Context())
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	if !b.adminAuthorized(r) {
		st = st.Anonymous()
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(st)
}

// Anonymous is the status without the participants' names: no users, and
// no user or job on the agents' slots.
func (st Status) Anonymous() Status {
	st.Users = nil
	agents := make([]wire.Heartbeat, len(st.Agents))
	for i, hb := range st.Agents {
		slots := make([]wire.SlotStatus, len(hb.Slots))
		for j, sl := range hb.Slots {
			sl.User, sl.JobID = "", ""
			slots[j] = sl
		}
		hb.Slots = slots
		agents[i] = hb
	}
	st.Agents = agents
	return st
}
