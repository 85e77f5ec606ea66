package comfysim

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"github.com/atelier-run/atelier/pkg/comfyview"
	"github.com/atelier-run/atelier/pkg/pngtext"
	"image"
	"image/color"
	_ "image/gif" // LoadImage accepts what Pillow commonly opens
	_ "image/jpeg"
	"image/png"
	"io"
	"math"
	"os"
)

// Images are handled like ComfyUI's tensors: IMAGE is a float32 batch
// B×H×W×3 in [0, 1], MASK is B×H×W. The arithmetic mirrors the torch code
// of the core nodes closely enough that colours match to the 8-bit value.

// imageBatch is an IMAGE tensor.
type imageBatch struct {
	n, h, w int
	pix     []float32 // n*h*w*3, channel last
}

// maskBatch is a MASK tensor.
type maskBatch struct {
	n, h, w int
	pix     []float32
}

func newImage(n, h, w int) *imageBatch {
	return &imageBatch{n: n, h: h, w: w, pix: make([]float32, n*h*w*3)}
}

func (m *imageBatch) describe() string {
	return fmt.Sprintf("tensor(<%dx%dx%dx3>)", m.n, m.h, m.w)
}

func (m *maskBatch) describe() string {
	return fmt.Sprintf("tensor(<%dx%dx%d>)", m.n, m.h, m.w)
}

func (m *imageBatch) at(b, y, x, c int) float32 {
	return m.pix[((b*m.h+y)*m.w+x)*3+c]
}

func (m *imageBatch) set(b, y, x, c int, v float32) {
	m.pix[((b*m.h+y)*m.w+x)*3+c] = v
}

// solidImage is EmptyImage: torch.full per channel with (color>>k & 0xFF)/0xFF.
func solidImage(n, h, w int, color int64) *imageBatch {
	img := newImage(n, h, w)
	ch := [3]float32{
		float32(float64((color>>16)&0xFF) / 255),
		float32(float64((color>>8)&0xFF) / 255),
		float32(float64(color&0xFF) / 255),
	}
	for i := 0; i < len(img.pix); i += 3 {
		img.pix[i], img.pix[i+1], img.pix[i+2] = ch[0], ch[1], ch[2]
	}
	return img
}

// invert is ImageInvert: 1.0 - image.
func (m *imageBatch) invert() *imageBatch {
	out := newImage(m.n, m.h, m.w)
	for i, v := range m.pix {
		out.pix[i] = 1 - v
	}
	return out
}

// blur is ImageBlur: a (2r+1)² gaussian kernel over linspace(-1, 1),
// applied to the reflect-padded image.
func (m *imageBatch) blur(radius int, sigma float64) *imageBatch {
	if radius == 0 {
		return m
	}
	size := 2*radius + 1
	kernel := make([]float32, size*size)
	var sum float32
	for i := 0; i < size; i++ {
		for j := 0; j < size; j++ {
			x := float32(-1 + 2*float64(i)/float64(size-1))
			y := float32(-1 + 2*float64(j)/float64(size-1))
			d := float32(math.Sqrt(float64(x*x + y*y)))
			g := float32(math.Exp(float64(-(d * d) / float32(2*sigma*sigma))))
			kernel[i*size+j] = g
			sum += g
		}
	}
	for i := range kernel {
		kernel[i] /= sum
	}
	reflect := func(i, n int) int {
		if n == 1 {
			return 0
		}
		for i < 0 || i >= n {
			if i < 0 {
				i = -i
			}
			if i >= n {
				i = 2*(n-1) - i
			}
		}
		return i
	}
	out := newImage(m.n, m.h, m.w)
	for b := 0; b < m.n; b++ {
		for y := 0; y < m.h; y++ {
			for x := 0; x < m.w; x++ {
				for c := 0; c < 3; c++ {
					var acc float32
					for ky := 0; ky < size; ky++ {
						sy := reflect(y+ky-radius, m.h)
						for kx := 0; kx < size; kx++ {
							sx := reflect(x+kx-radius, m.w)
							acc += kernel[ky*size+kx] * m.at(b, sy, sx, c)
						}
					}
					out.set(b, y, x, c, acc)
				}
			}
		}
	}
	return out
}

// tap is one input sample and its weight in a resampling filter.
type tap struct {
	i int
	w float32
}

