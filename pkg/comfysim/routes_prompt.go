package comfysim

import (
	"fmt"
	"math"
	"net/http"

	"github.com/google/uuid"
)

// sensitiveExtraKeys are stripped from extra_data before it is stored, so
// they never appear in /queue or /history.
var sensitiveExtraKeys = []string{"auth_token_comfy_org", "api_key_comfy_org"}

func (s *Server) handleGetPrompt(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	remaining := s.remainingLocked()
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, object{{"exec_info", object{{"queue_remaining", remaining}}}})
}

// promptRefusal is how POST /prompt turns a request down: a 400 with
// {"error", "node_errors"}, or, where server.py raises, aiohttp's 500.
type promptRefusal struct {
	serverErr error  // the 500's cause
	topErr    object // the 400's error
}

func (s *Server) refusePrompt(w http.ResponseWriter, r *http.Request, ref *promptRefusal) {
	if ref.serverErr != nil {
		s.writeServerError(w, r, ref.serverErr)
		return
	}
	writeJSON(w, http.StatusBadRequest, object{{"error", ref.topErr}, {"node_errors", object{}}})
}

func (s *Server) handlePostPrompt(w http.ResponseWriter, r *http.Request) {
	body, err := readJSONObject(r)
	if err != nil {
		s.writeServerError(w, r, err)
		return
	}
	number, numberJSON, ref := s.promptNumber(body)
	if ref != nil {
		s.refusePrompt(w, r, ref)
		return
	}
	prompt, promptID, partial, ref := s.promptFields(body)
	if ref != nil {
		s.refusePrompt(w, r, ref)
		return
	}
	res := s.validatePrompt(prompt, partial)
	extra, ref := extraData(body)
	if ref != nil {
		s.refusePrompt(w, r, ref)
		return
	}
	if !res.OK {
		errJSON, _ := pyJSON(res.Err)
		s.log.Warn().RawJSON("error", errJSON).Msg("invalid prompt")
		writeJSON(w, http.StatusBadRequest, object{{"error", res.Err}, {"node_errors", res.NodeErrors}})
		return
	}

	it := &queueItem{
		number: number, numberJSON: numberJSON, id: promptID,
		prompt: prompt, extra: extra, outputs: res.Outputs,
	}
	s.mu.Lock()
	s.enqueueLocked(it)
	s.mu.Unlock()
	s.log.Info().Str("prompt_id", promptID).Msg("got prompt")
	if s.cfg.OnPrompt != nil {
		s.cfg.OnPrompt(promptID)
	}
	writeJSON(w, http.StatusOK, object{{"prompt_id", promptID}, {"number", numberJSON}, {"node_errors", res.NodeErrors}})
}

// promptNumber is the queue priority: the body's number, or the next of
// the counter (negated for front). It is computed (and the counter
// advanced) before the prompt is even looked at, exactly as in server.py:
// rejected prompts consume numbers too.
func (s *Server) promptNumber(body object) (float64, any, *promptRefusal) {
	if v, ok := body.Get("number"); ok {
		f, msg := pyFloatOf(v)
		if msg != "" || math.IsNaN(f) || math.IsInf(f, 0) {
			return 0, nil, &promptRefusal{serverErr: fmt.Errorf("number: %s", msg)}
		}
		return f, pyFloat(f), nil
	}
	s.mu.Lock()
	n := s.number
	s.number++
	s.mu.Unlock()
	if front, ok := body.Get("front"); ok && pyTruthy(front) {
		n = -n
	}
	return float64(n), n, nil
}

