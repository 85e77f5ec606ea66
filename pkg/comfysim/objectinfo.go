package comfysim

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// maxResolution is ComfyUI's MAX_RESOLUTION.
const maxResolution = "16384"

// samplerNames and schedulerNames are comfy.samplers.KSampler.SAMPLERS and
// SCHEDULERS of ComfyUI 0.3.64.
var samplerNames = []string{
	"euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
	"dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
	"dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
	"dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
	"dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis",
	"res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
	"res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp",
	"er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
}

var schedulerNames = []string{
	"simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
	"linear_quadratic", "kl_optimal",
}

var upscaleMethods = []string{"nearest-exact", "bilinear", "area", "bicubic", "lanczos"}

var cropMethods = []string{"disabled", "center"}

// inputSpec is one entry of a node's INPUT_TYPES: a type name (or, for a
// combo, a function producing the option list at request time, as ComfyUI
// rescans model folders) and the options dict.
type inputSpec struct {
	name  string
	typ   string
	combo func(s *Server) []string
	// opts is the options dict; nil means the tuple has no second element.
	opts object
}

// isCombo reports whether the input is a list-of-options input.
func (in inputSpec) isCombo() bool { return in.combo != nil }

// config renders the (type, options) pair as object_info and validation
// errors ("input_config") show it.
func (in inputSpec) config(s *Server) []any {
	var first any = in.typ
	if in.isCombo() {
		opts := in.combo(s)
		list := make([]any, len(opts))
		for i, o := range opts {
			list[i] = o
		}
		first = list
	}
	if in.opts == nil {
		return []any{first}
	}
	return []any{first, in.opts}
}

// nodeDef describes one node class: its object_info entry and its behaviour.
type nodeDef struct {
	name, displayName, description, module, category string

	required, optional []inputSpec
	// hidden maps hidden input names to their type strings, in order.
	hidden object

	outputs        []string
	outputNames    []string // nil: same as outputs
	outputTooltips []string // nil: no output_tooltips key
	outputNode     bool

	// validateInputs lists the arguments of the class's VALIDATE_INPUTS;
	// those inputs skip the built-in min/max/combo checks, as in ComfyUI.
	validateInputs []string
	validate       func(s *Server, inputs object) (ok bool, msg string)

	// isChanged feeds the cache signature (IS_CHANGED); "" when absent.
	isChanged func(s *Server, inputs object) string

	// v3: a v3-schema node (comfy_api io.ComfyNode), whose object_info is
	// NodeInfoV1 as a dataclass: output_tooltips always (null where an
	// output has none), deprecated/experimental/api_node always, in the
	// dataclass's field order.
	v3 bool

	// run executes the node; see nodes.go.
	run nodeFunc
}

// info renders the object_info entry with the key order of ComfyUI's
// node_info().
func (d *nodeDef) info(s *Server) object {
	inputs, order := d.inputInfo(s)
	outNames := d.outputNames
	if outNames == nil {
		outNames = d.outputs
	}
	isList := make([]any, len(d.outputs))
	for i := range isList {
		isList[i] = false
	}
	display := d.displayName
	if display == "" {
		display = d.name
	}
	module := d.module
	if module == "" {
		module = "nodes"
	}
	if d.v3 {
		tips := make([]any, len(d.outputs))
		for i := range tips {
			if i < len(d.outputTooltips) && d.outputTooltips[i] != "" {
				tips[i] = d.outputTooltips[i]
			}
		}
		return object{
			{"input", inputs},
			{"input_order", order},
			{"output", anyStrings(d.outputs)},
			{"output_is_list", isList},
			{"output_name", anyStrings(outNames)},
			{"output_tooltips", tips},
			{"name", d.name},
			{"display_name", display},
			{"description", d.description},
			{"python_module", module},
			{"category", d.category},
			{"output_node", d.outputNode},
			{"deprecated", false},
			{"experimental", false},
			{"api_node", false},
		}
	}
	o := object{
		{"input", inputs},
		{"input_order", order},
		{"output", anyStrings(d.outputs)},
		{"output_is_list", isList},
		{"output_name", anyStrings(outNames)},
		{"name", d.name},
		{"display_name", display},
		{"description", d.description},
		{"python_module", module},
		{"category", d.category},
		{"output_node", d.outputNode},
	}
	if d.outputTooltips != nil {
		o = append(o, member{"output_tooltips", anyStrings(d.outputTooltips)})
	}
	return o
}