// resampleWeights returns, for each output index, the input taps of
// torch.nn.functional.interpolate (or PIL's LANCZOS for "lanczos").
func resampleWeights(in, out int, method string) [][]tap {
	scale := float64(in) / float64(out)
	ws := make([][]tap, out)
	clamp := func(i int) int { return min(max(i, 0), in-1) }
	for o := 0; o < out; o++ {
		switch method {
		case "nearest-exact":
			ws[o] = []tap{{clamp(int(math.Floor((float64(o) + 0.5) * scale))), 1}}
		case "bilinear":
			src := math.Max((float64(o)+0.5)*scale-0.5, 0)
			i0 := int(src)
			l := float32(src - float64(i0))
			ws[o] = []tap{{clamp(i0), 1 - l}, {clamp(i0 + 1), l}}
		case "bicubic":
			src := (float64(o)+0.5)*scale - 0.5
			i0 := int(math.Floor(src))
			t := src - float64(i0)
			const a = -0.75
			cubic1 := func(x float64) float64 { return ((a+2)*x-(a+3))*x*x + 1 }
			cubic2 := func(x float64) float64 { return ((a*x-5*a)*x+8*a)*x - 4*a }
			ws[o] = []tap{
				{clamp(i0 - 1), float32(cubic2(t + 1))},
				{clamp(i0), float32(cubic1(t))},
				{clamp(i0 + 1), float32(cubic1(1 - t))},
				{clamp(i0 + 2), float32(cubic2(2 - t))},
			}
		case "area":
			start := int(math.Floor(float64(o) * scale))
			end := int(math.Ceil(float64(o+1) * scale))
			for i := start; i < end; i++ {
				ws[o] = append(ws[o], tap{clamp(i), 1 / float32(end-start)})
			}
		default: // lanczos, PIL style: support 3, widened when shrinking
			support := 3.0
			filterScale := math.Max(scale, 1)
			center := (float64(o) + 0.5) * scale
			lo := max(int(center-support*filterScale+0.5), 0)
			hi := min(int(center+support*filterScale+0.5), in)
			var total float64
			var taps []tap
			for i := lo; i < hi; i++ {
				x := (float64(i) - center + 0.5) / filterScale
				w := lanczos3(x)
				taps = append(taps, tap{i, float32(w)})
				total += w
			}
			if total != 0 {
				for k := range taps {
					taps[k].w = float32(float64(taps[k].w) / total)
				}
			}
			ws[o] = taps
		}
	}
	return ws
}

func lanczos3(x float64) float64 {
	if x == 0 {
		return 1
	}
	if x <= -3 || x >= 3 {
		return 0
	}
	px := math.Pi * x
	return 3 * math.Sin(px) * math.Sin(px/3) / (px * px)
}

// upscale is comfy.utils.common_upscale (optional center crop, then
// interpolation), done separably.
func (m *imageBatch) upscale(w, h int, method, crop string) *imageBatch {
	src := m
	if crop == "center" {
		oldAspect := float64(m.w) / float64(m.h)
		newAspect := float64(w) / float64(h)
		x, y := 0, 0
		if oldAspect > newAspect {
			x = int(math.RoundToEven((float64(m.w) - float64(m.w)*(newAspect/oldAspect)) / 2))
		} else if oldAspect < newAspect {
			y = int(math.RoundToEven((float64(m.h) - float64(m.h)*(oldAspect/newAspect)) / 2))
		}
		src = m.crop(x, y, m.w-2*x, m.h-2*y)
	}
	lanczos := method == "lanczos"
	if lanczos {
		// comfy.utils.lanczos goes through 8-bit PIL images.
		src = src.quantized()
	}
	wx := resampleWeights(src.w, w, method)
	wy := resampleWeights(src.h, h, method)
	tmp := newImage(src.n, src.h, w)
	for b := 0; b < src.n; b++ {
		for y := 0; y < src.h; y++ {
			for x := 0; x < w; x++ {
				for c := 0; c < 3; c++ {
					var acc float32
					for _, t := range wx[x] {
						acc += t.w * src.at(b, y, t.i, c)
					}
					tmp.set(b, y, x, c, acc)
				}
			}
		}
	}
	if lanczos {
		tmp = tmp.quantizedRound()
	}
	out := newImage(src.n, h, w)
	for b := 0; b < src.n; b++ {
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				for c := 0; c < 3; c++ {
					var acc float32
					for _, t := range wy[y] {
						acc += t.w * tmp.at(b, t.i, x, c)
					}
					out.set(b, y, x, c, acc)
				}
			}
		}
	}
	if lanczos {
		out = out.quantizedRound()
	}
	return out
}

func (m *imageBatch) crop(x0, y0, w, h int) *imageBatch {
	out := newImage(m.n, h, w)
	for b := 0; b < m.n; b++ {
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				for c := 0; c < 3; c++ {
					out.set(b, y, x, c, m.at(b, y+y0, x+x0, c))
				}
			}
		}
	}
	return out
}

// quantized is np.clip(255*x, 0, 255).astype(uint8) / 255.
func (m *imageBatch) quantized() *imageBatch {
	out := newImage(m.n, m.h, m.w)
	for i, v := range m.pix {
		out.pix[i] = float32(to8(v)) / 255
	}
	return out
}

