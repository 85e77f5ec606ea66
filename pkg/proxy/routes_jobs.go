package proxy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"

	"github.com/atelier-run/atelier/pkg/comfyapi"
	"github.com/atelier-run/atelier/pkg/pyjson"
	"github.com/atelier-run/atelier/pkg/wire"
)

// The jobs API of 2026-era ComfyUI (comfyui-api.md §2.7), which the 1.5x
// frontend uses instead of /queue and /history. It is built from the same
// per-user view of JOBS.

// jobStatus maps a job state to the jobs API's status.
func jobStatus(rec *wire.JobRecord) string {
	switch rec.State {
	case wire.StateQueued, wire.StateDispatched:
		return comfyapi.JobPending
	case wire.StateRunning:
		return comfyapi.JobInProgress
	case wire.StateSucceeded:
		return comfyapi.JobCompleted
	case wire.StateFailed:
		return comfyapi.JobFailed
	}
	return comfyapi.JobCancelled // cancelled, interrupted
}

// jobSummary is one Job of GET /api/jobs; keys with null values are left
// out, as upstream does.
func jobSummary(rec *wire.JobRecord) map[string]any {
	j := map[string]any{
		"id":          rec.ID,
		"status":      jobStatus(rec),
		"priority":    comfyNumber(rec),
		"create_time": rec.CreatedAt.UnixMilli(),
	}
	// The execution times come from the history's status messages in
	// ComfyUI: a job that has not finished has none.
	if rec.State.Final() && !rec.StartedAt.IsZero() {
		j["execution_start_time"] = rec.StartedAt.UnixMilli()
	}
	if rec.State.Final() && !rec.FinishedAt.IsZero() {
		j["execution_end_time"] = rec.FinishedAt.UnixMilli()
	}
	if rec.State == wire.StateFailed {
		_, data := terminalMessage(rec)
		j["execution_error"] = data
	}
	if rec.State.Final() {
		count, previewable := 0, 0
		var preview map[string]any
		nodes := make([]string, 0, len(rec.Outputs))
		for n := range rec.Outputs {
			nodes = append(nodes, n)
		}
		slices.SortFunc(nodes, compareNodeIDs)
		for _, n := range nodes {
			var ui map[string]json.RawMessage
			if json.Unmarshal(rec.Outputs[n], &ui) != nil {
				continue
			}
			for key, raw := range ui {
				var items []json.RawMessage
				if json.Unmarshal(raw, &items) != nil {
					continue
				}
				count += len(items)
				media, ok := comfyapi.PreviewMedia[key]
				if !ok {
					continue
				}
				for _, it := range items {
					var item map[string]any
					if json.Unmarshal(it, &item) != nil || item["filename"] == nil {
						continue
					}
					previewable++
					if preview == nil {
						item["nodeId"] = n
						item["mediaType"] = media
						preview = item
					}
				}
			}
		}
		j["outputs_count"] = count
		j["previewable_outputs_count"] = previewable
		if preview != nil {
			j["preview_output"] = preview
		}
	}
	if id := workflowID(rec.ExtraData); id != "" {
		j["workflow_id"] = id
	}
	return j
}

// workflowID is extra_pnginfo.workflow.id.
func workflowID(extra json.RawMessage) string {
	var e struct {
		PNGInfo struct {
			Workflow struct {
				ID any `json:"id"`
			} `json:"workflow"`
		} `json:"extra_pnginfo"`
	}
	if len(extra) == 0 || json.Unmarshal(extra, &e) != nil || e.PNGInfo.Workflow.ID == nil {
		return ""
	}
	return pyjson.Str(e.PNGInfo.Workflow.ID)
}

func jobsError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// handleJobs is GET /api/jobs.
func (p *Proxy) handleJobs(w http.ResponseWriter, r *http.Request) {
	q, err := comfyapi.ParseJobsQuery(r.URL.Query())
	if err != nil {
		jobsError(w, http.StatusBadRequest, err.Error())
		return
	}
	v, err := p.views.get(r.Context(), sessionFrom(r.Context()).User)
	if err != nil {
		p.unavailable(w, r, err)
		return
	}
	recs := listedJobs(v, q)
	sortJobs(recs, q)
	page, pagination := comfyapi.Page(q, recs)
	jobs := make([]any, 0, len(page))
	for i := range page {
		jobs = append(jobs, jobSummary(&page[i]))
	}
	writeJSON(w, http.StatusOK, map[string]any{"jobs": jobs, "pagination": pagination})
}

