package comfyapi

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Job statuses of the jobs API (comfyui-api.md §2.7).
const (
	JobPending    = "pending"
	JobInProgress = "in_progress"
	JobCompleted  = "completed"
	JobFailed     = "failed"
	JobCancelled  = "cancelled"
)

// JobStatuses are the statuses in the order ComfyUI lists them in its
// "Invalid status" error.
var JobStatuses = []string{JobPending, JobInProgress, JobCompleted, JobFailed, JobCancelled}

// Sort keys and orders of GET /api/jobs.
const (
	SortCreatedAt         = "created_at"
	SortExecutionDuration = "execution_duration"
	SortAsc               = "asc"
	SortDesc              = "desc"
)

// PreviewMedia maps the output keys whose items can be previewed to the
// mediaType of a Job's preview_output.
var PreviewMedia = map[string]string{"images": "image", "video": "video", "audio": "audio", "gifs": "video", "3d": "model"}

// JobsQuery is the query of GET /api/jobs.
type JobsQuery struct {
	// Statuses are the wanted statuses; empty wants all.
	Statuses map[string]bool
	// SortBy is SortCreatedAt (the default) or SortExecutionDuration.
	SortBy string
	// SortOrder is SortDesc (the default) or SortAsc.
	SortOrder string
	// Limit is the page size; -1 without a limit.
	Limit int
	// Offset is how many jobs the page skips.
	Offset int
	// WorkflowID, when set, keeps only jobs of that workflow.
	WorkflowID string
}

// QueryError is a bad jobs-API query; its text is the message ComfyUI
// answers with a 400 {"error": …}, capitalised as upstream writes it.
type QueryError string

func (e QueryError) Error() string { return string(e) }

// ParseJobsQuery reads GET /api/jobs's query; a bad one is a QueryError.
func ParseJobsQuery(q url.Values) (JobsQuery, error) {
	jq := JobsQuery{Statuses: map[string]bool{}, Limit: -1, WorkflowID: q.Get("workflow_id")}
	if s := q.Get("status"); s != "" {
		for _, st := range strings.Split(s, ",") {
			st = strings.TrimSpace(st)
			if !slices.Contains(JobStatuses, st) {
				return JobsQuery{}, QueryError(fmt.Sprintf("Invalid status: %s. Valid values: %s", st, strings.Join(JobStatuses, ", ")))
			}
			jq.Statuses[st] = true
		}
	}
	jq.SortBy = cmpOr(q.Get("sort_by"), SortCreatedAt)
	if jq.SortBy != SortCreatedAt && jq.SortBy != SortExecutionDuration {
		return JobsQuery{}, QueryError("sort_by must be 'created_at' or 'execution_duration'")
	}
	jq.SortOrder = cmpOr(q.Get("sort_order"), SortDesc)
	if jq.SortOrder != SortAsc && jq.SortOrder != SortDesc {
		return JobsQuery{}, QueryError("sort_order must be 'asc' or 'desc'")
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return JobsQuery{}, QueryError("limit must be a positive integer")
		}
		jq.Limit = n
	}
	if s := q.Get("offset"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return JobsQuery{}, QueryError("offset must be a non-negative integer")
		}
		jq.Offset = n
	}
	return jq, nil
}

func cmpOr(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// Wants reports whether a job with the given status is asked for.
func (q JobsQuery) Wants(status string) bool {
	return len(q.Statuses) == 0 || q.Statuses[status]
}

// ByDuration reports whether jobs sort by execution duration rather than
// creation time.
func (q JobsQuery) ByDuration() bool { return q.SortBy == SortExecutionDuration }

// Descending reports whether the order is descending.
func (q JobsQuery) Descending() bool { return q.SortOrder == SortDesc }

// Page cuts the sorted jobs to the query's offset and limit and returns
// the page with the response's "pagination" object.
func Page[T any](q JobsQuery, jobs []T) ([]T, map[string]any) {
	total := len(jobs)
	page := jobs[min(q.Offset, total):]
	if q.Limit >= 0 && q.Limit < len(page) {
		page = page[:q.Limit]
	}
	var limit any
	if q.Limit >= 0 {
		limit = q.Limit
	}
	return page, map[string]any{
		"offset": q.Offset, "limit": limit, "total": total, "has_more": q.Offset+len(page) < total,
	}
}