// quantizedRound rounds to 8 bits, as PIL's resampler does.
func (m *imageBatch) quantizedRound() *imageBatch {
	out := newImage(m.n, m.h, m.w)
	for i, v := range m.pix {
		out.pix[i] = float32(math.Round(math.Min(math.Max(float64(v)*255, 0), 255))) / 255
	}
	return out
}

// to8 converts like SaveImage: clip(255*v, 0, 255) truncated to uint8.
func to8(v float32) uint8 {
	f := 255 * v
	if f <= 0 || f != f {
		return 0
	}
	if f >= 255 {
		return 255
	}
	return uint8(f)
}

// frame returns batch entry b as an opaque 8-bit image (encoded as RGB).
func (m *imageBatch) frame(b int) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, m.w, m.h))
	for y := 0; y < m.h; y++ {
		for x := 0; x < m.w; x++ {
			o := img.PixOffset(x, y)
			img.Pix[o] = to8(m.at(b, y, x, 0))
			img.Pix[o+1] = to8(m.at(b, y, x, 1))
			img.Pix[o+2] = to8(m.at(b, y, x, 2))
			img.Pix[o+3] = 255
		}
	}
	return img
}

// encodePNG encodes img and inserts tEXt chunks right after IHDR, where
// Pillow writes them (ComfyUI embeds "prompt" and "workflow" this way).
func encodePNG(img image.Image, text []pngtext.Text) ([]byte, error) {
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, fmt.Errorf("encoding png: %w", err)
	}
	return pngtext.InsertAfterIHDR(buf.Bytes(), text...)
}

// loadImageFile is LoadImage: the RGB image and the inverted alpha as MASK
// (a 64×64 zero mask when there is no alpha).
func loadImageFile(path string) (*imageBatch, *maskBatch, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, &execError{typ: "FileNotFoundError", msg: fmt.Sprintf("[Errno 2] No such file or directory: %s", pyStrRepr(path))}
	}
	defer f.Close()
	src, _, err := image.Decode(f)
	if err != nil {
		return nil, nil, &execError{typ: "PIL.UnidentifiedImageError", msg: fmt.Sprintf("cannot identify image file %s", pyStrRepr(path))}
	}
	bounds := src.Bounds()
	w, h := bounds.Dx(), bounds.Dy()
	img := newImage(1, h, w)
	alpha := comfyview.HasAlpha(src)
	mask := &maskBatch{n: 1, h: 64, w: 64, pix: make([]float32, 64*64)}
	if alpha {
		mask = &maskBatch{n: 1, h: h, w: w, pix: make([]float32, h*w)}
	}
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			c := color.NRGBAModel.Convert(src.At(bounds.Min.X+x, bounds.Min.Y+y)).(color.NRGBA)
			img.set(0, y, x, 0, float32(c.R)/255)
			img.set(0, y, x, 1, float32(c.G)/255)
			img.set(0, y, x, 2, float32(c.B)/255)
			if alpha {
				mask.pix[y*w+x] = 1 - float32(c.A)/255
			}
		}
	}
	return img, mask, nil
}

// decodePicture is the simulated VAE: a deterministic landscape-like
// picture derived from the sampling seed, prompt and checkpoint, so equal
// inputs give equal files and different seeds visibly differ.
func decodePicture(l *simLatent, n, w, h int) *imageBatch {
	hsum := sha256.Sum256([]byte(fmt.Sprintf("%d|%d|%s|%s|%v", l.seed, l.steps, l.cond, l.ckpt, l.sampled)))
	c := func(i int) float32 { return float32(hsum[i]) / 255 }
	top := [3]float32{c(0), c(1), c(2)}
	bottom := [3]float32{c(3), c(4), c(5)}
	sun := [3]float32{0.5 + c(6)/2, 0.5 + c(7)/2, c(8) / 2}
	cx, cy := float64(c(9))*float64(w), float64(c(10))*float64(h)/2
	r := float64(min(w, h)) * (0.1 + float64(c(11))*0.15)
	if !l.sampled {
		// An unsampled latent decodes to flat grey, like zeros through a VAE.
		top, bottom, sun = [3]float32{0.5, 0.5, 0.5}, [3]float32{0.5, 0.5, 0.5}, [3]float32{0.5, 0.5, 0.5}
	}
	img := newImage(max(n, 1), h, w)
	for b := 0; b < img.n; b++ {
		for y := 0; y < h; y++ {
			t := float32(y) / float32(max(h-1, 1))
			for x := 0; x < w; x++ {
				var px [3]float32
				for k := 0; k < 3; k++ {
					px[k] = top[k]*(1-t) + bottom[k]*t
				}
				if math.Hypot(float64(x)-cx, float64(y)-cy) < r {
					px = sun
				}
				for k := 0; k < 3; k++ {
					img.set(b, y, x, k, px[k])
				}
			}
		}
	}
	return img
}

// fileSHA256 hashes a file's content (uploads dedupe, IS_CHANGED).
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
