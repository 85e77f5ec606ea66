package comfysim

import (
	"bufio"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// Simulated versions reported by /system_stats: the baseline of
// comfyui-api.md.
const (
	comfyUIVersion  = "0.3.64"
	frontendVersion = "1.27.10"
	templateVersion = "0.1.95"
	pythonVersion   = "3.12.3 (main, Sep 11 2025, 14:09:07) [GCC 13.3.0]"
	pytorchVersion  = "2.8.0+cu128"
)

func (s *Server) handleModels(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, anyStrings(s.folderNames()))
}

func (s *Server) handleModelFolder(w http.ResponseWriter, r *http.Request) {
	folder := r.PathValue("folder")
	// Legacy aliases resolve in lookups but not in this existence check.
	if !s.isFolder(folder) {
		writeEmpty(w, http.StatusNotFound)
		return
	}
	writeJSON(w, http.StatusOK, anyStrings(s.modelFiles(folder)))
}

func (s *Server) handleEmbeddings(w http.ResponseWriter, r *http.Request) {
	files := s.modelFiles("embeddings")
	out := make([]any, len(files))
	for i, f := range files {
		out[i] = strings.TrimSuffix(f, filepath.Ext(f))
	}
	writeJSON(w, http.StatusOK, out)
}

// handleExtensions lists frontend extension scripts: the simulator has no
// custom nodes and serves no frontend.
func (s *Server) handleExtensions(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, []any{})
}

func (s *Server) handleSystemStats(w http.ResponseWriter, r *http.Request) {
	ramTotal, ramFree := memInfo()
	s.mu.Lock()
	busy := s.running != nil
	s.mu.Unlock()
	// A little VRAM is always taken by the CUDA context; a running
	// prompt holds much more, as loaded models would.
	used := int64(512 << 20)
	torchTotal, torchFree := int64(0), int64(0)
	if busy {
		used = s.cfg.VRAMTotal / 4
		torchTotal = used
		torchFree = used / 8
	}
	osName := "posix"
	if runtime.GOOS == "windows" {
		osName = "nt"
	}
	argv := anyStrings(s.cfg.Argv)
	writeJSON(w, http.StatusOK, object{
		{"system", object{
			{"os", osName},
			{"ram_total", ramTotal},
			{"ram_free", ramFree},
			{"comfyui_version", comfyUIVersion},
			{"required_frontend_version", frontendVersion},
			{"installed_templates_version", templateVersion},
			{"required_templates_version", templateVersion},
			{"python_version", pythonVersion},
			{"pytorch_version", pytorchVersion},
			{"embedded_python", false},
			{"argv", argv},
		}},
		{"devices", []any{object{
			// --cuda-device N sets CUDA_VISIBLE_DEVICES, so the chosen GPU
			// is always cuda:0 to ComfyUI.
			{"name", "cuda:0 " + s.cfg.DeviceName + " : cudaMallocAsync"},
			{"type", "cuda"},
			{"index", 0},
			{"vram_total", s.cfg.VRAMTotal},
			{"vram_free", s.cfg.VRAMTotal - used},
			{"torch_vram_total", torchTotal},
			{"torch_vram_free", torchFree},
		}}},
	})
}

// memInfo reads total and available RAM from /proc/meminfo (psutil's
// virtual_memory), with fixed values where that is unavailable.
func memInfo() (total, free int64) {
	total, free = 33554432000, 20000000000
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return total, free
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kb, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil {
			continue
		}
		switch fields[0] {
		case "MemTotal:":
			total = kb * 1024
		case "MemAvailable:":
			free = kb * 1024
		}
	}
	return total, free
}
