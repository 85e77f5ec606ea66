// Command atelier-comfysim runs the ComfyUI simulator (pkg/comfysim) as a
// process, with ComfyUI's own flag names where they exist, so the agent's
// process runtime can start it exactly like `python main.py --port ...`.
//
//	atelier-comfysim --listen 127.0.0.1 --port 8188 --base-directory /tmp/comfy \
//	    --models 'checkpoints=v1-5-pruned-emaonly-fp16.safetensors;loras=x.safetensors'
//
// Simulator-only flags start with --sim- or describe the fake GPU
// (--step-delay, --models, --device-name, --vram-total). A crash fault
// exits with status 1; SIGINT and SIGTERM stop the server.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/atelier-run/atelier/pkg/comfysim"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "atelier-comfysim:", err)
		os.Exit(2)
	}
}

// corsFlag is --enable-cors-header [ORIGIN]: bare means "*".
type corsFlag struct{ origin string }

func (c *corsFlag) String() string { return c.origin }
func (c *corsFlag) Set(v string) error {
	if v == "" || v == "true" {
		v = "*"
	}
	c.origin = v
	return nil
}
func (c *corsFlag) IsBoolFlag() bool { return true }

type options struct {
	listen, base, input, output, temp string
	port                              int
	stepDelay                         time.Duration
	models                            string
	cors                              corsFlag
	cudaDevice                        int
	logFormat                         string
	maxUploadMB                       float64
	previewMethod                     string
	deviceName                        string
	vramTotal                         int64
	startupDelay                      time.Duration
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("atelier-comfysim", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", "127.0.0.1", "address to listen on (ComfyUI --listen; first of a comma list is used)")
	fs.IntVar(&o.port, "port", 8188, "port to listen on")
	fs.StringVar(&o.base, "base-directory", "", "base directory for input/, output/, temp/ (default: current directory)")
	fs.StringVar(&o.input, "input-directory", "", "input directory")
	fs.StringVar(&o.output, "output-directory", "", "output directory")
	fs.StringVar(&o.temp, "temp-directory", "", "temp base directory; as in ComfyUI the temp dir is DIR/temp")
	fs.Var(&o.cors, "enable-cors-header", "enable CORS with the given origin (bare flag: *) instead of the loopback origin check")
	fs.IntVar(&o.cudaDevice, "cuda-device", 0, "accepted for compatibility; the chosen GPU is reported as cuda:0, as ComfyUI does")
	fs.Float64Var(&o.maxUploadMB, "max-upload-size", 100, "request body limit in MB")
	fs.StringVar(&o.previewMethod, "preview-method", "none", "none, auto, latent2rgb or taesd (binary previews per sampler step)")
	fs.DurationVar(&o.stepDelay, "step-delay", comfysim.DefaultStepDelay, "simulated time per sampler step and model node (0 = none)")
	fs.StringVar(&o.models, "models", "", "model files, e.g. 'checkpoints=a.safetensors,b.safetensors;loras=x.safetensors' (default: a built-in set)")
	fs.StringVar(&o.deviceName, "device-name", comfysim.DefaultDeviceName, "GPU name for /system_stats")
	fs.Int64Var(&o.vramTotal, "vram-total", comfysim.DefaultVRAMTotal, "GPU memory in bytes for /system_stats")
	fs.StringVar(&o.logFormat, "log-format", "console", "json or console")
	fs.DurationVar(&o.startupDelay, "sim-startup-delay", 0, "wait this long before listening (a slow-starting ComfyUI)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (use --flag=value for flags with optional values)", fs.Arg(0))
	}
	if o.logFormat != "json" && o.logFormat != "console" {
		return nil, fmt.Errorf("--log-format must be json or console, not %q", o.logFormat)
	}
	return o, nil
}

// parseModels parses "folder=a,b;folder2=c".
func parseModels(s string) (map[string][]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	out := map[string][]string{}
	for _, part := range strings.Split(s, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		folder, files, ok := strings.Cut(part, "=")
		if !ok || strings.TrimSpace(folder) == "" {
			return nil, fmt.Errorf("--models: %q is not folder=file,file", part)
		}
		folder = strings.TrimSpace(folder)
		out[folder] = []string{}
		for _, f := range strings.Split(files, ",") {
			if f = strings.TrimSpace(f); f != "" {
				out[folder] = append(out[folder], f)
			}
		}
	}
	return out, nil
}

func run(args []string) error {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	models, err := parseModels(o.models)
	if err != nil {
		return err
	}
	var logger zerolog.Logger
	if o.logFormat == "json" {
		logger = zerolog.New(os.Stderr).With().Timestamp().Logger()
	} else {
		logger = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).With().Timestamp().Logger()
	}

	base := o.base
	if base == "" {
		if base, err = os.Getwd(); err != nil {
			return err
		}
	}
	temp := ""
	if o.temp != "" {
		temp = filepath.Join(o.temp, "temp")
	}
	stepDelay := o.stepDelay
	if stepDelay == 0 {
		stepDelay = -1 // Config: negative means "no delay"
	}
	cfg := comfysim.Config{
		Dir:           base,
		InputDir:      o.input,
		OutputDir:     o.output,
		TempDir:       temp,
		Models:        models,
		StepDelay:     stepDelay,
		DeviceName:    o.deviceName,
		VRAMTotal:     o.vramTotal,
		CORSOrigin:    o.cors.origin,
		MaxUploadSize: int64(o.maxUploadMB * 1024 * 1024),
		PreviewMethod: o.previewMethod,
		Argv:          append([]string{"main.py"}, args...),
		Logger:        logger,
		OnCrash: func() {
			logger.Error().Msg("simulated crash: exiting with status 1")
			os.Exit(1)
		},
	}
	sim, err := comfysim.New(cfg)
	if err != nil {
		return err
	}
	defer sim.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.startupDelay > 0 {
		logger.Info().Dur("delay", o.startupDelay).Msg("simulating a slow start")
		select {
		case <-time.After(o.startupDelay):
		case <-ctx.Done():
			return nil
		}
	}
	host, _, _ := strings.Cut(o.listen, ",")
	addr := net.JoinHostPort(strings.TrimSpace(host), strconv.Itoa(o.port))
	if err := sim.Start(ctx, addr); err != nil {
		return err
	}
	logger.Info().Str("url", sim.URL()).Msg("To see the GUI go to: " + sim.URL())
	<-ctx.Done()
	logger.Info().Msg("stopping")
	return sim.Close()
}
