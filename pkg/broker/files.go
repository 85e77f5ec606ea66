package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/filetransfer"
	"github.com/atelier-run/atelier/pkg/retention"
	"github.com/atelier-run/atelier/pkg/wire"
)

// fileService receives output files from agents into the file store. An
// agent may write only into the folders of users whose job it is running:
// holders tracks which.
type fileService struct {
	b        *Broker
	store    filestore.Store
	receiver *filetransfer.Receiver
	server   *filetransfer.Server
	quotas   *retention.Quotas
	janitor  *retention.Janitor

	mu      sync.Mutex
	holders map[string]map[string]int // agent → user → running jobs
	running map[string]holder         // JOBS key → who holds it
}

type holder struct{ agent, user string }

func newFileService(ctx context.Context, b *Broker) (*fileService, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	f := &fileService{
		b: b, store: b.cfg.Store,
		holders: map[string]map[string]int{}, running: map[string]holder{},
	}
	var err error
	f.quotas, err = retention.NewQuotas(retention.QuotaConfig{Store: f.store, DefaultLimit: b.cfg.QuotaBytes, Limit: b.userQuota})
	if err != nil {
		return nil, fmt.Errorf("broker: quotas: %w", err)
	}
	f.receiver, err = filetransfer.NewReceiver(filetransfer.ReceiverConfig{
		Conn: b.nc, SubjectPrefix: wire.FilePutPrefix, Store: f.store,
		StagingDir: filepath.Join(b.layout.Root, "staging", "uploads"),
		Authorize:  f.authorize(filestore.KindOutput, filestore.KindTemp),
		Admit: func(_ string, ref filestore.Ref, size int64) error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return f.quotas.Check(ctx, ref.User, size)
		},
		Stored: func(_ string, info filestore.Info) { f.quotas.Added(info.Ref.User, info.Size) },
		Logger: &b.log,
	})
	if err != nil {
		return nil, fmt.Errorf("broker: file receiver: %w", err)
	}
	if err := f.receiver.Start(ctx); err != nil {
		return nil, fmt.Errorf("broker: file receiver: %w", err)
	}
	f.server, err = filetransfer.NewServer(filetransfer.ServerConfig{
		Conn: b.nc, SubjectPrefix: wire.FileGetPrefix, Store: f.store,
		Authorize: f.authorize(filestore.KindInput),
		Logger:    &b.log,
	})
	if err != nil {
		_ = f.receiver.Stop(ctx)
		return nil, fmt.Errorf("broker: file server: %w", err)
	}
	if err := f.server.Start(ctx); err != nil {
		_ = f.receiver.Stop(ctx)
		return nil, fmt.Errorf("broker: file server: %w", err)
	}
	f.janitor, err = retention.NewJanitor(retention.JanitorConfig{
		Store: f.store, OutputTTL: b.cfg.OutputTTL, TempTTL: b.cfg.TempTTL, InputTTL: b.cfg.InputTTL, Logger: &b.log,
	})
	if err == nil {
		err = f.janitor.Start(context.WithoutCancel(ctx))
	}
	if err != nil {
		_ = f.server.Stop(ctx)
		_ = f.receiver.Stop(ctx)
		return nil, fmt.Errorf("broker: retention: %w", err)
	}
	return f, nil
}

// authorize lets an agent move files of the given kinds for users whose
// job it runs, and nothing else.
func (f *fileService) authorize(kinds ...filestore.Kind) func(string, filestore.Ref) error {
	return func(agent string, ref filestore.Ref) error {
		allowed := false
		for _, k := range kinds {
			allowed = allowed || ref.Kind == k
		}
		if !allowed {
			return fmt.Errorf("%w: %s files are not for agents to move this way", filetransfer.ErrForbidden, ref.Kind)
		}
		if !f.mayWrite(agent, ref.User) {
			return fmt.Errorf("%w: agent %s runs no job of %s", filetransfer.ErrForbidden, agent, ref.User)
		}
		return nil
	}
}

// allow records that rec's agent runs a job of rec's user.
func (f *fileService) allow(rec wire.JobRecord) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.release(rec.Key())
	if f.holders[rec.Agent] == nil {
		f.holders[rec.Agent] = map[string]int{}
	}
	f.holders[rec.Agent][rec.User]++
	f.running[rec.Key()] = holder{agent: rec.Agent, user: rec.User}
}

// forget drops rec's grant once the job is final.
func (f *fileService) forget(rec wire.JobRecord) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.release(rec.Key())
}

func (f *fileService) release(key string) {
	h, ok := f.running[key]
	if !ok {
		return
	}
	delete(f.running, key)
	if f.holders[h.agent][h.user]--; f.holders[h.agent][h.user] <= 0 {
		delete(f.holders[h.agent], h.user)
	}
}

// mayWrite reports whether agent currently runs a job of user.
func (f *fileService) mayWrite(agent, user string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.holders[agent][user] > 0
}

func (f *fileService) stop(ctx context.Context) error {
	// Cancelled first: the wait is for the file a sweep is at.
	return errors.Join(f.janitor.Stop(ctx), f.server.Stop(ctx), f.receiver.Stop(ctx))
}

// userQuota is a participant's own disk quota from the registry.
func (b *Broker) userQuota(user string) (int64, bool) {
	if b.registry == nil {
		return 0, false
	}
	u, err := b.registry.Get(user)
	if err != nil || u.Quotas == nil || u.Quotas.StorageBytes <= 0 {
		return 0, false
	}
	return u.Quotas.StorageBytes, true
}

// handleUsage is GET /api/admin/usage: disk use per participant and kind
// on mello, with their quota.
func (b *Broker) handleUsage(w http.ResponseWriter, r *http.Request) {
	if !b.adminAuthorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="atelier-broker"`)
		http.Error(w, "admin token required", http.StatusUnauthorized)
		return
	}
	rep, err := b.files.quotas.Report(r.Context())
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(rep)
}
