package comfysim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/atelier-run/atelier/pkg/comfyapi"
)

// The jobs API of 2026-era ComfyUI (comfyui-api.md §2.7): one view over the
// queue and the history, which the 1.5x frontend reads instead of /queue
// and /history. Upstream registers the routes literally as /api/jobs…, so
// the /api duplication also serves them at /api/api/jobs….

// simJob is one job as the jobs API sees it, before rendering.
type simJob struct {
	id       string
	status   string
	priority any
	created  time.Time
	start    int64 // ms, 0 unknown
	end      int64
	errData  any
	outputs  map[string]any
	history  map[string]any // status object of the history entry
	prompt   any
	extra    any
}

// generic turns the simulator's ordered values into plain JSON values.
func generic(v any) any {
	var out any
	_ = json.Unmarshal(mustPyJSON(v), &out)
	return out
}

// jobsLocked collects every job: pending, running, then history.
func (s *Server) jobsLocked() []simJob {
	var out []simJob
	fromItem := func(it *queueItem, status string) simJob {
		return simJob{id: it.id, status: status, priority: it.numberJSON, created: it.created,
			prompt: generic(it.prompt), extra: generic(it.extra)}
	}
	for _, it := range s.pending {
		out = append(out, fromItem(it, comfyapi.JobPending))
	}
	if s.running != nil {
		out = append(out, fromItem(s.running, comfyapi.JobInProgress))
	}
	for _, id := range s.history.order {
		entry, _ := generic(s.history.entries[id]).(map[string]any)
		j := simJob{id: id, created: s.created[id]}
		if tuple, ok := entry["prompt"].([]any); ok && len(tuple) == 5 {
			j.priority, j.prompt, j.extra = tuple[0], tuple[2], tuple[3]
		}
		j.outputs, _ = entry["outputs"].(map[string]any)
		j.history, _ = entry["status"].(map[string]any)
		j.status = comfyapi.JobCompleted
		if j.history["status_str"] != comfyapi.HistorySuccess {
			j.status = comfyapi.JobFailed
		}
		msgs, _ := j.history["messages"].([]any)
		for _, m := range msgs {
			pair, _ := m.([]any)
			if len(pair) != 2 {
				continue
			}
			ev, _ := pair[0].(string)
			data, _ := pair[1].(map[string]any)
			ts, _ := data["timestamp"].(float64)
			switch ev {
			case comfyapi.MsgExecutionStart:
				j.start = int64(ts)
			case comfyapi.MsgExecutionSuccess:
				j.end = int64(ts)
			case comfyapi.MsgExecutionError:
				j.end, j.errData = int64(ts), data
			case comfyapi.MsgExecutionInterrupted:
				j.end, j.status = int64(ts), comfyapi.JobCancelled
			}
		}
		out = append(out, j)
	}
	return out
}

// summary renders a Job; keys whose value would be null are left out.
func (j simJob) summary() map[string]any {
	m := map[string]any{"id": j.id, "status": j.status, "priority": j.priority, "create_time": j.created.UnixMilli()}
	if j.start != 0 {
		m["execution_start_time"] = j.start
	}
	if j.end != 0 {
		m["execution_end_time"] = j.end
	}
	if j.errData != nil {
		m["execution_error"] = j.errData
	}
	if j.outputs != nil {
		count, previewable := 0, 0
		var preview map[string]any
		nodes := make([]string, 0, len(j.outputs))
		for n := range j.outputs {
			nodes = append(nodes, n)
		}
		slices.SortFunc(nodes, func(a, b string) int {
			ai, aerr := strconv.Atoi(a)
			bi, berr := strconv.Atoi(b)
			if aerr == nil && berr == nil {
				return ai - bi
			}
			return strings.Compare(a, b)
		})
		for _, n := range nodes {
			ui, _ := j.outputs[n].(map[string]any)
			keys := make([]string, 0, len(ui))
			for k := range ui {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			for _, key := range keys {
				items, ok := ui[key].([]any)
				if !ok {
					continue
				}
				count += len(items)
				media, ok := comfyapi.PreviewMedia[key]
				if !ok {
					continue
				}
				for _, it := range items {
					item, ok := it.(map[string]any)
					if !ok || item["filename"] == nil {
						continue
					}
					previewable++
					if preview == nil {
						preview = map[string]any{"nodeId": n, "mediaType": media}
						for k, v := range item {
							preview[k] = v
						}
					}
				}
			}
		}
		m["outputs_count"] = count
		m["previewable_outputs_count"] = previewable
		if preview != nil {
			m["preview_output"] = preview
		}
	}
	if extra, ok := j.extra.(map[string]any); ok {
		if png, ok := extra["extra_pnginfo"].(map[string]any); ok {
			if wf, ok := png["workflow"].(map[string]any); ok && wf["id"] != nil {
				m["workflow_id"] = pyStr(wf["id"])
			}
		}
	}
	return m
}

func jobsError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, object{{"error", msg}})
}

