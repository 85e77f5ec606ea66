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

// handleModels is GET /models: the model folder names.
func (p *Proxy) handleModels(w http.ResponseWriter, r *http.Request) {
	folders := []string{}
	if cat := p.poolCatalogFor(r); cat != nil {
		for f := range cat.Models {
			folders = append(folders, f)
		}
	}
	slices.Sort(folders)
	writeJSON(w, http.StatusOK, folders)
}

// handleModelFolder is GET /models/{folder}: 404 for an unknown folder.
func (p *Proxy) handleModelFolder(w http.ResponseWriter, r *http.Request) {
	cat := p.poolCatalogFor(r)
	var files []string
	ok := false
	if cat != nil {
		files, ok = cat.Models[r.PathValue("folder")]
	}
	if !ok {
		writePlain(w, http.StatusNotFound, "unknown model folder")
		return
	}
	files = slices.Clone(files)
	if files == nil {
		files = []string{}
	}
	slices.Sort(files)
	writeJSON(w, http.StatusOK, files)
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
