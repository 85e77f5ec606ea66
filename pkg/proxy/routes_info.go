package proxy

import (
	"encoding/json"
	"net/http"
	"slices"
)

// poolCatalogFor returns the caller's pool catalog, or nil (logged) when the
// pool has none yet or CATALOG cannot be read: the info routes then answer
// with empty but valid documents so the frontend still loads.
func (p *Proxy) poolCatalogFor(r *http.Request) *poolCatalog {
	ctx, cancel := p.reqCtx(r)
	defer cancel()
	pool := sessionFrom(r.Context()).Pool
	cat, err := p.catalogs.get(ctx, pool)
	if err != nil {
		p.log.Warn().Err(err).Str("pool", pool).Msg("pool catalog unavailable")
		return nil
	}
	return cat
}

// handleObjectInfo is GET /object_info: the pool's merged object_info, with
// the upload combos (LoadImage's image …) listing the participant's own
// input files, as ComfyUI lists its input folder there.
func (p *Proxy) handleObjectInfo(w http.ResponseWriter, r *http.Request) {
	cat := p.poolCatalogFor(r)
	if cat == nil || len(cat.ObjectInfo) == 0 || isNull(cat.ObjectInfo) {
		writeJSONBytes(w, http.StatusOK, []byte("{}"))
		return
	}
	if len(cat.uploads) == 0 {
		writeJSONBytes(w, http.StatusOK, cat.ObjectInfo)
		return
	}
	files := p.uploadListsFor(r)
	// Splice the few patched classes into the pool's document: re-encoding
	// megabytes of object_info per request would cost far more.
	buf := make([]byte, 0, len(cat.ObjectInfo)+1024)
	buf = append(buf, '{')
	for i, class := range cat.order {
		raw := cat.classes[class]
		if ups := cat.uploads[class]; len(ups) > 0 {
			raw = withUploadLists(raw, ups, files)
		}
		if i > 0 {
			buf = append(buf, ", "...)
		}
		k, _ := json.Marshal(class)
		buf = append(buf, k...)
		buf = append(buf, ": "...)
		buf = append(buf, raw...)
	}
	buf = append(buf, '}')
	writeJSONBytes(w, http.StatusOK, buf)
}

// uploadListsFor is the participant's input files by media class; on a
// store failure the lists are empty (logged): the GPU box's file names
// would mean nothing to the participant.
func (p *Proxy) uploadListsFor(r *http.Request) map[string][]string {
	ctx, cancel := p.reqCtx(r)
	defer cancel()
	user := sessionFrom(r.Context()).User
	files, err := p.participantInputs(ctx, user)
	if err != nil {
		p.log.Warn().Err(err).Str("user", user).Msg("list input files for object_info")
		return nil
	}
	return files
}

// handleObjectInfoClass is GET /object_info/{class}: {} for an unknown class.
func (p *Proxy) handleObjectInfoClass(w http.ResponseWriter, r *http.Request) {
	class := r.PathValue("class")
	cat := p.poolCatalogFor(r)
	if cat == nil || !cat.hasClass(class) {
		writeJSONBytes(w, http.StatusOK, []byte("{}"))
		return
	}
	raw := cat.classes[class]
	if ups := cat.uploads[class]; len(ups) > 0 {
		raw = withUploadLists(raw, ups, p.uploadListsFor(r))
	}
	writeJSON(w, http.StatusOK, map[string]json.RawMessage{class: raw})
}

// comfyModelFolders is ComfyUI's folder_names_and_paths key order, which
// /models follows; folders beyond these (extra_model_paths) come after,
// sorted. The catalog keeps the folders as a set.
var comfyModelFolders = []string{
	"checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
	"style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
	"upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
	"model_patches", "audio_encoders",
}

// modelFolders lists the pool's model folders in ComfyUI's order.
func modelFolders(cat *poolCatalog) []string {
	folders := []string{}
	if cat == nil {
		return folders
	}
	for _, f := range comfyModelFolders {
		if _, ok := cat.Models[f]; ok {
			folders = append(folders, f)
		}
	}
	var extra []string
	for f := range cat.Models {
		if !slices.Contains(comfyModelFolders, f) {
			extra = append(extra, f)
		}
	}
	slices.Sort(extra)
	return append(folders, extra...)
}

// handleModels is GET /models: the model folder names.
func (p *Proxy) handleModels(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, modelFolders(p.poolCatalogFor(r)))
}

// modelFiles is a folder's files in the pool, sorted; false for a folder
// the pool does not have.
func modelFiles(cat *poolCatalog, folder string) ([]string, bool) {
	if cat == nil {
		return nil, false
	}
	files, ok := cat.Models[folder]
	if !ok {
		return nil, false
	}
	files = slices.Clone(files)
	if files == nil {
		files = []string{}
	}
	slices.Sort(files)
	return files, true
}

