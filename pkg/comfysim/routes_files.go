package comfysim

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/atelier-run/atelier/pkg/comfyview"
	"image"
	"image/color"
	"image/png"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// annotatedFilepath is folder_paths.annotated_filepath: a trailing
// "[output]"/"[input]"/"[temp]" selects the directory and is cut off
// together with the character before it.
func (s *Server) annotatedFilepath(name string) (string, string) {
	switch {
	case strings.HasSuffix(name, "[output]"):
		return cutSuffix(name, 9), s.cfg.OutputDir
	case strings.HasSuffix(name, "[input]"):
		return cutSuffix(name, 8), s.cfg.InputDir
	case strings.HasSuffix(name, "[temp]"):
		return cutSuffix(name, 7), s.cfg.TempDir
	}
	return name, ""
}

// handleView is GET /view.
func (s *Server) handleView(w http.ResponseWriter, r *http.Request) {
	q := comfyview.Query(r.URL.RawQuery)
	if !q.Has("filename") {
		writeEmpty(w, http.StatusNotFound)
		return
	}
	filename, dir := s.annotatedFilepath(q.Get("filename"))
	if filename == "" || filename[0] == '/' || strings.Contains(filename, "..") {
		writeEmpty(w, http.StatusBadRequest)
		return
	}
	if dir == "" {
		typ := "output"
		if q.Has("type") {
			typ = q.Get("type")
		}
		dir = s.dirByType(typ)
	}
	if dir == "" {
		writeEmpty(w, http.StatusBadRequest)
		return
	}
	if q.Has("subfolder") {
		sub := q.Get("subfolder")
		full := filepath.Join(dir, sub)
		if filepath.IsAbs(sub) {
			full = filepath.Clean(sub)
		}
		if !within(dir, full) {
			writeEmpty(w, http.StatusForbidden)
			return
		}
		dir = full
	}
	filename = filepath.Base(filename)
	file := filepath.Join(dir, filename)
	st, err := os.Stat(file)
	if err != nil || !st.Mode().IsRegular() {
		writeEmpty(w, http.StatusNotFound)
		return
	}
	disposition := fmt.Sprintf("filename=%q", filename)
	if t := comfyview.TransformOf(q); t.Needed() {
		f, err := os.Open(file)
		if err != nil {
			writeEmpty(w, http.StatusNotFound)
			return
		}
		body, ct, err := t.Apply(f, s.cfg.WebP)
		f.Close()
		if err != nil {
			s.writeServerError(w, r, fmt.Errorf("%s: %w", filename, err))
			return
		}
		w.Header().Set("Content-Disposition", disposition)
		w.Header().Set("Content-Type", ct)
		_, _ = w.Write(body)
		return
	}
	ct := guessMIME(filename)
	switch ct {
	case "text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css":
		// Forced download for types a browser would render.
		ct = "application/octet-stream"
	}
	f, err := os.Open(file)
	if err != nil {
		writeEmpty(w, http.StatusNotFound)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Disposition", disposition)
	w.Header().Set("Content-Type", ct)
	http.ServeContent(w, r, filename, st.ModTime(), f)
}

func decodeFile(path string) (image.Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	img, _, err := image.Decode(f)
	if err != nil {
		return nil, fmt.Errorf("decoding %s: %w", filepath.Base(path), err)
	}
	return img, nil
}

// guessMIME approximates Python's mimetypes.guess_type for common media.
func guessMIME(name string) string {
	ext := strings.ToLower(filepath.Ext(name))
	switch ext {
	case ".png":
		return "image/png"
	case ".jpg", ".jpeg", ".jpe":
		return "image/jpeg"
	case ".webp":
		return "image/webp"
	case ".gif":
		return "image/gif"
	case ".bmp":
		return "image/bmp"
	case ".tif", ".tiff":
		return "image/tiff"
	case ".svg":
		return "image/svg+xml"
	case ".mp4":
		return "video/mp4"
	case ".webm":
		return "video/webm"
	case ".mp3":
		return "audio/mpeg"
	case ".wav":
		return "audio/x-wav"
	case ".flac":
		return "audio/flac"
	case ".json":
		return "application/json"
	case ".txt":
		return "text/plain"
	case ".html", ".htm":
		return "text/html"
	case ".js":
		return "text/javascript"
	case ".css":
		return "text/css"
	}
	if t := mime.TypeByExtension(ext); t != "" {
		t, _, _ = strings.Cut(t, ";")
		return t
	}
	return "application/octet-stream"
}

// uploadForm is the parsed multipart body of /upload/image and /upload/mask.
type uploadForm struct {
	file     multipart.File
	filename string
	fields   map[string]string
}

// parseUpload reads the multipart body. A missing image part yields a nil
// file; a body that is not multipart is a 500, as aiohttp's post() fails.
func parseUpload(r *http.Request) (*uploadForm, error) {
	if err := r.ParseMultipartForm(32 << 20); err != nil {
		return nil, err
	}
	form := &uploadForm{fields: map[string]string{}}
	for k, v := range r.MultipartForm.Value {
		if len(v) > 0 {
			form.fields[k] = v[0]
		}
	}
	if fhs := r.MultipartForm.File["image"]; len(fhs) > 0 {
		f, err := fhs[0].Open()
		if err != nil {
			return nil, err
		}
		form.file, form.filename = f, fhs[0].Filename
	}
	return form, nil
}

func (s *Server) handleUploadImage(w http.ResponseWriter, r *http.Request) {
	s.upload(w, r, nil)
}

// upload is image_upload(): directory by type, subfolder, rename to
// "stem (N).ext" unless overwrite, reuse of an identical existing file.
// save, when set, writes the file instead of copying the upload (masks).
func (s *Server) upload(w http.ResponseWriter, r *http.Request, save func(form *uploadForm, path string) error) {
	form, err := parseUpload(r)
	if err != nil {
		s.writeServerError(w, r, err)
		return
	}
	if r.MultipartForm != nil {
		defer func() { _ = r.MultipartForm.RemoveAll() }()
	}
	typ := "input"
	if t, ok := form.fields["type"]; ok {
		typ = t
	}
	dir := s.dirByType(typ)
	if dir == "" {
		// ComfyUI crashes on an unknown type (UnboundLocalError).
		s.writeServerError(w, r, fmt.Errorf("unknown upload type %q", typ))
		return
	}
	if form.file == nil {
		writeEmpty(w, http.StatusBadRequest)
		return
	}
	defer form.file.Close()
	subfolder := form.fields["subfolder"]
	folder, path, ok := uploadPath(dir, subfolder, form.filename)
	if !ok {
		writeEmpty(w, http.StatusBadRequest)
		return
	}
	if err := os.MkdirAll(folder, 0o755); err != nil {
		s.writeServerError(w, r, err)
		return
	}
	filename, path, duplicate, err := uploadName(form, folder, path)
	if err != nil {
		s.writeServerError(w, r, err)
		return
	}
	if !duplicate {
		if save != nil {
			err = save(form, path)
		} else {
			err = writeFileFrom(path, form.file)
		}
		if err != nil {
			s.writeServerError(w, r, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, object{{"name", filename}, {"subfolder", subfolder}, {"type", typ}})
}

// uploadPath is where an upload named filename goes: subfolder of dir (an
// absolute subfolder is taken as is, as os.path.join does); ok is false
// for an empty name or a path outside dir.
func uploadPath(dir, subfolder, filename string) (folder, path string, ok bool) {
	if filename == "" {
		return "", "", false
	}
	folder = filepath.Join(dir, filepath.Clean(filepath.FromSlash(subfolder)))
	if filepath.IsAbs(subfolder) {
		folder = filepath.Clean(subfolder)
	}
	path = filepath.Join(folder, filename)
	if !within(dir, path) || path == dir {
		return "", "", false
	}
	return folder, path, true
}

// uploadName is the name the upload is saved under: without overwrite, a
// file of that name with other content makes it "name (1).ext", "name
// (2).ext" … and one with the same content is reused (duplicate: nothing
// is written).
func uploadName(form *uploadForm, folder, path string) (filename, newPath string, duplicate bool, err error) {
	filename = form.filename
	if ow := form.fields["overwrite"]; ow == "true" || ow == "1" {
		return filename, path, false, nil
	}
	// Hash the upload once; it is compared with each existing candidate.
	h := sha256.New()
	if _, err := io.Copy(h, form.file); err != nil {
		return "", "", false, err
	}
	uploadSum := hex.EncodeToString(h.Sum(nil))
	if _, err := form.file.Seek(0, io.SeekStart); err != nil {
		return "", "", false, err
	}
	ext := filepath.Ext(filename)
	stem := strings.TrimSuffix(filename, ext)
	for i := 1; ; i++ {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return filename, path, false, nil
		}
		if sum, err := fileSHA256(path); err == nil && sum == uploadSum {
			return filename, path, true, nil
		}
		filename = fmt.Sprintf("%s (%d)%s", stem, i, ext)
		path = filepath.Join(folder, filename)
	}
}

func writeFileFrom(path string, r io.Reader) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// handleUploadMask is POST /upload/mask: the uploaded image's alpha is
// copied onto the original_ref image and the result saved as PNG under the
// upload's name. As in ComfyUI, a bad original_ref still answers 200 but
// writes nothing.
func (s *Server) handleUploadMask(w http.ResponseWriter, r *http.Request) {
	s.upload(w, r, func(form *uploadForm, path string) error {
		refV, err := decodeJSON([]byte(form.fields["original_ref"]))
		if err != nil {
			return fmt.Errorf("original_ref: %w", err)
		}
		ref, ok := refV.(object)
		if !ok {
			return errors.New("original_ref is not an object")
		}
		refName, _ := ref.Str("filename")
		filename, dir := s.annotatedFilepath(refName)
		if filename == "" || filename[0] == '/' || strings.Contains(filename, "..") {
			return nil
		}
		if dir == "" {
			typ := "output"
			if t, ok := ref.Str("type"); ok {
				typ = t
			}
			dir = s.dirByType(typ)
		}
		if dir == "" {
			return nil
		}
		if sub, _ := ref.Str("subfolder"); sub != "" {
			full := filepath.Join(dir, sub)
			if !within(dir, full) {
				return nil
			}
			dir = full
		}
		original, err := decodeFile(filepath.Join(dir, filename))
		if err != nil {
			return nil
		}
		mask, _, err := image.Decode(form.file)
		if err != nil {
			return fmt.Errorf("decoding mask: %w", err)
		}
		ob, mb := original.Bounds(), mask.Bounds()
		if ob.Dx() != mb.Dx() || ob.Dy() != mb.Dy() {
			return errors.New("images do not match")
		}
		out := image.NewNRGBA(image.Rect(0, 0, ob.Dx(), ob.Dy()))
		maskAlpha := comfyview.HasAlpha(mask)
		for y := 0; y < ob.Dy(); y++ {
			for x := 0; x < ob.Dx(); x++ {
				c := color.NRGBAModel.Convert(original.At(ob.Min.X+x, ob.Min.Y+y)).(color.NRGBA)
				c.A = 255
				if maskAlpha {
					c.A = color.NRGBAModel.Convert(mask.At(mb.Min.X+x, mb.Min.Y+y)).(color.NRGBA).A
				}
				out.SetNRGBA(x, y, c)
			}
		}
		var buf bytes.Buffer
		if err := png.Encode(&buf, out); err != nil {
			return err
		}
		return os.WriteFile(path, buf.Bytes(), 0o644)
	})
}
