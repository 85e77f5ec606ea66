package comfysim

import (
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// The model manager routes of ComfyUI (app/model_manager.py) and
// /view_metadata (server.py), which the Vue frontend's model library uses.
// The simulator's model files are names only (Config.Models); where one
// also exists on disk under <Dir>/models/<folder>/, its size and times are
// reported, otherwise size 0 and the simulator's start time.

// modelFolderBlacklist are the folders /experiment/models leaves out.
var modelFolderBlacklist = map[string]bool{"configs": true, "custom_nodes": true}

// modelDir is the simulated search path of a model folder.
func (s *Server) modelDir(folder string) string {
	base := s.cfg.Dir
	if base == "" {
		base = filepath.Dir(s.cfg.InputDir)
	}
	abs, err := filepath.Abs(filepath.Join(base, "models", folder))
	if err != nil {
		return filepath.Join(base, "models", folder)
	}
	return abs
}

// handleExperimentModels is GET /experiment/models: [{name, folders}] in
// folder_names_and_paths order, without configs and custom_nodes.
func (s *Server) handleExperimentModels(w http.ResponseWriter, r *http.Request) {
	out := []any{}
	for _, f := range s.folderNames() {
		if modelFolderBlacklist[f] {
			continue
		}
		out = append(out, object{{"name", f}, {"folders", []any{s.modelDir(f)}}})
	}
	writeJSON(w, http.StatusOK, out)
}

// handleExperimentModelFolder is GET /experiment/models/{folder}: the
// folder's files with pathIndex, times (float seconds) and size; 404 for a
// folder that is not a key of folder_names_and_paths (legacy names too).
func (s *Server) handleExperimentModelFolder(w http.ResponseWriter, r *http.Request) {
	folder := r.PathValue("folder")
	if !s.isFolder(folder) {
		writeEmpty(w, http.StatusNotFound)
		return
	}
	dir := s.modelDir(folder)
	out := []any{}
	for _, name := range s.modelFiles(folder) {
		mod, created, size := s.started, s.started, int64(0)
		if st, err := os.Stat(filepath.Join(dir, filepath.FromSlash(name))); err == nil && st.Mode().IsRegular() {
			mod, created, size = st.ModTime(), st.ModTime(), st.Size()
		}
		out = append(out, object{
			{"name", name}, {"pathIndex", 0},
			{"modified", pyFloat(float64(mod.UnixNano()) / float64(time.Second))},
			{"created", pyFloat(float64(created.UnixNano()) / float64(time.Second))},
			{"size", size},
		})
	}
	writeJSON(w, http.StatusOK, out)
}

// handleModelPreview is GET /experiment/models/preview/{folder}/{index}/
// {filename}: the simulated models have no preview images.
func (s *Server) handleModelPreview(w http.ResponseWriter, r *http.Request) {
	writeEmpty(w, http.StatusNotFound)
}

// handleViewMetadata is GET /view_metadata/{folder}?filename=x.safetensors:
// the __metadata__ of a safetensors header, 404 for anything else. The
// simulated model files have no header, so ComfyUI's answer for a file
// without one (404) is the only one.
func (s *Server) handleViewMetadata(w http.ResponseWriter, r *http.Request) {
	writeEmpty(w, http.StatusNotFound)
}
