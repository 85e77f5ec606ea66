package comfysim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/jpeg"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/atelier-run/atelier/pkg/comfyapi"
	"github.com/atelier-run/atelier/pkg/pngtext"
)

// nodeFunc runs a node: it returns the node's outputs (one per RETURN_TYPE)
// and its UI dict (nil or empty when the node shows nothing).
type nodeFunc func(nc *nodeCtx) (outputs []any, ui object, err error)

// nodeCtx is what a running node sees: its arguments (constants already
// coerced by validation, links resolved to upstream values) and the hooks
// for progress, faults and simulated time.
type nodeCtx struct {
	e    *execution
	id   string
	def  *nodeDef
	args map[string]any
}

func (nc *nodeCtx) s() *Server { return nc.e.s }

func (nc *nodeCtx) intArg(name string) int64 {
	n, _ := nc.args[name].(json.Number)
	i, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil {
		// Values beyond int64 (KSampler seeds up to 2^64-1) keep their
		// low bits, as torch would wrap them.
		if u, uerr := strconv.ParseUint(string(n), 10, 64); uerr == nil {
			return int64(u)
		}
	}
	return i
}

func (nc *nodeCtx) floatArg(name string) float64 {
	n, _ := nc.args[name].(json.Number)
	return numberFloat(n)
}

func (nc *nodeCtx) strArg(name string) string {
	s, _ := nc.args[name].(string)
	return s
}

// simulate spends one StepDelay of model time (interruptible).
func (nc *nodeCtx) simulate() error {
	return nc.e.sleep(nc.s().cfg.StepDelay)
}

// step reports sampler progress as ComfyUI's progress hook: interrupt
// check, progress_state, optional preview, progress.
func (nc *nodeCtx) step(value, total int, preview func() []byte) error {
	if err := nc.e.checkInterrupt(); err != nil {
		return err
	}
	e := nc.e
	e.progress.Set(nc.id, object{{"state", "running"}, {"value", value}, {"max", total}})
	e.sendProgress(comfyapi.MsgProgressState, e.progressState())
	var img []byte
	if e.preview && preview != nil {
		img = preview()
	}
	supportsMeta := false
	if e.hasSID {
		if c := e.s.hub.get(e.sid); c != nil {
			supportsMeta = c.supportsPreviewMetadata()
		}
	}
	if img != nil && supportsMeta {
		meta := mustPyJSON(object{
			{"node_id", nc.id}, {"prompt_id", e.it.id}, {"display_node_id", nc.id},
			{"parent_node_id", nil}, {"real_node_id", nc.id}, {"image_type", "image/jpeg"},
		})
		e.s.mu.Lock()
		e.s.hub.send(e.sid, binaryFrame(comfyapi.BinPreviewImageWithMetadata, u32(len(meta)), meta, img))
		e.s.mu.Unlock()
	}
	e.sendProgress(comfyapi.MsgProgress, object{{"value", value}, {"max", total}, {"prompt_id", e.it.id}, {"node", nc.id}})
	if img != nil && !supportsMeta {
		e.s.mu.Lock()
		e.s.hub.send(e.sid, binaryFrame(comfyapi.BinPreviewImage, u32(comfyapi.ImageFormatJPEG), img))
		e.s.mu.Unlock()
	}
	return nil
}

// Simulated model objects. They only carry what later nodes need to make a
// deterministic picture, and describe themselves like Python objects in
// current_inputs.
type (
	simModel struct{ ckpt string }
	simCLIP  struct{ ckpt string }
	simVAE   struct{ ckpt string }
	simCond  struct{ text string }
	// simLatent is a LATENT: batch and pixel size, plus the sampling that
	// produced it (zero seed and steps for an empty latent).
	simLatent struct {
		batch, width, height int
		seed                 int64
		steps                int
		sampled              bool
		cond                 string
		ckpt                 string
	}
)

func (m *simModel) describe() string {
	return "<comfy.model_patcher.ModelPatcher object at 0x7f3a2c1d5e50>"
}
func (c *simCLIP) describe() string { return "<comfy.sd.CLIP object at 0x7f3a2c1d6f10>" }
func (v *simVAE) describe() string  { return "<comfy.sd.VAE object at 0x7f3a2c1d7a90>" }
func (c *simCond) describe() string {
	return "[[tensor([[[-0.3884,  0.0229, -0.0522,  ..., -0.4899, -0.3066,  0.0675]]]), {'pooled_output': tensor([[-0.3445, ...]])}]]"
}
func (l *simLatent) describe() string {
	return fmt.Sprintf("{'samples': tensor(<%dx4x%dx%d>)}", l.batch, l.height/8, l.width/8)
}

