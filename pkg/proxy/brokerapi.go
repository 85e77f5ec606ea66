package proxy

import (
	"errors"
	"io"
	"net/http"

	"github.com/atelier-run/atelier/pkg/brokerapi"
	"github.com/atelier-run/atelier/pkg/pyjson"
	"github.com/atelier-run/atelier/pkg/wire"
)

// broker is the broker API client on the proxy's connection, each request
// bounded by RequestTimeout.
func (p *Proxy) broker() *brokerapi.Client {
	return brokerapi.New(brokerapi.NATSTransport{Conn: p.cfg.Conn}, brokerapi.WithTimeout(p.cfg.RequestTimeout))
}

// refused reports whether err is the broker's refusal (forbidden,
// not_found, invalid, internal): the request reached the broker, which
// said no.
func refused(err error) bool {
	var ae *brokerapi.APIError
	return errors.As(err, &ae)
}

// caller is the broker API's view of who asks.
func (s session) caller() wire.Caller {
	return wire.Caller{User: s.Caller.ID, Role: wire.Role(s.Caller.Role)}
}

// readOptionalJSON reads a small JSON object body. ComfyUI's handlers call
// await request.json(): an empty or invalid body raises (500), except for
// /interrupt, which treats them as {} (optional = true).
func readJSONBody(w http.ResponseWriter, r *http.Request, optional bool) (pyjson.Object, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		writePlain(w, http.StatusRequestEntityTooLarge, "request body too large")
		return nil, false
	}
	if err := checkJSONDepth(body, maxJSONDepth); err != nil {
		writePlain(w, http.StatusBadRequest, "invalid JSON body: "+err.Error())
		return nil, false
	}
	v, err := pyjson.Decode(body)
	o, isObj := v.(pyjson.Object)
	if err != nil || !isObj {
		if optional {
			return pyjson.Object{}, true
		}
		writePlain(w, http.StatusInternalServerError, "invalid JSON body: want an object")
		return nil, false
	}
	return o, true
}

// idList reads a "delete": [...] list as ComfyUI does (str() of each item).
func idList(o pyjson.Object, key string) ([]string, bool) {
	v, ok := o.Get(key)
	if !ok {
		return nil, true
	}
	list, isList := v.([]any)
	if !isList {
		return nil, false
	}
	ids := make([]string, 0, len(list))
	for _, e := range list {
		ids = append(ids, pyjson.Str(e))
	}
	return ids, true
}

// writeEmpty is aiohttp's web.Response(status=200): no body.
func writeEmpty(w http.ResponseWriter, status int) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(status)
}

// apiFailed answers a broker API failure: a refusal of a participant's own
// request is ComfyUI's silent no-op (unknown ids are ignored there); an
// unreachable broker is 503.
func (p *Proxy) apiFailed(w http.ResponseWriter, r *http.Request, err error) {
	if refused(err) {
		p.log.Debug().Err(err).Str("path", r.URL.Path).Msg("broker API refused")
		writeEmpty(w, http.StatusOK)
		return
	}
	p.unavailable(w, r, err)
}

// handlePostQueue is POST /queue: {"clear": true} cancels the participant's
// pending jobs, {"delete": [ids]} the listed pending ones; running jobs are
// untouched, as in ComfyUI.
func (p *Proxy) handlePostQueue(w http.ResponseWriter, r *http.Request) {
	body, ok := readJSONBody(w, r, false)
	if !ok {
		return
	}
	sess := sessionFrom(r.Context())
	ids, ok := idList(body, "delete")
	if !ok {
		writePlain(w, http.StatusInternalServerError, "invalid delete: want a list of prompt ids")
		return
	}
	if v, ok := body.Get("clear"); ok && pyjson.Truthy(v) {
		req := wire.CancelRequest{Caller: sess.caller(), User: sess.User, AllPending: true, PendingOnly: true}
		if _, err := p.broker().Cancel(r.Context(), req); err != nil && !refused(err) {
			p.unavailable(w, r, err)
			return
		}
	}
	if len(ids) > 0 {
		req := wire.CancelRequest{Caller: sess.caller(), User: sess.User, JobIDs: ids, PendingOnly: true}
		if _, err := p.broker().Cancel(r.Context(), req); err != nil {
			p.apiFailed(w, r, err)
			return
		}
	}
	writeEmpty(w, http.StatusOK)
}

// handleInterrupt is POST /interrupt: with prompt_id, interrupts that job if
// it is this participant's and running; without, whatever of theirs runs.
// Never another participant's: the broker scopes it to User.
func (p *Proxy) handleInterrupt(w http.ResponseWriter, r *http.Request) {
	body, ok := readJSONBody(w, r, true)
	if !ok {
		return
	}
	sess := sessionFrom(r.Context())
	req := wire.InterruptRequest{Caller: sess.caller(), User: sess.User}
	if v, ok := body.Get("prompt_id"); ok && pyjson.Truthy(v) {
		req.JobID = pyjson.Str(v)
	}
	if _, err := p.broker().Interrupt(r.Context(), req); err != nil {
		p.apiFailed(w, r, err)
		return
	}
	writeEmpty(w, http.StatusOK)
}

// handlePostHistory is POST /history: {"clear": true} and/or {"delete":
// [ids]} forget the participant's finished jobs.
func (p *Proxy) handlePostHistory(w http.ResponseWriter, r *http.Request) {
	body, ok := readJSONBody(w, r, false)
	if !ok {
		return
	}
	sess := sessionFrom(r.Context())
	ids, ok := idList(body, "delete")
	if !ok {
		writePlain(w, http.StatusInternalServerError, "invalid delete: want a list of prompt ids")
		return
	}
	clear := false
	if v, ok := body.Get("clear"); ok && pyjson.Truthy(v) {
		clear = true
	}
	if !clear && len(ids) == 0 {
		writeEmpty(w, http.StatusOK)
		return
	}
	req := wire.ForgetRequest{Caller: sess.caller(), User: sess.User, JobIDs: ids, All: clear}
	if _, err := p.broker().Forget(r.Context(), req); err != nil {
		p.apiFailed(w, r, err)
		return
	}
	writeEmpty(w, http.StatusOK)
}
