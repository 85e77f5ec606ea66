package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// dockerAPI is the handful of Docker Engine API calls the docker runtime
// needs, spoken as plain HTTP over the engine's unix socket.
//
// Why not the official client (github.com/docker/docker/client or the
// newer github.com/moby/moby/client)? We need seven endpoints with a few
// JSON fields each; the client module drags in dozens of transitive
// modules (OpenTelemetry, containerd types, gRPC…) into a binary that runs
// on every GPU box, and its packages have been moving between modules. The
// Engine API itself is versioned and stable, so we pin a version and send
// exactly the fields we use.
type dockerAPI struct {
	hc   *http.Client
	base string // http://docker/v1.41
}

// dockerAPIVersion is the Engine API version we speak: Docker 20.10 and
// later understand it (DeviceRequests need 1.40+).
const dockerAPIVersion = "v1.41"

func newDockerAPI(host string) (*dockerAPI, error) {
	if host == "" {
		host = "unix:///var/run/docker.sock"
	}
	u, err := url.Parse(host)
	if err != nil {
		return nil, fmt.Errorf("docker host %q: %w", host, err)
	}
	tr := &http.Transport{}
	base := "http://docker/" + dockerAPIVersion
	switch u.Scheme {
	case "unix":
		path := u.Path
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
	case "tcp", "http":
		base = "http://" + u.Host + "/" + dockerAPIVersion
	default:
		return nil, fmt.Errorf("docker host %q: want unix:// or tcp://", host)
	}
	return &dockerAPI{hc: &http.Client{Transport: tr}, base: base}, nil
}

// dockerError is an error answer of the engine.
type dockerError struct {
	Status  int
	Message string
}

func (e *dockerError) Error() string { return fmt.Sprintf("docker: %d: %s", e.Status, e.Message) }

func (d *dockerAPI) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	u := d.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return fmt.Errorf("docker %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e struct {
			Message string `json:"message"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &e) != nil || e.Message == "" {
			e.Message = strings.TrimSpace(string(b))
		}
		return &dockerError{Status: resp.StatusCode, Message: e.Message}
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

func (d *dockerAPI) ping(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.base+"/_ping", nil)
	if err != nil {
		return err
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return fmt.Errorf("docker engine: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("docker engine: ping: %s", resp.Status)
	}
	return nil
}

// containerSummary is an entry of GET /containers/json.
type containerSummary struct {
	ID     string            `json:"Id"`
	Labels map[string]string `json:"Labels"`
	State  string            `json:"State"`
}

func (d *dockerAPI) list(ctx context.Context, labels ...string) ([]containerSummary, error) {
	f, _ := json.Marshal(map[string][]string{"label": labels})
	var out []containerSummary
	err := d.do(ctx, http.MethodGet, "/containers/json", url.Values{"all": {"1"}, "filters": {string(f)}}, nil, &out)
	return out, err
}

func (d *dockerAPI) create(ctx context.Context, name string, cfg any) (string, error) {
	var out struct {
		ID string `json:"Id"`
	}
	err := d.do(ctx, http.MethodPost, "/containers/create", url.Values{"name": {name}}, cfg, &out)
	return out.ID, err
}

func (d *dockerAPI) start(ctx context.Context, id string) error {
	err := d.do(ctx, http.MethodPost, "/containers/"+id+"/start", nil, nil, nil)
	var de *dockerError
	if asDockerError(err, &de) && de.Status == http.StatusNotModified {
		return nil // already running
	}
	return err
}

func (d *dockerAPI) restart(ctx context.Context, id string, graceSeconds int) error {
	return d.do(ctx, http.MethodPost, "/containers/"+id+"/restart", url.Values{"t": {fmt.Sprint(graceSeconds)}}, nil, nil)
}

func (d *dockerAPI) remove(ctx context.Context, id string) error {
	return d.do(ctx, http.MethodDelete, "/containers/"+id, url.Values{"force": {"1"}, "v": {"1"}}, nil, nil)
}

// containerState is the part of GET /containers/{id}/json we read.
type containerState struct {
	State struct {
		Status     string `json:"Status"`
		Running    bool   `json:"Running"`
		Restarting bool   `json:"Restarting"`
		ExitCode   int    `json:"ExitCode"`
		Health     *struct {
			Status string `json:"Status"`
		} `json:"Health"`
	} `json:"State"`
	RestartCount int `json:"RestartCount"`
}

func (d *dockerAPI) inspect(ctx context.Context, id string) (containerState, error) {
	var out containerState
	err := d.do(ctx, http.MethodGet, "/containers/"+id+"/json", nil, nil, &out)
	return out, err
}

// wait blocks until the container is not running (the request is a
// long poll), and returns its exit code. It answers at once for a
// container that already stopped: "next-exit" would miss an exit between
// a start and the wait (a ComfyUI that dies as it starts) and wait for
// one that never comes.
func (d *dockerAPI) wait(ctx context.Context, id string) (int, error) {
	var out struct {
		StatusCode int `json:"StatusCode"`
	}
	err := d.do(ctx, http.MethodPost, "/containers/"+id+"/wait", url.Values{"condition": {"not-running"}}, nil, &out)
	return out.StatusCode, err
}

func asDockerError(err error, target **dockerError) bool {
	if err == nil {
		return false
	}
	de, ok := err.(*dockerError)
	if ok {
		*target = de
	}
	return ok
}
