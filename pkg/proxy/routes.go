package proxy

import (
	"context"
	"errors"
	"net/http"
)

// routes builds the handler. Every ComfyUI route is served as /<user>/X and
// /<user>/api/X (comfyui-api.md §1.1): the modern frontend uses the /api
// forms, scripts and the legacy frontend the plain ones.
func (p *Proxy) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writePlain(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /{$}", p.handleRoot)

	comfy := func(pattern string, h http.HandlerFunc) {
		method, path, _ := cutPattern(pattern)
		mux.Handle(method+" /{user}"+path, p.authed(h))
		mux.Handle(method+" /{user}/api"+path, p.authed(h))
	}
	comfy("POST /prompt", p.handlePostPrompt)
	comfy("GET /prompt", p.handleGetPrompt)
	comfy("GET /queue", p.handleQueue)
	comfy("POST /queue", p.handlePostQueue)
	comfy("POST /interrupt", p.handleInterrupt)
	comfy("GET /history", p.handleHistory)
	comfy("GET /history/{id}", p.handleHistoryItem)
	comfy("POST /history", p.handlePostHistory)
	// Newer ComfyUI registers the jobs routes literally as /api/jobs, so
	// the /api duplication makes them /api/jobs and /api/api/jobs.
	comfy("GET /api/jobs", p.handleJobs)
	comfy("GET /api/jobs/{id}", p.handleJob)
	comfy("POST /api/jobs/{id}/cancel", p.handleJobCancel)
	comfy("POST /api/jobs/cancel", p.handleJobsCancel)
	comfy("GET /view", p.handleView)
	comfy("POST /upload/image", p.handleUploadImage)
	comfy("POST /upload/mask", p.handleUploadMask)
	comfy("GET /object_info", p.handleObjectInfo)
	comfy("GET /object_info/{class}", p.handleObjectInfoClass)
	comfy("GET /models", p.handleModels)
	comfy("GET /models/{folder}", p.handleModelFolder)
	comfy("GET /embeddings", p.handleEmbeddings)
	comfy("GET /experiment/models", p.handleExperimentModels)
	comfy("GET /experiment/models/{folder}", p.handleExperimentModelFolder)
	comfy("GET /experiment/models/preview/{folder}/{index}/{filename...}", p.handleNotOnThisSide)
	comfy("GET /view_metadata/{folder}", p.handleNotOnThisSide)
	comfy("POST /free", p.handleFree)
	comfy("GET /system_stats", p.handleSystemStats)
	comfy("GET /features", p.handleFeatures)
	comfy("GET /ws", p.handleWS)

	// Everything else under a participant's prefix: their ComfyUI UI.
	mux.Handle("/{user}/", p.authed(http.HandlerFunc(p.handleFallback)))
	return mux
}

func cutPattern(pattern string) (method, path string, ok bool) {
	for i := 0; i < len(pattern); i++ {
		if pattern[i] == ' ' {
			return pattern[:i], pattern[i+1:], true
		}
	}
	return "", pattern, false
}

// handleRoot tells a visitor of the bare host where to go.
func (p *Proxy) handleRoot(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write([]byte(`<!doctype html>
<html><head><meta charset="utf-8"><title>Atelier</title></head>
<body><h1>Atelier</h1>
<p>Your ComfyUI is at <code>/&lt;your user id&gt;/</code>, for example <a href="/user001/">/user001/</a>.
Log in with the user id and password you were given.</p>
</body></html>
`))
}

func (p *Proxy) handleFallback(w http.ResponseWriter, r *http.Request) {
	if p.cfg.Fallback != nil {
		p.cfg.Fallback.ServeHTTP(w, r)
		return
	}
	writePlain(w, http.StatusNotFound, "not found")
}

// unavailable answers a request whose job state or queue could not be
// reached (the broker not provisioned yet, NATS down).
func (p *Proxy) unavailable(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		return // the client went away
	}
	p.log.Error().Err(err).Str("path", r.URL.Path).Msg("queue unavailable")
	writePlain(w, http.StatusServiceUnavailable, "the job queue is unavailable right now; try again shortly")
}

// reqCtx bounds a request's NATS work by RequestTimeout.
func (p *Proxy) reqCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), p.cfg.RequestTimeout)
}
