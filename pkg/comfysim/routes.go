package comfysim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// routes builds the mux. Every API route is registered at /X and /api/X,
// as ComfyUI's add_routes() does; the simulator-only /sim/ routes are not
// part of ComfyUI and are not duplicated.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	api := func(method, path string, h http.HandlerFunc) {
		mux.HandleFunc(method+" "+path, h)
		mux.HandleFunc(method+" /api"+path, h)
	}
	api("GET", "/prompt", s.handleGetPrompt)
	api("POST", "/prompt", s.handlePostPrompt)
	api("GET", "/queue", s.handleGetQueue)
	api("POST", "/queue", s.handlePostQueue)
	api("POST", "/interrupt", s.handleInterrupt)
	api("POST", "/free", s.handleFree)
	api("GET", "/history", s.handleGetHistory)
	api("GET", "/history/{id}", s.handleGetHistoryItem)
	api("POST", "/history", s.handlePostHistory)
	api("GET", "/view", s.handleView)
	api("POST", "/upload/image", s.handleUploadImage)
	api("POST", "/upload/mask", s.handleUploadMask)
	api("GET", "/object_info", s.handleObjectInfo)
	api("GET", "/object_info/{class}", s.handleObjectInfoNode)
	api("GET", "/models", s.handleModels)
	api("GET", "/models/{folder}", s.handleModelFolder)
	api("GET", "/embeddings", s.handleEmbeddings)
	api("GET", "/experiment/models", s.handleExperimentModels)
	api("GET", "/experiment/models/{folder}", s.handleExperimentModelFolder)
	api("GET", "/experiment/models/preview/{folder}/{index}/{filename...}", s.handleModelPreview)
	api("GET", "/view_metadata/{folder}", s.handleViewMetadata)
	api("GET", "/extensions", s.handleExtensions)
	api("GET", "/system_stats", s.handleSystemStats)
	api("GET", "/features", s.handleFeatures)
	api("GET", "/ws", s.handleWS)
	api("GET", "/api/jobs", s.handleJobs)
	api("GET", "/api/jobs/{id}", s.handleJob)
	api("POST", "/api/jobs/{id}/cancel", s.handleJobCancel)
	api("POST", "/api/jobs/cancel", s.handleJobsCancel)

	mux.HandleFunc("POST /sim/fault", s.handleSetFault)
	mux.HandleFunc("GET /sim/fault", s.handleGetFault)

	return s.slowStart(s.limitBody(s.originOrCORS(mux)))
}

// writeJSON answers with Python-style JSON, as aiohttp's json_response.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body := mustPyJSON(v)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// writeEmpty is aiohttp's web.Response(status=...): no body, octet-stream.
func writeEmpty(w http.ResponseWriter, status int) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(status)
}

// writeServerError is aiohttp's answer to an unhandled exception: 500 with
// a plain-text body and no JSON envelope.
func (s *Server) writeServerError(w http.ResponseWriter, r *http.Request, err error) {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		s.writeTooLarge(w, tooBig.Limit)
		return
	}
	s.log.Warn().Err(err).Str("path", r.URL.Path).Msg("request failed with 500")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	_, _ = io.WriteString(w, "500 Internal Server Error\n\nServer got itself in trouble")
}

func (s *Server) writeTooLarge(w http.ResponseWriter, limit int64) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Connection", "close")
	w.WriteHeader(http.StatusRequestEntityTooLarge)
	_, _ = fmt.Fprintf(w, "Maximum request body size %d exceeded", limit)
}

// readJSON reads and decodes the request body as ordered JSON.
func readJSON(r *http.Request) (any, error) {
	data, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, err
	}
	return decodeJSON(data)
}

// readJSONObject reads a body that must be a JSON object (Python would fail
// on the first dict operation otherwise, i.e. 500).
func readJSONObject(r *http.Request) (object, error) {
	v, err := readJSON(r)
	if err != nil {
		return nil, err
	}
	o, ok := v.(object)
	if !ok {
		return nil, fmt.Errorf("body is a JSON %s, not an object", pyTypeName(v))
	}
	return o, nil
}

// limitBody enforces --max-upload-size: aiohttp answers 413 once a handler
// reads more than the limit. A declared oversized Content-Length is refused
// up front.
func (s *Server) limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > s.cfg.MaxUploadSize {
			s.writeTooLarge(w, s.cfg.MaxUploadSize)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxUploadSize)
		next.ServeHTTP(w, r)
	})
}

// originOrCORS is ComfyUI's origin_only_middleware, or its cors_middleware
// when CORSOrigin is set.
func (s *Server) originOrCORS(next http.Handler) http.Handler {
	if s.cfg.CORSOrigin != "" {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h.Set("Access-Control-Allow-Origin", s.cfg.CORSOrigin)
			h.Set("Access-Control-Allow-Methods", "POST, GET, DELETE, PUT, OPTIONS")
			h.Set("Access-Control-Allow-Headers", "Content-Type, Authorization")
			h.Set("Access-Control-Allow-Credentials", "true")
			if r.Method == http.MethodOptions {
				writeEmpty(w, http.StatusOK)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !originAllowed(r.Context(), r.Host, r.Header.Get("Origin")) {
			s.log.Warn().Str("host", r.Host).Str("origin", r.Header.Get("Origin")).
				Msg("request with non matching host and origin, returning 403")
			writeEmpty(w, http.StatusForbidden)
			return
		}
		if r.Method == http.MethodOptions {
			writeEmpty(w, http.StatusOK)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// originAllowed implements the loopback Host/Origin comparison of §1.2.
func originAllowed(ctx context.Context, host, origin string) bool {
	if host == "" || origin == "" {
		return true
	}
	hostDomain := strings.ToLower(host)
	hostURL, err := url.Parse("//" + hostDomain)
	if err != nil {
		return true
	}
	originURL, err := url.Parse(origin)
	if err != nil {
		return true
	}
	originDomain := strings.ToLower(originURL.Host)
	if originURL.Port() == "" {
		hostDomain = hostURL.Hostname()
	}
	if hostURL.Port() == "" {
		originDomain = strings.ToLower(originURL.Hostname())
	}
	if !isLoopback(ctx, hostURL.Hostname()) || hostDomain == "" || originDomain == "" {
		return true
	}
	return hostDomain == originDomain
}

// isLoopback is ComfyUI's is_loopback: a loopback IP literal, or a name
// that resolves only to loopback addresses.
func isLoopback(ctx context.Context, host string) bool {
	if host == "" {
		return false
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback()
	}
	if host == "localhost" {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil || len(addrs) == 0 {
		return false
	}
	for _, a := range addrs {
		if !a.IP.IsLoopback() {
			return false
		}
	}
	return true
}
