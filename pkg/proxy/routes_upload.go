package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"net/http"
	"os"
	"strings"

	_ "golang.org/x/image/webp"
	_ "image/jpeg" // masks and originals may be JPEG

	"github.com/atelier-run/atelier/pkg/filestore"
)

// maxMaskPixels bounds the images /upload/mask decodes (a decompression
// bomb guard): 64 megapixels, far above what ComfyUI users paint on.
const maxMaskPixels = 64 << 20

// upload is one parsed /upload/image or /upload/mask request.
type upload struct {
	file      *os.File // spooled content of the "image" part
	size      int64
	sha256    string
	name      string
	kind      filestore.Kind
	subfolder string
	overwrite bool
	fields    map[string]string
}

func (u *upload) close() {
	if u.file != nil {
		_ = u.file.Close()
		_ = os.Remove(u.file.Name())
	}
}

// parseUpload reads the multipart form of an upload (comfyui-api.md §2.3),
// spooling the file part to disk with its sha256. It answers the request
// itself on failure.
func (p *Proxy) parseUpload(w http.ResponseWriter, r *http.Request) (*upload, bool) {
	r.Body = http.MaxBytesReader(w, r.Body, p.cfg.MaxUploadBytes)
	mr, err := r.MultipartReader()
	if err != nil {
		writePlain(w, http.StatusBadRequest, "want a multipart/form-data body")
		return nil, false
	}
	u := &upload{fields: map[string]string{}}
	fail := func(status int, msg string) (*upload, bool) {
		u.close()
		writePlain(w, status, msg)
		return nil, false
	}
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				return fail(http.StatusRequestEntityTooLarge, fmt.Sprintf("Maximum request body size %d exceeded", p.cfg.MaxUploadBytes))
			}
			return fail(http.StatusBadRequest, "read multipart body: "+err.Error())
		}
		name := part.FormName()
		if name == "image" && part.FileName() != "" && u.file == nil {
			if err := u.spool(part, p.cfg.SpoolDir); err != nil {
				var tooBig *http.MaxBytesError
				if errors.As(err, &tooBig) {
					return fail(http.StatusRequestEntityTooLarge, fmt.Sprintf("Maximum request body size %d exceeded", p.cfg.MaxUploadBytes))
				}
				return fail(http.StatusInternalServerError, "spool upload: "+err.Error())
			}
			u.name = part.FileName()
			continue
		}
		b, err := io.ReadAll(io.LimitReader(part, 64<<10))
		if err != nil {
			return fail(http.StatusBadRequest, "read form field: "+err.Error())
		}
		u.fields[name] = string(b)
	}
	if u.file == nil || u.size == 0 {
		return fail(http.StatusBadRequest, "")
	}
	kind := u.fields["type"]
	if kind == "" {
		kind = string(filestore.KindInput)
	}
	k, err := filestore.ParseKind(kind)
	if err != nil {
		// ComfyUI's folder lookup fails on anything else: 500.
		return fail(http.StatusInternalServerError, "invalid type: want input, temp or output")
	}
	u.kind = k
	u.subfolder = u.fields["subfolder"]
	u.overwrite = u.fields["overwrite"] == "true" || u.fields["overwrite"] == "1"
	// The browser sends the local file name; only its last part counts
	// (ComfyUI uses os.path.basename on the upload's filename).
	u.name = baseName(u.name)
	if filestore.ValidateName(u.name) != nil {
		return fail(http.StatusBadRequest, "invalid file name")
	}
	if _, err := filestore.CleanSubfolder(u.subfolder); err != nil {
		return fail(http.StatusBadRequest, "invalid subfolder")
	}
	return u, true
}

// baseName is the last path component of a browser-sent file name, with
// either separator.
func baseName(name string) string {
	name = strings.ReplaceAll(name, "\\", "/")
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		name = name[i+1:]
	}
	return name
}

func (u *upload) spool(r io.Reader, dir string) error {
	f, err := os.CreateTemp(dir, "atelier-upload-*")
	if err != nil {
		return err
	}
	u.file = f
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	if err != nil {
		return err
	}
	u.size = n
	u.sha256 = hex.EncodeToString(h.Sum(nil))
	_, err = f.Seek(0, io.SeekStart)
	return err
}

