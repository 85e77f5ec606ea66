package comfysim

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"

	"github.com/atelier-run/atelier/pkg/comfyview"
)

// Default values used by Config when a field is left zero.
const (
	// DefaultStepDelay is the simulated time of one sampler step and of one
	// model node (checkpoint load, text encode, VAE decode).
	DefaultStepDelay = 5 * time.Millisecond
	// DefaultMaxUploadSize mirrors ComfyUI's --max-upload-size 100 (MB).
	DefaultMaxUploadSize = 100 * 1024 * 1024
	// DefaultDeviceName is the GPU reported by /system_stats.
	DefaultDeviceName = "NVIDIA H100 80GB HBM3"
	// DefaultVRAMTotal is the VRAM of DefaultDeviceName in bytes.
	DefaultVRAMTotal = 85045395456
	// DefaultListen and DefaultPort are where ComfyUI listens unless
	// --listen and --port say otherwise (the atelier-comfysim binary's
	// defaults; Start takes the address).
	DefaultListen = "127.0.0.1"
	DefaultPort   = 8188
	// DefaultPreviewMethod is ComfyUI's --preview-method default: no
	// binary previews.
	DefaultPreviewMethod = "none"
	// DefaultCheckpoint is the checkpoint the example txt2img workflow names;
	// it is in the default model set so that workflow validates.
	DefaultCheckpoint = "v1-5-pruned-emaonly-fp16.safetensors"
)

// Config configures a simulated ComfyUI server. The zero value is usable
// except for Dir (or all three of InputDir/OutputDir/TempDir), which must
// name where files live.
type Config struct {
	// Dir is the base directory, like ComfyUI's --base-directory: input/,
	// output/ and temp/ live under it unless the specific fields are set.
	Dir string

	// InputDir, OutputDir and TempDir override the directories under Dir.
	// TempDir is the final temp directory. (ComfyUI's --temp-directory X
	// means X/temp; the atelier-comfysim binary applies that mapping, this
	// field does not.) Directories are created when missing.
	InputDir, OutputDir, TempDir string

	// KeepTemp stops the simulator from emptying TempDir at New and Close.
	// ComfyUI deletes its temp directory at startup and shutdown, so the
	// simulator does too by default.
	KeepTemp bool

	// Models maps a model folder (checkpoints, loras, ...) to the file names
	// it holds. They feed /models/{folder}, /embeddings and the combos of
	// object_info (ckpt_name), and so validation. nil selects
	// DefaultModels(); an empty non-nil map means "no model files at all".
	Models map[string][]string

	// StepDelay is the simulated duration of one sampler step and of each
	// model node. Zero selects DefaultStepDelay; a negative value means no
	// delay at all (fastest tests).
	StepDelay time.Duration

	// DeviceName and VRAMTotal describe the GPU in /system_stats. DeviceName
	// is the torch device name without the "cuda:0 " prefix and the
	// " : cudaMallocAsync" suffix, which the simulator adds as ComfyUI does.
	DeviceName string
	VRAMTotal  int64

	// CORSOrigin selects the middleware, as --enable-cors-header does:
	// "" keeps ComfyUI's default loopback Host/Origin check (403 on
	// mismatch); any other value ("*" or an origin) switches to CORS mode
	// and is sent as Access-Control-Allow-Origin.
	CORSOrigin string

	// MaxUploadSize is the request body limit in bytes (413 above it).
	// Zero selects DefaultMaxUploadSize.
	MaxUploadSize int64

	// PreviewMethod mirrors --preview-method: "none" (the default, as in
	// ComfyUI: no binary previews) or "auto"/"latent2rgb"/"taesd" (a small
	// JPEG preview frame per sampler step). A prompt's
	// extra_data.preview_method overrides it, as newer ComfyUI allows.
	PreviewMethod string

	// WebP encodes /view?preview=webp answers (webpenc.Encoder; decoding
	// WebP inputs takes importing webpenc too). nil leaves the WebP codec
	// out of the program: those answers are then a 500 (ErrNoWebP).
	WebP comfyview.WebPEncoder

	// MissingNodeType makes validation answer an unknown or missing node
	// class as newer ComfyUI (0.38+) does, with error type
	// missing_node_type, instead of the baseline's invalid_prompt.
	MissingNodeType bool

	// CheckPromptID makes POST /prompt refuse a client prompt_id that is
	// not a canonical lowercase hyphenated UUID (400 invalid_prompt_id), as
	// newer ComfyUI does; the baseline takes any value.
	CheckPromptID bool

	// WSRegisterDelay holds a new WebSocket between the upgrade answer and
	// its registration. ComfyUI (aiohttp) registers a socket only after
	// the 101 has gone out, so a client that queues a prompt as soon as
	// its dial returns can miss the prompt's first messages; a delay makes
	// that window wide enough for tests to prove a client waits for the
	// first "status" instead.
	WSRegisterDelay time.Duration

	// Argv is reported as system.argv by /system_stats.
	Argv []string

	// Logger receives the simulator's logs. The zero value logs nothing,
	// like zerolog.Nop().
	Logger zerolog.Logger

	// OnPrompt, when set, is called with the prompt id each time a prompt
	// is accepted into the queue (before the HTTP response is written), so
	// tests and benchmarks can measure "the prompt reached ComfyUI".
	OnPrompt func(promptID string)

	// OnDequeue, when set, is called with the prompt id when the worker
	// has taken the prompt off the queue (GET /queue shows it running)
	// and before its execution begins. An interrupt by prompt id in that
	// window is lost, as in ComfyUI, which clears its interrupt flag when
	// an execution begins; a hook that blocks holds the window open, so
	// tests can prove a client interrupts again once the prompt started.
	OnDequeue func(promptID string)

	// OnExecute, when set, is called with the prompt id when the worker
	// takes the prompt off the queue and starts executing it (before
	// execution_start): the moment the simulated GPU becomes busy.
	OnExecute func(promptID string)

	// OnDone, when set, is called when a prompt finished executing
	// (success, error or interruption; not a crash), after its history
	// entry is recorded and before the closing "executing null" is sent:
	// the moment the simulated GPU becomes free. It runs with the
	// simulator's lock held: it must be quick and must not call the
	// simulator.
	OnDone func(promptID string, success bool)

	// OnCrash is called when a FaultCrash fires mid-prompt. The binary
	// passes a function that exits the process with status 1; when nil the
	// simulator closes itself abruptly instead (sockets dropped, no
	// further events), which is what a dead process looks like to clients.
	OnCrash func()
}