func runCheckpointLoader(nc *nodeCtx) ([]any, object, error) {
	if err := nc.simulate(); err != nil {
		return nil, nil, err
	}
	ckpt := nc.strArg("ckpt_name")
	return []any{&simModel{ckpt}, &simCLIP{ckpt}, &simVAE{ckpt}}, nil, nil
}

func runCLIPTextEncode(nc *nodeCtx) ([]any, object, error) {
	if err := nc.simulate(); err != nil {
		return nil, nil, err
	}
	return []any{&simCond{nc.strArg("text")}}, nil, nil
}

func runEmptyLatentImage(nc *nodeCtx) ([]any, object, error) {
	w, h := int(nc.intArg("width")), int(nc.intArg("height"))
	// The latent is 1/8 of the pixel size; decoding gives back multiples
	// of 8, as a real VAE does.
	return []any{&simLatent{batch: int(nc.intArg("batch_size")), width: w / 8 * 8, height: h / 8 * 8}}, nil, nil
}

func runKSampler(nc *nodeCtx) ([]any, object, error) {
	in, _ := nc.args["latent_image"].(*simLatent)
	if in == nil {
		return nil, nil, &execError{typ: "AttributeError", msg: "'NoneType' object has no attribute 'shape'"}
	}
	steps := int(nc.intArg("steps"))
	seed := nc.intArg("seed")
	model, _ := nc.args["model"].(*simModel)
	pos, _ := nc.args["positive"].(*simCond)
	out := *in
	out.seed, out.steps, out.sampled = seed, steps, true
	if pos != nil {
		out.cond = pos.text
	}
	if model != nil {
		out.ckpt = model.ckpt
	}
	for i := 1; i <= steps; i++ {
		if err := nc.simulate(); err != nil {
			return nil, nil, err
		}
		if err := nc.fault(i); err != nil {
			return nil, nil, err
		}
		step := i
		if err := nc.step(step, steps, func() []byte { return previewJPEG(&out, step, steps) }); err != nil {
			return nil, nil, err
		}
	}
	return []any{&out}, nil, nil
}

// previewJPEG renders a small preview of a latent being sampled: the final
// picture fading in from noise-grey.
func previewJPEG(l *simLatent, step, steps int) []byte {
	w, h := max(l.width/8, 1), max(l.height/8, 1)
	img := decodePicture(l, 1, w, h)
	f := float32(step) / float32(steps)
	for i := range img.pix {
		img.pix[i] = 0.5*(1-f) + img.pix[i]*f
	}
	var buf bytes.Buffer
	_ = jpeg.Encode(&buf, img.frame(0), &jpeg.Options{Quality: 95})
	return buf.Bytes()
}

func runVAEDecode(nc *nodeCtx) ([]any, object, error) {
	l, _ := nc.args["samples"].(*simLatent)
	if l == nil {
		return nil, nil, &execError{typ: "TypeError", msg: "'NoneType' object is not subscriptable"}
	}
	if err := nc.simulate(); err != nil {
		return nil, nil, err
	}
	return []any{decodePicture(l, l.batch, l.width, l.height)}, nil, nil
}

func runEmptyImage(nc *nodeCtx) ([]any, object, error) {
	color := nc.intArg("color")
	return []any{solidImage(int(nc.intArg("batch_size")), int(nc.intArg("height")), int(nc.intArg("width")), color)}, nil, nil
}

func imageArg(nc *nodeCtx, name string) (*imageBatch, error) {
	img, _ := nc.args[name].(*imageBatch)
	if img == nil {
		return nil, &execError{typ: "AttributeError", msg: "'NoneType' object has no attribute 'shape'"}
	}
	return img, nil
}

func runImageInvert(nc *nodeCtx) ([]any, object, error) {
	img, err := imageArg(nc, "image")
	if err != nil {
		return nil, nil, err
	}
	return []any{img.invert()}, nil, nil
}

func runImageBlur(nc *nodeCtx) ([]any, object, error) {
	img, err := imageArg(nc, "image")
	if err != nil {
		return nil, nil, err
	}
	return []any{img.blur(int(nc.intArg("blur_radius")), nc.floatArg("sigma"))}, nil, nil
}

