package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Docker runs one ComfyUI container per GPU through the Docker Engine API:
// a GPU device request for that GPU, the scratch folder and the read-only
// models folder mounted, labels atelier.agent and atelier.slot, a health
// check, Docker's on-failure restart policy, and removal when the agent
// stops. The agent supervises too: it learns of each exit (a long-polled
// wait) and starts a container Docker did not restart (docker kill is a
// manual stop to Docker's restart policy).
type Docker struct {
	// Host is the engine address (default unix:///var/run/docker.sock,
	// or $DOCKER_HOST).
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
	GPUs []GPU
	// DeviceRequests asks the engine for each container's GPU (driver
	// nvidia). Off only on machines without GPUs (tests).
	DeviceRequests bool
	// ScratchDir is mounted read-write at /scratch; ModelsDir (optional)
	// read-only at ModelsTarget (default /models).
	ScratchDir   string
	ModelsDir    string
	ModelsTarget string
	// BasePort is the loopback host port of the first slot (default
	// 8188); the container port is always 8188.
	BasePort int
	// HealthCmd is the container health check (default: curl on
	// /system_stats); HealthInterval its period (default 5 s).
	HealthCmd      []string
	HealthInterval time.Duration
	// User is who ComfyUI runs as in the containers: "uid:gid" (or a
	// user the image knows). Empty: the agent's own uid:gid, so that the
	// outputs ComfyUI writes on the bind-mounted scratch are the agent's
	// and it can empty them once shipped (a root ComfyUI writes files a
	// non-root agent cannot truncate, and the scratch disk fills); an
	// agent running as root leaves the image's user, as root can empty
	// anything. DockerImageUser keeps the image's user in any case.
	User   string
	Logger zerolog.Logger

	api      *dockerAPI
	mu       sync.Mutex
	ctrs     map[string]*container
	stopping bool
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

type container struct {
	slot   string
	id     string
	exited chan struct{}
}

const comfyContainerPort = 8188

// DockerImageUser as Docker.User runs the containers as the image's own
// user (its USER, root when it has none).
const DockerImageUser = "image"

// containerUser is the User of the containers' config ("" for the
// image's).
func (d *Docker) containerUser() string {
	switch {
	case d.User == DockerImageUser:
		return ""
	case d.User != "":
		return d.User
	case os.Geteuid() <= 0: // root, or no uids (Windows)
		return ""
	}
	return strconv.Itoa(os.Geteuid()) + ":" + strconv.Itoa(os.Getegid())
}

// Start removes containers an earlier run left, then creates and starts
// one container per GPU.
func (d *Docker) Start(ctx context.Context) ([]Endpoint, error) {
	var errs []error
	if d.Image == "" {
		errs = append(errs, errors.New("Image is required"))
	}
	if d.Agent == "" || len(d.GPUs) == 0 || d.ScratchDir == "" {
		errs = append(errs, errors.New("Agent, GPUs and ScratchDir are required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("docker runtime: %w", err)
	}
	if d.Host == "" {
		d.Host = os.Getenv("DOCKER_HOST")
	}
	if d.BasePort == 0 {
		d.BasePort = 8188
	}
	if d.ModelsTarget == "" {
		d.ModelsTarget = "/models"
	}
	if d.HealthInterval == 0 {
		d.HealthInterval = 5 * time.Second
	}
	if len(d.HealthCmd) == 0 {
		d.HealthCmd = []string{"CMD-SHELL", "curl -fsS http://127.0.0.1:8188/system_stats >/dev/null || exit 1"}
	}
	api, err := newDockerAPI(d.Host)
	if err != nil {
		return nil, fmt.Errorf("docker runtime: %w", err)
	}
	d.api = api
	if err := api.ping(ctx); err != nil {
		return nil, fmt.Errorf("docker runtime: %w", err)
	}
	old, err := api.list(ctx, "atelier.agent="+d.Agent)
	if err != nil {
		return nil, fmt.Errorf("docker runtime: list containers: %w", err)
	}
	for _, c := range old {
		d.Logger.Info().Str("container", c.ID[:12]).Msg("removing a container left by an earlier run")
		_ = api.remove(ctx, c.ID)
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
	d.ctrs, d.stopping, d.cancel = map[string]*container{}, false, cancel
	d.mu.Unlock()
	var eps []Endpoint
	for i, g := range d.GPUs {
		slot := "gpu" + strconv.Itoa(g.Index)
		port := d.BasePort + i
		id, err := d.create(ctx, slot, g, scratch, port)
		if err == nil {
			err = api.start(ctx, id)
		}
		if err != nil {
			_ = d.Stop(ctx)
			return nil, fmt.Errorf("docker runtime: %s: %w", slot, err)
		}
		c := &container{slot: slot, id: id, exited: make(chan struct{})}
		d.mu.Lock()
		d.ctrs[slot] = c
		d.mu.Unlock()
		d.wg.Add(1)
		go d.supervise(runCtx, c)
		d.Logger.Info().Str("slot", slot).Str("container", id[:12]).Int("port", port).Str("user", d.containerUser()).Msg("ComfyUI container started")
		eps = append(eps, Endpoint{
			Slot: slot, GPU: g.Name, GPUIndex: g.Index, GPUUUID: g.UUID, URL: "http://127.0.0.1:" + strconv.Itoa(port),
			// The scratch folder is bind-mounted: the agent reads outputs
			// and places inputs on the host side of the mount.
			InputDir: filepath.Join(scratch, "inputs"), OutputDir: filepath.Join(scratch, "outputs", slot),
			TempDir: filepath.Join(scratch, "temp", slot, "temp"),
		})
	}
	return eps, nil
}

func (d *Docker) create(ctx context.Context, slot string, g GPU, scratch string, port int) (string, error) {
	cmd := append([]string{}, d.Command...)
	cmd = append(cmd, "--listen", "0.0.0.0", "--port", strconv.Itoa(comfyContainerPort),
		"--input-directory", "/scratch/inputs", "--output-directory", "/scratch/outputs/"+slot,
		"--temp-directory", "/scratch/temp/"+slot)
	cmd = append(cmd, d.ExtraArgs...)
	mounts := []map[string]any{{"Type": "bind", "Source": scratch, "Target": "/scratch"}}
	if d.ModelsDir != "" {
		models, err := filepath.Abs(d.ModelsDir)
		if err != nil {
			return "", err
		}
		mounts = append(mounts, map[string]any{"Type": "bind", "Source": models, "Target": d.ModelsTarget, "ReadOnly": true})
	}
	host := map[string]any{
		"Mounts": mounts,
		"PortBindings": map[string]any{
			fmt.Sprintf("%d/tcp", comfyContainerPort): []map[string]string{{"HostIp": "127.0.0.1", "HostPort": strconv.Itoa(port)}},
		},
		"RestartPolicy": map[string]any{"Name": "on-failure"},
	}
	if d.DeviceRequests {
		host["DeviceRequests"] = []map[string]any{{
			"Driver": "nvidia", "DeviceIDs": []string{strconv.Itoa(g.Index)}, "Capabilities": [][]string{{"gpu"}},
		}}
	}
	cfg := map[string]any{
		"Image":        d.Image,
		"Cmd":          cmd,
		"Env":          d.Env,
		"Labels":       map[string]string{"atelier.agent": d.Agent, "atelier.slot": slot},
		"ExposedPorts": map[string]any{fmt.Sprintf("%d/tcp", comfyContainerPort): map[string]any{}},
		"Healthcheck": map[string]any{
			"Test": d.HealthCmd, "Interval": d.HealthInterval.Nanoseconds(),
			"Timeout": (5 * time.Second).Nanoseconds(), "Retries": 3,
			"StartPeriod": time.Minute.Nanoseconds(),
		},
		"HostConfig": host,
	}
	if u := d.containerUser(); u != "" {
		cfg["User"] = u
	}
	return d.api.create(ctx, "atelier-"+d.Agent+"-"+slot, cfg)
}

// supervise follows c's exits: each closes the slot's exited channel, and
// a container that is not running (and not being restarted by Docker)
// shortly after is started again.
func (d *Docker) supervise(ctx context.Context, c *container) {
	defer d.wg.Done()
	backoff := 500 * time.Millisecond
	for {
		_, err := d.api.wait(ctx, c.id)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// The engine restarting, say: look again soon.
			if !sleep(ctx, time.Second) {
				return
			}
			continue
		}
		d.mu.Lock()
		close(c.exited)
		c.exited = make(chan struct{})
		d.mu.Unlock()
		d.Logger.Warn().Str("slot", c.slot).Msg("ComfyUI container exited")
		if !sleep(ctx, backoff) {
			return
		}
		st, err := d.api.inspect(ctx, c.id)
		if err == nil && !st.State.Running && !st.State.Restarting {
			if err := d.api.start(ctx, c.id); err != nil {
				d.Logger.Error().Err(err).Str("slot", c.slot).Msg("start ComfyUI container")
				backoff = min(backoff*2, 30*time.Second)
				continue
			}
			d.Logger.Info().Str("slot", c.slot).Msg("ComfyUI container started again")
		}
		backoff = 500 * time.Millisecond
	}
}

// Restart restarts the slot's container.
func (d *Docker) Restart(ctx context.Context, slot string) error {
	d.mu.Lock()
	c := d.ctrs[slot]
	d.mu.Unlock()
	if c == nil {
		return fmt.Errorf("docker runtime: %w %q", ErrUnknownSlot, slot)
	}
	return d.api.restart(ctx, c.id, 5)
}

// Exited returns a channel closed when the slot's container next exits.
func (d *Docker) Exited(slot string) <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := d.ctrs[slot]; c != nil {
		return c.exited
	}
	return nil
}

// ContainerID returns the slot's container id (tests, diagnostics).
func (d *Docker) ContainerID(slot string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := d.ctrs[slot]; c != nil {
		return c.id
	}
	return ""
}

// Stop removes the containers.
func (d *Docker) Stop(ctx context.Context) error {
	d.mu.Lock()
	d.stopping = true
	if d.cancel != nil {
		d.cancel()
	}
	ctrs := d.ctrs
	d.mu.Unlock()
	var errs []error
	for _, c := range ctrs {
		if err := d.api.remove(context.WithoutCancel(ctx), c.id); err != nil {
			errs = append(errs, err)
		}
	}
	d.wg.Wait()
	return errors.Join(errs...)
}
