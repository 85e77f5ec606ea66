// Command atelier-agent runs on a GPU box: one slot per GPU, each bound to
// one ComfyUI, pulling jobs from the broker's queue.
//
//	atelier-agent [flags]                 run the agent (SIGTERM drains, then exits)
//	atelier-agent prepare [flags]         create the scratch layout and ComfyUI links
//	atelier-agent healthcheck --url URL   exit 0 when URL answers 200 (container health checks)
package main

import (
	"context"
	"fmt"
	"github.com/spf13/pflag"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/cli"
	"github.com/atelier-run/atelier/pkg/logging"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "prepare":
			os.Exit(prepare(os.Args[2:]))
		case "healthcheck":
			os.Exit(healthcheck(os.Args[2:]))
		}
	}
	os.Exit(serve(os.Args[1:]))
}

func serve(args []string) int {
	fs := pflag.NewFlagSet("atelier-agent", pflag.ExitOnError)
	var (
		id           = cli.String(fs, "id", "ATELIER_AGENT_ID", "", "agent id (default: host name)")
		pool         = cli.String(fs, "pool", "ATELIER_POOL", "default", "pool this agent serves")
		natsURL      = cli.String(fs, "nats-url", "ATELIER_NATS_URL", "nats://127.0.0.1:4222", "broker's NATS URL")
		natsUser     = cli.String(fs, "nats-user", "ATELIER_NATS_USER", "", "NATS user")
		natsPass     = cli.String(fs, "nats-password", "ATELIER_NATS_PASSWORD", "", "NATS password")
		runtime      = cli.String(fs, "runtime", "ATELIER_RUNTIME", "external", "external (ComfyUI URLs), process (spawn ComfyUI per GPU), docker (container per GPU) or simulated (built-in simulator per GPU)")
		comfyURLs    = cli.String(fs, "comfy-urls", "ATELIER_COMFY_URLS", "http://127.0.0.1:8188", "external runtime: comma-separated ComfyUI URLs, one per GPU")
		gpus         = cli.String(fs, "gpus", "ATELIER_GPUS", "", "GPUs: a count or comma-separated indexes (default: ask nvidia-smi; simulated: 2)")
		gpuQuery     = cli.String(fs, "gpu-query", "ATELIER_GPU_QUERY", strings.Join(agent.DefaultGPUQuery, " "), "command that lists GPUs as nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu --format=csv,noheader,nounits")
		scratch      = cli.String(fs, "scratch", "ATELIER_SCRATCH", agent.DefaultScratchRoot, "scratch root: inputs/<user>/, outputs/<user>/, temp/")
		comfyCmd     = cli.String(fs, "comfy-command", "ATELIER_COMFY_COMMAND", "python main.py", "process runtime: ComfyUI command (flags --listen --port --cuda-device --input-directory --output-directory --temp-directory are appended)")
		comfyDir     = cli.String(fs, "comfy-dir", "ATELIER_COMFY_DIR", "", "process runtime: working directory (the ComfyUI checkout)")
		comfyArgs    = cli.String(fs, "comfy-args", "ATELIER_COMFY_ARGS", "", "process and docker runtimes: extra ComfyUI arguments (space-separated)")
		basePort     = cli.Int(fs, "base-port", "ATELIER_BASE_PORT", 8188, "process and docker runtimes: port of the first GPU's ComfyUI (then +1 each)")
		logDir       = cli.String(fs, "log-dir", "ATELIER_LOG_DIR", "", "process runtime: ComfyUI log files (default: <scratch>/logs)")
		image        = cli.String(fs, "docker-image", "ATELIER_DOCKER_IMAGE", "", "docker runtime: ComfyUI image")
		models       = cli.String(fs, "models-dir", "ATELIER_MODELS_DIR", "", "docker runtime: models folder, mounted read-only")
		noDevReq     = cli.String(fs, "docker-no-gpu", "ATELIER_DOCKER_NO_GPU", "", "docker runtime: set to 1 to leave out the GPU device request (machines without GPUs)")
		healthCmd    = cli.String(fs, "docker-health-cmd", "ATELIER_DOCKER_HEALTH_CMD", "", "docker runtime: health check command run in the container (default: curl on /system_stats; the simulator image: /atelier-healthcheck healthcheck)")
		healthEvery  = cli.Duration(fs, "docker-health-interval", "ATELIER_DOCKER_HEALTH_INTERVAL", 5*time.Second, "docker runtime: period of the container health check")
		dockerUser   = cli.String(fs, "docker-user", "ATELIER_DOCKER_USER", "", "docker runtime: who ComfyUI runs as in the containers, uid:gid or a user of the image (default: the agent's uid:gid, so it can empty the outputs ComfyUI writes; an agent running as root keeps the image's user); \"image\" keeps the image's user")
		simDir       = cli.String(fs, "sim-dir", "ATELIER_SIM_DIR", filepath.Join(os.TempDir(), "atelier-sim"), "simulated runtime: simulators' input/output/temp root")
		simStep      = cli.Duration(fs, "sim-step-delay", "ATELIER_SIM_STEP_DELAY", 20*time.Millisecond, "simulated runtime: time per sampler step")
		spool        = cli.String(fs, "spool", "ATELIER_SPOOL", "", "spool directory for outputs on their way to mello that cannot be read where ComfyUI wrote them (default: a temp dir)")
		cacheDir     = cli.String(fs, "input-cache", "ATELIER_INPUT_CACHE", "", "content-addressed cache of input files, kept across restarts (default: <scratch>/cache/inputs; simulated and external runtimes: under the spool)")
		cacheSize    = cli.String(fs, "input-cache-size", "ATELIER_INPUT_CACHE_SIZE", "100GiB", "cap of the input cache (least recently used inputs no job holds are evicted), e.g. 500GiB, 2TiB; 0: no cap")
		keepOutputs  = cli.String(fs, "keep-outputs", "ATELIER_KEEP_OUTPUTS", "", "set to 1 to keep output files on the box once they are in mello (default: emptied when their job is over)")
		noPrefetch   = cli.String(fs, "no-prefetch", "ATELIER_NO_PREFETCH", "", "set to 1 to fetch a slot's next job only when it is idle")
		eventTimeout = cli.Duration(fs, "event-timeout", "ATELIER_EVENT_TIMEOUT", 10*time.Minute, "watchdog: no event from ComfyUI for this long restarts it and retries the job")
		drainTimeout = cli.Duration(fs, "drain-timeout", "ATELIER_DRAIN_TIMEOUT", 5*time.Minute, "on SIGTERM or drain: how long running jobs may finish before they are released")
		retryDelay   = cli.Duration(fs, "retry-delay", "ATELIER_RETRY_DELAY", 5*time.Second, "how long a job given back (ComfyUI crashed, claim failed) waits before it is offered again")
		logFormat    = cli.String(fs, "log-format", "ATELIER_LOG_FORMAT", "json", "json or console")
		logLevel     = cli.String(fs, "log-level", "ATELIER_LOG_LEVEL", "info", "debug, info, warn, error")
	)
	_ = fs.Parse(args)
	cli.MustApplyEnv(fs)
	log := logging.Must(*logFormat, *logLevel, "atelier-agent")
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "atelier-agent: "+format+"\n", a...)
		return 2
	}

	maxCache, err := parseSize(*cacheSize)
	if err != nil {
		return fail("--input-cache-size: %v", err)
	}
	if maxCache == 0 {
		maxCache = -1 // Config: negative means no cap
	}

	ctx, cancel := cli.SignalContext()
	defer cancel()
	cfg := agent.Config{
		ID: *id, Pool: *pool, NATSURL: *natsURL, NATSUser: *natsUser, NATSPassword: *natsPass,
		SpoolDir: *spool, DisablePrefetch: isTrue(*noPrefetch),
		InputCacheDir: *cacheDir, InputCacheBytes: maxCache, KeepOutputs: isTrue(*keepOutputs),
		EventTimeout: *eventTimeout, DrainTimeout: *drainTimeout, RetryDelay: *retryDelay, Logger: log,
	}
	query := strings.Fields(*gpuQuery)
	discover := func() ([]agent.GPU, error) {
		listed, err := agent.QueryGPUs(ctx, query)
		if err == nil && len(listed) == 0 {
			err = fmt.Errorf("%s lists no GPU", query[0])
		}
		if err == nil {
			// Memory and utilisation per slot in the heartbeat, also
			// when the GPUs are given explicitly.
			cfg.GPUStats = func(ctx context.Context) ([]agent.GPU, error) { return agent.QueryGPUs(ctx, query) }
		}
		if *gpus == "" {
			return listed, err
		}
		given, gerr := agent.ParseGPUList(*gpus)
		if gerr != nil {
			return nil, gerr
		}
		return agent.DescribeGPUs(given, listed), nil
	}
	sc := agent.Scratch{Root: *scratch}
	switch *runtime {
	case "external":
		cfg.Runtime = &agent.External{URLs: strings.Split(*comfyURLs, ",")}
	case "simulated":
		n := 2
		if *gpus != "" {
			g, err := agent.ParseGPUList(*gpus)
			if err != nil {
				return fail("--gpus: %v", err)
			}
			n = len(g)
		}
		cfg.Runtime = &agent.Simulated{GPUs: n, Dir: *simDir, StepDelay: *simStep, Logger: log}
	case "process":
		g, err := discover()
		if err != nil {
			return fail("GPU discovery: %v (give --gpus to skip it)", err)
		}
		if err := sc.Prepare(agent.PrepareOptions{}); err != nil {
			return fail("%v", err)
		}
		ld := *logDir
		if ld == "" {
			ld = filepath.Join(*scratch, "logs")
		}
		cfg.Runtime = &agent.Process{
			Command: strings.Fields(*comfyCmd), Dir: *comfyDir, ExtraArgs: strings.Fields(*comfyArgs), GPUs: g,
			BasePort: *basePort, InputDir: sc.Inputs(), OutputRoot: sc.Outputs(), TempRoot: sc.Temp(), LogDir: ld, Logger: log,
		}
		cfg.ScratchDir = *scratch
	case "docker":
		g, err := discover()
		if err != nil {
			return fail("GPU discovery: %v (give --gpus to skip it)", err)
		}
		if *image == "" {
			return fail("--docker-image is required with --runtime docker")
		}
		d := &agent.Docker{
			Agent: cfg.ID, Image: *image, ExtraArgs: strings.Fields(*comfyArgs), GPUs: g,
			DeviceRequests: !(*noDevReq == "1" || *noDevReq == "true"),
			ScratchDir:     *scratch, ModelsDir: *models, BasePort: *basePort, HealthInterval: *healthEvery, User: *dockerUser, Logger: log,
		}
		if *healthCmd != "" {
			d.HealthCmd = append([]string{"CMD"}, strings.Fields(*healthCmd)...)
		}
		cfg.Runtime = d
		cfg.ScratchDir = *scratch
	default:
		return fail("--runtime %q: want external, process, docker or simulated", *runtime)
	}
	if err := agent.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "atelier-agent:", err)
		return 1
	}
	return 0
}

