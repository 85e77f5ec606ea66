package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"

	"github.com/atelier-run/atelier/pkg/agent/gpu"
	"github.com/atelier-run/atelier/pkg/agent/runtime"
	"github.com/atelier-run/atelier/pkg/agent/runtime/docker"
	"github.com/atelier-run/atelier/pkg/agent/runtime/external"
	"github.com/atelier-run/atelier/pkg/agent/runtime/process"
	"github.com/atelier-run/atelier/pkg/agent/runtime/simulated"
)

// The runtimes RuntimeConfig.Kind names.
const (
	// RuntimeExternal attaches to ComfyUIs something else runs (ComfyURLs).
	RuntimeExternal = "external"
	// RuntimeProcess spawns one ComfyUI process per GPU.
	RuntimeProcess = "process"
	// RuntimeDocker runs one ComfyUI container per GPU.
	RuntimeDocker = "docker"
	// RuntimeSimulated runs the built-in ComfyUI simulator per simulated
	// GPU.
	RuntimeSimulated = "simulated"
)

// Defaults of RuntimeConfig's zero fields; atelier-agent's flags default
// to them too.
const (
	DefaultRuntime              = RuntimeExternal
	DefaultComfyURL             = "http://127.0.0.1:8188"
	DefaultBasePort             = runtime.DefaultBasePort
	DefaultDockerHealthInterval = docker.DefaultHealthInterval
	DefaultSimulatedGPUs        = 2
	DefaultSimStepDelay         = 20 * time.Millisecond
)

var (
	// DefaultComfyCommand is the process runtime's ComfyUI command.
	DefaultComfyCommand = process.DefaultCommand
	// DefaultSimDir holds the simulated runtime's input, output and temp
	// folders.
	DefaultSimDir = filepath.Join(os.TempDir(), "atelier-sim")
)

// RuntimeConfig describes the runtime the agent builds (Config.Runtime
// nil): which kind, and the settings of that kind. Building it discovers
// the GPUs (process, docker) and prepares the scratch layout.
type RuntimeConfig struct {
	// Kind is RuntimeExternal (default), RuntimeProcess, RuntimeDocker or
	// RuntimeSimulated.
	Kind string

	// GPUs chooses the GPUs, one slot each: a count ("4") or
	// comma-separated indexes ("0,2"). Empty: the process and docker
	// runtimes ask GPUQuery; the simulated runtime has
	// DefaultSimulatedGPUs.
	GPUs string
	// GPUQuery is the command that lists the GPUs (default
	// gpu.DefaultQuery); it is asked again for the heartbeat's readings
	// (Config.GPUStats), also when GPUs names them.
	GPUQuery []string
	// Scratch is the process and docker runtimes' scratch root (default
	// DefaultScratchRoot): the agent prepares its layout, measures it and
	// keeps its input cache there.
	Scratch string

	// ComfyURLs are the external runtime's ComfyUIs, one per GPU
	// (default DefaultComfyURL).
	ComfyURLs []string
	// ComfyCommand (default DefaultComfyCommand) and ComfyDir (its
	// working directory, the ComfyUI checkout) are the process
	// runtime's.
	ComfyCommand []string
	ComfyDir     string
	// ComfyArgs are extra ComfyUI arguments (process and docker).
	ComfyArgs []string
	// BasePort is the port of the first GPU's ComfyUI, then +1 each
	// (process and docker; default DefaultBasePort).
	BasePort int
	// LogDir holds the process runtime's ComfyUI logs (default
	// <Scratch>/logs).
	LogDir string

	// DockerImage is the docker runtime's ComfyUI image (required).
	DockerImage string
	// ModelsDir is mounted read-only into the containers.
	ModelsDir string
	// DockerNoGPU leaves out the GPU device request (machines without
	// GPUs).
	DockerNoGPU bool
	// DockerHealthCmd is run in the container as its health check
	// (default docker.DefaultHealthCmd); DockerHealthInterval its period
	// (default DefaultDockerHealthInterval).
	DockerHealthCmd      []string
	DockerHealthInterval time.Duration
	// DockerUser is who ComfyUI runs as in the containers (see
	// docker.Runtime.User).
	DockerUser string

	// SimDir (default DefaultSimDir) and SimStepDelay are the simulated
	// runtime's (a zero SimStepDelay is the simulator's own default;
	// atelier-agent's flag defaults to DefaultSimStepDelay).
	SimDir       string
	SimStepDelay time.Duration
}

func (rc *RuntimeConfig) setDefaults() {
	if rc.Kind == "" {
		rc.Kind = DefaultRuntime
	}
	if rc.Scratch == "" {
		rc.Scratch = DefaultScratchRoot
	}
	if len(rc.ComfyURLs) == 0 {
		rc.ComfyURLs = []string{DefaultComfyURL}
	}
	if rc.SimDir == "" {
		rc.SimDir = DefaultSimDir
	}
}

