// Package comfyclient is the agent's client for one ComfyUI server (real or
// the pkg/comfysim simulator): the HTTP API of comfyui-api.md §2 and the
// WebSocket of §3. It uses the unprefixed routes, as third-party API
// clients do, and never special-cases the simulator.
package comfyclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// ErrNotFound is returned by View for a missing file (404).
var ErrNotFound = errors.New("comfyclient: not found")

// StatusError is a non-2xx answer: the status code and the body text.
type StatusError struct {
	Method, Path string
	Status       int
	Body         string
}

func (e *StatusError) Error() string {
	body := e.Body
	if len(body) > 512 {
		body = body[:512] + "…"
	}
	return fmt.Sprintf("comfyclient: %s %s: HTTP %d: %s", e.Method, e.Path, e.Status, strings.TrimSpace(body))
}

// PromptError is a 400 answer of POST /prompt; Body is the
// {"error": …, "node_errors": …} object as sent.
type PromptError struct {
	Status int
	Body   json.RawMessage
}

func (e *PromptError) Error() string {
	var b struct {
		Error struct {
			Type    string `json:"type"`
			Message string `json:"message"`
			Details string `json:"details"`
		} `json:"error"`
	}
	_ = json.Unmarshal(e.Body, &b)
	msg := b.Error.Message
	if b.Error.Details != "" {
		msg += ": " + b.Error.Details
	}
	return fmt.Sprintf("comfyclient: prompt rejected (HTTP %d, %s): %s", e.Status, b.Error.Type, msg)
}

// Client talks to one ComfyUI base URL.
type Client struct {
	base *url.URL
	hc   *http.Client

	// flags caches whether the server has feature flags (GET /features):
	// 0 unknown, 1 yes, 2 no (a ComfyUI from before July 2025).
	flags atomic.Int32
}

// hasFeatureFlags reports whether the server answers feature_flags on the
// WebSocket, which it does when it serves GET /features. A failure other
// than 404 is not remembered.
func (c *Client) hasFeatureFlags(ctx context.Context) bool {
	switch c.flags.Load() {
	case 1:
		return true
	case 2:
		return false
	}
	var f map[string]any
	err := c.getJSON(ctx, "/features", nil, &f)
	var se *StatusError
	switch {
	case err == nil:
		c.flags.Store(1)
		return true
	case errors.As(err, &se) && se.Status == http.StatusNotFound:
		c.flags.Store(2)
	}
	return false
}

// New returns a client for baseURL (e.g. "http://127.0.0.1:8188"). A nil
// hc gets a client with connect and header timeouts but no overall timeout,
// so /view downloads can stream for as long as they need; use contexts for
// deadlines.
func New(baseURL string, hc *http.Client) *Client {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil {
		u = &url.URL{Scheme: "http", Host: baseURL}
	}
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 60 * time.Second,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   8,
		}}
	}
	return &Client{base: u, hc: hc}
}

// BaseURL returns the server's base URL.
func (c *Client) BaseURL() string { return c.base.String() }

