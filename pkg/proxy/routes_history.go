package proxy

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"

	"github.com/atelier-run/atelier/pkg/comfyapi"
	"github.com/atelier-run/atelier/pkg/wire"
)

// handleHistory is GET /history?max_items=N&offset=M (comfyui-api.md §2.2):
// the participant's finished jobs keyed by id in completion order.
func (p *Proxy) handleHistory(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	maxItems, ok1 := optionalInt(q.Get("max_items"))
	offset, ok2 := optionalInt(q.Get("offset"))
	if !ok1 || !ok2 {
		// ComfyUI's int() raises on these: 500.
		writePlain(w, http.StatusInternalServerError, "invalid max_items or offset: want integers")
		return
	}
	v, err := p.views.get(r.Context(), sessionFrom(r.Context()).User)
	if err != nil {
		p.unavailable(w, r, err)
		return
	}
	recs := v.records(wire.JobState.Final)
	recs = slices.DeleteFunc(recs, func(rec wire.JobRecord) bool { return !inHistory(&rec) })
	slices.SortFunc(recs, func(a, b wire.JobRecord) int {
		if c := a.FinishedAt.Compare(b.FinishedAt); c != 0 {
			return c
		}
		return compareNumbers(a.Number, b.Number)
	})
	recs = historyWindow(recs, maxItems, offset)
	writeJSONBytes(w, http.StatusOK, historyJSON(recs))
}

// inHistory reports whether a job has a history entry: it finished, and
// not by being taken out of the queue before it ran. In ComfyUI a prompt
// deleted from the queue (POST /queue delete or clear, the jobs API's
// cancel of a pending job) leaves no trace in history or the jobs API.
func inHistory(rec *wire.JobRecord) bool {
	return rec.State.Final() && !(rec.State == wire.StateCancelled && rec.StartedAt.IsZero())
}

// historyWindow applies ComfyUI's max_items/offset rules (-1 = absent):
// max_items alone takes the newest N; offset counts from the oldest.
func historyWindow[T any](items []T, maxItems, offset int) []T {
	if offset >= 0 {
		if offset > len(items) {
			return nil
		}
		items = items[offset:]
		if maxItems >= 0 && maxItems < len(items) {
			items = items[:maxItems]
		}
		return items
	}
	if maxItems >= 0 && maxItems < len(items) {
		items = items[len(items)-maxItems:]
	}
	return items
}

// optionalInt parses an optional integer parameter; -1 when absent.
func optionalInt(s string) (int, bool) {
	if s == "" {
		return -1, true
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, false
	}
	if n < 0 {
		n = -1
	}
	return n, true
}

// handleHistoryItem is GET /history/{id}: {} when the job is unknown, not
// finished, or someone else's (the view holds only this participant's).
func (p *Proxy) handleHistoryItem(w http.ResponseWriter, r *http.Request) {
	v, err := p.views.get(r.Context(), sessionFrom(r.Context()).User)
	if err != nil {
		p.unavailable(w, r, err)
		return
	}
	rec, ok := v.record(r.PathValue("id"))
	if !ok || !inHistory(&rec) {
		writeJSONBytes(w, http.StatusOK, []byte("{}"))
		return
	}
	writeJSONBytes(w, http.StatusOK, historyJSON([]wire.JobRecord{rec}))
}

// historyJSON encodes records as a history object keyed by job id, keeping
// the given order (a Go map would sort the keys).
func historyJSON(recs []wire.JobRecord) []byte {
	buf := []byte{'{'}
	for i := range recs {
		if i > 0 {
			buf = append(buf, ", "...)
		}
		k, _ := json.Marshal(recs[i].ID)
		buf = append(buf, k...)
		buf = append(buf, ": "...)
		b, err := marshalJSON(historyEntry(&recs[i]))
		if err != nil {
			b = []byte("{}")
		}
		buf = append(buf, b...)
	}
	return append(buf, '}')
}

// historyEntry is one ComfyUI history entry (comfyui-api.md §4) built from a
// finished job's record.
func historyEntry(rec *wire.JobRecord) map[string]any {
	outputs := rec.Outputs
	if outputs == nil {
		outputs = map[string]json.RawMessage{}
	}
	meta := rec.Meta
	if meta == nil {
		meta = map[string]json.RawMessage{}
	}
	statusStr := comfyapi.HistoryError
	if rec.State == wire.StateSucceeded {
		statusStr = comfyapi.HistorySuccess
	}
	return map[string]any{
		"prompt":  queueTuple(rec),
		"outputs": outputs,
		"status": map[string]any{
			"status_str": statusStr,
			"completed":  rec.State == wire.StateSucceeded,
			"messages":   historyMessages(rec),
		},
		"meta": meta,
	}
}

// historyMessages are the record's status messages; when the agent recorded
// none (the job never reached ComfyUI, or failed on the Atelier side) they
// are synthesized so the frontend still learns how the job ended.
func historyMessages(rec *wire.JobRecord) []json.RawMessage {
	if len(rec.Messages) > 0 {
		return rec.Messages
	}
	var msgs []json.RawMessage
	add := func(typ string, data any) {
		if b, err := marshalJSON([]any{typ, data}); err == nil {
			msgs = append(msgs, b)
		}
	}
	if !rec.StartedAt.IsZero() {
		add(comfyapi.MsgExecutionStart, map[string]any{"prompt_id": rec.ID, "timestamp": rec.StartedAt.UnixMilli()})
	}
	// Cancelled jobs end with execution_interrupted even if they never
	// ran: that is how newer frontends tell cancelled from failed.
	typ, data := terminalMessage(rec)
	add(typ, data)
	return msgs
}
