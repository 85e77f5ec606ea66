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

// An output that takes longer to ship than the event watchdog (a 6 MiB
// video over a 4 MiB/s uplink, a 500 ms watchdog) ships while ComfyUI
// goes on: the sampler's progress reaches the participant during the
// ship, the watchdog does not take the busy ComfyUI for hung, and the job
// succeeds at the first attempt, its "executed" message carrying the
// shipped file.
func TestSlowShipDoesNotStallTheRelay(t *testing.T) {
	t.Parallel()
	restarts := 0
	var mu sync.Mutex
	b := setup(t, opts{gpus: 1, stepDelay: 20 * time.Millisecond,
		simConfig: func(int, *comfysim.Config) { mu.Lock(); restarts++; mu.Unlock() },
		configure: func(c agent.Config) agent.Config {
			c.NATSURL = slowLink(t, c.NATSURL, 4<<20)
			c.EventTimeout = 500 * time.Millisecond
			return c
		}})
	id := uuid.NewString()
	type seen struct{ typ, node string }
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
		events = append(events, seen{ev.Type, head.Node})
		evMu.Unlock()
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })

	prompt := fmt.Sprintf(`{
 "1": {"class_type": "AtelierSimBigFile", "inputs": {"bytes": %d, "seed": 7, "filename_prefix": "video/big", "format": "mp4"}},
 "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "%s"}},
 "11": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["10", 1], "text": "a lighthouse"}},
 "12": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["10", 1], "text": "blurry"}},
 "13": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
 "14": {"class_type": "KSampler", "inputs": {"model": ["10", 0], "positive": ["11", 0], "negative": ["12", 0], "latent_image": ["13", 0],
        "seed": 1, "steps": 100, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
 "15": {"class_type": "VAEDecode", "inputs": {"samples": ["14", 0], "vae": ["10", 2]}},
 "16": {"class_type": "SaveImage", "inputs": {"images": ["15", 0], "filename_prefix": "t2i"}}
}`, 6<<20, comfysim.DefaultCheckpoint)
	b.submitPrompt(t, id, "user001", prompt, []string{"1", "16"})
	recs := b.rec.await(t, []string{id}, 60*time.Second)
	b.requireOnce(t, recs, wire.StateSucceeded)
	require.Equal(t, 1, recs[id].Attempt, "no false hang: the first attempt succeeded")
	mu.Lock()
	require.Equal(t, 1, restarts, "ComfyUI was never restarted")
	mu.Unlock()
	require.Contains(t, string(recs[id].Outputs["1"]), "big_00001_.mp4")

	// The big file's node finished first, yet sampler progress was
	// relayed before its "executed" went out: the ship did not hold the
	// relay.
	evMu.Lock()
	defer evMu.Unlock()
	progressBefore, executedAt := 0, -1
	for i, e := range events {
		if e.typ == "executed" && e.node == "1" {
			executedAt = i
			break
		}
		if e.typ == "progress" && e.node == "14" {
			progressBefore++
		}
	}
	require.GreaterOrEqual(t, executedAt, 0, "the big file's executed message was relayed: %v", events)
	require.Positive(t, progressBefore, "sampler progress was relayed while the big file shipped: %v", events)
}
