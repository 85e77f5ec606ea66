package main

import (
	"errors"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/agent/gpu"
	"github.com/atelier-run/atelier/pkg/cli"
	"github.com/atelier-run/atelier/pkg/logging"
	"github.com/atelier-run/atelier/pkg/wire"
)

// newRoot is atelier-agent itself: without a subcommand it runs the agent
// (the systemd unit, the Dockerfiles and docker-compose.yml start it so).
func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "atelier-agent [flags]",
		Short: "Atelier's GPU agent: runs the queue's jobs in one ComfyUI per GPU",
		Long: `atelier-agent runs on a GPU box: one slot per GPU, each bound to one ComfyUI
(external URLs, a child process, a Docker container, or the built-in
simulator), pulling jobs from the broker's queue. SIGTERM drains: no new
jobs, running jobs get --drain-timeout to finish, then it exits.

Every flag can be set by the environment variable named in its help.`,
	}
	cfg := agentFlags(root.Flags())
	root.RunE = func(cmd *cobra.Command, _ []string) error {
		c, err := cfg()
		if err != nil {
			return err
		}
		err = agent.Run(cmd.Context(), c)
		if errors.Is(err, agent.ErrInvalidConfig) {
			return cli.UsageError(err)
		}
		return err
	}
	root.AddCommand(newPrepare(), newHealthcheck())
	return root
}

// agentFlags defines the agent's flags on fs and returns the function that
// turns them, once parsed, into the agent's Config.
func agentFlags(fs *pflag.FlagSet) func() (agent.Config, error) {
	var (
		id       = cli.String(fs, "id", "ATELIER_AGENT_ID", "", "agent id (default: host name)")
		pool     = cli.String(fs, "pool", "ATELIER_POOL", wire.DefaultPool, "pool this agent serves")
		natsURL  = cli.String(fs, "nats-url", "ATELIER_NATS_URL", agent.DefaultNATSURL, "broker's NATS URL")
		natsUser = cli.String(fs, "nats-user", "ATELIER_NATS_USER", "", "NATS user")
		natsPass = cli.String(fs, "nats-password", "ATELIER_NATS_PASSWORD", "", "NATS password")

		spool       = cli.String(fs, "spool", "ATELIER_SPOOL", "", "spool directory for outputs on their way to mello that cannot be read where ComfyUI wrote them (default: a temp dir)")
		cacheDir    = cli.String(fs, "input-cache", "ATELIER_INPUT_CACHE", "", "content-addressed cache of input files, kept across restarts (default: <scratch>/cache/inputs; simulated and external runtimes: under the spool)")
		cacheSize   = cli.Size(fs, "input-cache-size", "ATELIER_INPUT_CACHE_SIZE", agent.DefaultInputCacheBytes, "cap of the input cache (least recently used inputs no job holds are evicted), e.g. 500GiB, 2TiB; 0: no cap")
		keepOutputs = cli.Bool(fs, "keep-outputs", "ATELIER_KEEP_OUTPUTS", false, "keep output files on the box once they are in mello (default: emptied when their job is over)")
		noPrefetch  = cli.Bool(fs, "no-prefetch", "ATELIER_NO_PREFETCH", false, "fetch a slot's next job only when it is idle")

		eventTimeout = cli.Duration(fs, "event-timeout", "ATELIER_EVENT_TIMEOUT", agent.DefaultEventTimeout, "watchdog: no event from ComfyUI for this long restarts it and retries the job")
		drainTimeout = cli.Duration(fs, "drain-timeout", "ATELIER_DRAIN_TIMEOUT", agent.DefaultDrainTimeout, "on SIGTERM or drain: how long running jobs may finish before they are released")
		retryDelay   = cli.Duration(fs, "retry-delay", "ATELIER_RETRY_DELAY", agent.DefaultRetryDelay, "how long a job given back (ComfyUI crashed, claim failed) waits before it is offered again")
		logFormat    = cli.String(fs, "log-format", "ATELIER_LOG_FORMAT", "json", "json or console")
		logLevel     = cli.String(fs, "log-level", "ATELIER_LOG_LEVEL", "info", "debug, info, warn, error")
	)
	runtimeCfg := runtimeFlags(fs)
	return func() (agent.Config, error) {
		log, err := logging.New(os.Stderr, *logFormat, *logLevel, "atelier-agent")
		if err != nil {
			return agent.Config{}, cli.UsageError(err)
		}
		maxCache := *cacheSize
		if maxCache == 0 {
			maxCache = -1 // Config: negative means no cap
		}
		return agent.Config{
			ID: *id, Pool: *pool, NATSURL: *natsURL, NATSUser: *natsUser, NATSPassword: *natsPass,
			RuntimeConfig: runtimeCfg(),
			SpoolDir:      *spool, DisablePrefetch: *noPrefetch,
			InputCacheDir: *cacheDir, InputCacheBytes: maxCache, KeepOutputs: *keepOutputs,
			EventTimeout: *eventTimeout, DrainTimeout: *drainTimeout, RetryDelay: *retryDelay, Logger: log,
		}, nil
	}
}

