package e2e

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// nobody is the unprivileged user the agent runs as in these tests.
const nobody = 65534

// startAgentAs starts the agent process ("agent") as uid:gid with the
// Docker socket's group, from a copy of the binary that user may run.
func (s *system) startAgentAs(uid, gid int, args ...string) {
	s.t.Helper()
	dir, err := os.MkdirTemp("", "atelier-e2e-agent-")
	require.NoError(s.t, err)
	s.t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(s.t, os.Chmod(dir, 0o755))
	data, err := os.ReadFile(filepath.Join(binDir, "atelier-agent"))
	require.NoError(s.t, err)
	bin := filepath.Join(dir, "atelier-agent")
	require.NoError(s.t, os.WriteFile(bin, data, 0o755))
	st, err := os.Stat("/var/run/docker.sock")
	require.NoError(s.t, err)
	sockGID := st.Sys().(*syscall.Stat_t).Gid

	args = append(args, "--nats-url", s.natsURL)
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{
		Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{sockGID}}}
	buf := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = syncWriter{&s.mu, buf}, syncWriter{&s.mu, buf}
	require.NoError(s.t, cmd.Start())
	s.procs["agent"], s.logs["agent"], s.args["agent"] = cmd, buf, append([]string{"atelier-agent"}, args...)
}

// outputSizes returns the size of every file under dir.
func outputSizes(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	require.NoError(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err == nil {
			out[p] = info.Size()
		}
		return err
	}))
	return out
}

// The docker runtime with an agent that is not root (uid 65534, in the
// Docker socket's group), against the real engine, with one GPU (two
// ComfyUIs share the participant's output folder). By default the
// containers run as the agent's uid:gid: the outputs ComfyUI writes on the
// bind-mounted scratch are the agent's, and it empties them once shipped.
// With --docker-user image the FROM scratch image runs ComfyUI as root:
// the agent cannot empty its root-owned outputs, and says so once per
// slot, with what to do, instead of failing silently; the jobs still
// succeed.
func TestAgentDockerRuntimeUser(t *testing.T) {
	dockerOK(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run the agent as another user")
	}
	t.Parallel()
	image, agentID := dockerSimImage(t)
	users := []string{"user001"}

	for _, tc := range []struct {
		name      string
		userFlag  []string
		container string // the containers' Config.User
		emptied   bool
	}{
		{name: "default", container: fmt.Sprintf("%d:%d", nobody, nobody), emptied: true},
		{name: "image", userFlag: []string{"--docker-user", "image"}, container: "", emptied: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startCore(t, users)
			// A scratch the agent's user can reach (t.TempDir's root is
			// root's alone); what root's ComfyUI leaves there is root's to
			// remove.
			top, err := os.MkdirTemp("", "atelier-e2e-scratch-")
			require.NoError(t, err)
			t.Cleanup(func() { os.RemoveAll(top) })
			require.NoError(t, os.Chmod(top, 0o755))
			scratch := filepath.Join(top, "scratch")
			require.NoError(t, os.Mkdir(scratch, 0o755))
			require.NoError(t, os.Chown(scratch, nobody, nobody))
			id := agentID + "-" + tc.name
			s.startAgentAs(nobody, nobody, append([]string{"--id", id, "--runtime", "docker", "--gpus", "1",
				"--docker-image", image, "--docker-no-gpu",
				"--docker-health-cmd", "/atelier-healthcheck healthcheck --url http://127.0.0.1:8188/system_stats",
				"--docker-health-interval", "1s", "--comfy-args", "--step-delay 5ms",
				"--base-port", fmt.Sprint(freePorts(t, 1)), "--scratch", scratch,
				"--retry-delay", "200ms", "--drain-timeout", "10s"}, tc.userFlag...)...)
			t.Cleanup(func() {
				out, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=atelier.agent="+id).Output()
				for _, c := range strings.Fields(string(out)) {
					_ = exec.Command("docker", "rm", "-f", c).Run()
				}
			})
			s.awaitSlots(id, 1)
			require.Equal(t, tc.container, docker(t, "inspect", "--format", "{{.Config.User}}", "atelier-"+id+"-gpu0"))

			ids := s.queueJobs(t, users, 6, 2)
			s.awaitSuccess(t, ids)
			require.NoError(t, s.stopProc("agent")) // every run has ended: its outputs emptied, or not

			sizes := outputSizes(t, filepath.Join(scratch, "outputs", "gpu0", "user001"))
			require.Len(t, sizes, 6, "one PNG per job on the box")
			warnings := map[string]int{}
			for _, l := range logLines(s.log("agent")) {
				if strings.HasPrefix(l.Message, "cannot empty the outputs ComfyUI writes") {
					warnings[l.Slot]++
				}
			}
			for p, n := range sizes {
				if tc.emptied {
					require.Zero(t, n, "%s emptied once shipped", p)
				} else {
					require.Positive(t, n, "%s: root's file, which the agent cannot empty", p)
				}
			}
			if tc.emptied {
				require.Empty(t, warnings)
				return
			}
			require.Equal(t, map[string]int{"gpu0": 1}, warnings, "said once for the slot")
			require.Contains(t, s.log("agent"), "--docker-user")
			require.Contains(t, s.log("agent"), `"owner_uid":0`)
		})
	}
}
