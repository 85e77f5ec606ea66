package broker

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/atelier-run/atelier/pkg/brokerapi"
	"github.com/atelier-run/atelier/pkg/wire"
)

// The HTTP admin API: POST /api/admin/<op> with the operation's JSON
// request (without caller), GET /api/admin/queues. Authorized by the
// instructor token (Authorization: Bearer <token>); the caller is the
// workshop's admin.

// adminTokenFile is where a generated token is kept, under DataDir/meta.
const adminTokenFile = "admin-token"

// AdminTokenPath is where the broker keeps a generated admin token.
func AdminTokenPath(dataDir string) string {
	return filepath.Join(dataDir, "meta", adminTokenFile)
}

// loadAdminToken returns the configured token, or the one kept in the
// data directory, making it on first start.
func (b *Broker) loadAdminToken() (string, error) {
	if b.cfg.AdminToken != "" {
		return b.cfg.AdminToken, nil
	}
	path := AdminTokenPath(b.cfg.DataDir)
	if data, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(data))) >= 16 {
		return strings.TrimSpace(string(data)), nil
	}
	buf := make([]byte, 24)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(buf)
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write admin token: %w", err)
	}
	b.log.Info().Str("path", path).Msg("admin token generated")
	return tok, nil
}

func (b *Broker) adminAuthorized(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(b.adminToken)) == 1
}

func (b *Broker) handleAdmin(w http.ResponseWriter, r *http.Request) {
	if !b.adminAuthorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="atelier-broker"`)
		http.Error(w, "admin token required", http.StatusUnauthorized)
		return
	}
	op := r.PathValue("op")
	var body []byte
	if r.Method == http.MethodPost {
		var err error
		body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
		if err != nil {
			http.Error(w, "request body: "+err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
	}
	// The admin is the caller, whatever the body says.
	var req map[string]json.RawMessage
	if len(body) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			http.Error(w, "request body is not a JSON object: "+err.Error(), http.StatusBadRequest)
			return
		}
	}
	if req == nil {
		req = map[string]json.RawMessage{}
	}
	req["caller"], _ = json.Marshal(wire.Caller{User: "admin", Role: wire.RoleAdmin})
	body, _ = json.Marshal(req)

	reply := b.Call(r.Context(), op, body)
	status := brokerapi.HTTPStatus(replyCode(reply))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(reply)
}

func replyCode(reply any) string {
	switch r := reply.(type) {
	case wire.APIReply:
		return r.Code
	case wire.CancelReply:
		return r.Code
	case wire.QueuesReply:
		return r.Code
	}
	return ""
}
