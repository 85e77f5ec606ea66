package retention

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/atelier-run/atelier/pkg/filestore"
)

// QuotaConfig configures Quotas.
type QuotaConfig struct {
	// Store holds the files; it must implement filestore.Walker. Required.
	Store filestore.Store
	// DefaultLimit is every participant's limit in bytes over all kinds;
	// 0 means unlimited. Default 0.
	DefaultLimit int64
	// Limit, when set, returns a participant's own limit (from the
	// registry, say) with ok false to fall back to DefaultLimit.
	Limit func(user string) (limit int64, ok bool)
	// MaxAge is how old a participant's measured usage may be before Check
	// walks their folders again. Files stored through Added count at once
	// in between. Default 30 s.
	MaxAge time.Duration
	// Now is the clock (tests). Default time.Now.
	Now func() time.Time
}

// Quotas checks participants' disk use against their limits. Usage is
// measured by walking the participant's folders (directory entries only) at
// most every MaxAge, plus what Added reported since, so a check costs a map
// look-up most of the time. Safe for concurrent use.
type Quotas struct {
	cfg QuotaConfig
	w   filestore.Walker

	mu    sync.Mutex
	users map[string]*measured
}

type measured struct {
	at    time.Time
	bytes int64
	// mu serialises walks of one user so a burst of uploads walks once.
	mu sync.Mutex
}

// NewQuotas validates cfg.
func NewQuotas(cfg QuotaConfig) (*Quotas, error) {
	if cfg.Store == nil {
		return nil, errors.New("retention: QuotaConfig.Store is required")
	}
	w, err := walker(cfg.Store)
	if err != nil {
		return nil, err
	}
	if cfg.DefaultLimit < 0 {
		return nil, fmt.Errorf("retention: negative DefaultLimit %d", cfg.DefaultLimit)
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Quotas{cfg: cfg, w: w, users: map[string]*measured{}}, nil
}

// LimitOf returns user's limit in bytes; 0 is unlimited.
func (q *Quotas) LimitOf(user string) int64 {
	if q.cfg.Limit != nil {
		if l, ok := q.cfg.Limit(user); ok {
			return l
		}
	}
	return q.cfg.DefaultLimit
}

// Check returns nil when user may store incoming more bytes, and otherwise
// an error wrapping filestore.ErrQuotaExceeded whose message says how much
// is used of how much, fit to show to the participant.
func (q *Quotas) Check(ctx context.Context, user string, incoming int64) error {
	limit := q.LimitOf(user)
	if limit <= 0 {
		return nil
	}
	used, err := q.Used(ctx, user)
	if err != nil {
		return err
	}
	if used+incoming > limit {
		return fmt.Errorf("%w: %s uses %s of %s; this file needs %s more: delete outputs you have downloaded, or ask the instructor",
			filestore.ErrQuotaExceeded, user, human(used), human(limit), human(incoming))
	}
	return nil
}

// Used returns user's bytes over all kinds, walking their folders when the
// last measurement is older than MaxAge.
func (q *Quotas) Used(ctx context.Context, user string) (int64, error) {
	q.mu.Lock()
	m := q.users[user]
	if m == nil {
		m = &measured{}
		q.users[user] = m
	}
	q.mu.Unlock()

	m.mu.Lock()
	defer m.mu.Unlock()
	q.mu.Lock()
	fresh := !m.at.IsZero() && q.cfg.Now().Sub(m.at) < q.cfg.MaxAge
	bytes := m.bytes
	q.mu.Unlock()
	if fresh {
		return bytes, nil
	}
	start := q.cfg.Now()
	uu, err := userUsage(ctx, q.w, user)
	if err != nil {
		return 0, fmt.Errorf("retention: usage of %s: %w", user, err)
	}
	q.mu.Lock()
	m.at, m.bytes = start, uu.Total
	q.mu.Unlock()
	return uu.Total, nil
}

// Added records that n bytes were stored for user (an upload, a received
// output) so the next Check counts them before the next walk; negative n
// records a deletion.
func (q *Quotas) Added(user string, n int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if m := q.users[user]; m != nil && !m.at.IsZero() {
		m.bytes = max(m.bytes+n, 0)
	}
}

// Forget drops the cached usage of user (after a bulk deletion, say).
func (q *Quotas) Forget(user string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.users, user)
}

// Report is Usage with each participant's limit and whether they are over.
func (q *Quotas) Report(ctx context.Context) (Report, error) {
	rep, err := Usage(ctx, q.cfg.Store)
	if err != nil {
		return rep, err
	}
	for i := range rep.Users {
		u := &rep.Users[i]
		u.Limit = q.LimitOf(u.User)
		u.Over = u.Limit > 0 && u.Total > u.Limit
	}
	return rep, nil
}

// human renders a byte count for people: "1.5 GB".
func human(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for v := n / unit; v >= unit; v /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTPE"[exp])
}
