package docker

import (
	"context"
	"net/netip"
	"path/filepath"
	"strconv"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/atelier-run/atelier/pkg/agent/gpu"
)

// The containers' labels: which agent and slot each belongs to.
const (
	labelAgent = "atelier.agent"
	labelSlot  = "atelier.slot"
)

// comfyContainerPort is ComfyUI's port inside every container.
const comfyContainerPort = 8188

// The health check's timing besides its interval: a check that takes
// longer than healthTimeout fails, healthRetries failures in a row make
// the container unhealthy, and failures in the first healthStartPeriod
// (ComfyUI loading its nodes) do not count.
const (
	healthTimeout     = 5 * time.Second
	healthRetries     = 3
	healthStartPeriod = time.Minute
)

// create creates slot's container for GPU g, its port published on the
// loopback port, and returns its id.
func (d *Runtime) create(ctx context.Context, slot string, g gpu.GPU, scratch string, port int) (string, error) {
	cmd := append([]string{}, d.Command...)
	cmd = append(cmd, "--listen", "0.0.0.0", "--port", strconv.Itoa(comfyContainerPort),
		"--input-directory", "/scratch/inputs", "--output-directory", "/scratch/outputs/"+slot,
		"--temp-directory", "/scratch/temp/"+slot)
	cmd = append(cmd, d.ExtraArgs...)
	host, err := d.hostConfig(g, scratch, port)
	if err != nil {
		return "", err
	}
	comfyPort := network.MustParsePort(strconv.Itoa(comfyContainerPort) + "/tcp")
	cfg := &container.Config{
		Image:        d.Image,
		Cmd:          cmd,
		Env:          d.Env,
		User:         d.containerUser(),
		Labels:       map[string]string{labelAgent: d.Agent, labelSlot: slot},
		ExposedPorts: network.PortSet{comfyPort: {}},
		Healthcheck: &container.HealthConfig{
			Test: d.HealthCmd, Interval: d.HealthInterval,
			Timeout: healthTimeout, Retries: healthRetries, StartPeriod: healthStartPeriod,
		},
	}
	created, err := d.api.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name: "atelier-" + d.Agent + "-" + slot, Config: cfg, HostConfig: host,
	})
	return created.ID, err
}

// hostConfig is what a container gets from the host: the mounts, the
// published port, the restart policy and (DeviceRequests) its GPU.
func (d *Runtime) hostConfig(g gpu.GPU, scratch string, port int) (*container.HostConfig, error) {
	mounts := []mount.Mount{{Type: mount.TypeBind, Source: scratch, Target: "/scratch"}}
	if d.ModelsDir != "" {
		models, err := filepath.Abs(d.ModelsDir)
		if err != nil {
			return nil, err
		}
		mounts = append(mounts, mount.Mount{Type: mount.TypeBind, Source: models, Target: d.ModelsTarget, ReadOnly: true})
	}
	comfyPort := network.MustParsePort(strconv.Itoa(comfyContainerPort) + "/tcp")
	host := &container.HostConfig{
		Mounts: mounts,
		PortBindings: network.PortMap{comfyPort: {{
			HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: strconv.Itoa(port),
		}}},
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyOnFailure},
	}
	if d.DeviceRequests {
		host.DeviceRequests = []container.DeviceRequest{{
			Driver: "nvidia", DeviceIDs: []string{strconv.Itoa(g.Index)}, Capabilities: [][]string{{"gpu"}},
		}}
	}
	return host, nil
}