func (rc *RuntimeConfig) validate() error {
	switch rc.Kind {
	case RuntimeExternal, RuntimeProcess, RuntimeSimulated:
	case RuntimeDocker:
		if rc.DockerImage == "" {
			return errors.New("--docker-image is required with --runtime docker")
		}
	default:
		return fmt.Errorf("--runtime %q: want external, process, docker or simulated", rc.Kind)
	}
	if rc.GPUs != "" {
		if _, err := gpu.ParseList(rc.GPUs); err != nil {
			return fmt.Errorf("--gpus: %w", err)
		}
	}
	return nil
}

// builtRuntime is a runtime built from a RuntimeConfig, with what the
// agent learnt while building it.
type builtRuntime struct {
	runtime runtime.Runtime
	// scratch is the scratch root the runtime's ComfyUIs write to (""
	// when there is none to measure).
	scratch string
	// gpuStats reads the GPUs (nil when the GPU query does not answer).
	gpuStats func(ctx context.Context) ([]gpu.GPU, error)
}

// build builds the runtime for the agent id. Its errors wrap
// ErrInvalidConfig: nothing was started yet.
func (rc *RuntimeConfig) build(ctx context.Context, id string, log zerolog.Logger) (builtRuntime, error) {
	var b builtRuntime
	var err error
	switch rc.Kind {
	case RuntimeExternal:
		b.runtime = &external.Runtime{URLs: rc.ComfyURLs}
	case RuntimeSimulated:
		n := DefaultSimulatedGPUs
		if rc.GPUs != "" {
			g, _ := gpu.ParseList(rc.GPUs) // validated
			n = len(g)
		}
		b.runtime = &simulated.Runtime{GPUs: n, Dir: rc.SimDir, StepDelay: rc.SimStepDelay, Logger: log}
	case RuntimeProcess:
		b, err = rc.buildProcess(ctx, log)
	case RuntimeDocker:
		b, err = rc.buildDocker(ctx, id, log)
	}
	if err != nil {
		return b, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return b, nil
}

func (rc *RuntimeConfig) buildProcess(ctx context.Context, log zerolog.Logger) (builtRuntime, error) {
	gpus, stats, err := rc.discoverGPUs(ctx)
	if err != nil {
		return builtRuntime{}, err
	}
	sc := Scratch{Root: rc.Scratch}
	if err := sc.Prepare(PrepareOptions{}); err != nil {
		return builtRuntime{}, err
	}
	logDir := rc.LogDir
	if logDir == "" {
		logDir = filepath.Join(rc.Scratch, "logs")
	}
	return builtRuntime{
		runtime: &process.Runtime{
			Command: rc.ComfyCommand, Dir: rc.ComfyDir, ExtraArgs: rc.ComfyArgs, GPUs: gpus, BasePort: rc.BasePort,
			InputDir: sc.Inputs(), OutputRoot: sc.Outputs(), TempRoot: sc.Temp(), LogDir: logDir, Logger: log,
		},
		scratch: rc.Scratch, gpuStats: stats,
	}, nil
}

func (rc *RuntimeConfig) buildDocker(ctx context.Context, id string, log zerolog.Logger) (builtRuntime, error) {
	gpus, stats, err := rc.discoverGPUs(ctx)
	if err != nil {
		return builtRuntime{}, err
	}
	d := &docker.Runtime{
		Agent: id, Image: rc.DockerImage, ExtraArgs: rc.ComfyArgs, GPUs: gpus, DeviceRequests: !rc.DockerNoGPU,
		ScratchDir: rc.Scratch, ModelsDir: rc.ModelsDir, BasePort: rc.BasePort,
		HealthInterval: rc.DockerHealthInterval, User: rc.DockerUser, Logger: log,
	}
	if len(rc.DockerHealthCmd) > 0 {
		d.HealthCmd = append([]string{"CMD"}, rc.DockerHealthCmd...)
	}
	return builtRuntime{runtime: d, scratch: rc.Scratch, gpuStats: stats}, nil
}

// discoverGPUs lists the slots' GPUs: the GPU query's, or the ones GPUs
// names (described by the query where it knows them). stats reads them
// for the heartbeat when the query answered.
func (rc *RuntimeConfig) discoverGPUs(ctx context.Context) (gpus []gpu.GPU, stats func(context.Context) ([]gpu.GPU, error), err error) {
	query := rc.GPUQuery
	if len(query) == 0 {
		query = gpu.DefaultQuery
	}
	listed, err := gpu.Query(ctx, query)
	if err == nil && len(listed) == 0 {
		err = fmt.Errorf("%s lists no GPU", query[0])
	}
	if err == nil {
		stats = func(ctx context.Context) ([]gpu.GPU, error) { return gpu.Query(ctx, query) }
	}
	if rc.GPUs == "" {
		if err != nil {
			return nil, nil, fmt.Errorf("GPU discovery: %w (give --gpus to skip it)", err)
		}
		return listed, stats, nil
	}
	given, err := gpu.ParseList(rc.GPUs)
	if err != nil {
		return nil, nil, fmt.Errorf("--gpus: %w", err)
	}
	return gpu.Describe(given, listed), stats, nil
}
