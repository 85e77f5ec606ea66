package dashboard

import (
	"bytes"
	"container/list"
	"errors"
	"image"
	_ "image/gif" // decoders for thumbnails
	_ "image/jpeg"
	"image/png"
	"io"
	"mime"
	"net/http"
	"path"
	"sync"

	"github.com/atelier-run/atelier/pkg/filestore"
	"golang.org/x/image/draw"
	_ "golang.org/x/image/webp"
)

// thumbSize is the longest side of a thumbnail, in pixels (the page shows
// them at half that, sharp on high-density screens).
const thumbSize = 160

// maxThumbPixels refuses to decode pictures larger than this: a
// participant's output must not make the broker allocate gigabytes.
const maxThumbPixels = 64 << 20

func (d *Dashboard) fileRef(r *http.Request) (filestore.Ref, error) {
	q := r.URL.Query()
	kind := q.Get("type")
	if kind == "" {
		kind = string(filestore.KindOutput)
	}
	k, err := filestore.ParseKind(kind)
	if err != nil {
		return filestore.Ref{}, err
	}
	// The Store validates user, subfolder and name (no traversal).
	return filestore.Ref{User: q.Get("user"), Kind: k, Subfolder: q.Get("subfolder"), Name: q.Get("filename")}, nil
}

// handleFile serves a participant's file to an instructor, as a download
// unless it is a picture: the file is the participant's, not trusted HTML.
func (d *Dashboard) handleFile(w http.ResponseWriter, r *http.Request, _ *session) {
	if d.cfg.Store == nil {
		http.Error(w, "no file store", http.StatusNotFound)
		return
	}
	ref, err := d.fileRef(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f, err := d.cfg.Store.Open(r.Context(), ref)
	if err != nil {
		fileError(w, err)
		return
	}
	defer f.Close()
	info := f.Info()
	ctype := mime.TypeByExtension(path.Ext(ref.Name))
	if !isImage(ref.Name) || ctype == "" {
		ctype = "application/octet-stream"
		w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": ref.Name}))
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Content-Security-Policy", "sandbox; default-src 'none'")
	w.Header().Set("ETag", info.ETag())
	w.Header().Set("Cache-Control", "private, max-age=3600")
	http.ServeContent(w, r, "", info.ModTime, f)
}

// handleThumb serves a small PNG of a picture output, cached by its ETag.
func (d *Dashboard) handleThumb(w http.ResponseWriter, r *http.Request, _ *session) {
	if d.cfg.Store == nil {
		http.Error(w, "no file store", http.StatusNotFound)
		return
	}
	ref, err := d.fileRef(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if !isImage(ref.Name) {
		http.Error(w, "not a picture", http.StatusBadRequest)
		return
	}
	f, err := d.cfg.Store.Open(r.Context(), ref)
	if err != nil {
		fileError(w, err)
		return
	}
	defer f.Close()
	etag := f.Info().ETag()
	if r.Header.Get("If-None-Match") == etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	key := ref.String() + "|" + etag
	data, ok := d.thumb.get(key)
	if !ok {
		data, err = makeThumb(f)
		if err != nil {
			http.Error(w, "cannot make a thumbnail: "+err.Error(), http.StatusUnprocessableEntity)
			return
		}
		d.thumb.put(key, data)
	}
	w.Header().Set("Content-Type", "image/png")
	w.Header().Set("ETag", etag)
	w.Header().Set("Cache-Control", "private, max-age=3600")
	_, _ = w.Write(data)
}

func fileError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, filestore.ErrNotFound):
		http.Error(w, "not found", http.StatusNotFound)
	case errors.Is(err, filestore.ErrInvalidName):
		http.Error(w, "invalid file name", http.StatusBadRequest)
	default:
		http.Error(w, "file store error", http.StatusInternalServerError)
	}
}

func makeThumb(f io.ReadSeeker) ([]byte, error) {
	cfg, _, err := image.DecodeConfig(f)
	if err != nil {
		return nil, err
	}
	if cfg.Width <= 0 || cfg.Height <= 0 || cfg.Width*cfg.Height > maxThumbPixels {
		return nil, errors.New("picture too large")
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	src, _, err := image.Decode(f)
	if err != nil {
		return nil, err
	}
	b := src.Bounds()
	w, h := b.Dx(), b.Dy()
	if w > thumbSize || h > thumbSize {
		if w >= h {
			w, h = thumbSize, max(1, h*thumbSize/w)
		} else {
			w, h = max(1, w*thumbSize/h), thumbSize
		}
	}
	dst := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.ApproxBiLinear.Scale(dst, dst.Bounds(), src, b, draw.Src, nil)
	var buf bytes.Buffer
	if err := (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(&buf, dst); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// thumbCache is a small LRU of encoded thumbnails.
type thumbCache struct {
	mu    sync.Mutex
	max   int
	order *list.List
	byKey map[string]*list.Element
}

type thumbItem struct {
	key  string
	data []byte
}

func newThumbCache(n int) *thumbCache {
	return &thumbCache{max: n, order: list.New(), byKey: map[string]*list.Element{}}
}

func (c *thumbCache) get(key string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.byKey[key]
	if el == nil {
		return nil, false
	}
	c.order.MoveToFront(el)
	return el.Value.(*thumbItem).data, true
}

func (c *thumbCache) put(key string, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.byKey[key]; el != nil {
		c.order.MoveToFront(el)
		return
	}
	c.byKey[key] = c.order.PushFront(&thumbItem{key, data})
	for c.order.Len() > c.max {
		el := c.order.Back()
		c.order.Remove(el)
		delete(c.byKey, el.Value.(*thumbItem).key)
	}
}