func runImageScale(nc *nodeCtx) ([]any, object, error) {
	img, err := imageArg(nc, "image")
	if err != nil {
		return nil, nil, err
	}
	w, h := int(nc.intArg("width")), int(nc.intArg("height"))
	if w == 0 && h == 0 {
		return []any{img}, nil, nil
	}
	if w == 0 {
		w = max(1, int(math.RoundToEven(float64(img.w)*float64(h)/float64(img.h))))
	} else if h == 0 {
		h = max(1, int(math.RoundToEven(float64(img.h)*float64(w)/float64(img.w))))
	}
	return []any{img.upscale(w, h, nc.strArg("upscale_method"), nc.strArg("crop"))}, nil, nil
}

func runImageScaleBy(nc *nodeCtx) ([]any, object, error) {
	img, err := imageArg(nc, "image")
	if err != nil {
		return nil, nil, err
	}
	f := nc.floatArg("scale_by")
	w := int(math.RoundToEven(float64(img.w) * f))
	h := int(math.RoundToEven(float64(img.h) * f))
	if w < 1 || h < 1 {
		return nil, nil, &execError{typ: "RuntimeError", msg: fmt.Sprintf("Input and output sizes should be greater than 0, but got input (H: %d, W: %d) output (H: %d, W: %d)", img.h, img.w, h, w)}
	}
	return []any{img.upscale(w, h, nc.strArg("upscale_method"), "disabled")}, nil, nil
}

// annotatedPath resolves a LoadImage-style name: an optional " [input]",
// " [output]" or " [temp]" suffix selects the directory (default input).
// ok is false for a path that leaves its directory.
func (s *Server) annotatedPath(name string) (string, bool) {
	base := s.cfg.InputDir
	switch {
	case strings.HasSuffix(name, "[output]"):
		base, name = s.cfg.OutputDir, cutSuffix(name, 9)
	case strings.HasSuffix(name, "[input]"):
		base, name = s.cfg.InputDir, cutSuffix(name, 8)
	case strings.HasSuffix(name, "[temp]"):
		base, name = s.cfg.TempDir, cutSuffix(name, 7)
	}
	p := filepath.Join(base, name)
	return p, within(base, p)
}

// cutSuffix drops n bytes, as ComfyUI's name[:-n] (which assumes the space
// before the annotation).
func cutSuffix(s string, n int) string {
	if len(s) < n {
		return ""
	}
	return s[:len(s)-n]
}

func validateLoadImage(s *Server, inputs object) (bool, string) {
	v, _ := inputs.Get("image")
	name := pyStr(v)
	p, ok := s.annotatedPath(name)
	if ok {
		if _, err := os.Stat(p); err == nil {
			return true, ""
		}
	}
	return false, "Invalid image file: " + name
}

// loadImageChanged is LoadImage.IS_CHANGED: the file's sha256, so a
// replaced upload is not served from the cache.
func loadImageChanged(s *Server, inputs object) string {
	v, _ := inputs.Get("image")
	p, ok := s.annotatedPath(pyStr(v))
	if !ok {
		return ""
	}
	sum, err := fileSHA256(p)
	if err != nil {
		return ""
	}
	return sum
}

func runLoadImage(nc *nodeCtx) ([]any, object, error) {
	name := nc.strArg("image")
	p, ok := nc.s().annotatedPath(name)
	if !ok {
		return nil, nil, &execError{typ: "FileNotFoundError", msg: fmt.Sprintf("[Errno 2] No such file or directory: %s", pyStrRepr(p))}
	}
	img, mask, err := loadImageFile(p)
	if err != nil {
		return nil, nil, err
	}
	return []any{img, mask}, nil, nil
}

func runSaveImage(nc *nodeCtx) ([]any, object, error) {
	img, err := imageArg(nc, "images")
	if err != nil {
		return nil, nil, err
	}
	prefix := nc.strArg("filename_prefix")
	images, err := nc.saveImages(img, nc.s().cfg.OutputDir, "output", prefix)
	if err != nil {
		return nil, nil, err
	}
	return []any{}, object{{"images", images}}, nil
}

// tempLetters is the alphabet of PreviewImage's random suffix (sic: with
// 'p' twice and no 'w', as in nodes.py).
const tempLetters = "abcdefghijklmnopqrstupvxyz"

