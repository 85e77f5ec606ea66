package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/atelier-run/atelier/pkg/cli"
	"github.com/atelier-run/atelier/pkg/comfysim"
	"github.com/atelier-run/atelier/pkg/comfyview/webpenc"
)

// newRoot is atelier-comfysim: ComfyUI's flags → comfysim.Config → run.
// It takes no arguments.
func newRoot() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "atelier-comfysim [flags]",
		Short: "A simulated ComfyUI server (ComfyUI's own flags where they exist)",
		// A flag with an optional value takes it only as --flag=value,
		// so a stray word most likely meant to be one.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return cli.Usagef("unexpected argument %q (use --flag=value for flags with optional values)", args[0])
			}
			return nil
		},
	}
	o := comfyFlags(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := o.config()
		if err != nil {
			return err
		}
		return run(cmd.Context(), cfg, o.addr(), *o.startupDelay)
	}
	return cmd
}

// options are the command's flags; config reads them into a
// comfysim.Config.
type options struct {
	listen, base, input, output, temp, models, previewMethod, deviceName, logFormat *string
	port, cudaDevice                                                                *int
	maxUploadMB                                                                     *float64
	vramTotal                                                                       *int64
	stepDelay, startupDelay                                                         *time.Duration
	cors                                                                            *corsFlag
}

// comfyFlags defines ComfyUI's flags (and the simulator's own) on fs.
func comfyFlags(fs *pflag.FlagSet) *options {
	o := &options{
		listen:        fs.String("listen", comfysim.DefaultListen, "address to listen on (ComfyUI --listen; first of a comma list is used)"),
		port:          fs.Int("port", comfysim.DefaultPort, "port to listen on"),
		base:          fs.String("base-directory", "", "base directory for input/, output/, temp/ (default: current directory)"),
		input:         fs.String("input-directory", "", "input directory"),
		output:        fs.String("output-directory", "", "output directory"),
		temp:          fs.String("temp-directory", "", "temp base directory; as in ComfyUI the temp dir is DIR/temp"),
		cudaDevice:    fs.Int("cuda-device", 0, "accepted for compatibility; the chosen GPU is reported as cuda:0, as ComfyUI does"),
		maxUploadMB:   fs.Float64("max-upload-size", comfysim.DefaultMaxUploadSize/(1<<20), "request body limit in MB"),
		previewMethod: fs.String("preview-method", comfysim.DefaultPreviewMethod, "none, auto, latent2rgb or taesd (binary previews per sampler step)"),
		stepDelay:     fs.Duration("step-delay", comfysim.DefaultStepDelay, "simulated time per sampler step and model node (0 = none)"),
		models:        fs.String("models", "", "model files, e.g. 'checkpoints=a.safetensors,b.safetensors;loras=x.safetensors' (default: a built-in set)"),
		deviceName:    fs.String("device-name", comfysim.DefaultDeviceName, "GPU name for /system_stats"),
		vramTotal:     fs.Int64("vram-total", comfysim.DefaultVRAMTotal, "GPU memory in bytes for /system_stats"),
		logFormat:     fs.String("log-format", "console", "json or console"),
		startupDelay:  fs.Duration("sim-startup-delay", 0, "wait this long before listening (a slow-starting ComfyUI)"),
		cors:          &corsFlag{},
	}
	// ComfyUI's --enable-cors-header [ORIGIN]: bare means "*".
	fs.Var(o.cors, "enable-cors-header", "enable CORS with the given origin (bare flag: *) instead of the loopback origin check")
	fs.Lookup("enable-cors-header").NoOptDefVal = "*"
	return o
}

// corsFlag is --enable-cors-header's value.
type corsFlag struct{ origin string }

func (c *corsFlag) String() string { return c.origin }
func (c *corsFlag) Type() string   { return "origin" }
func (c *corsFlag) Set(v string) error {
	if v == "" || v == "true" {
		v = "*"
	}
	c.origin = v
	return nil
}

// config reads the flags into the simulator's configuration; a value it
// cannot run with is a usage error.
func (o *options) config() (comfysim.Config, error) {
	if *o.logFormat != "json" && *o.logFormat != "console" {
		return comfysim.Config{}, cli.Usagef("--log-format must be json or console, not %q", *o.logFormat)
	}
	models, err := parseModels(*o.models)
	if err != nil {
		return comfysim.Config{}, cli.UsageError(err)
	}
	base := *o.base
	if base == "" {
		if base, err = os.Getwd(); err != nil {
			return comfysim.Config{}, err
		}
	}
	temp := ""
	if *o.temp != "" {
		temp = filepath.Join(*o.temp, "temp")
	}
	stepDelay := *o.stepDelay
	if stepDelay == 0 {
		stepDelay = -1 // Config: negative means "no delay"
	}
	return comfysim.Config{
		Dir: base, InputDir: *o.input, OutputDir: *o.output, TempDir: temp,
		Models: models, StepDelay: stepDelay, DeviceName: *o.deviceName, VRAMTotal: *o.vramTotal,
		CORSOrigin: o.cors.origin, MaxUploadSize: int64(*o.maxUploadMB * 1024 * 1024), PreviewMethod: *o.previewMethod,
		WebP:   webpenc.Encoder{},
		Argv:   append([]string{"main.py"}, os.Args[1:]...),
		Logger: newLogger(*o.logFormat),
	}, nil
}

// addr is the listen address: the first of --listen's comma list.
func (o *options) addr() string {
	host, _, _ := strings.Cut(*o.listen, ",")
	return net.JoinHostPort(strings.TrimSpace(host), strconv.Itoa(*o.port))
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