// DefaultModels is the model set used when Config.Models is nil: enough for
// the example workflows, with realistic file names.
func DefaultModels() map[string][]string {
	return map[string][]string{
		"checkpoints":    {DefaultCheckpoint, "sd_xl_base_1.0.safetensors"},
		"vae":            {"vae-ft-mse-840000-ema-pruned.safetensors"},
		"loras":          {"detail_tweaker.safetensors"},
		"embeddings":     {"easynegative.safetensors"},
		"upscale_models": {"RealESRGAN_x4plus.pth"},
	}
}

// withDefaults returns a copy of c with defaults filled in and paths made
// absolute, or an error describing the first invalid field.
func (c Config) withDefaults() (Config, error) {
	if c.Dir == "" && (c.InputDir == "" || c.OutputDir == "" || c.TempDir == "") {
		return c, errors.New("comfysim: Config.Dir is required unless InputDir, OutputDir and TempDir are all set")
	}
	abs := func(p *string, fallback string) error {
		if *p == "" {
			*p = filepath.Join(c.Dir, fallback)
		}
		a, err := filepath.Abs(*p)
		if err != nil {
			return fmt.Errorf("comfysim: resolving %s directory: %w", fallback, err)
		}
		*p = a
		return nil
	}
	if c.Dir != "" {
		d, err := filepath.Abs(c.Dir)
		if err != nil {
			return c, fmt.Errorf("comfysim: resolving Dir: %w", err)
		}
		c.Dir = d
	}
	if err := abs(&c.InputDir, "input"); err != nil {
		return c, err
	}
	if err := abs(&c.OutputDir, "output"); err != nil {
		return c, err
	}
	if err := abs(&c.TempDir, "temp"); err != nil {
		return c, err
	}
	if c.Models == nil {
		c.Models = DefaultModels()
	}
	switch {
	case c.StepDelay == 0:
		c.StepDelay = DefaultStepDelay
	case c.StepDelay < 0:
		c.StepDelay = 0
	}
	if c.DeviceName == "" {
		c.DeviceName = DefaultDeviceName
	}
	if c.VRAMTotal == 0 {
		c.VRAMTotal = DefaultVRAMTotal
	}
	if c.VRAMTotal < 0 {
		return c, errors.New("comfysim: VRAMTotal must not be negative")
	}
	if c.MaxUploadSize == 0 {
		c.MaxUploadSize = DefaultMaxUploadSize
	}
	if c.MaxUploadSize < 0 {
		return c, errors.New("comfysim: MaxUploadSize must not be negative")
	}
	switch c.PreviewMethod {
	case "":
		c.PreviewMethod = DefaultPreviewMethod
	case "none", "auto", "latent2rgb", "taesd":
	default:
		return c, fmt.Errorf("comfysim: unknown PreviewMethod %q (want none, auto, latent2rgb or taesd)", c.PreviewMethod)
	}
	if c.Argv == nil {
		c.Argv = []string{"main.py"}
	}
	// The zero zerolog.Logger has no writer and is already a no-op logger,
	// so Logger needs no default.
	return c, nil
}
