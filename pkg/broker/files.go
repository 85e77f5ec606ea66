package broker

import (
	"sync"

	"github.com/atelier-run/atelier/pkg/wire"
)

// fileService receives output files from agents into the file store. An
// agent may write only into the folders of users whose job it is running:
// holders tracks which.
type fileService struct {
	b       *Broker
	mu      sync.Mutex
	holders map[string]map[string]int // agent → user → running jobs
	running map[string]holder         // JOBS key → who holds it
}

type holder struct{ agent, user string }

func newFileService(b *Broker) (*fileService, error) {
	return &fileService{b: b, holders: map[string]map[string]int{}, running: map[string]holder{}}, nil
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

func (f *fileService) stop() {}
