package proxy

import (
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"

	"github.com/atelier-run/atelier/pkg/comfyview"
	"github.com/atelier-run/atelier/pkg/comfyview/webpenc"
	"github.com/atelier-run/atelier/pkg/filestore"
)

// handleView is GET /view?filename=&subfolder=&type= (comfyui-api.md §2.3):
// the participant's files from the mello store, with Range and ETag. The
// store is per user, so another participant's file is simply not found.
func (p *Proxy) handleView(w http.ResponseWriter, r *http.Request) {
	// aiohttp's query parsing: "preview=webp;90" keeps its ';'.
	q := comfyview.Query(r.URL.RawQuery)
	ref, rerr := viewRef(q, sessionFrom(r.Context()).User)
	if rerr != nil {
		rerr.write(w)
		return
	}
	f, err := p.cfg.Store.Open(r.Context(), ref)
	if err != nil {
		switch {
		case errors.Is(err, filestore.ErrNotFound):
			writePlain(w, http.StatusNotFound, "file not found")
		case errors.Is(err, filestore.ErrInvalidName):
			writePlain(w, http.StatusBadRequest, "invalid file name or subfolder")
		default:
			p.log.Error().Err(err).Str("ref", ref.String()).Msg("open file for /view")
			writePlain(w, http.StatusInternalServerError, "cannot read the file")
		}
		return
	}
	defer func() { _ = f.Close() }()

	if t := comfyview.TransformOf(q); t.Needed() {
		p.serveTransformed(w, t, f, ref)
		return
	}
	info := f.Info()
	h := w.Header()
	h.Set("Content-Type", viewContentType(ref.Name))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Disposition", contentDisposition(ref.Name))
	h.Set("ETag", info.ETag())
	// A Range in a unit other than bytes is ignored (RFC 9110 §14.2), not
	// refused as ServeContent would.
	if rg := r.Header.Get("Range"); rg != "" && !strings.HasPrefix(rg, "bytes=") {
		r.Header.Del("Range")
	}
	http.ServeContent(w, r, ref.Name, info.ModTime, f)
}

// viewRef is the user's file a /view query names, or ComfyUI's refusal.
func viewRef(q url.Values, user string) (filestore.Ref, *requestError) {
	if !q.Has("filename") {
		return filestore.Ref{}, plainError(http.StatusNotFound, "filename is required")
	}
	kind := q.Get("type")
	if kind == "" {
		kind = string(filestore.KindOutput)
	}
	name, annotated := annotatedName(q.Get("filename"))
	if annotated != "" {
		kind = annotated
	}
	if name == "" || name[0] == '/' || strings.Contains(name, "..") {
		return filestore.Ref{}, plainError(http.StatusBadRequest, "invalid filename")
	}
	k, err := filestore.ParseKind(kind)
	if err != nil {
		return filestore.Ref{}, plainError(http.StatusBadRequest, "invalid type: want output, input or temp")
	}
	sub := q.Get("subfolder")
	if strings.Contains(sub, "..") || strings.HasPrefix(sub, "/") {
		return filestore.Ref{}, plainError(http.StatusForbidden, "subfolder outside the participant's folder")
	}
	// ComfyUI uses only the last component of filename.
	name = path.Base(strings.ReplaceAll(name, "\\", "/"))
	return filestore.Ref{User: user, Kind: k, Subfolder: sub, Name: name}, nil
}

// serveTransformed answers /view with ComfyUI's preview re-encoding or
// channel extraction of f, as the simulator does them.
func (p *Proxy) serveTransformed(w http.ResponseWriter, t comfyview.Transform, f io.Reader, ref filestore.Ref) {
	body, ct, err := t.Apply(f, webpenc.Encoder{})
	if err != nil {
		p.log.Warn().Err(err).Str("ref", ref.String()).Msg("re-encode for /view")
		writePlain(w, http.StatusInternalServerError, "cannot re-encode the file: "+err.Error())
		return
	}
	h := w.Header()
	h.Set("Content-Type", ct)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Disposition", contentDisposition(ref.Name))
	_, _ = w.Write(body)
}

// annotatedName splits ComfyUI's "name [output]" annotation off a file name.
func annotatedName(s string) (name, kind string) {
	for _, k := range []string{"output", "input", "temp"} {
		if n, ok := strings.CutSuffix(s, " ["+k+"]"); ok {
			return n, k
		}
	}
	return s, ""
}

// viewContentType guesses the type from the extension like ComfyUI, which
// refuses to serve active content (HTML, scripts, styles) as such.
func viewContentType(name string) string {
	ct := mime.TypeByExtension(strings.ToLower(path.Ext(name)))
	if ct == "" {
		return "application/octet-stream"
	}
	base, _, _ := mime.ParseMediaType(ct)
	switch base {
	case "text/html", "application/xhtml+xml", "text/javascript", "application/javascript", "text/css",
		"image/svg+xml":
		return "application/octet-stream"
	}
	return ct
}

// contentDisposition is ComfyUI's `filename="<name>"`, quoted safely, with
// an RFC 6266 filename* for names that are not plain ASCII.
func contentDisposition(name string) string {
	ascii := true
	for i := 0; i < len(name); i++ {
		if name[i] < 0x20 || name[i] >= 0x7f {
			ascii = false
			break
		}
	}
	quoted := strconv.Quote(name)
	if ascii {
		return "filename=" + quoted
	}
	fallback := strings.Map(func(r rune) rune {
		if r < 0x20 || r >= 0x7f || r == '"' || r == '\\' {
			return '_'
		}
		return r
	}, name)
	return `filename="` + fallback + `"; filename*=UTF-8''` + urlPathEscape(name)
}

func urlPathEscape(s string) string {
	const hexdigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexdigits[c>>4])
		b.WriteByte(hexdigits[c&0xf])
	}
	return b.String()
}
