package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/atelier-run/atelier/pkg/brokerapi"
	"github.com/atelier-run/atelier/pkg/wire"
)

func (d *Dashboard) handleSnapshot(w http.ResponseWriter, r *http.Request, _ *session) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(d.model.snapshot())
}

// handleEvents streams snapshots as Server-Sent Events: one at once, then
// one after each change (at most every PushInterval) and at least every
// second, so heartbeat ages and waiting times tick.
func (d *Dashboard) handleEvents(w http.ResponseWriter, r *http.Request, _ *session) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	ctx := r.Context()
	// A stream ends with the dashboard (so the broker's HTTP shutdown does
	// not wait on open browsers) and after a while anyway: EventSource
	// reconnects by itself, and the session is checked again.
	limit := time.NewTimer(5 * time.Minute)
	defer limit.Stop()
	done := d.done()
	_, _ = fmt.Fprint(w, "retry: 1000\n\n")
	var version uint64
	for {
		data, err := json.Marshal(d.model.snapshot())
		if err != nil {
			return
		}
		// The session may have ended (logout, demotion) while streaming.
		if d.sessionOf(r) == nil {
			_, _ = fmt.Fprint(w, "event: logout\ndata: {}\n\n")
			_ = rc.Flush()
			return
		}
		if _, err := fmt.Fprintf(w, "data: %s\n\n", data); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		var changed <-chan struct{}
		changed, version = d.model.wait(version)
		select {
		case <-ctx.Done():
			return
		case <-done:
			return
		case <-limit.C:
			return
		case <-changed:
		case <-time.After(time.Second):
		}
		// Coalesce a burst of changes into one push.
		select {
		case <-ctx.Done():
			return
		case <-time.After(d.cfg.PushInterval):
		}
		_, version = d.model.wait(version)
	}
}

// actionRequest is what the page posts; each operation uses the fields it
// needs.
type actionRequest struct {
	User   string   `json:"user"`
	JobID  string   `json:"job_id"`
	JobIDs []string `json:"job_ids"`
	Agent  string   `json:"agent"`
	Policy string   `json:"policy"`
}

// actionReply is what the page gets back.
type actionReply struct {
	OK       bool     `json:"ok"`
	Error    string   `json:"error,omitempty"`
	Affected []string `json:"affected,omitempty"`
}

// handleAction forwards an instructor's action to the broker API as that
// instructor: the broker checks the role and applies it.
func (d *Dashboard) handleAction(w http.ResponseWriter, r *http.Request, se *session) {
	var in actionRequest
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		writeReply(w, http.StatusBadRequest, actionReply{Error: "bad request: " + err.Error()})
		return
	}
	op := r.PathValue("op")
	act, status, problem := actionFor(op, se.caller(), in)
	if act == nil {
		writeReply(w, status, actionReply{Error: problem})
		return
	}
	api, err := d.client(r)
	if err != nil {
		writeReply(w, http.StatusServiceUnavailable, actionReply{Error: err.Error()})
		return
	}
	affected, err := act(r.Context(), api)
	d.log.Info().Str("user", se.user).Str("op", op).Str("job", in.JobID).Str("agent", in.Agent).Err(err).Msg("dashboard: action")
	var refusal *brokerapi.APIError
	switch {
	case errors.As(err, &refusal):
		code := http.StatusBadRequest
		switch {
		case errors.Is(err, brokerapi.ErrForbidden):
			code = http.StatusForbidden
		case errors.Is(err, brokerapi.ErrNotFound):
			code = http.StatusNotFound
		}
		writeReply(w, code, actionReply{Error: refusal.Description})
		return
	case errors.Is(err, brokerapi.ErrUnavailable):
		writeReply(w, http.StatusServiceUnavailable, actionReply{Error: "the broker API is not available (" + err.Error() + ")"})
		return
	case err != nil:
		writeReply(w, http.StatusBadGateway, actionReply{Error: err.Error()})
		return
	}
	d.askRefresh()
	writeReply(w, http.StatusOK, actionReply{OK: true, Affected: affected})
}

// action is one broker API call the page asked for; it returns the jobs
// it affected (cancel).
type action func(ctx context.Context, api *brokerapi.Client) (affected []string, err error)

// actionFor checks the page's request for op and returns its call, or
// the status and reason of its refusal.
func actionFor(op string, caller wire.Caller, in actionRequest) (act action, status int, problem string) {
	none := func(err error) ([]string, error) { return nil, err }
	switch op {
	case wire.OpPause:
		return func(ctx context.Context, api *brokerapi.Client) ([]string, error) {
			return none(api.Pause(ctx, wire.PauseRequest{Caller: caller}))
		}, 0, ""
	case wire.OpResume:
		return func(ctx context.Context, api *brokerapi.Client) ([]string, error) {
			return none(api.Resume(ctx, wire.PauseRequest{Caller: caller}))
		}, 0, ""
	case wire.OpPolicy:
		switch in.Policy {
		case "round-robin", "fifo", "priority":
		default:
			return nil, http.StatusBadRequest, "policy must be round-robin, fifo or priority"
		}
		return func(ctx context.Context, api *brokerapi.Client) ([]string, error) {
			return none(api.SetPolicy(ctx, wire.PolicyRequest{Caller: caller, Policy: in.Policy}))
		}, 0, ""
	case wire.OpBump:
		if !validTokens(in.User, in.JobID) {
			return nil, http.StatusBadRequest, "bump needs a user and a job id"
		}
		return func(ctx context.Context, api *brokerapi.Client) ([]string, error) {
			return none(api.Bump(ctx, wire.BumpRequest{Caller: caller, User: in.User, JobID: in.JobID}))
		}, 0, ""
	case wire.OpCancel:
		ids := in.JobIDs
		if in.JobID != "" {
			ids = append(ids, in.JobID)
		}
		if len(ids) == 0 || len(ids) > 1000 || !validTokens(append([]string{in.User}, ids...)...) {
			return nil, http.StatusBadRequest, "cancel needs a user and job ids"
		}
		return func(ctx context.Context, api *brokerapi.Client) ([]string, error) {
			return api.Cancel(ctx, wire.CancelRequest{Caller: caller, User: in.User, JobIDs: ids})
		}, 0, ""
	case wire.OpDrain, wire.OpUndrain:
		if !validTokens(in.Agent) {
			return nil, http.StatusBadRequest, "drain needs an agent"
		}
		call := (*brokerapi.Client).Drain
		if op == wire.OpUndrain {
			call = (*brokerapi.Client).Undrain
		}
		return func(ctx context.Context, api *brokerapi.Client) ([]string, error) {
			return none(call(api, ctx, wire.DrainRequest{Caller: caller, Agent: in.Agent}))
		}, 0, ""
	}
	return nil, http.StatusNotFound, "unknown action " + op
}

func validTokens(ss ...string) bool {
	for _, s := range ss {
		if wire.ValidateToken("name", s) != nil {
			return false
		}
	}
	return true
}

func writeReply(w http.ResponseWriter, code int, v actionReply) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
