package conformance

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	_ "image/jpeg"
	_ "image/png"
	"mime"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"

	_ "golang.org/x/image/webp"

	"github.com/atelier-run/atelier/pkg/pyjson"
)

// normalizer turns what a client sees into text that is equal between the
// simulator and Atelier exactly when a client could not tell them apart.
// It replaces only what legitimately differs between two servers:
//
//   - ids (prompt ids, socket ids): by order of first appearance, <id1> …;
//   - timestamps (timestamp, create_time, execution_*_time): <ts>;
//   - counters (a prompt's number, the jobs API's priority, element 0 of a
//     queue tuple, when an integer): by order of first appearance, <n1> …,
//     because ComfyUI's counter also counts refused prompts and Atelier's
//     is the SUBMIT sequence;
//   - the host's memory figures in /system_stats: <mem>;
//   - PreviewImage's random name part (ComfyUI_temp_<5 letters>_).
//
// Everything else is compared as a value: object keys sorted (Python dict
// order is not part of the contract) except where order is (history,
// keyed by prompt id in completion order), numbers by value (5 == 5.0, as
// JavaScript reads them), images by their decoded pixels. The deliberate
// differences are listed in README.md, each with its reason.
type normalizer struct {
	ids    map[string]string
	counts map[string]string
}

func newNormalizer() *normalizer {
	return &normalizer{ids: map[string]string{}, counts: map[string]string{}}
}

func (n *normalizer) clone() *normalizer {
	c := newNormalizer()
	for k, v := range n.ids {
		c.ids[k] = v
	}
	for k, v := range n.counts {
		c.counts[k] = v
	}
	return c
}

var (
	uuidRe   = regexp.MustCompile(`[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}`)
	hexIDRe  = regexp.MustCompile(`\b[0-9a-f]{32}\b`)
	tempName = regexp.MustCompile(`ComfyUI_temp_[a-z]{5}_`)
)

func (n *normalizer) id(s string) string {
	if p, ok := n.ids[s]; ok {
		return p
	}
	p := fmt.Sprintf("<id%d>", len(n.ids)+1)
	n.ids[s] = p
	return p
}

func (n *normalizer) str(s string) string {
	s = uuidRe.ReplaceAllStringFunc(s, n.id)
	s = hexIDRe.ReplaceAllStringFunc(s, n.id)
	return tempName.ReplaceAllString(s, "ComfyUI_temp_<rand>_")
}

func (n *normalizer) counter(num json.Number) string {
	if !pyjson.NumberIsInt(num) {
		return numberRepr(num)
	}
	key := numberRepr(num)
	if p, ok := n.counts[key]; ok {
		return p
	}
	p := fmt.Sprintf("<n%d>", len(n.counts)+1)
	n.counts[key] = p
	return p
}

