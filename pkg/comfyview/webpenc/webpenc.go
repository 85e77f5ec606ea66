// Package webpenc is the WebP codec of /view's preview re-encoding
// (comfyui-api.md §2.3): a lossy encoder for comfyview.Transform.Apply,
// and, by importing golang.org/x/image/webp, WebP decoding in
// image.Decode. It lives apart from comfyview because the encoder is
// libwebp compiled to wasm (github.com/gen2brain/webp, run by wazero):
// the proxy and the simulator binary link it, the agent does not.
package webpenc

import (
	"image"
	"io"

	"github.com/gen2brain/webp"
	_ "golang.org/x/image/webp" // image.Decode reads WebP uploads
)

// Encoder encodes lossy WebP; its zero value is ready to use.
type Encoder struct{}

// EncodeWebP writes img as lossy WebP at quality (1 to 100).
func (Encoder) EncodeWebP(w io.Writer, img image.Image, quality int) error {
	return webp.Encode(w, img, webp.Options{Quality: quality})
}
