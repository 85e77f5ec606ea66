package docker

import (
	"context"
	"errors"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/atelier-run/atelier/internal/backoff"
)

// Supervision's pauses: after an exit, before looking whether Docker
// restarts the container (then doubling while starting it fails); and
// after the engine did not answer the wait.
var (
	restartPolicy    = backoff.Policy{Min: 500 * time.Millisecond, Max: 30 * time.Second}
	engineRetryPause = time.Second
)

// supervise follows c's exits until ctx ends: each closes the slot's
// exited channel, and a container that is not running (and not being
// restarted by Docker) shortly after is started again.
func (d *Runtime) supervise(ctx context.Context, c *slotContainer) {
	defer d.wg.Done()
	pause := backoff.New(restartPolicy)
	for {
		err := d.waitExit(ctx, c.id)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// The engine restarting, say: look again soon.
			if !backoff.Sleep(ctx, engineRetryPause) {
				return
			}
			continue
		}
		d.mu.Lock()
		close(c.exited)
		c.exited = make(chan struct{})
		d.mu.Unlock()
		d.Logger.Warn().Str("slot", c.slot).Msg("ComfyUI container exited")
		if !pause.Wait(ctx) {
			return
		}
		if err := d.startIfStopped(ctx, c); err != nil {
			d.Logger.Error().Err(err).Str("slot", c.slot).Msg("start ComfyUI container")
			continue // after a longer pause
		}
		pause.Reset()
	}
}

// startIfStopped starts c again unless it runs or Docker restarts it.
func (d *Runtime) startIfStopped(ctx context.Context, c *slotContainer) error {
	st, err := d.api.ContainerInspect(ctx, c.id, client.ContainerInspectOptions{})
	if err != nil || st.Container.State == nil || st.Container.State.Running || st.Container.State.Restarting {
		return nil // gone (Stop), or not ours to start
	}
	if _, err := d.api.ContainerStart(ctx, c.id, client.ContainerStartOptions{}); err != nil {
		return err
	}
	d.Logger.Info().Str("slot", c.slot).Msg("ComfyUI container started again")
	return nil
}

// waitExit blocks until the container is not running (the request is a
// long poll). It answers at once for a container that already stopped:
// "next-exit" would miss an exit between a start and the wait (a ComfyUI
// that dies as it starts) and wait for one that never comes. When ctx
// ends, the request ends with it.
func (d *Runtime) waitExit(ctx context.Context, id string) error {
	w := d.api.ContainerWait(ctx, id, client.ContainerWaitOptions{Condition: container.WaitConditionNotRunning})
	select {
	case res := <-w.Result:
		if res.Error != nil && res.Error.Message != "" {
			return errors.New(res.Error.Message)
		}
		return nil
	case err := <-w.Error:
		return err
	}
}
