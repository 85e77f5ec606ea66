package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/stretchr/testify/require"
)

// TestFilesAgentKilledMidShipResumes kills the real atelier-agent process
// (SIGKILL) while it ships a 1 GiB video to mello and starts it again. The
// broker hands the job out again, ComfyUI saves the same video under its
// next counter (…_00002_.mp4), and the upload resumes from what mello had
// staged instead of starting over; the participant downloads the very
// bytes the GPU box wrote.
func TestFilesAgentKilledMidShipResumes(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, systemOpts{users: []string{"user001"}, gpus: 1, brokerArgs: []string{"--ack-wait", "5s"}})
	p := sys.participant("user001")
	const size, seed = 1 << 30, 4711
	want := make(chan string, 1)
	go func() { want <- bigFileSHA256(seed, size) }()
	id := p.queue(bigFilePrompt(size, seed, "video/resume"), "resume-e2e")

	// The broker stages the upload under staging/uploads/<agent>/; the
	// part file's size is what mello has received (its blocks are
	// preallocated without changing the size).
	staging := filepath.Join(sys.dataDir, "staging", "uploads", "e2e-box")
	partSize := func() int64 {
		parts, _ := filepath.Glob(filepath.Join(staging, "*.part"))
		if len(parts) != 1 {
			return 0
		}
		fi, err := os.Stat(parts[0])
		if err != nil {
			return 0
		}
		return fi.Size()
	}
	require.Eventually(t, func() bool { return partSize() >= size/4 }, 9*testutil.WaitTimeout(), time.Millisecond,
		"the agent never got a quarter of the video to mello")
	agent := sys.procs["agent"]
	require.NoError(t, agent.Process.Kill())
	_ = agent.Wait()

	// Chunks already on their way are still written; wait until the part
	// stops growing.
	staged := partSize()
	for {
		time.Sleep(300 * time.Millisecond)
		now := partSize()
		if now == staged {
			break
		}
		staged = now
	}
	require.Greater(t, staged, int64(0))
	require.Less(t, staged, int64(size), "killed before the upload finished")

	args := sys.args["agent"]
	sys.start("agent", args[0], args[1:]...)
	img := p.videoOutput(id, 9*testutil.WaitTimeout()) // a GB-sized file
	require.True(t, strings.HasPrefix(img.Filename, "resume_"), img.Filename)

	// The broker's receiver logs where each stored upload resumed from.
	var received []struct {
		Stored      string `json:"stored"`
		ResumedFrom int64  `json:"resumed_from"`
	}
	sc := bufio.NewScanner(strings.NewReader(sys.log("broker")))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l struct {
			Message     string `json:"message"`
			Stored      string `json:"stored"`
			ResumedFrom int64  `json:"resumed_from"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Message == "file received" {
			received = append(received, struct {
				Stored      string `json:"stored"`
				ResumedFrom int64  `json:"resumed_from"`
			}{l.Stored, l.ResumedFrom})
		}
	}
	require.Len(t, received, 1, "one file stored")
	require.Contains(t, received[0].Stored, img.Filename)
	require.GreaterOrEqual(t, received[0].ResumedFrom, staged,
		"the re-run resumed from what mello had staged (%d of %d bytes), not from the start", staged, int64(size))

	resp := p.get(viewPath(img), nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	h := sha256.New()
	n, err := io.CopyBuffer(h, resp.Body, make([]byte, 1<<20))
	require.NoError(t, err)
	require.Equal(t, int64(size), n)
	require.Equal(t, <-want, hex.EncodeToString(h.Sum(nil)), "the participant downloads exactly what the GPU box wrote")
	t.Logf("killed with %d MiB staged; the restarted agent resumed at %d MiB", staged>>20, received[0].ResumedFrom>>20)
}
