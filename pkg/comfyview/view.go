// Package comfyview is what ComfyUI's GET /view does to a file beyond
// serving it: the ?preview= re-encoding and the ?channel= extraction
// (comfyui-api.md §2.3). The simulator and the proxy both use it, so the
// proxy answers exactly as the oracle does.
package comfyview

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"net/url"
	"strconv"
	"strings"

	_ "image/gif" // decoders for what participants upload
)

// MaxPixels bounds the images Apply decodes (width × height, read from the
// header before anything is decoded): a small file can claim a huge image
// (a decompression bomb), and decoding it would take its width × height × 4
// bytes of memory, twice over with the re-encoding copy. 8192 × 8192 is
// below PIL's own bomb threshold (89.5 Mpx warns, twice that fails) and
// above any image a diffusion model outputs.
const MaxPixels = 8192 * 8192

// ErrTooLarge is returned for an image over MaxPixels.
var ErrTooLarge = errors.New("image too large to re-encode")

// WebPEncoder encodes an image as lossy WebP at a quality from 1 to 100.
// The one in use is webpenc.Encoder; it is passed in so that a program
// serving no WebP previews (the agent's simulated GPUs) does not link it.
// Decoding WebP sources takes a registered image.Decode format, which
// importing webpenc also provides.
type WebPEncoder interface {
	EncodeWebP(w io.Writer, img image.Image, quality int) error
}

// ErrNoWebP is returned when a transform needs WebP and Apply was given
// no WebPEncoder.
var ErrNoWebP = errors.New("no WebP encoder in this program")

// Query parses a /view query the way aiohttp does: ';' is an ordinary
// character (preview=webp;90), which Go's url.ParseQuery would reject.
func Query(raw string) url.Values {
	v := url.Values{}
	for _, part := range strings.Split(raw, "&") {
		if part == "" {
			continue
		}
		k, val, _ := strings.Cut(part, "=")
		k, err1 := url.QueryUnescape(k)
		val, err2 := url.QueryUnescape(val)
		if err1 != nil || err2 != nil {
			continue
		}
		v.Add(k, val)
	}
	return v
}

// Transform is what ?preview= and ?channel= ask of /view.
type Transform struct {
	Preview    string
	HasPreview bool
	Channel    string
	HasChannel bool
}

// TransformOf reads the transform from a /view query.
func TransformOf(q url.Values) Transform {
	return Transform{Preview: q.Get("preview"), HasPreview: q.Has("preview"), Channel: q.Get("channel"), HasChannel: q.Has("channel")}
}

// Needed reports whether the file must be re-encoded; otherwise it is
// served as it is (ComfyUI's default channel rgba).
func (t Transform) Needed() bool {
	return t.HasPreview || (t.HasChannel && (t.Channel == "rgb" || t.Channel == "a"))
}

// Apply decodes the image and re-encodes it, returning the body and its
// content type, as ComfyUI's server.py does with PIL:
//
// preview=fmt[;quality] (fmt webp or jpeg; anything else, or a channel
// with "a" in it, is webp; quality 90 unless the last ';' part is digits):
// WebP (lossy, at that quality) keeps the alpha channel unless
// channel=rgb; JPEG drops it. Without preview, channel=rgb is a PNG without
// alpha and channel=a a PNG whose alpha is the source's (black RGB).
//
// Images over MaxPixels are refused (ErrTooLarge) before being decoded.
// WebP is encoded by enc; without one a WebP answer is ErrNoWebP.
func (t Transform) Apply(src io.Reader, enc WebPEncoder) ([]byte, string, error) {
	img, err := decodeBounded(src)
	if err != nil {
		return nil, "", err
	}
	var buf bytes.Buffer
	if t.HasPreview {
		parts := strings.Split(t.Preview, ";")
		format := parts[0]
		if (format != "webp" && format != "jpeg") || strings.Contains(t.Channel, "a") {
			format = "webp"
		}
		quality := 90
		if last := parts[len(parts)-1]; last != "" && isDigits(last) {
			quality, _ = strconv.Atoi(last)
		}
		quality = min(max(quality, 1), 100)
		if format == "jpeg" {
			err = jpeg.Encode(&buf, OpaqueCopy(img), &jpeg.Options{Quality: quality})
			return buf.Bytes(), "image/jpeg", err
		}
		if t.Channel == "rgb" || !HasAlpha(img) {
			img = OpaqueCopy(img)
		}
		if enc == nil {
			return nil, "", ErrNoWebP
		}
		if err := enc.EncodeWebP(&buf, img, quality); err != nil {
			return nil, "", fmt.Errorf("encode webp: %w", err)
		}
		return buf.Bytes(), "image/webp", nil
	}
	out := OpaqueCopy(img)
	if t.Channel == "a" {
		out = AlphaOnly(img)
	}
	err = png.Encode(&buf, out)
	return buf.Bytes(), "image/png", err
}

// decodeBounded reads the image's header first and decodes it only when its
// dimensions are within MaxPixels; the header bytes read are replayed to
// the decoder.
func decodeBounded(src io.Reader) (image.Image, error) {
	var head bytes.Buffer
	cfg, _, err := image.DecodeConfig(io.TeeReader(src, &head))
	if err != nil {
		return nil, fmt.Errorf("decode image: %w", err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 || int64(cfg.Width)*int64(cfg.Height) > MaxPixels {
		return nil, fmt.Errorf("%w: %d×%d pixels, at most %d", ErrTooLarge, cfg.Width, cfg.Height, MaxPixels)
	}
	img, _, err := image.Decode(io.MultiReader(&head, src))
	if err != nil {
		return nil, fmt.Errorf("decode image: %w", err)
	}
	return img, nil
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// OpaqueCopy drops alpha (PIL's split+merge to RGB).
func OpaqueCopy(src image.Image) *image.NRGBA {
	b := src.Bounds()
	out := image.NewNRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	for y := 0; y < b.Dy(); y++ {
		for x := 0; x < b.Dx(); x++ {
			c := color.NRGBAModel.Convert(src.At(b.Min.X+x, b.Min.Y+y)).(color.NRGBA)
			c.A = 255
			out.SetNRGBA(x, y, c)
		}
	}
	return out
}

// AlphaOnly is ?channel=a: black RGB with the source alpha (255 without).
func AlphaOnly(src image.Image) *image.NRGBA {
	b := src.Bounds()
	out := image.NewNRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	withAlpha := HasAlpha(src)
	for y := 0; y < b.Dy(); y++ {
		for x := 0; x < b.Dx(); x++ {
			a := uint8(255)
			if withAlpha {
				a = color.NRGBAModel.Convert(src.At(b.Min.X+x, b.Min.Y+y)).(color.NRGBA).A
			}
			out.SetNRGBA(x, y, color.NRGBA{A: a})
		}
	}
	return out
}

// HasAlpha reports whether a decoded image carries an alpha channel the
// way PIL's modes do (RGBA, LA, P with transparency).
func HasAlpha(img image.Image) bool {
	switch m := img.ColorModel().(type) {
	case color.Palette:
		for _, c := range m {
			if _, _, _, a := c.RGBA(); a != 0xffff {
				return true
			}
		}
		return false
	}
	switch img.ColorModel() {
	case color.NRGBAModel, color.RGBAModel, color.NRGBA64Model, color.RGBA64Model, color.AlphaModel, color.Alpha16Model:
		return true
	}
	return false
}