// store saves content (size bytes, given sha256) under the participant's
// kind/subfolder with ComfyUI's rule: overwrite replaces; otherwise a file
// of that name whose content hashes to uploaded is reused and a different
// one gets "stem (n).ext". uploaded is the sha256 of what the client sent,
// which differs from sum for a mask (ComfyUI compares the upload itself
// with the existing file, before it applies the mask). It returns the
// final name.
func (p *Proxy) store(ctx context.Context, ref filestore.Ref, content io.ReadSeeker, sum, uploaded string, overwrite bool) (string, error) {
	for attempt := 0; attempt < 5; attempt++ {
		opts := []filestore.CreateOption{}
		if overwrite {
			opts = append(opts, filestore.Overwrite())
		} else {
			name, exists, err := filestore.UniqueName(ctx, p.cfg.Store, ref, uploaded)
			if err != nil {
				return "", err
			}
			if exists {
				return name, nil
			}
			ref.Name = name
		}
		if _, err := content.Seek(0, io.SeekStart); err != nil {
			return "", err
		}
		wr, err := p.cfg.Store.Create(ctx, ref, opts...)
		if err != nil {
			return "", err
		}
		if _, err := io.Copy(wr, content); err != nil {
			_ = wr.Abort()
			return "", err
		}
		if _, err := wr.Commit(ctx, sum); err != nil {
			_ = wr.Abort()
			if errors.Is(err, filestore.ErrExists) && !overwrite {
				continue // someone took the name meanwhile: pick again
			}
			return "", err
		}
		return ref.Name, nil
	}
	return "", fmt.Errorf("store %s: the name kept being taken", ref)
}

// handleUploadImage is POST /upload/image: the file goes into the
// participant's input (or temp/output) folder in mello's store, from where
// the agent stages it for the jobs that reference it.
func (p *Proxy) handleUploadImage(w http.ResponseWriter, r *http.Request) {
	u, ok := p.parseUpload(w, r)
	if !ok {
		return
	}
	defer u.close()
	p.finishUpload(w, r, u, u.file, u.sha256)
}

func (p *Proxy) finishUpload(w http.ResponseWriter, r *http.Request, u *upload, content io.ReadSeeker, sum string) {
	sess := sessionFrom(r.Context())
	ref := filestore.Ref{User: sess.User, Kind: u.kind, Subfolder: u.subfolder, Name: u.name}
	size, err := content.Seek(0, io.SeekEnd)
	if err != nil {
		writePlain(w, http.StatusInternalServerError, "cannot read the upload")
		return
	}
	if q := p.cfg.Quotas; q != nil {
		if err := q.Check(r.Context(), sess.User, size); err != nil {
			if errors.Is(err, filestore.ErrQuotaExceeded) {
				writePlain(w, http.StatusRequestEntityTooLarge, err.Error())
				return
			}
			p.log.Error().Err(err).Str("user", sess.User).Msg("check disk quota")
			writePlain(w, http.StatusInternalServerError, "cannot check your disk quota")
			return
		}
	}
	name, err := p.store(r.Context(), ref, content, sum, u.sha256, u.overwrite)
	if err != nil {
		if errors.Is(err, filestore.ErrInvalidName) {
			writePlain(w, http.StatusBadRequest, "invalid file name or subfolder")
			return
		}
		p.log.Error().Err(err).Str("ref", ref.String()).Msg("store upload")
		writePlain(w, http.StatusInternalServerError, "cannot store the file")
		return
	}
	if q := p.cfg.Quotas; q != nil {
		q.Added(sess.User, size)
	}
	writeJSON(w, http.StatusOK, map[string]string{"name": name, "subfolder": u.subfolder, "type": string(u.kind)})
}