// listedJobs are the participant's jobs that GET /api/jobs lists for q.
func listedJobs(v *userView, q comfyapi.JobsQuery) []wire.JobRecord {
	recs := v.records(func(wire.JobState) bool { return true })
	return slices.DeleteFunc(recs, func(rec wire.JobRecord) bool {
		if rec.State.Final() && !inHistory(&rec) {
			return true // dequeued before it ran: gone, as in ComfyUI
		}
		if !q.Wants(jobStatus(&rec)) {
			return true
		}
		return q.WorkflowID != "" && workflowID(rec.ExtraData) != q.WorkflowID
	})
}

// sortJobs orders recs by q's sort key, ties by queue number.
func sortJobs(recs []wire.JobRecord, q comfyapi.JobsQuery) {
	key := func(rec *wire.JobRecord) int64 {
		if q.ByDuration() {
			if rec.StartedAt.IsZero() || rec.FinishedAt.IsZero() {
				return 0
			}
			return rec.FinishedAt.Sub(rec.StartedAt).Milliseconds()
		}
		return rec.CreatedAt.UnixNano()
	}
	slices.SortStableFunc(recs, func(a, b wire.JobRecord) int {
		c := compareInt64(key(&a), key(&b))
		if c == 0 {
			c = compareNumbers(a.Number, b.Number)
		}
		if q.Descending() {
			c = -c
		}
		return c
	})
}

func compareInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// handleJob is GET /api/jobs/{id}: the summary plus outputs, the history
// status and the workflow; 404 for unknown (or another participant's) ids.
func (p *Proxy) handleJob(w http.ResponseWriter, r *http.Request) {
	v, err := p.views.get(r.Context(), sessionFrom(r.Context()).User)
	if err != nil {
		p.unavailable(w, r, err)
		return
	}
	rec, ok := v.record(r.PathValue("id"))
	if !ok || (rec.State.Final() && !inHistory(&rec)) {
		jobsError(w, http.StatusNotFound, "Job not found")
		return
	}
	j := jobSummary(&rec)
	if rec.State.Final() {
		entry := historyEntry(&rec)
		j["outputs"] = entry["outputs"]
		j["execution_status"] = entry["status"]
	}
	prompt := rec.Prompt
	if len(prompt) == 0 {
		prompt = json.RawMessage("{}")
	}
	j["workflow"] = map[string]any{"prompt": prompt, "extra_data": publicExtraData(rec.ExtraData)}
	writeJSON(w, http.StatusOK, j)
}

// handleJobCancel is POST /api/jobs/{id}/cancel.
func (p *Proxy) handleJobCancel(w http.ResponseWriter, r *http.Request) {
	p.cancelJobs(w, r, []string{r.PathValue("id")})
}

// handleJobsCancel is POST /api/jobs/cancel {"job_ids": [...]}.
func (p *Proxy) handleJobsCancel(w http.ResponseWriter, r *http.Request) {
	body, ok := readJSONBody(w, r, false)
	if !ok {
		return
	}
	raw, _ := body.Get("job_ids")
	list, isList := raw.([]any)
	if !isList {
		jobsError(w, http.StatusBadRequest, "job_ids must be a list of job ids")
		return
	}
	ids := make([]string, 0, len(list))
	for _, e := range list {
		s, isStr := e.(string)
		if !isStr || !canonicalUUID(s) {
			jobsError(w, http.StatusBadRequest, fmt.Sprintf("Invalid job id: %s", pyjson.Str(e)))
			return
		}
		ids = append(ids, s)
	}
	p.cancelJobs(w, r, ids)
}

// cancelJobs cancels the participant's jobs at whatever stage they are
// (dequeue if pending, interrupt if running).
func (p *Proxy) cancelJobs(w http.ResponseWriter, r *http.Request, ids []string) {
	if len(ids) == 0 {
		writeJSON(w, http.StatusOK, map[string]bool{"cancelled": false})
		return
	}
	sess := sessionFrom(r.Context())
	req := wire.CancelRequest{Caller: sess.caller(), User: sess.User, JobIDs: ids}
	affected, err := p.broker().Cancel(r.Context(), req)
	if err != nil && !refused(err) {
		p.unavailable(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"cancelled": err == nil && len(affected) > 0})
}
