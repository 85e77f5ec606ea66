package agent_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/comfysim"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
)

// slowLink forwards TCP connections to the NATS server at natsURL and
// passes at most rate bytes a second from the client to the server: a
// GPU box's slow uplink. It returns the URL to dial instead.
func slowLink(t *testing.T, natsURL string, rate int) string {
	t.Helper()
	u, err := url.Parse(natsURL)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", u.Host)
			if err != nil {
				c.Close()
				continue
			}
			wg.Add(2)
			go func() { defer wg.Done(); _, _ = io.Copy(c, up); c.Close() }()
			go func() {
				defer wg.Done()
				defer up.Close()
				buf := make([]byte, 16<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if _, werr := up.Write(buf[:n]); werr != nil {
							return
						}
						time.Sleep(time.Duration(n) * time.Second / time.Duration(rate))
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return "nats://" + ln.Addr().String()
}

// Outputs that take longer to ship than the event watchdog (four 3 MiB
// videos over a 1 MiB/s uplink, 3 s each, a 2 s watchdog) ship while the
// relay goes on reading ComfyUI, busy with a sampler (600 steps, 12 s):
// the watchdog does not take it for hung (with the relay blocked during
// each ship, each ship was an even chance of a false "hung" restart), the
// job succeeds at the first attempt, and the participant still sees
// ComfyUI's order: each node's "executed", with the shipped file, right
// after its "executing".
func TestSlowShipDoesNotStallTheRelay(t *testing.T) {
	t.Parallel()
	restarts := 0
	var mu sync.Mutex
	b := setup(t, opts{gpus: 1, stepDelay: slowSteps,
		simConfig: func(int, *comfysim.Config) { mu.Lock(); restarts++; mu.Unlock() },
		configure: func(c agent.Config) agent.Config {
			c.NATSURL = slowLink(t, c.NATSURL, 1<<20)
			// Not shorter: with 500 ms (and a 4 MiB/s uplink) the first
			// attempt was taken for hung now and then under -race on a
			// loaded machine.
			c.EventTimeout = 2 * time.Second
			return c
		}})
	id := uuid.NewString()
	type seen struct{ typ, node, data string }
	var events []seen
	var evMu sync.Mutex
	sub, err := b.nc.Subscribe(wire.EventSubject(b.cfg.ID, "user001", id), func(m *nats.Msg) {
		var ev wire.Event
		if json.Unmarshal(m.Data, &ev) != nil {
			return
		}
		var head struct {
			Node string `json:"node"`
		}
		_ = json.Unmarshal(ev.Data, &head)
		evMu.Lock()
		events = append(events, seen{ev.Type, head.Node, string(ev.Data)})
		evMu.Unlock()
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })

	big := []string{"1", "2", "3", "4"}
	prompt := `{
 "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "` + comfysim.DefaultCheckpoint + `"}},
 "11": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["10", 1], "text": "a lighthouse"}},
 "12": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["10", 1], "text": "blurry"}},
 "13": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
 "14": {"class_type": "KSampler", "inputs": {"model": ["10", 0], "positive": ["11", 0], "negative": ["12", 0], "latent_image": ["13", 0],
        "seed": 1, "steps": 600, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
 "15": {"class_type": "VAEDecode", "inputs": {"samples": ["14", 0], "vae": ["10", 2]}},
 "16": {"class_type": "SaveImage", "inputs": {"images": ["15", 0], "filename_prefix": "t2i"}}`
	for _, n := range big {
		prompt += fmt.Sprintf(`,
 %q: {"class_type": "AtelierSimBigFile", "inputs": {"bytes": %d, "seed": %s, "filename_prefix": "video/big%s", "format": "mp4"}}`, n, 3<<20, n, n)
	}
	prompt += "}"
	b.submitPrompt(t, id, "user001", prompt, append([]string{"16"}, big...))
	recs := b.rec.await(t, []string{id})
	b.requireOnce(t, recs, wire.StateSucceeded)
	require.Equal(t, 1, recs[id].Attempt, "no false hang: the first attempt succeeded")
	mu.Lock()
	require.Equal(t, 1, restarts, "ComfyUI was never restarted")
	mu.Unlock()

	evMu.Lock()
	defer evMu.Unlock()
	var durable []seen
	for _, e := range events {
		if e.typ == "executing" || e.typ == "executed" {
			durable = append(durable, e)
		}
	}
	for _, n := range big {
		require.Contains(t, string(recs[id].Outputs[n]), "big"+n+"_00001_.mp4")
		at := -1
		for i, e := range durable {
			if e.typ == "executing" && e.node == n {
				at = i
			}
		}
		require.GreaterOrEqual(t, at, 0, "node %s ran: %v", n, durable)
		require.Less(t, at+1, len(durable))
		next := durable[at+1]
		require.Equal(t, seen{"executed", n, next.data}, next, "ComfyUI's order: node %s's executed right after its executing", n)
		require.Contains(t, next.data, "big"+n+"_00001_.mp4")
	}
}