func runPreviewImage(nc *nodeCtx) ([]any, object, error) {
	img, err := imageArg(nc, "images")
	if err != nil {
		return nil, nil, err
	}
	suffix := make([]byte, 5)
	for i := range suffix {
		suffix[i] = tempLetters[rand.IntN(len(tempLetters))]
	}
	images, err := nc.saveImages(img, nc.s().cfg.TempDir, "temp", "ComfyUI_temp_"+string(suffix))
	if err != nil {
		return nil, nil, err
	}
	return []any{}, object{{"images", images}}, nil
}

// saveImages is SaveImage.save_images: <prefix>_<counter:05>_.png, the
// counter continuing after the highest existing file of that prefix, a "/"
// in the prefix selecting a subfolder, and the prompt and workflow embedded
// as PNG text chunks.
func (nc *nodeCtx) saveImages(img *imageBatch, outDir, typ, prefix string) ([]any, error) {
	if strings.Contains(prefix, "%") {
		prefix = computePrefixVars(prefix, img.w, img.h)
	}
	norm := filepath.Clean(filepath.FromSlash(prefix))
	subfolder := filepath.Dir(norm)
	if subfolder == "." {
		subfolder = ""
	}
	filename := filepath.Base(norm)
	folder := filepath.Join(outDir, subfolder)
	if !within(outDir, folder) {
		return nil, &execError{typ: "Exception", msg: fmt.Sprintf(
			"**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: %s\n         output_dir: %s\n         commonpath: %s",
			folder, outDir, commonPath(outDir, folder))}
	}
	if err := os.MkdirAll(folder, 0o755); err != nil {
		return nil, &execError{typ: "OSError", msg: err.Error()}
	}
	counter := nextCounter(folder, filename)

	var chunks []pngtext.Text
	if typ == "output" {
		chunks = append(chunks, pngtext.Text{Keyword: "prompt", Text: mustPyJSON(nc.e.it.prompt)})
		if pnginfo, ok := nc.e.it.extra.Get("extra_pnginfo"); ok {
			if o, isObj := pnginfo.(object); isObj {
				for _, m := range o {
					chunks = append(chunks, pngtext.Text{Keyword: m.Key, Text: mustPyJSON(m.Value)})
				}
			}
		}
	}
	var results []any
	for b := 0; b < img.n; b++ {
		name := fmt.Sprintf("%s_%05d_.png", strings.ReplaceAll(filename, "%batch_num%", strconv.Itoa(b)), counter)
		data, err := encodePNG(img.frame(b), chunks)
		if err != nil {
			return nil, &execError{typ: "OSError", msg: err.Error()}
		}
		if err := os.WriteFile(filepath.Join(folder, name), data, 0o644); err != nil {
			return nil, &execError{typ: "OSError", msg: err.Error()}
		}
		results = append(results, object{{"filename", name}, {"subfolder", filepath.ToSlash(subfolder)}, {"type", typ}})
		counter++
	}
	return results, nil
}

// computePrefixVars expands folder_paths' %width%, %height% and date
// variables.
func computePrefixVars(p string, w, h int) string {
	now := time.Now()
	r := strings.NewReplacer(
		"%width%", strconv.Itoa(w), "%height%", strconv.Itoa(h),
		"%year%", strconv.Itoa(now.Year()),
		"%month%", fmt.Sprintf("%02d", int(now.Month())),
		"%day%", fmt.Sprintf("%02d", now.Day()),
		"%hour%", fmt.Sprintf("%02d", now.Hour()),
		"%minute%", fmt.Sprintf("%02d", now.Minute()),
		"%second%", fmt.Sprintf("%02d", now.Second()),
	)
	return r.Replace(p)
}

// nextCounter scans folder for "<filename>_<digits>_..." and returns the
// highest counter + 1, as get_save_image_path (case-sensitive, as on Linux).
func nextCounter(folder, filename string) int {
	entries, err := os.ReadDir(folder)
	if err != nil {
		return 1
	}
	best := 0
	n := len(filename)
	for _, e := range entries {
		name := e.Name()
		if len(name) <= n || name[:n] != filename || name[n] != '_' {
			continue
		}
		digits, _, _ := strings.Cut(name[n+1:], "_")
		if c, err := strconv.Atoi(digits); err == nil && c > best {
			best = c
		}
	}
	return best + 1
}

func commonPath(a, b string) string {
	as := strings.Split(a, string(filepath.Separator))
	bs := strings.Split(b, string(filepath.Separator))
	var out []string
	for i := 0; i < len(as) && i < len(bs) && as[i] == bs[i]; i++ {
		out = append(out, as[i])
	}
	return strings.Join(out, string(filepath.Separator))
}
