package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"github.com/rs/zerolog"

	"github.com/atelier-run/atelier/pkg/registry"
)

// UIUpstreamConfig configures UIUpstream.
type UIUpstreamConfig struct {
	// Registry supplies each participant's User.UIUpstream and Port.
	// Required.
	Registry *registry.Registry
	// Template is the upstream base URL for participants without
	// User.UIUpstream: "{user}" is replaced by the user id and "{port}" by
	// User.Port, e.g. "http://127.0.0.1:{port}" or "http://comfy-{user}:8188".
	// Empty: only User.UIUpstream is used.
	Template string
	// Transport carries the forwarded requests. Default
	// http.DefaultTransport.
	Transport http.RoundTripper
	// Logger receives forwarding errors.
	Logger zerolog.Logger
}

// UIUpstream forwards a participant's requests for everything the proxy does
// not answer itself (the static UI, /extensions, /settings, /users,
// /userdata, /internal/*, /templates, /i18n, other WebSockets …) to their
// own ComfyUI UI, for use as Config.Fallback.
//
// The /<user> prefix is taken off the path, which is forwarded still
// escaped (ComfyUI's /userdata/{file} needs %2F kept, comfyui-api.md §1.3).
// Host and Origin are rewritten to the upstream's, so ComfyUI's loopback
// origin check (§1.2) passes; the participant's credentials for the proxy
// are not passed on.
type UIUpstream struct {
	cfg UIUpstreamConfig

	mu      sync.Mutex
	proxies map[string]*httputil.ReverseProxy // by upstream base URL
}

// NewUIUpstream validates cfg and returns the handler.
func NewUIUpstream(cfg UIUpstreamConfig) (*UIUpstream, error) {
	if cfg.Registry == nil {
		return nil, fmt.Errorf("%w: UIUpstream: Registry is required", ErrInvalidConfig)
	}
	if cfg.Template != "" {
		u, err := url.Parse(expandTemplate(cfg.Template, "user001", 8188))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("%w: UIUpstream: Template %q is not an http(s) URL", ErrInvalidConfig, cfg.Template)
		}
	}
	if cfg.Transport == nil {
		cfg.Transport = http.DefaultTransport
	}
	return &UIUpstream{cfg: cfg, proxies: map[string]*httputil.ReverseProxy{}}, nil
}

func expandTemplate(t, user string, port int) string {
	return strings.NewReplacer("{user}", user, "{port}", strconv.Itoa(port)).Replace(t)
}

// errNoUpstream means the participant has no UI upstream configured.
var errNoUpstream = errors.New("no ComfyUI UI upstream configured for this participant")

// target returns the participant's upstream base URL.
func (u *UIUpstream) target(user string) (*url.URL, error) {
	usr, err := u.cfg.Registry.Get(user)
	if err != nil {
		return nil, err
	}
	base := usr.UIUpstream
	if base == "" {
		if u.cfg.Template == "" || (strings.Contains(u.cfg.Template, "{port}") && usr.Port == 0) {
			return nil, errNoUpstream
		}
		base = expandTemplate(u.cfg.Template, usr.ID, usr.Port)
	}
	t, err := url.Parse(base)
	if err != nil || t.Host == "" {
		return nil, fmt.Errorf("bad UI upstream %q: %w", base, err)
	}
	return t, nil
}

// ServeHTTP implements http.Handler. The request path carries the /<user>
// prefix; sessionFrom names the participant.
func (u *UIUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	user := sessionFrom(r.Context()).User
	if user == "" {
		user = r.PathValue("user")
	}
	t, err := u.target(user)
	if err != nil {
		if errors.Is(err, errNoUpstream) {
			writePlain(w, http.StatusNotFound, "not found")
			return
		}
		u.cfg.Logger.Error().Err(err).Str("user", user).Msg("UI upstream")
		writePlain(w, http.StatusBadGateway, "your ComfyUI is not reachable right now")
		return
	}
	u.proxyFor(t).ServeHTTP(w, r)
}

func (u *UIUpstream) proxyFor(t *url.URL) *httputil.ReverseProxy {
	key := t.String()
	u.mu.Lock()
	defer u.mu.Unlock()
	if rp, ok := u.proxies[key]; ok {
		return rp
	}
	rp := &httputil.ReverseProxy{
		Transport: u.cfg.Transport,
		Rewrite: func(pr *httputil.ProxyRequest) {
			user := sessionFrom(pr.In.Context()).User
			if user == "" {
				user = pr.In.PathValue("user")
			}
			escaped := strings.TrimPrefix(pr.In.URL.EscapedPath(), "/"+user)
			if escaped == "" {
				escaped = "/"
			}
			pr.Out.URL.Scheme = t.Scheme
			pr.Out.URL.Host = t.Host
			basePath := strings.TrimSuffix(t.EscapedPath(), "/")
			raw := basePath + escaped
			p, err := url.PathUnescape(raw)
			if err != nil {
				p = raw
			}
			pr.Out.URL.Path, pr.Out.URL.RawPath = p, raw
			pr.Out.Host = t.Host
			pr.SetXForwarded()
			pr.Out.Header.Set("X-Forwarded-Prefix", "/"+user)
			// ComfyUI's origin check compares Host and Origin on loopback:
			// the browser's Origin is the proxy's.
			if pr.Out.Header.Get("Origin") != "" {
				pr.Out.Header.Set("Origin", t.Scheme+"://"+t.Host)
			}
			pr.Out.Header.Del("Authorization")
			pr.Out.Header.Del("Cookie")
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			u.cfg.Logger.Warn().Err(err).Str("upstream", key).Str("path", r.URL.Path).Msg("UI upstream failed")
			writePlain(w, http.StatusBadGateway, "your ComfyUI is not reachable right now")
		},
	}
	u.proxies[key] = rp
	return rp
}
