// Package docker is the runtime that runs one ComfyUI container per GPU
// through the Docker Engine API (the official client,
// github.com/moby/moby/client).
package docker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/moby/moby/client"
	"github.com/rs/zerolog"

	"github.com/atelier-run/atelier/pkg/agent/gpu"
	"github.com/atelier-run/atelier/pkg/agent/runtime"
)

// Defaults of Runtime's empty fields.
const (
	DefaultModelsTarget   = "/models"
	DefaultHealthInterval = 5 * time.Second
)

// DefaultHealthCmd is the containers' health check: ComfyUI answers
// /system_stats.
var DefaultHealthCmd = []string{"CMD-SHELL", "curl -fsS http://127.0.0.1:8188/system_stats >/dev/null || exit 1"}

// ImageUser as Runtime.User runs the containers as the image's own user
// (its USER, root when it has none).
const ImageUser = "image"

// Runtime runs one ComfyUI container per GPU through the Docker Engine
// API: a GPU device request for that GPU, the scratch folder and the
// read-only models folder mounted, labels atelier.agent and atelier.slot,
// a health check, Docker's on-failure restart policy, and removal when the
// agent stops. The agent supervises too: it learns of each exit (a
// long-polled wait) and starts a container Docker did not restart (docker
// kill is a manual stop to Docker's restart policy).
type Runtime struct {
	// Host is the engine address (default $DOCKER_HOST, or
	// unix:///var/run/docker.sock).
	Host string
	// Agent labels the containers (atelier.agent) and prefixes their
	// names; containers left by an earlier run of the same agent are
	// removed at Start.
	Agent string
	// Image is the ComfyUI image; Command its arguments before the
	// flags the runtime adds (--listen 0.0.0.0 --port 8188
	// --input-directory /scratch/inputs --output-directory
	// /scratch/outputs/gpuN --temp-directory /scratch/temp/gpuN: one
	// output folder per GPU, as ComfyUI numbers files by scanning it),
	// ExtraArgs after them.
	Image     string
	Command   []string
	ExtraArgs []string
	Env       []string
	// GPUs are the devices, one container each.
	GPUs []gpu.GPU
	// DeviceRequests asks the engine for each container's GPU (driver
	// nvidia). Off only on machines without GPUs (tests).
	DeviceRequests bool
	// ScratchDir is mounted read-write at /scratch; ModelsDir (optional)
	// read-only at ModelsTarget (default DefaultModelsTarget).
	ScratchDir   string
	ModelsDir    string
	ModelsTarget string
	// BasePort is the loopback host port of the first slot (default
	// runtime.DefaultBasePort); the container port is always 8188.
	BasePort int
	// HealthCmd is the container health check (default
	// DefaultHealthCmd); HealthInterval its period (default
	// DefaultHealthInterval).
	HealthCmd      []string
	HealthInterval time.Duration
	// User is who ComfyUI runs as in the containers: "uid:gid" (or a
	// user the image knows). Empty: the agent's own uid:gid, so that the
	// outputs ComfyUI writes on the bind-mounted scratch are the agent's
	// and it can empty them once shipped (a root ComfyUI writes files a
	// non-root agent cannot truncate, and the scratch disk fills); an
	// agent running as root leaves the image's user, as root can empty
	// anything. ImageUser keeps the image's user in any case.
	User   string
	Logger zerolog.Logger

	api  *client.Client
	mu   sync.Mutex
	ctrs map[string]*slotContainer
	// cancel ends the supervisors (Stop).
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// slotContainer is one slot's container.
type slotContainer struct {
	slot   string
	id     string
	exited chan struct{} // closed at the container's next exit
}

var (
	_ runtime.Runtime    = (*Runtime)(nil)
	_ runtime.Supervisor = (*Runtime)(nil)
)

// containerUser is the User of the containers' config ("" for the
// image's).
func (d *Runtime) containerUser() string {
	switch {
	case d.User == ImageUser:
		return ""
	case d.User != "":
		return d.User
	case os.Geteuid() <= 0: // root, or no uids (Windows)
		return ""
	}
	return strconv.Itoa(os.Geteuid()) + ":" + strconv.Itoa(os.Getegid())
}

func (d *Runtime) setDefaults() error {
	var errs []error
	if d.Image == "" {
		errs = append(errs, errors.New("missing Image"))
	}
	if d.Agent == "" || len(d.GPUs) == 0 || d.ScratchDir == "" {
		errs = append(errs, errors.New("missing Agent, GPUs or ScratchDir"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("docker runtime: %w", err)
	}
	if d.BasePort == 0 {
		d.BasePort = runtime.DefaultBasePort
	}
	if d.ModelsTarget == "" {
		d.ModelsTarget = DefaultModelsTarget
	}
	if d.HealthInterval == 0 {
		d.HealthInterval = DefaultHealthInterval
	}
	if len(d.HealthCmd) == 0 {
		d.HealthCmd = DefaultHealthCmd
	}
	return nil
}

// connect makes the Engine API client and checks that the engine answers.
func (d *Runtime) connect(ctx context.Context) error {
	host := client.WithHostFromEnv()
	if d.Host != "" {
		host = client.WithHost(d.Host)
	}
	api, err := client.New(host)
	if err != nil {
		return fmt.Errorf("docker runtime: engine client: %w", err)
	}
	if _, err := api.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		_ = api.Close()
		return fmt.Errorf("docker runtime: docker engine: %w", err)
	}
	d.api = api
	return nil
}

// removeLeftovers removes the containers an earlier run of this agent
// left (by their atelier.agent label).
func (d *Runtime) removeLeftovers(ctx context.Context) error {
	old, err := d.api.ContainerList(ctx, client.ContainerListOptions{
		All: true, Filters: make(client.Filters).Add("label", labelAgent+"="+d.Agent),
	})
	if err != nil {
		return fmt.Errorf("docker runtime: list containers: %w", err)
	}
	for _, c := range old.Items {
		d.Logger.Info().Str("container", shortID(c.ID)).Msg("removing a container left by an earlier run")
		_ = d.remove(ctx, c.ID)
	}
	return nil
}

// Start removes containers an earlier run left, then creates and starts
// one container per GPU.
func (d *Runtime) Start(ctx context.Context) ([]runtime.Endpoint, error) {
	if err := d.setDefaults(); err != nil {
		return nil, err
	}
	if err := d.connect(ctx); err != nil {
		return nil, err
	}
	if err := d.removeLeftovers(ctx); err != nil {
		return nil, err
	}
	scratch, err := filepath.Abs(d.ScratchDir)
	if err != nil {
		return nil, err
	}
	for _, sub := range []string{"inputs", "outputs", "temp"} {
		if err := os.MkdirAll(filepath.Join(scratch, sub), 0o755); err != nil {
			return nil, fmt.Errorf("docker runtime: %w", err)
		}
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.mu.Lock()
	d.ctrs, d.cancel = map[string]*slotContainer{}, cancel
	d.mu.Unlock()
	var eps []runtime.Endpoint
	for i, g := range d.GPUs {
		ep, err := d.startSlot(ctx, runCtx, g, scratch, d.BasePort+i)
		if err != nil {
			_ = d.Stop(ctx)
			return nil, err
		}
		eps = append(eps, ep)
	}
	return eps, nil
}

// startSlot creates and starts the container of GPU g, published on the
// loopback port, and supervises it (until runCtx ends).
func (d *Runtime) startSlot(ctx, runCtx context.Context, g gpu.GPU, scratch string, port int) (runtime.Endpoint, error) {
	slot := runtime.SlotName(g.Index)
	id, err := d.create(ctx, slot, g, scratch, port)
	if err == nil {
		_, err = d.api.ContainerStart(ctx, id, client.ContainerStartOptions{})
	}
	if err != nil {
		return runtime.Endpoint{}, fmt.Errorf("docker runtime: %s: %w", slot, err)
	}
	c := &slotContainer{slot: slot, id: id, exited: make(chan struct{})}
	d.mu.Lock()
	d.ctrs[slot] = c
	d.mu.Unlock()
	d.wg.Add(1)
	go d.supervise(runCtx, c)
	d.Logger.Info().Str("slot", slot).Str("container", shortID(id)).Int("port", port).Str("user", d.containerUser()).Msg("ComfyUI container started")
	return runtime.Endpoint{
		Slot: slot, GPU: g.Name, GPUIndex: g.Index, GPUUUID: g.UUID, URL: "http://127.0.0.1:" + strconv.Itoa(port),
		// The scratch folder is bind-mounted: the agent reads outputs
		// and places inputs on the host side of the mount.
		InputDir: filepath.Join(scratch, "inputs"), OutputDir: filepath.Join(scratch, "outputs", slot),
		TempDir: filepath.Join(scratch, "temp", slot, "temp"),
	}, nil
}

// Restart restarts the slot's container.
func (d *Runtime) Restart(ctx context.Context, slot string) error {
	d.mu.Lock()
	c := d.ctrs[slot]
	d.mu.Unlock()
	if c == nil {
		return fmt.Errorf("docker runtime: %w %q", runtime.ErrUnknownSlot, slot)
	}
	grace := restartGraceSeconds
	_, err := d.api.ContainerRestart(ctx, c.id, client.ContainerRestartOptions{Timeout: &grace})
	return err
}

// restartGraceSeconds is how long a restarted ComfyUI may take to exit
// after SIGTERM before the engine kills it.
const restartGraceSeconds = 5

// Exited returns a channel closed when the slot's container next exits.
func (d *Runtime) Exited(slot string) <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := d.ctrs[slot]; c != nil {
		return c.exited
	}
	return nil
}

// ContainerID returns the slot's container id (tests, diagnostics).
func (d *Runtime) ContainerID(slot string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := d.ctrs[slot]; c != nil {
		return c.id
	}
	return ""
}

// Stop removes the containers.
func (d *Runtime) Stop(ctx context.Context) error {
	d.mu.Lock()
	if d.cancel != nil {
		d.cancel()
	}
	ctrs := d.ctrs
	d.mu.Unlock()
	var errs []error
	for _, c := range ctrs {
		if err := d.remove(context.WithoutCancel(ctx), c.id); err != nil {
			errs = append(errs, err)
		}
	}
	d.wg.Wait()
	if d.api != nil {
		errs = append(errs, d.api.Close())
	}
	return errors.Join(errs...)
}

func (d *Runtime) remove(ctx context.Context, id string) error {
	_, err := d.api.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	return err
}

func shortID(id string) string { return id[:min(12, len(id))] }