func numberRepr(num json.Number) string {
	f, err := num.Float64()
	if err != nil {
		return string(num)
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// render is the canonical text of a decoded JSON value. ordered keeps the
// object keys of this level in their order.
func (n *normalizer) render(v any, ordered bool) string {
	switch t := v.(type) {
	case pyjson.Object:
		parts := make([]string, 0, len(t))
		for _, m := range t {
			parts = append(parts, strconv.Quote(n.str(m.Key))+":"+n.field(m.Key, m.Value))
		}
		if !ordered {
			sort.Strings(parts)
		}
		return "{" + strings.Join(parts, ",") + "}"
	case []any:
		parts := make([]string, len(t))
		tuple := isQueueTuple(t)
		for i, e := range t {
			if num, ok := e.(json.Number); ok && tuple && i == 0 {
				parts[i] = n.counter(num)
				continue
			}
			parts[i] = n.render(e, false)
		}
		return "[" + strings.Join(parts, ",") + "]"
	case json.Number:
		return numberRepr(t)
	case string:
		return strconv.Quote(n.str(t))
	case bool:
		return strconv.FormatBool(t)
	case nil:
		return "null"
	}
	return fmt.Sprintf("<%T>", v)
}

func (n *normalizer) field(key string, v any) string {
	num, isNum := v.(json.Number)
	switch key {
	case "timestamp", "create_time", "execution_start_time", "execution_end_time":
		if isNum {
			return "<ts>"
		}
	case "ram_total", "ram_free", "vram_free", "torch_vram_total", "torch_vram_free":
		if isNum {
			return "<mem>"
		}
	case "number", "priority":
		if isNum {
			return n.counter(num)
		}
	}
	return n.render(v, false)
}

// isQueueTuple recognises [number, prompt_id, prompt, extra_data, outputs].
func isQueueTuple(a []any) bool {
	if len(a) != 5 {
		return false
	}
	_, num := a[0].(json.Number)
	_, id := a[1].(string)
	_, prompt := a[2].(pyjson.Object)
	_, extra := a[3].(pyjson.Object)
	_, outs := a[4].([]any)
	return num && id && prompt && extra && outs
}

// body renders a response body by its content type.
func (n *normalizer) body(status int, h http.Header, b []byte, ordered bool) string {
	ct, _, _ := mime.ParseMediaType(h.Get("Content-Type"))
	switch {
	case status >= 400 && ct != "application/json":
		// aiohttp answers most refusals with no body or a generic text;
		// the proxy says what is wrong (README.md). Clients read the
		// status.
		return "<not JSON>"
	case len(b) == 0:
		return "<empty>"
	case ct == "application/json":
		v, err := pyjson.Decode(b)
		if err != nil {
			return "<invalid JSON>"
		}
		return n.render(v, ordered)
	case strings.HasPrefix(ct, "image/"):
		return imageRepr(b)
	}
	sum := sha256.Sum256(b)
	return fmt.Sprintf("bytes %d %s", len(b), hex.EncodeToString(sum[:6]))
}

// imageRepr is an image's size and a hash of its pixels: two encoders may
// write the same picture differently.
func imageRepr(b []byte) string {
	img, format, err := image.Decode(bytes.NewReader(b))
	if err != nil {
		sum := sha256.Sum256(b)
		return fmt.Sprintf("undecodable image %d %s", len(b), hex.EncodeToString(sum[:6]))
	}
	h := sha256.New()
	bounds := img.Bounds()
	var px [8]byte
	for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
		for x := bounds.Min.X; x < bounds.Max.X; x++ {
			r, g, bl, a := img.At(x, y).RGBA()
			binary.BigEndian.PutUint16(px[0:], uint16(r))
			binary.BigEndian.PutUint16(px[2:], uint16(g))
			binary.BigEndian.PutUint16(px[4:], uint16(bl))
			binary.BigEndian.PutUint16(px[6:], uint16(a))
			h.Write(px[:])
		}
	}
	return fmt.Sprintf("%s %dx%d %s", format, bounds.Dx(), bounds.Dy(), hex.EncodeToString(h.Sum(nil)[:6]))
}

// binaryFrame renders a binary WebSocket frame (comfyui-api.md §3.4).
func (n *normalizer) binaryFrame(b []byte) string {
	if len(b) < 4 {
		return fmt.Sprintf("bin short %d", len(b))
	}
	event := binary.BigEndian.Uint32(b)
	rest := b[4:]
	switch event {
	case 1:
		if len(rest) < 4 {
			return "bin 1 short"
		}
		return fmt.Sprintf("bin 1 format=%d %s", binary.BigEndian.Uint32(rest), imageRepr(rest[4:]))
	case 3:
		if len(rest) < 4 {
			return "bin 3 short"
		}
		l := int(binary.BigEndian.Uint32(rest))
		if l > len(rest)-4 {
			return "bin 3 bad length"
		}
		return fmt.Sprintf("bin 3 node=%q text=%q", rest[4:4+l], n.str(string(rest[4+l:])))
	case 4:
		if len(rest) < 4 {
			return "bin 4 short"
		}
		l := int(binary.BigEndian.Uint32(rest))
		if l > len(rest)-4 {
			return "bin 4 bad length"
		}
		meta, err := pyjson.Decode(rest[4 : 4+l])
		if err != nil {
			return "bin 4 bad metadata"
		}
		return fmt.Sprintf("bin 4 %s %s", n.render(meta, false), imageRepr(rest[4+l:]))
	}
	return fmt.Sprintf("bin %d %d bytes", event, len(rest))
}
