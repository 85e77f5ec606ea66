package comfyapi

import (
	"encoding/json"
	"errors"
	"net/url"
	"testing"
)

func TestParseJobsQuery(t *testing.T) {
	ok := []struct {
		query string
		want  JobsQuery
	}{
		{"", JobsQuery{Statuses: map[string]bool{}, SortBy: SortCreatedAt, SortOrder: SortDesc, Limit: -1}},
		{"status=completed,%20failed&sort_by=execution_duration&sort_order=asc&limit=5&offset=2&workflow_id=w",
			JobsQuery{Statuses: map[string]bool{JobCompleted: true, JobFailed: true}, SortBy: SortExecutionDuration,
				SortOrder: SortAsc, Limit: 5, Offset: 2, WorkflowID: "w"}},
	}
	for _, tc := range ok {
		q, _ := url.ParseQuery(tc.query)
		got, err := ParseJobsQuery(q)
		if err != nil {
			t.Fatalf("%q: %v", tc.query, err)
		}
		gb, _ := json.Marshal(got)
		wb, _ := json.Marshal(tc.want)
		if string(gb) != string(wb) {
			t.Errorf("%q: got %s, want %s", tc.query, gb, wb)
		}
	}
	bad := map[string]string{
		"status=done":       "Invalid status: done. Valid values: pending, in_progress, completed, failed, cancelled",
		"sort_by=name":      "sort_by must be 'created_at' or 'execution_duration'",
		"sort_order=up":     "sort_order must be 'asc' or 'desc'",
		"limit=0":           "limit must be a positive integer",
		"limit=x":           "limit must be a positive integer",
		"offset=-1":         "offset must be a non-negative integer",
		"status=pending,,x": "Invalid status: . Valid values: pending, in_progress, completed, failed, cancelled",
	}
	for query, want := range bad {
		q, _ := url.ParseQuery(query)
		_, err := ParseJobsQuery(q)
		var qe QueryError
		if !errors.As(err, &qe) || err.Error() != want {
			t.Errorf("%q: got %v, want QueryError %q", query, err, want)
		}
	}
}

func TestJobsQueryWants(t *testing.T) {
	all := JobsQuery{}
	if !all.Wants(JobFailed) {
		t.Error("an empty status filter wants every status")
	}
	some := JobsQuery{Statuses: map[string]bool{JobPending: true}}
	if !some.Wants(JobPending) || some.Wants(JobFailed) {
		t.Error("a status filter wants only its statuses")
	}
}

func TestPage(t *testing.T) {
	jobs := []int{1, 2, 3, 4, 5}
	cases := []struct {
		offset, limit int
		want          string
	}{
		{0, -1, `[1,2,3,4,5] {"has_more":false,"limit":null,"offset":0,"total":5}`},
		{1, 2, `[2,3] {"has_more":true,"limit":2,"offset":1,"total":5}`},
		{3, 10, `[4,5] {"has_more":false,"limit":10,"offset":3,"total":5}`},
		{9, 1, `[] {"has_more":false,"limit":1,"offset":9,"total":5}`},
	}
	for _, tc := range cases {
		page, pag := Page(JobsQuery{Offset: tc.offset, Limit: tc.limit}, jobs)
		pb, _ := json.Marshal(page)
		gb, _ := json.Marshal(pag)
		if got := string(pb) + " " + string(gb); got != tc.want {
			t.Errorf("offset %d limit %d: got %s, want %s", tc.offset, tc.limit, got, tc.want)
		}
	}
}

func TestHistoryMessage(t *testing.T) {
	ev, data, ok := HistoryMessage(json.RawMessage(`["execution_error", {"node_id": "3"}]`))
	if !ok || ev != MsgExecutionError || string(data) != `{"node_id": "3"}` {
		t.Errorf("got %q %s %v", ev, data, ok)
	}
	for _, raw := range []string{`[]`, `["a"]`, `["a", 1, 2]`, `[1, {}]`, `{}`, `x`} {
		if _, _, ok := HistoryMessage(json.RawMessage(raw)); ok {
			t.Errorf("%s: not an [event, data] pair, yet ok", raw)
		}
	}
}