// handleModelFolder is GET /models/{folder}: 404 (empty, as ComfyUI) for
// an unknown folder.
func (p *Proxy) handleModelFolder(w http.ResponseWriter, r *http.Request) {
	files, ok := modelFiles(p.poolCatalogFor(r), r.PathValue("folder"))
	if !ok {
		writeEmpty(w, http.StatusNotFound)
		return
	}
	writeJSON(w, http.StatusOK, files)
}

// handleExperimentModels is GET /experiment/models, the Vue frontend's
// model library: [{name, folders}] without configs and custom_nodes.
// folders are the server's search paths in ComfyUI; the pool's models live
// on GPU boxes whose paths mean nothing here (and differ per box), so the
// list is empty. The frontend reads only the names.
func (p *Proxy) handleExperimentModels(w http.ResponseWriter, r *http.Request) {
	out := []any{}
	for _, f := range modelFolders(p.poolCatalogFor(r)) {
		if f == "configs" || f == "custom_nodes" {
			continue
		}
		out = append(out, map[string]any{"name": f, "folders": []string{}})
	}
	writeJSON(w, http.StatusOK, out)
}

// handleExperimentModelFolder is GET /experiment/models/{folder}: the
// pool's files as [{name, pathIndex}]; 404 for an unknown folder. ComfyUI
// adds each file's size and times on its disk: the pool catalog has only
// the names (one pool, many boxes), and the frontend uses only name and
// pathIndex.
func (p *Proxy) handleExperimentModelFolder(w http.ResponseWriter, r *http.Request) {
	files, ok := modelFiles(p.poolCatalogFor(r), r.PathValue("folder"))
	if !ok {
		writeEmpty(w, http.StatusNotFound)
		return
	}
	out := make([]any, 0, len(files))
	for _, f := range files {
		out = append(out, map[string]any{"name": f, "pathIndex": 0})
	}
	writeJSON(w, http.StatusOK, out)
}

// handleNotOnThisSide answers the GPU-side file routes the proxy cannot
// serve from the catalog (model preview images, safetensors metadata) with
// ComfyUI's answer for a file that has none: 404, empty. They must not
// reach the participant's CPU-only ComfyUI, whose answer would be about
// its own (empty) model folders.
func (p *Proxy) handleNotOnThisSide(w http.ResponseWriter, _ *http.Request) {
	writeEmpty(w, http.StatusNotFound)
}

// handleFree is POST /free {"unload_models", "free_memory"}. The GPUs are
// shared: one participant must not unload the models every other
// participant's next prompt needs, and each agent's ComfyUI manages its own
// memory. The body is checked as ComfyUI does (a JSON object, else 500)
// and the request is answered 200 with no effect.
func (p *Proxy) handleFree(w http.ResponseWriter, r *http.Request) {
	if _, ok := readJSONBody(w, r, false); !ok {
		return
	}
	p.log.Debug().Str("user", sessionFrom(r.Context()).User).Msg("POST /free ignored: the GPUs are shared")
	writeEmpty(w, http.StatusOK)
}

// handleEmbeddings is GET /embeddings.
func (p *Proxy) handleEmbeddings(w http.ResponseWriter, r *http.Request) {
	names := []string{}
	if cat := p.poolCatalogFor(r); cat != nil && cat.Embeddings != nil {
		names = cat.Embeddings
	}
	writeJSON(w, http.StatusOK, names)
}

// handleSystemStats is GET /system_stats: the pool's (from an agent's
// ComfyUI), else a minimal valid document so the frontend's about panel and
// version checks do not fail.
func (p *Proxy) handleSystemStats(w http.ResponseWriter, r *http.Request) {
	if cat := p.poolCatalogFor(r); cat != nil && len(cat.SystemStats) > 0 && !isNull(cat.SystemStats) {
		writeJSONBytes(w, http.StatusOK, cat.SystemStats)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"system": map[string]any{
			"os": "posix", "ram_total": 0, "ram_free": 0,
			"comfyui_version":           "unknown (no GPU agent has reported yet)",
			"required_frontend_version": "",
			"python_version":            "", "pytorch_version": "",
			"embedded_python": false, "argv": []string{},
		},
		"devices": []any{},
	})
}

// handleFeatures is GET /features.
func (p *Proxy) handleFeatures(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, p.features())
}

// features are the server feature flags, also the WebSocket feature_flags
// reply. max_upload_size is a float in ComfyUI; Go encodes a float64 with
// an integral value without ".0", which JavaScript reads the same.
func (p *Proxy) features() map[string]any {
	return map[string]any{
		"supports_preview_metadata": true,
		"max_upload_size":           float64(p.cfg.MaxUploadBytes),
	}
}
