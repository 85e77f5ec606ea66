package broker

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/retention"
)

// store writes n bytes to ref in the broker's file store.
func (tb *testBundle) store(t *testing.T, ref filestore.Ref, n int) {
	t.Helper()
	data := bytes.Repeat([]byte{'x'}, n)
	w, err := tb.broker.Store().Create(tb.ctx, ref)
	require.NoError(t, err)
	_, err = w.Write(data)
	require.NoError(t, err)
	sum := sha256.Sum256(data)
	_, err = w.Commit(tb.ctx, hex.EncodeToString(sum[:]))
	require.NoError(t, err)
}

// GET /api/admin/usage reports each participant's disk use on mello per
// kind, their quota (the broker's default or their own from the registry)
// and who is over it; only the admin token opens it.
func TestAdminUsageReport(t *testing.T) {
	t.Parallel()
	tb := setupWith(t, func(c *Config) { c.QuotaBytes = 1 << 20 })
	reg, err := registry.Open(registry.Config{Path: datalayout.New(tb.dir).RegistryPath(), BcryptCost: bcrypt.MinCost})
	require.NoError(t, err)
	_, err = reg.Create(tb.ctx, registry.User{ID: "user003", Quotas: &registry.Quotas{StorageBytes: 8 << 20}}, "pw-user003")
	require.NoError(t, err)

	tb.store(t, filestore.Ref{User: "user001", Kind: filestore.KindInput, Name: "ref.png"}, 1000)
	tb.store(t, filestore.Ref{User: "user001", Kind: filestore.KindOutput, Subfolder: "video", Name: "a.mp4"}, 3000)
	tb.store(t, filestore.Ref{User: "user001", Kind: filestore.KindOutput, Name: "b.png"}, 500)
	tb.store(t, filestore.Ref{User: "user002", Kind: filestore.KindOutput, Name: "big.mp4"}, 2<<20)
	tb.store(t, filestore.Ref{User: "user003", Kind: filestore.KindTemp, Name: "big.png"}, 2<<20)

	url := tb.broker.HTTPURL() + "/api/admin/usage"
	resp, err := http.Get(url)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.Contains(t, resp.Header.Get("WWW-Authenticate"), "Bearer")

	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+tb.broker.adminToken)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var rep retention.Report
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&rep))

	require.Len(t, rep.Users, 3)
	u1, u2, u3 := rep.Users[0], rep.Users[1], rep.Users[2]
	require.Equal(t, []string{"user001", "user002", "user003"}, []string{u1.User, u2.User, u3.User}, "sorted by user id")

	require.Equal(t, retention.KindUsage{Bytes: 1000, Files: 1}, u1.Kinds[filestore.KindInput])
	require.Equal(t, retention.KindUsage{Bytes: 3500, Files: 2}, u1.Kinds[filestore.KindOutput], "subfolders count")
	require.Equal(t, int64(4500), u1.Total)
	require.Equal(t, 3, u1.Files)
	require.Equal(t, int64(1<<20), u1.Limit, "the broker's default quota")
	require.False(t, u1.Over)

	require.Equal(t, int64(2<<20), u2.Total)
	require.True(t, u2.Over, "2 MiB over a 1 MiB quota")

	require.Equal(t, retention.KindUsage{Bytes: 2 << 20, Files: 1}, u3.Kinds[filestore.KindTemp])
	require.Equal(t, int64(8<<20), u3.Limit, "the participant's own quota from the registry")
	require.False(t, u3.Over)

	require.Equal(t, int64(4500+2<<20+2<<20), rep.Total)
}
