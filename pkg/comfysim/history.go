package comfysim

import (
	"fmt"
	"net/http"
	"strconv"
)

// maxHistory is ComfyUI's MAXIMUM_HISTORY_SIZE.
const maxHistory = 10000

// historyStore keeps finished prompts in completion order, like the
// insertion-ordered dict PromptQueue.history: re-using a prompt_id keeps the
// old slot, and the oldest entry is evicted past maxHistory. Guarded by
// Server.mu.
type historyStore struct {
	order   []string
	entries map[string]object
}

func newHistoryStore() *historyStore {
	return &historyStore{entries: map[string]object{}}
}

func (h *historyStore) put(id string, entry object) {
	if _, ok := h.entries[id]; !ok {
		// task_done evicts before inserting, when the dict is already
		// over the limit.
		if len(h.order) > maxHistory {
			delete(h.entries, h.order[0])
			h.order = h.order[1:]
		}
		h.order = append(h.order, id)
	}
	h.entries[id] = entry
}

func (h *historyStore) del(id string) {
	if _, ok := h.entries[id]; !ok {
		return
	}
	delete(h.entries, id)
	for i, k := range h.order {
		if k == id {
			h.order = append(h.order[:i], h.order[i+1:]...)
			break
		}
	}
}

func (h *historyStore) clear() {
	h.order = nil
	h.entries = map[string]object{}
}

// page is PromptQueue.get_history(max_items, offset) for all prompts.
func (h *historyStore) page(maxItems *int, offset int) object {
	out := object{}
	if offset < 0 && maxItems != nil {
		offset = len(h.order) - *maxItems
	}
	for i, k := range h.order {
		if i < offset {
			continue
		}
		out = append(out, member{k, h.entries[k]})
		if maxItems != nil && len(out) >= *maxItems {
			break
		}
	}
	return out
}

func (s *Server) handleGetHistory(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var maxItems *int
	if v, ok := q["max_items"]; ok {
		n, err := strconv.Atoi(v[0])
		if err != nil {
			s.writeServerError(w, r, err)
			return
		}
		maxItems = &n
	}
	offset := -1
	if v, ok := q["offset"]; ok {
		n, err := strconv.Atoi(v[0])
		if err != nil {
			s.writeServerError(w, r, err)
			return
		}
		offset = n
	}
	s.mu.Lock()
	data := mustPyJSON(s.history.page(maxItems, offset))
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_, _ = w.Write(data)
}

func (s *Server) handleGetHistoryItem(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	out := object{}
	if e, ok := s.history.entries[id]; ok {
		out = append(out, member{id, e})
	}
	data := mustPyJSON(out)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_, _ = w.Write(data)
}

func (s *Server) handlePostHistory(w http.ResponseWriter, r *http.Request) {
	clear, toDelete, err := readClearDelete(r)
	if err != nil {
		s.writeServerError(w, r, err)
		return
	}
	s.mu.Lock()
	if clear {
		s.history.clear()
	}
	for _, e := range toDelete {
		s.history.del(pyStr(e))
	}
	s.mu.Unlock()
	writeEmpty(w, http.StatusOK)
}

// readClearDelete reads the {"clear": bool, "delete": [ids]} body that
// POST /queue and POST /history share. A non-list delete is an unhandled
// exception in ComfyUI (500).
func readClearDelete(r *http.Request) (clear bool, toDelete []any, err error) {
	body, err := readJSONObject(r)
	if err != nil {
		return false, nil, err
	}
	if v, ok := body.Get("delete"); ok {
		list, isList := v.([]any)
		if !isList {
			return false, nil, fmt.Errorf("delete is a %s", pyTypeName(v))
		}
		toDelete = list
	}
	v, ok := body.Get("clear")
	return ok && pyTruthy(v), toDelete, nil
}