// handleUploadMask is POST /upload/mask: the uploaded image's alpha channel
// is copied onto the original named by original_ref (one of the
// participant's files), saved as PNG with the original's text chunks (the
// workflow ComfyUI embedded), under the upload's name.
func (p *Proxy) handleUploadMask(w http.ResponseWriter, r *http.Request) {
	u, ok := p.parseUpload(w, r)
	if !ok {
		return
	}
	defer u.close()
	var orig struct {
		Filename  string `json:"filename"`
		Subfolder string `json:"subfolder"`
		Type      string `json:"type"`
	}
	if err := json.Unmarshal([]byte(u.fields["original_ref"]), &orig); err != nil || orig.Filename == "" {
		writePlain(w, http.StatusInternalServerError, "original_ref: want JSON {filename, subfolder, type}")
		return
	}
	if orig.Type == "" {
		orig.Type = string(filestore.KindOutput)
	}
	name, annotated := annotatedName(orig.Filename)
	if annotated != "" {
		orig.Type = annotated
	}
	k, err := filestore.ParseKind(orig.Type)
	if err != nil || name == "" || strings.Contains(name, "..") || strings.HasPrefix(name, "/") {
		writePlain(w, http.StatusBadRequest, "invalid original_ref")
		return
	}
	sess := sessionFrom(r.Context())
	ref := filestore.Ref{User: sess.User, Kind: k, Subfolder: orig.Subfolder, Name: baseName(name)}
	of, err := p.cfg.Store.Open(r.Context(), ref)
	if err != nil {
		if errors.Is(err, filestore.ErrNotFound) || errors.Is(err, filestore.ErrInvalidName) {
			writePlain(w, http.StatusNotFound, "original image not found")
			return
		}
		writePlain(w, http.StatusInternalServerError, "cannot read the original image")
		return
	}
	origBytes, err := io.ReadAll(io.LimitReader(of, p.cfg.MaxUploadBytes+1))
	_ = of.Close()
	if err != nil {
		writePlain(w, http.StatusInternalServerError, "cannot read the original image")
		return
	}
	maskBytes, err := io.ReadAll(u.file)
	if err != nil {
		writePlain(w, http.StatusInternalServerError, "cannot read the mask")
		return
	}
	out, err := applyMask(origBytes, maskBytes)
	if err != nil {
		writePlain(w, http.StatusBadRequest, err.Error())
		return
	}
	sum := sha256.Sum256(out)
	p.finishUpload(w, r, u, bytes.NewReader(out), hex.EncodeToString(sum[:]))
}

// applyMask returns the original as RGBA PNG with the mask's alpha, and
// the original's tEXt/iTXt/zTXt chunks (ComfyUI keeps the PNG info).
func applyMask(origBytes, maskBytes []byte) ([]byte, error) {
	decode := func(b []byte, what string) (image.Image, error) {
		cfg, _, err := image.DecodeConfig(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("cannot decode the %s image: %w", what, err)
		}
		if int64(cfg.Width)*int64(cfg.Height) > maxMaskPixels {
			return nil, fmt.Errorf("the %s image is too large", what)
		}
		img, _, err := image.Decode(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("cannot decode the %s image: %w", what, err)
		}
		return img, nil
	}
	orig, err := decode(origBytes, "original")
	if err != nil {
		return nil, err
	}
	mask, err := decode(maskBytes, "mask")
	if err != nil {
		return nil, err
	}
	b := orig.Bounds()
	out := image.NewNRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	draw.Draw(out, out.Bounds(), orig, b.Min, draw.Src)
	// PIL resizes the mask to the original's size; nearest is enough for
	// the painted masks the editor sends (same size in practice).
	mb := mask.Bounds()
	for y := 0; y < b.Dy(); y++ {
		for x := 0; x < b.Dx(); x++ {
			mx := mb.Min.X + x*mb.Dx()/b.Dx()
			my := mb.Min.Y + y*mb.Dy()/b.Dy()
			_, _, _, a := mask.At(mx, my).RGBA()
			c := out.NRGBAAt(x, y)
			out.SetNRGBA(x, y, color.NRGBA{R: c.R, G: c.G, B: c.B, A: uint8(a >> 8)})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, out); err != nil {
		return nil, err
	}
	return withTextChunks(buf.Bytes(), pngTextChunks(origBytes)), nil
}

// pngTextChunks returns the raw tEXt, iTXt and zTXt chunks of a PNG.
func pngTextChunks(b []byte) [][]byte {
	const sig = "\x89PNG\r\n\x1a\n"
	if !bytes.HasPrefix(b, []byte(sig)) {
		return nil
	}
	var out [][]byte
	for i := len(sig); i+12 <= len(b); {
		n := int(binary.BigEndian.Uint32(b[i:]))
		if n < 0 || i+12+n > len(b) {
			break
		}
		switch string(b[i+4 : i+8]) {
		case "tEXt", "iTXt", "zTXt":
			out = append(out, b[i:i+12+n])
		}
		i += 12 + n
	}
	return out
}

// withTextChunks inserts chunks after IHDR (the first chunk).
func withTextChunks(pngBytes []byte, chunks [][]byte) []byte {
	if len(chunks) == 0 {
		return pngBytes
	}
	const ihdrEnd = 8 + 12 + 13
	out := append([]byte(nil), pngBytes[:ihdrEnd]...)
	for _, c := range chunks {
		// Re-check the CRC: a damaged chunk would make the PNG invalid.
		if crc32.ChecksumIEEE(c[4:len(c)-4]) != binary.BigEndian.Uint32(c[len(c)-4:]) {
			continue
		}
		out = append(out, c...)
	}
	return append(out, pngBytes[ihdrEnd:]...)
}
