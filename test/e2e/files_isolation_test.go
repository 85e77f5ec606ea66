package e2e

import (
	"bytes"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/stretchr/testify/require"
)

// upload posts /upload/image with a file part named filename and the given
// form fields.
func (p *participant) upload(filename string, content []byte, fields map[string]string) (int, string) {
	p.t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for k, v := range fields {
		require.NoError(p.t, mw.WriteField(k, v))
	}
	fw, err := mw.CreateFormFile("image", filename)
	require.NoError(p.t, err)
	_, _ = fw.Write(content)
	require.NoError(p.t, mw.Close())
	req, err := http.NewRequest(http.MethodPost, p.base+"/upload/image", &body)
	require.NoError(p.t, err)
	req.SetBasicAuth(p.user, p.pass)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := http.DefaultClient.Do(req)
	require.NoError(p.t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestFilesTraversalAndIsolation: whatever a participant puts in /view's
// and /upload's parameters, and whatever links appear in the store (the
// participants' ComfyUI containers write there), nothing outside their own
// folders is read or written.
func TestFilesTraversalAndIsolation(t *testing.T) {
	t.Parallel()
	sys := startSystem(t, systemOpts{users: []string{"user001", "user002"}, gpus: 1})
	alice, bob := sys.participant("user001"), sys.participant("user002")
	instances := filepath.Join(sys.dataDir, "instances")

	// Bob has an output; a secret lies beside the data directory.
	secretOut := bob.videoOutput(bob.queue(bigFilePrompt(4096, 99, "private/bob"), "bob"), 3*testutil.WaitTimeout())
	bobFile := filepath.Join(instances, "user002", "output", "private", secretOut.Filename)
	bobData, err := os.ReadFile(bobFile)
	require.NoError(t, err)
	outside := filepath.Join(filepath.Dir(sys.dataDir), "outside.txt")
	require.NoError(t, os.WriteFile(outside, []byte("TOP SECRET outside the store"), 0o600))

	leaks := func(body []byte) bool {
		return bytes.Contains(body, []byte("TOP SECRET")) || (len(body) > 0 && bytes.Contains(body, bobData[:64])) ||
			bytes.Contains(body, []byte("root:"))
	}
	view := func(q url.Values) (int, []byte) {
		t.Helper()
		return alice.do(http.MethodGet, "/view?"+q.Encode(), nil)
	}

	// Bob sees his own file; Alice asking for the same name sees nothing.
	code, body := bob.do(http.MethodGet, viewPath(secretOut), nil)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, bobData, body)
	code, body = view(url.Values{"filename": {secretOut.Filename}, "subfolder": {"private"}, "type": {"output"}})
	require.Equal(t, http.StatusNotFound, code)
	require.False(t, leaks(body))

	for _, tc := range []struct {
		name string
		q    url.Values
	}{
		{"dotdot in filename", url.Values{"filename": {"../../user002/output/private/" + secretOut.Filename}}},
		{"dotdot to the outside", url.Values{"filename": {"../../../../outside.txt"}}},
		{"absolute filename", url.Values{"filename": {"/etc/passwd"}}},
		{"absolute outside", url.Values{"filename": {outside}}},
		{"backslashes", url.Values{"filename": {`..\..\user002\output\private\` + secretOut.Filename}}},
		{"dotdot subfolder", url.Values{"filename": {secretOut.Filename}, "subfolder": {"../../user002/output/private"}}},
		{"dotdot inside subfolder", url.Values{"filename": {secretOut.Filename}, "subfolder": {"private/../../../user002/output/private"}}},
		{"absolute subfolder", url.Values{"filename": {"passwd"}, "subfolder": {"/etc"}}},
		{"encoded separators", url.Values{"filename": {"..%2f..%2fuser002%2foutput%2fprivate%2f" + secretOut.Filename}}},
		{"encoded subfolder", url.Values{"filename": {secretOut.Filename}, "subfolder": {"..%2F..%2Fuser002%2Foutput%2Fprivate"}}},
		{"type traversal", url.Values{"filename": {secretOut.Filename}, "type": {"../../user002/output/private"}}},
		{"NUL byte", url.Values{"filename": {secretOut.Filename + "\x00.png"}}},
		{"other user's folder as subfolder", url.Values{"filename": {secretOut.Filename}, "subfolder": {"user002/output/private"}}},
	} {
		code, body := view(tc.q)
		require.GreaterOrEqual(t, code, 400, tc.name)
		require.Less(t, code, 500, tc.name)
		require.False(t, leaks(body), "%s leaked: %q", tc.name, body)
	}
	// Raw (undecoded) separators in the query string, as a hand-made URL has them.
	for _, raw := range []string{
		"/view?filename=..%2F..%2Fuser002%2Foutput%2Fprivate%2F" + url.QueryEscape(secretOut.Filename),
		"/view?filename=%2e%2e/%2e%2e/outside.txt",
		"/view?filename=%252e%252e%252foutside.txt",
	} {
		code, body := alice.do(http.MethodGet, raw, nil)
		require.GreaterOrEqual(t, code, 400, raw)
		require.False(t, leaks(body), raw)
	}

	// Another participant's space with one's own credentials.
	code, body = alice.do(http.MethodGet, "/../user002"+viewPath(secretOut), nil)
	require.GreaterOrEqual(t, code, 400)
	require.False(t, leaks(body))
	req, _ := http.NewRequest(http.MethodGet, sys.proxyURL+"/user002"+viewPath(secretOut), nil)
	req.SetBasicAuth("user001", sys.password)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Contains(t, []int{http.StatusUnauthorized, http.StatusForbidden}, resp.StatusCode)
	require.False(t, leaks(body))

	// Links planted in Alice's folders (her ComfyUI container can write
	// there): to Bob's file, to a file outside, and a linked directory.
	aliceOut := filepath.Join(instances, "user001", "output")
	require.NoError(t, os.MkdirAll(aliceOut, 0o750))
	require.NoError(t, os.Symlink(bobFile, filepath.Join(aliceOut, "bob.mp4")))
	require.NoError(t, os.Symlink(outside, filepath.Join(aliceOut, "outside.txt")))
	require.NoError(t, os.Symlink(filepath.Join(instances, "user002", "output", "private"), filepath.Join(aliceOut, "linked")))
	require.NoError(t, os.Symlink(filepath.Join(instances, "user002"), filepath.Join(instances, "user001", "input-link")))
	for _, q := range []url.Values{
		{"filename": {"bob.mp4"}},
		{"filename": {"outside.txt"}},
		{"filename": {secretOut.Filename}, "subfolder": {"linked"}},
	} {
		code, body := view(q)
		require.GreaterOrEqual(t, code, 400, q.Encode())
		require.False(t, leaks(body), "%s leaked", q.Encode())
	}

	// Uploads: names are reduced to their last component, bad subfolders
	// and linked folders refused, nothing written outside Alice's input.
	png := []byte("\x89PNG\r\n\x1a\nnot really")
	code, resp2 := alice.upload("../../user002/input/evil.png", png, nil)
	require.Equal(t, http.StatusOK, code, resp2)
	require.Contains(t, resp2, `"name":"evil.png"`)
	require.FileExists(t, filepath.Join(instances, "user001", "input", "evil.png"))
	for _, fields := range []map[string]string{
		{"subfolder": "../../user002/input"},
		{"subfolder": "/tmp"},
		{"subfolder": "a/../../b"},
		{"subfolder": "..%2f..%2fuser002"},
		{"type": "../user002"},
	} {
		code, _ := alice.upload("evil2.png", png, fields)
		require.GreaterOrEqual(t, code, 400, fields)
	}
	// A linked folder inside the input folder is refused too.
	require.NoError(t, os.MkdirAll(filepath.Join(instances, "user002", "input"), 0o750))
	require.NoError(t, os.Symlink(filepath.Join(instances, "user002", "input"), filepath.Join(instances, "user001", "input", "bobs")))
	code, _ = alice.upload("evil3.png", png, map[string]string{"subfolder": "bobs"})
	require.GreaterOrEqual(t, code, 400)

	// Nothing named evil* anywhere but Alice's input folder.
	root := filepath.Dir(sys.dataDir)
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasPrefix(d.Name(), "evil") {
			return nil
		}
		require.Equal(t, filepath.Join(instances, "user001", "input"), filepath.Dir(p), "written outside the participant's input: %s", p)
		return nil
	})
	// The outside file and Bob's file are untouched.
	got, err := os.ReadFile(outside)
	require.NoError(t, err)
	require.Equal(t, "TOP SECRET outside the store", string(got))
	got, err = os.ReadFile(bobFile)
	require.NoError(t, err)
	require.Equal(t, bobData, got)
}
