package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"mime/multipart"
	"net/http"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

// A participant over their disk quota on mello: an upload is refused with
// the reason, and a job whose outputs do not fit fails with it (no retry
// loop), instead of filling the server's disk.
func TestDiskQuota(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 6*testutil.WaitTimeout())
	t.Cleanup(cancel)
	s, err := Start(ctx, Config{Dir: t.TempDir(), Users: []string{"user001"}, Password: "pw", GPUs: 1, StepDelay: -1,
		QuotaBytes: 1000, Logger: zerolog.Nop()})
	require.NoError(t, err)
	t.Cleanup(func() { s.Stop(context.Background()) })
	tb := &testBundle{stack: s, ctx: ctx}

	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, _ := mw.CreateFormFile("image", "big.png")
	_, _ = fw.Write(bytes.Repeat([]byte{1}, 2000))
	require.NoError(t, mw.Close())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.ProxyURL()+"/user001/upload/image", &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.SetBasicAuth("user001", "pw")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)

	// The workflow's two PNGs are about 1.7 kB together: over 1,000 bytes.
	code, out := tb.post(t, "user001", workflow(t, 1))
	require.Equal(t, http.StatusOK, code, string(out))
	var r struct {
		PromptID string `json:"prompt_id"`
	}
	require.NoError(t, json.Unmarshal(out, &r))
	require.Eventually(t, func() bool {
		code, body := tb.do(t, "user001", http.MethodGet, "/history/"+r.PromptID, nil)
		return code == http.StatusOK && bytes.Contains(body, []byte("disk quota"))
	}, 3*testutil.WaitTimeout(), 50*time.Millisecond, "the job fails with the quota as its reason")
	st, err := s.Broker.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, st.Finished["failed"])
}