func (c *Client) url(path string, q url.Values) string {
	u := *c.base
	u.Path = strings.TrimRight(u.Path, "/") + path
	if q != nil {
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// do sends a request and returns the response for 2xx, or a *StatusError.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, contentType string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.url(path, q), body)
	if err != nil {
		return nil, fmt.Errorf("comfyclient: %s %s: %w", method, path, err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("comfyclient: %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return nil, &StatusError{Method: method, Path: path, Status: resp.StatusCode, Body: string(data)}
	}
	return resp, nil
}

// getJSON GETs path and decodes the JSON answer into v.
func (c *Client) getJSON(ctx context.Context, path string, q url.Values, v any) error {
	resp, err := c.do(ctx, http.MethodGet, path, q, "", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("comfyclient: decoding %s: %w", path, err)
	}
	return nil
}

// postJSON POSTs v as JSON and discards the answer.
func (c *Client) postJSON(ctx context.Context, path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("comfyclient: encoding %s body: %w", path, err)
	}
	resp, err := c.do(ctx, http.MethodPost, path, nil, "application/json", bytes.NewReader(data))
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.Body.Close()
}

// SystemStats is GET /system_stats.
type SystemStats struct {
	System struct {
		OS                      string   `json:"os"`
		RAMTotal                int64    `json:"ram_total"`
		RAMFree                 int64    `json:"ram_free"`
		ComfyUIVersion          string   `json:"comfyui_version"`
		RequiredFrontendVersion string   `json:"required_frontend_version,omitempty"`
		PythonVersion           string   `json:"python_version"`
		PytorchVersion          string   `json:"pytorch_version"`
		EmbeddedPython          bool     `json:"embedded_python"`
		Argv                    []string `json:"argv"`
	} `json:"system"`
	Devices []Device `json:"devices"`
}

// Device is one entry of SystemStats.Devices. Index is nil in CPU mode.
type Device struct {
	Name           string `json:"name"`
	Type           string `json:"type"`
	Index          *int   `json:"index"`
	VRAMTotal      int64  `json:"vram_total"`
	VRAMFree       int64  `json:"vram_free"`
	TorchVRAMTotal int64  `json:"torch_vram_total"`
	TorchVRAMFree  int64  `json:"torch_vram_free"`
}

// SystemStatsJSON fetches /system_stats as the server wrote it (the
// catalog passes it on whole, fields this package does not know included).
func (c *Client) SystemStatsJSON(ctx context.Context) (json.RawMessage, error) {
	var raw json.RawMessage
	if err := c.getJSON(ctx, "/system_stats", nil, &raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// SystemStats fetches /system_stats (also a cheap health check).
func (c *Client) SystemStats(ctx context.Context) (SystemStats, error) {
	var s SystemStats
	err := c.getJSON(ctx, "/system_stats", nil, &s)
	return s, err
}

// ObjectInfo fetches /object_info as sent.
func (c *Client) ObjectInfo(ctx context.Context) (json.RawMessage, error) {
	var raw json.RawMessage
	err := c.getJSON(ctx, "/object_info", nil, &raw)
	return raw, err
}

// Models lists the model folder names (/models).
func (c *Client) Models(ctx context.Context) ([]string, error) {
	var out []string
	err := c.getJSON(ctx, "/models", nil, &out)
	return out, err
}

// ModelFiles lists a model folder's files (/models/{folder}); an unknown
// folder is a *StatusError with Status 404.
func (c *Client) ModelFiles(ctx context.Context, folder string) ([]string, error) {
	var out []string
	err := c.getJSON(ctx, "/models/"+url.PathEscape(folder), nil, &out)
	return out, err
}

// Embeddings lists embedding names without extension (/embeddings).
func (c *Client) Embeddings(ctx context.Context) ([]string, error) {
	var out []string
	err := c.getJSON(ctx, "/embeddings", nil, &out)
	return out, err
}

// PromptRequest is the body of POST /prompt.
type PromptRequest struct {
	Prompt   json.RawMessage // API-format graph
	ClientID string          // selects the WebSocket that receives events
	// ExtraData is stored and echoed (extra_pnginfo etc.): a
	// json.RawMessage, a map, or any JSON-encodable value; nil omits it.
	ExtraData any
	PromptID  string   // client-chosen id ("" lets the server pick)
	Number    *float64 // explicit priority
	Front     bool     // jump ahead (ignored with Number)
	// PartialExecutionTargets restricts execution to these output nodes.
	PartialExecutionTargets []string
}

// MarshalJSON writes only the keys that are set, as the frontend does.
func (r PromptRequest) MarshalJSON() ([]byte, error) {
	m := map[string]any{"prompt": r.Prompt}
	if r.ClientID != "" {
		m["client_id"] = r.ClientID
	}
	if r.ExtraData != nil {
		m["extra_data"] = r.ExtraData
	}
	if r.PromptID != "" {
		m["prompt_id"] = r.PromptID
	}
	if r.Number != nil {
		m["number"] = *r.Number
	}
	if r.Front {
		m["front"] = true
	}
	if r.PartialExecutionTargets != nil {
		m["partial_execution_targets"] = r.PartialExecutionTargets
	}
	return json.Marshal(m)
}

// PromptResponse is the 200 answer of POST /prompt. Number is a float
// because ComfyUI echoes client numbers as floats (5.0). NodeErrors may be
// non-empty when some outputs failed validation but others were queued.
type PromptResponse struct {
	PromptID   string          `json:"prompt_id"`
	Number     float64         `json:"number"`
	NodeErrors json.RawMessage `json:"node_errors"`
}

// QueuePrompt submits a prompt. A 400 is returned as *PromptError.
func (c *Client) QueuePrompt(ctx context.Context, req PromptRequest) (PromptResponse, error) {
	var out PromptResponse
	data, err := json.Marshal(req)
	if err != nil {
		return out, fmt.Errorf("comfyclient: encoding prompt: %w", err)
	}
	resp, err := c.do(ctx, http.MethodPost, "/prompt", nil, "application/json", bytes.NewReader(data))
	if err != nil {
		var se *StatusError
		if errors.As(err, &se) && se.Status == http.StatusBadRequest && json.Valid([]byte(se.Body)) {
			return out, &PromptError{Status: se.Status, Body: json.RawMessage(se.Body)}
		}
		return out, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return out, fmt.Errorf("comfyclient: decoding /prompt answer: %w", err)
	}
	return out, nil
}

// History returns the history entry of a finished prompt. found is false
// while the prompt is pending or running (ComfyUI answers {}).
func (c *Client) History(ctx context.Context, promptID string) (json.RawMessage, bool, error) {
	var m map[string]json.RawMessage
	if err := c.getJSON(ctx, "/history/"+url.PathEscape(promptID), nil, &m); err != nil {
		return nil, false, err
	}
	e, ok := m[promptID]
	return e, ok, nil
}

// QueueItem is one [number, prompt_id, prompt, extra_data, outputs] tuple.
type QueueItem struct {
	Number    float64
	PromptID  string
	Prompt    json.RawMessage
	ExtraData json.RawMessage
	Outputs   []string
}

// UnmarshalJSON decodes the tuple form.
func (q *QueueItem) UnmarshalJSON(data []byte) error {
	var parts []json.RawMessage
	if err := json.Unmarshal(data, &parts); err != nil {
		return err
	}
	if len(parts) < 5 {
		return fmt.Errorf("queue item has %d elements, want 5", len(parts))
	}
	if err := json.Unmarshal(parts[0], &q.Number); err != nil {
		return fmt.Errorf("queue item number: %w", err)
	}
	if err := json.Unmarshal(parts[1], &q.PromptID); err != nil {
		return fmt.Errorf("queue item prompt_id: %w", err)
	}
	q.Prompt, q.ExtraData = parts[2], parts[3]
	return json.Unmarshal(parts[4], &q.Outputs)
}

// Queue returns the running and pending items (pending in heap order, not
// sorted, as ComfyUI sends it).
func (c *Client) Queue(ctx context.Context) (running, pending []QueueItem, err error) {
	var q struct {
		Running []QueueItem `json:"queue_running"`
		Pending []QueueItem `json:"queue_pending"`
	}
	if err := c.getJSON(ctx, "/queue", nil, &q); err != nil {
		return nil, nil, err
	}
	return q.Running, q.Pending, nil
}

// Interrupt interrupts the running prompt: only if it is promptID, or
// whatever runs when promptID is "".
func (c *Client) Interrupt(ctx context.Context, promptID string) error {
	body := map[string]any{}
	if promptID != "" {
		body["prompt_id"] = promptID
	}
	return c.postJSON(ctx, "/interrupt", body)
}

// DeleteQueued removes pending prompts (running ones are untouched).
func (c *Client) DeleteQueued(ctx context.Context, promptIDs ...string) error {
	return c.postJSON(ctx, "/queue", map[string]any{"delete": promptIDs})
}

// DeleteHistory removes history entries.
func (c *Client) DeleteHistory(ctx context.Context, promptIDs ...string) error {
	return c.postJSON(ctx, "/history", map[string]any{"delete": promptIDs})
}

// View streams a file from /view. size is the Content-Length, -1 when
// unknown. The caller closes the reader. A 404 is ErrNotFound.
func (c *Client) View(ctx context.Context, filename, subfolder, typ string) (io.ReadCloser, int64, error) {
	q := url.Values{"filename": {filename}}
	if subfolder != "" {
		q.Set("subfolder", subfolder)
	}
	if typ != "" {
		q.Set("type", typ)
	}
	resp, err := c.do(ctx, http.MethodGet, "/view", q, "", nil)
	if err != nil {
		var se *StatusError
		if errors.As(err, &se) && se.Status == http.StatusNotFound {
			return nil, 0, fmt.Errorf("%w: %s/%s (%s)", ErrNotFound, subfolder, filename, typ)
		}
		return nil, 0, err
	}
	return resp.Body, resp.ContentLength, nil
}

// UploadResult is the answer of /upload/image.
type UploadResult struct {
	Name      string `json:"name"`
	Subfolder string `json:"subfolder"`
	Type      string `json:"type"`
}

// UploadImage uploads r as name into the input directory (subfolder may be
// ""). Without overwrite ComfyUI reuses an identical file or renames to
// "name (N).ext"; use the returned Name in the workflow.
func (c *Client) UploadImage(ctx context.Context, name, subfolder string, r io.Reader, overwrite bool) (UploadResult, error) {
	var out UploadResult
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		err := func() error {
			fw, err := mw.CreateFormFile("image", name)
			if err != nil {
				return err
			}
			if _, err := io.Copy(fw, r); err != nil {
				return err
			}
			if err := mw.WriteField("type", "input"); err != nil {
				return err
			}
			if subfolder != "" {
				if err := mw.WriteField("subfolder", subfolder); err != nil {
					return err
				}
			}
			if overwrite {
				if err := mw.WriteField("overwrite", "true"); err != nil {
					return err
				}
			}
			return mw.Close()
		}()
		pw.CloseWithError(err)
	}()
	resp, err := c.do(ctx, http.MethodPost, "/upload/image", nil, mw.FormDataContentType(), pr)
	_ = pr.Close()
	if err != nil {
		return out, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return out, fmt.Errorf("comfyclient: decoding upload answer: %w", err)
	}
	return out, nil
}