// promptFields reads the prompt, its id (a new one when absent) and the
// partial_execution_targets (nil when absent or null), in server.py's
// order of checks.
func (s *Server) promptFields(body object) (object, string, []string, *promptRefusal) {
	promptV, ok := body.Get("prompt")
	if !ok {
		return nil, "", nil, &promptRefusal{topErr: topErr("no_prompt", "No prompt provided", "No prompt provided")}
	}
	prompt, ok := promptV.(object)
	if !ok {
		return nil, "", nil, &promptRefusal{serverErr: fmt.Errorf("prompt is a %s", pyTypeName(promptV))}
	}
	promptID := uuid.NewString()
	if v, ok := body.Get("prompt_id"); ok && (v != nil || !s.cfg.CheckPromptID) {
		id, isStr := v.(string)
		if s.cfg.CheckPromptID && (!isStr || !canonicalUUID(id)) {
			return nil, "", nil, &promptRefusal{topErr: topErr("invalid_prompt_id", "prompt_id must be a valid UUID",
				"prompt_id must be a UUID string in canonical lowercase hyphenated form; omit it to let the server generate one")}
		}
		promptID = pyStr(v)
	}
	var partial []string
	if v, ok := body.Get("partial_execution_targets"); ok && v != nil {
		list, isList := v.([]any)
		if !isList {
			return nil, "", nil, &promptRefusal{serverErr: fmt.Errorf("partial_execution_targets is a %s", pyTypeName(v))}
		}
		partial = []string{}
		for _, e := range list {
			if id, isStr := e.(string); isStr {
				partial = append(partial, id)
			}
		}
	}
	for _, m := range prompt {
		// validate_prompt's `'class_type' not in prompt[x]` raises for a
		// number, a list, a bool or None (a string is searched for the
		// substring): aiohttp's 500.
		switch m.Value.(type) {
		case object, string:
		default:
			return nil, "", nil, &promptRefusal{serverErr: fmt.Errorf("argument of type '%s' is not iterable", pyTypeName(m.Value))}
		}
	}
	return prompt, promptID, partial, nil
}

// extraData is the body's extra_data with client_id added and the
// sensitive keys removed.
func extraData(body object) (object, *promptRefusal) {
	extra := object{}
	if v, ok := body.Get("extra_data"); ok {
		eo, isObj := v.(object)
		if !isObj {
			return nil, &promptRefusal{serverErr: fmt.Errorf("extra_data is a %s", pyTypeName(v))}
		}
		extra = eo
	}
	if v, ok := body.Get("client_id"); ok {
		extra.Set("client_id", v)
	}
	for _, k := range sensitiveExtraKeys {
		extra.Del(k)
	}
	return extra, nil
}

func (s *Server) handleGetQueue(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	running := []any{}
	if s.running != nil {
		running = append(running, s.running.tuple())
	}
	pending := make([]any, 0, len(s.pending))
	for _, it := range s.pending {
		pending = append(pending, it.tuple())
	}
	// Encode under the lock: the tuples share the stored prompt objects.
	body := object{{"queue_running", running}, {"queue_pending", pending}}
	data := mustPyJSON(body)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_, _ = w.Write(data)
}

func (s *Server) handlePostQueue(w http.ResponseWriter, r *http.Request) {
	clear, toDelete, err := readClearDelete(r)
	if err != nil {
		s.writeServerError(w, r, err)
		return
	}
	s.mu.Lock()
	if clear {
		s.pending = nil
		s.broadcastStatusLocked()
	}
	for _, e := range toDelete {
		s.deletePendingLocked(pyStr(e))
	}
	s.mu.Unlock()
	writeEmpty(w, http.StatusOK)
}

func (s *Server) handleInterrupt(w http.ResponseWriter, r *http.Request) {
	// An empty or invalid body means {}.
	body, _ := readJSONObject(r)
	target, _ := body.Get("prompt_id")
	s.mu.Lock()
	if pyTruthy(target) {
		if s.running != nil && s.running.id == pyStr(target) && s.interrupt != nil {
			s.log.Info().Str("prompt_id", s.running.id).Msg("interrupting prompt")
			s.interrupt(errInterrupted)
		}
	} else if s.interrupt != nil {
		// Global interrupt. ComfyUI sets a flag that the next prompt
		// resets at its start, so an idle interrupt has no effect.
		s.interrupt(errInterrupted)
	}
	s.mu.Unlock()
	writeEmpty(w, http.StatusOK)
}

// handleFree accepts the flags of POST /free. Models are not real, so only
// free_memory has an effect: it drops the execution cache, as ComfyUI does
// after the current prompt.
func (s *Server) handleFree(w http.ResponseWriter, r *http.Request) {
	body, err := readJSONObject(r)
	if err != nil {
		s.writeServerError(w, r, err)
		return
	}
	if v, ok := body.Get("free_memory"); ok && pyTruthy(v) {
		s.cache.requestReset()
	}
	writeEmpty(w, http.StatusOK)
}

// canonicalUUID reports whether s is a UUID in canonical lowercase
// hyphenated form, what newer ComfyUI requires of a client prompt_id.
func canonicalUUID(s string) bool {
	u, err := uuid.Parse(s)
	return err == nil && u.String() == s
}