func (s *Server) handleJobs(w http.ResponseWriter, r *http.Request) {
	q, err := comfyapi.ParseJobsQuery(r.URL.Query())
	if err != nil {
		jobsError(w, http.StatusBadRequest, err.Error())
		return
	}
	s.mu.Lock()
	jobs := s.jobsLocked()
	s.mu.Unlock()
	jobs = slices.DeleteFunc(jobs, func(j simJob) bool {
		if !q.Wants(j.status) {
			return true
		}
		return q.WorkflowID != "" && j.summary()["workflow_id"] != q.WorkflowID
	})
	key := func(j simJob) int64 {
		if q.ByDuration() {
			if j.start == 0 || j.end == 0 {
				return 0
			}
			return j.end - j.start
		}
		return j.created.UnixNano()
	}
	slices.SortStableFunc(jobs, func(a, b simJob) int {
		c := int(min(max(key(a)-key(b), -1), 1))
		if q.Descending() {
			c = -c
		}
		return c
	})
	page, pagination := comfyapi.Page(q, jobs)
	list := make([]any, 0, len(page))
	for _, j := range page {
		list = append(list, j.summary())
	}
	writeJSON(w, http.StatusOK, map[string]any{"jobs": list, "pagination": pagination})
}

func (s *Server) handleJob(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	jobs := s.jobsLocked()
	s.mu.Unlock()
	i := slices.IndexFunc(jobs, func(j simJob) bool { return j.id == id })
	if i < 0 {
		jobsError(w, http.StatusNotFound, "Job not found")
		return
	}
	j := jobs[i]
	m := j.summary()
	if j.history != nil {
		m["outputs"] = j.outputs
		m["execution_status"] = j.history
	}
	m["workflow"] = map[string]any{"prompt": j.prompt, "extra_data": j.extra}
	writeJSON(w, http.StatusOK, m)
}

// cancelLocked dequeues a pending job or interrupts the running one.
func (s *Server) cancelLocked(id string) bool {
	if s.deletePendingLocked(id) {
		return true
	}
	if s.running != nil && s.running.id == id && s.interrupt != nil {
		s.interrupt(errInterrupted)
		return true
	}
	return false
}

func (s *Server) handleJobCancel(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	ok := s.cancelLocked(r.PathValue("id"))
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]bool{"cancelled": ok})
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func (s *Server) handleJobsCancel(w http.ResponseWriter, r *http.Request) {
	body, err := readJSONObject(r)
	if err != nil {
		s.writeServerError(w, r, err)
		return
	}
	raw, _ := body.Get("job_ids")
	list, ok := raw.([]any)
	if !ok {
		jobsError(w, http.StatusBadRequest, "job_ids must be a list of job ids")
		return
	}
	var ids []string
	for _, e := range list {
		v, isStr := e.(string)
		if !isStr || !uuidRE.MatchString(v) {
			jobsError(w, http.StatusBadRequest, fmt.Sprintf("Invalid job id: %s", pyStr(e)))
			return
		}
		ids = append(ids, v)
	}
	cancelled := false
	s.mu.Lock()
	for _, id := range ids {
		cancelled = s.cancelLocked(id) || cancelled
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]bool{"cancelled": cancelled})
}