// prepare creates the scratch layout (inputs/<user>/, outputs/<user>/,
// temp/) and, with --comfy-dir, links the checkout's input/ and output/
// into it. Idempotent: the set-up script runs it on every boot.
func prepare(args []string) int {
	fs := pflag.NewFlagSet("atelier-agent prepare", pflag.ExitOnError)
	scratch := cli.String(fs, "scratch", "ATELIER_SCRATCH", agent.DefaultScratchRoot, "scratch root")
	comfyDir := cli.String(fs, "comfy-dir", "ATELIER_COMFY_DIR", "", "ComfyUI checkout whose input/ and output/ become links into the scratch layout")
	users := cli.String(fs, "users", "ATELIER_USERS", "", "comma-separated users whose folders to create now")
	_ = fs.Parse(args)
	cli.MustApplyEnv(fs)
	var us []string
	for _, u := range strings.Split(*users, ",") {
		if u = strings.TrimSpace(u); u != "" {
			us = append(us, u)
		}
	}
	sc := agent.Scratch{Root: *scratch}
	if err := sc.Prepare(agent.PrepareOptions{Users: us, ComfyUIDir: *comfyDir}); err != nil {
		fmt.Fprintln(os.Stderr, "atelier-agent prepare:", err)
		return 1
	}
	fmt.Printf("scratch ready: %s %s %s\n", sc.Inputs(), sc.Outputs(), sc.Temp())
	return 0
}

// healthcheck is a container health check for images without curl (the
// simulator's FROM scratch image): GET the URL, exit 0 on 200.
func healthcheck(args []string) int {
	fs := pflag.NewFlagSet("atelier-agent healthcheck", pflag.ExitOnError)
	url := fs.String("url", "http://127.0.0.1:8188/system_stats", "URL that answers 200 when healthy")
	_ = fs.Parse(args)
	cli.MustApplyEnv(fs)
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(*url)
	if err != nil {
		fmt.Fprintln(os.Stderr, "unhealthy:", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(os.Stderr, "unhealthy:", resp.Status)
		return 1
	}
	return 0
}

func isTrue(s string) bool { return s == "1" || s == "true" }

// parseSize reads a byte count: a number with an optional unit (B, KB,
// MB, GB, TB, KiB, MiB, GiB, TiB; case-insensitive).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToLower(s))
	units := []struct {
		suffix string
		mult   int64
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
		{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12}, {"b", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseFloat(t, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size (e.g. 500GiB)", s)
	}
	return int64(n * float64(mult)), nil
}
