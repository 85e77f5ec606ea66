package transfertest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/filetransfer"
)

// envSender carries a SenderSpec (JSON) to a sender process: a test binary
// re-executed to run only its helper test, which calls RunSenderFromEnv.
const envSender = "ATELIER_TRANSFERTEST_SENDER"

// SenderSpec describes an upload done by a separate process, an agent
// stand-in whose memory can be measured and which can be killed.
type SenderSpec struct {
	NATSURL    string        `json:"nats_url"`
	Prefix     string        `json:"prefix"`
	Agent      string        `json:"agent"`
	TransferID string        `json:"transfer_id"`
	Ref        filestore.Ref `json:"ref"`
	Seed       uint64        `json:"seed"`
	Size       int64         `json:"size"`
	SHA256     string        `json:"sha256"`
	Window     int           `json:"window,omitempty"`
	ChunkSize  int           `json:"chunk_size,omitempty"`
}

// SenderResult is what a sender process reports on its last line.
type SenderResult struct {
	Ref         filestore.Ref `json:"ref"`
	Error       string        `json:"error,omitempty"`
	StartOffset int64         `json:"start_offset"`
	BytesSent   int64         `json:"bytes_sent"`
	RSSBase     int64         `json:"rss_base"`
	RSSPeak     int64         `json:"rss_peak"`
	Seconds     float64       `json:"seconds"`
}

// RunSenderFromEnv runs the upload described in the environment and exits
// the process, or returns at once when the process is not a sender. Call it
// first thing in the helper test named to StartSender.
func RunSenderFromEnv() {
	raw := os.Getenv(envSender)
	if raw == "" {
		return
	}
	var spec SenderSpec
	res := SenderResult{}
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		res.Error = err.Error()
	} else {
		res = runSender(spec)
	}
	out, _ := json.Marshal(res)
	fmt.Printf("result %s\n", out)
	os.Exit(0)
}

func runSender(spec SenderSpec) SenderResult {
	var res SenderResult
	nc, err := nats.Connect(spec.NATSURL, nats.MaxReconnects(-1))
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer nc.Close()
	p := NewPattern(spec.Seed, spec.Size)
	// Progress lines let the parent kill this process mid-transfer.
	var mu sync.Mutex
	last := time.Time{}
	progress := func(done, total int64) {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(last) > 20*time.Millisecond || done == total {
			last = time.Now()
			fmt.Printf("progress %d %d\n", done, total)
		}
	}
	opts := []filetransfer.Option{filetransfer.WithProgress(progress)}
	var stats filetransfer.Stats
	opts = append(opts, filetransfer.WithStats(&stats))
	if spec.Window > 0 {
		opts = append(opts, filetransfer.WithWindow(spec.Window))
	}
	if spec.ChunkSize > 0 {
		opts = append(opts, filetransfer.WithChunkSize(spec.ChunkSize))
	}
	rss := StartRSSSampler(0, 10*time.Millisecond)
	start := time.Now()
	ref, err := filetransfer.Send(context.Background(), nc, spec.Prefix, spec.Agent,
		filetransfer.Meta{TransferID: spec.TransferID, Ref: spec.Ref, Size: spec.Size, SHA256: spec.SHA256}, p, opts...)
	res.Seconds = time.Since(start).Seconds()
	res.RSSBase, res.RSSPeak = rss.Stop()
	res.Ref, res.StartOffset, res.BytesSent = ref, stats.StartOffset, stats.BytesSent
	if err != nil {
		res.Error = err.Error()
	}
	return res
}

// Sender is a running sender process.
type Sender struct {
	cmd      *exec.Cmd
	progress chan int64
	result   chan SenderResult
	stderr   strings.Builder
}

// StartSender re-executes the current test binary to run only helperTest
// (which must call RunSenderFromEnv) with spec.
func StartSender(spec SenderSpec, helperTest string) (*Sender, error) {
	raw, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+helperTest+"$", "-test.bench=^$", "-test.count=1")
	cmd.Env = append(os.Environ(), envSender+"="+string(raw))
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	s := &Sender{cmd: cmd, progress: make(chan int64, 1), result: make(chan SenderResult, 1)}
	cmd.Stderr = &s.stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go s.read(out)
	return s, nil
}

func (s *Sender) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	got := false
	for sc.Scan() {
		line := sc.Text()
		var done, total int64
		if _, err := fmt.Sscanf(line, "progress %d %d", &done, &total); err == nil {
			select {
			case <-s.progress: // keep only the latest
			default:
			}
			s.progress <- done
			continue
		}
		if rest, ok := strings.CutPrefix(line, "result "); ok {
			var res SenderResult
			if err := json.Unmarshal([]byte(rest), &res); err != nil {
				res.Error = err.Error()
			}
			s.result <- res
			got = true
		}
	}
	if !got {
		s.result <- SenderResult{Error: "sender process ended without a result"}
	}
}

// Pid is the process id.
func (s *Sender) Pid() int { return s.cmd.Process.Pid }

// AwaitProgress returns once the sender reported at least n bytes
// acknowledged, or ctx ends.
func (s *Sender) AwaitProgress(ctx context.Context, n int64) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case done := <-s.progress:
			if done >= n {
				return nil
			}
		}
	}
}

// Kill kills the process (SIGKILL: no clean-up, like a crash) and reaps it.
func (s *Sender) Kill() {
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
}

// Wait returns the sender's result once it exited.
func (s *Sender) Wait(ctx context.Context) (SenderResult, error) {
	select {
	case res := <-s.result:
		_ = s.cmd.Wait()
		if res.Error != "" {
			return res, fmt.Errorf("sender: %s\n%s", res.Error, s.stderr.String())
		}
		return res, nil
	case <-ctx.Done():
		s.Kill()
		return SenderResult{}, errors.Join(ctx.Err(), errors.New(s.stderr.String()))
	}
}