// runtimeFlags defines the flags of the runtimes (where each slot's
// ComfyUI comes from) and returns the function that reads them.
func runtimeFlags(fs *pflag.FlagSet) func() agent.RuntimeConfig {
	var (
		kind      = cli.String(fs, "runtime", "ATELIER_RUNTIME", agent.DefaultRuntime, "external (ComfyUI URLs), process (spawn ComfyUI per GPU), docker (container per GPU) or simulated (built-in simulator per GPU)")
		comfyURLs = cli.String(fs, "comfy-urls", "ATELIER_COMFY_URLS", agent.DefaultComfyURL, "external runtime: comma-separated ComfyUI URLs, one per GPU")
		gpus      = cli.String(fs, "gpus", "ATELIER_GPUS", "", "GPUs: a count or comma-separated indexes (default: ask nvidia-smi; simulated: 2)")
		gpuQuery  = cli.String(fs, "gpu-query", "ATELIER_GPU_QUERY", strings.Join(gpu.DefaultQuery, " "), "command that lists GPUs as nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu --format=csv,noheader,nounits")
		scratch   = cli.String(fs, "scratch", "ATELIER_SCRATCH", agent.DefaultScratchRoot, "scratch root: inputs/<user>/, outputs/<user>/, temp/")
		comfyCmd  = cli.String(fs, "comfy-command", "ATELIER_COMFY_COMMAND", strings.Join(agent.DefaultComfyCommand, " "), "process runtime: ComfyUI command (flags --listen --port --cuda-device --input-directory --output-directory --temp-directory are appended)")
		comfyDir  = cli.String(fs, "comfy-dir", "ATELIER_COMFY_DIR", "", "process runtime: working directory (the ComfyUI checkout)")
		comfyArgs = cli.String(fs, "comfy-args", "ATELIER_COMFY_ARGS", "", "process and docker runtimes: extra ComfyUI arguments (space-separated)")
		basePort  = cli.Int(fs, "base-port", "ATELIER_BASE_PORT", agent.DefaultBasePort, "process and docker runtimes: port of the first GPU's ComfyUI (then +1 each)")
		logDir    = cli.String(fs, "log-dir", "ATELIER_LOG_DIR", "", "process runtime: ComfyUI log files (default: <scratch>/logs)")

		image       = cli.String(fs, "docker-image", "ATELIER_DOCKER_IMAGE", "", "docker runtime: ComfyUI image")
		models      = cli.String(fs, "models-dir", "ATELIER_MODELS_DIR", "", "docker runtime: models folder, mounted read-only")
		noGPU       = cli.Bool(fs, "docker-no-gpu", "ATELIER_DOCKER_NO_GPU", false, "docker runtime: leave out the GPU device request (machines without GPUs)")
		healthCmd   = cli.String(fs, "docker-health-cmd", "ATELIER_DOCKER_HEALTH_CMD", "", "docker runtime: health check command run in the container (default: curl on /system_stats; the simulator image: /atelier-healthcheck healthcheck)")
		healthEvery = cli.Duration(fs, "docker-health-interval", "ATELIER_DOCKER_HEALTH_INTERVAL", agent.DefaultDockerHealthInterval, "docker runtime: period of the container health check")
		dockerUser  = cli.String(fs, "docker-user", "ATELIER_DOCKER_USER", "", "docker runtime: who ComfyUI runs as in the containers, uid:gid or a user of the image (default: the agent's uid:gid, so it can empty the outputs ComfyUI writes; an agent running as root keeps the image's user); \"image\" keeps the image's user")

		simDir  = cli.String(fs, "sim-dir", "ATELIER_SIM_DIR", agent.DefaultSimDir, "simulated runtime: simulators' input/output/temp root")
		simStep = cli.Duration(fs, "sim-step-delay", "ATELIER_SIM_STEP_DELAY", agent.DefaultSimStepDelay, "simulated runtime: time per sampler step")
	)
	return func() agent.RuntimeConfig {
		return agent.RuntimeConfig{
			Kind: *kind, GPUs: *gpus, GPUQuery: strings.Fields(*gpuQuery), Scratch: *scratch,
			ComfyURLs:    strings.Split(*comfyURLs, ","),
			ComfyCommand: strings.Fields(*comfyCmd), ComfyDir: *comfyDir, ComfyArgs: strings.Fields(*comfyArgs),
			BasePort: *basePort, LogDir: *logDir,
			DockerImage: *image, ModelsDir: *models, DockerNoGPU: *noGPU, DockerHealthCmd: strings.Fields(*healthCmd),
			DockerHealthInterval: *healthEvery, DockerUser: *dockerUser,
			SimDir: *simDir, SimStepDelay: *simStep,
		}
	}
}