// inputInfo is the node's "input" (section → input → config) and
// "input_order" (section → names) of object_info.
func (d *nodeDef) inputInfo(s *Server) (inputs, order object) {
	inputs, order = object{}, object{}
	section := func(key string, specs []inputSpec) {
		if specs == nil {
			return
		}
		sec := object{}
		names := []any{}
		for _, in := range specs {
			sec = append(sec, member{in.name, in.config(s)})
			names = append(names, in.name)
		}
		inputs = append(inputs, member{key, sec})
		order = append(order, member{key, names})
	}
	section("required", d.required)
	section("optional", d.optional)
	if d.hidden != nil {
		inputs = append(inputs, member{"hidden", d.hidden})
		order = append(order, member{"hidden", anyStrings(d.hidden.Keys())})
	}
	return inputs, order
}

func anyStrings(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func num(s string) json.Number { return json.Number(s) }

func tooltip(t string) object { return object{{"tooltip", t}} }

func fixed(list []string) func(*Server) []string {
	return func(*Server) []string { return list }
}

func modelCombo(folder string) func(*Server) []string {
	return func(s *Server) []string { return s.modelFiles(folder) }
}

// saveHidden is the hidden input set of SaveImage and PreviewImage.
var saveHidden = object{{"prompt", "PROMPT"}, {"extra_pnginfo", "EXTRA_PNGINFO"}}

// buildNodeDefs returns the simulator's node table, in the order object_info
// lists it.
func buildNodeDefs() []*nodeDef {
	return []*nodeDef{
		{
			name: "KSampler", displayName: "KSampler", category: "sampling",
			description: "Uses the provided model, positive and negative conditioning to denoise the latent image.",
			required: []inputSpec{
				{name: "model", typ: "MODEL", opts: tooltip("The model used for denoising the input latent.")},
				{name: "seed", typ: "INT", opts: object{{"default", num("0")}, {"min", num("0")}, {"max", num("18446744073709551615")}, {"control_after_generate", true}, {"tooltip", "The random seed used for creating the noise."}}},
				{name: "steps", typ: "INT", opts: object{{"default", num("20")}, {"min", num("1")}, {"max", num("10000")}, {"tooltip", "The number of steps used in the denoising process."}}},
				{name: "cfg", typ: "FLOAT", opts: object{{"default", num("8.0")}, {"min", num("0.0")}, {"max", num("100.0")}, {"step", num("0.1")}, {"round", num("0.01")}, {"tooltip", "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. Higher values result in images more closely matching the prompt however too high values will negatively impact quality."}}},
				{name: "sampler_name", combo: fixed(samplerNames), opts: tooltip("The algorithm used when sampling, this can affect the quality, speed, and style of the generated output.")},
				{name: "scheduler", combo: fixed(schedulerNames), opts: tooltip("The scheduler controls how noise is gradually removed to form the image.")},
				{name: "positive", typ: "CONDITIONING", opts: tooltip("The conditioning describing the attributes you want to include in the image.")},
				{name: "negative", typ: "CONDITIONING", opts: tooltip("The conditioning describing the attributes you want to exclude from the image.")},
				{name: "latent_image", typ: "LATENT", opts: tooltip("The latent image to denoise.")},
				{name: "denoise", typ: "FLOAT", opts: object{{"default", num("1.0")}, {"min", num("0.0")}, {"max", num("1.0")}, {"step", num("0.01")}, {"tooltip", "The amount of denoising applied, lower values will maintain the structure of the initial image allowing for image to image sampling."}}},
			},
			outputs:        []string{"LATENT"},
			outputTooltips: []string{"The denoised latent."},
			run:            runKSampler,
		},
		{
			name: "CheckpointLoaderSimple", displayName: "Load Checkpoint", category: "loaders",
			description: "Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
			required: []inputSpec{
				{name: "ckpt_name", combo: modelCombo("checkpoints"), opts: tooltip("The name of the checkpoint (model) to load.")},
			},
			outputs: []string{"MODEL", "CLIP", "VAE"},
			outputTooltips: []string{
				"The model used for denoising latents.",
				"The CLIP model used for encoding text prompts.",
				"The VAE model used for encoding and decoding images to and from latent space.",
			},
			run: runCheckpointLoader,
		},
		{
			name: "CLIPTextEncode", displayName: "CLIP Text Encode (Prompt)", category: "conditioning",
			description: "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the diffusion model towards generating specific images.",
			required: []inputSpec{
				{name: "text", typ: "STRING", opts: object{{"multiline", true}, {"dynamicPrompts", true}, {"tooltip", "The text to be encoded."}}},
				{name: "clip", typ: "CLIP", opts: tooltip("The CLIP model used for encoding the text.")},
			},
			outputs:        []string{"CONDITIONING"},
			outputTooltips: []string{"A conditioning containing the embedded text used to guide the diffusion model."},
			run:            runCLIPTextEncode,
		},
		{
			name: "VAEDecode", displayName: "VAE Decode", category: "latent",
			description: "Decodes latent images back into pixel space images.",
			required: []inputSpec{
				{name: "samples", typ: "LATENT", opts: tooltip("The latent to be decoded.")},
				{name: "vae", typ: "VAE", opts: tooltip("The VAE model used for decoding the latent.")},
			},
			outputs:        []string{"IMAGE"},
			outputTooltips: []string{"The decoded image."},
			run:            runVAEDecode,
		},
		{
			name: "EmptyLatentImage", displayName: "Empty Latent Image", category: "latent",
			description: "Create a new batch of empty latent images to be denoised via sampling.",
			required: []inputSpec{
				{name: "width", typ: "INT", opts: object{{"default", num("512")}, {"min", num("16")}, {"max", num(maxResolution)}, {"step", num("8")}, {"tooltip", "The width of the latent images in pixels."}}},
				{name: "height", typ: "INT", opts: object{{"default", num("512")}, {"min", num("16")}, {"max", num(maxResolution)}, {"step", num("8")}, {"tooltip", "The height of the latent images in pixels."}}},
				{name: "batch_size", typ: "INT", opts: object{{"default", num("1")}, {"min", num("1")}, {"max", num("4096")}, {"tooltip", "The number of latent images in the batch."}}},
			},
			outputs:        []string{"LATENT"},
			outputTooltips: []string{"The empty latent image batch."},
			run:            runEmptyLatentImage,
		},
		{
			name: "SaveImage", displayName: "Save Image", category: "image",
			description: "Saves the input images to your ComfyUI output directory.",
			required: []inputSpec{
				{name: "images", typ: "IMAGE", opts: tooltip("The images to save.")},
				{name: "filename_prefix", typ: "STRING", opts: object{{"default", "ComfyUI"}, {"tooltip", "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."}}},
			},
			hidden:     saveHidden,
			outputs:    []string{},
			outputNode: true,
			run:        runSaveImage,
		},
		{
			name: "PreviewImage", displayName: "Preview Image", category: "image",
			// PreviewImage subclasses SaveImage and inherits its DESCRIPTION.
			description: "Saves the input images to your ComfyUI output directory.",
			required:    []inputSpec{{name: "images", typ: "IMAGE"}},
			hidden:      saveHidden,
			outputs:     []string{},
			outputNode:  true,
			run:         runPreviewImage,
		},
		{
			name: "LoadImage", displayName: "Load Image", category: "image",
			required: []inputSpec{
				{name: "image", combo: func(s *Server) []string { return s.inputImages() }, opts: object{{"image_upload", true}}},
			},
			outputs:        []string{"IMAGE", "MASK"},
			validateInputs: []string{"image"},
			validate:       validateLoadImage,
			isChanged:      loadImageChanged,
			run:            runLoadImage,
		},
		{
			name: "EmptyImage", category: "image",
			required: []inputSpec{
				{name: "width", typ: "INT", opts: object{{"default", num("512")}, {"min", num("1")}, {"max", num(maxResolution)}, {"step", num("1")}}},
				{name: "height", typ: "INT", opts: object{{"default", num("512")}, {"min", num("1")}, {"max", num(maxResolution)}, {"step", num("1")}}},
				{name: "batch_size", typ: "INT", opts: object{{"default", num("1")}, {"min", num("1")}, {"max", num("4096")}}},
				{name: "color", typ: "INT", opts: object{{"default", num("0")}, {"min", num("0")}, {"max", num("16777215")}, {"step", num("1")}, {"display", "color"}}},
			},
			outputs: []string{"IMAGE"},
			run:     runEmptyImage,
		},
		{
			name: "ImageInvert", displayName: "Invert Image", category: "image",
			required: []inputSpec{{name: "image", typ: "IMAGE"}},
			outputs:  []string{"IMAGE"},
			run:      runImageInvert,
		},
		{
			name: "ImageScale", displayName: "Upscale Image", category: "image/upscaling",
			required: []inputSpec{
				{name: "image", typ: "IMAGE"},
				{name: "upscale_method", combo: fixed(upscaleMethods)},
				{name: "width", typ: "INT", opts: object{{"default", num("512")}, {"min", num("0")}, {"max", num(maxResolution)}, {"step", num("1")}}},
				{name: "height", typ: "INT", opts: object{{"default", num("512")}, {"min", num("0")}, {"max", num(maxResolution)}, {"step", num("1")}}},
				{name: "crop", combo: fixed(cropMethods)},
			},
			outputs: []string{"IMAGE"},
			run:     runImageScale,
		},
		{
			name: "ImageScaleBy", displayName: "Upscale Image By", category: "image/upscaling",
			required: []inputSpec{
				{name: "image", typ: "IMAGE"},
				{name: "upscale_method", combo: fixed(upscaleMethods)},
				{name: "scale_by", typ: "FLOAT", opts: object{{"default", num("1.0")}, {"min", num("0.01")}, {"max", num("8.0")}, {"step", num("0.01")}}},
			},
			outputs: []string{"IMAGE"},
			run:     runImageScaleBy,
		},
		{
			name: "ImageBlur", displayName: "Image Blur", category: "image/postprocessing",
			module: "comfy_extras.nodes_post_processing",
			required: []inputSpec{
				{name: "image", typ: "IMAGE"},
				{name: "blur_radius", typ: "INT", opts: object{{"default", num("1")}, {"min", num("1")}, {"max", num("31")}, {"step", num("1")}}},
				{name: "sigma", typ: "FLOAT", opts: object{{"default", num("1.0")}, {"min", num("0.1")}, {"max", num("10.0")}, {"step", num("0.1")}}},
			},
			outputs: []string{"IMAGE"},
			run:     runImageBlur,
		},
	}
}

// modelFolders is folder_paths.folder_names_and_paths' key order.
var modelFolders = []string{
	"checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
	"style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
	"upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
	"model_patches", "audio_encoders",
}

// legacyFolders are the aliases folder_paths maps for lookups.
var legacyFolders = map[string]string{"unet": "diffusion_models", "clip": "text_encoders"}

// supportedModelExts is folder_paths.supported_pt_extensions.
var supportedModelExts = []string{".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

// folderNames lists the model folders in ComfyUI's order, followed by any
// extra folders named in Config.Models (sorted), like extra_model_paths.
func (s *Server) folderNames() []string {
	out := append([]string(nil), modelFolders...)
	known := map[string]bool{}
	for _, f := range modelFolders {
		known[f] = true
	}
	var extra []string
	for f := range s.cfg.Models {
		if !known[f] && legacyFolders[f] == "" {
			extra = append(extra, f)
		}
	}
	sort.Strings(extra)
	return append(out, extra...)
}

// isFolder reports whether name is a model folder key.
func (s *Server) isFolder(name string) bool {
	for _, f := range s.folderNames() {
		if f == name {
			return true
		}
	}
	return false
}

// modelFiles is folder_paths.get_filename_list: the folder's files with an
// allowed extension, sorted.
func (s *Server) modelFiles(folder string) []string {
	if alias, ok := legacyFolders[folder]; ok {
		folder = alias
	}
	names := append([]string(nil), s.cfg.Models[folder]...)
	for legacy, alias := range legacyFolders {
		if alias == folder {
			names = append(names, s.cfg.Models[legacy]...)
		}
	}
	out := []string{}
	seen := map[string]bool{}
	for _, n := range names {
		n = filepath.ToSlash(n)
		if seen[n] || !allowedModelFile(folder, n) {
			continue
		}
		seen[n] = true
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func allowedModelFile(folder, name string) bool {
	ext := strings.ToLower(filepath.Ext(name))
	switch folder {
	case "configs":
		return ext == ".yaml"
	case "custom_nodes":
		return true
	}
	for _, e := range supportedModelExts {
		if ext == e {
			return true
		}
	}
	return false
}

// inputImages lists the top-level image files of the input directory,
// sorted, as LoadImage's combo does.
func (s *Server) inputImages() []string {
	entries, err := os.ReadDir(s.cfg.InputDir)
	if err != nil {
		return []string{}
	}
	out := []string{}
	for _, e := range entries {
		if e.Type().IsRegular() && isImageName(e.Name()) {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

func isImageName(name string) bool {
	return strings.HasPrefix(guessMIME(name), "image/")
}

func (s *Server) handleObjectInfo(w http.ResponseWriter, r *http.Request) {
	out := object{}
	for _, d := range s.nodeList {
		out = append(out, member{d.name, d.info(s)})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleObjectInfoNode(w http.ResponseWriter, r *http.Request) {
	out := object{}
	if d, ok := s.nodes[r.PathValue("class")]; ok {
		out = append(out, member{d.name, d.info(s)})
	}
	writeJSON(w, http.StatusOK, out)
}
