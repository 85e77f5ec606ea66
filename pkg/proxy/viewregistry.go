package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// errViewClosed is returned when a view ends while a request waits for it.
var errViewClosed = errors.New("participant view closed")

// viewRegistry holds the participants' views, created on first use and
// evicted when idle.
type viewRegistry struct {
	p *Proxy

	mu    sync.Mutex
	views map[string]*userView
}

func newViewRegistry(p *Proxy) *viewRegistry {
	return &viewRegistry{p: p, views: map[string]*userView{}}
}

// get returns user's view, creating it on first use, once its initial state
// is loaded (bounded by ctx). A view is in use while requests wait for it
// to load: the janitor does not evict it from under them (its load can
// take longer than ViewIdleTimeout).
func (r *viewRegistry) get(ctx context.Context, user string) (*userView, error) {
	return r.getThen(ctx, user, nil)
}

// getThen is get that, when then is not nil and the view is loaded, runs
// then under the view's lock at the moment the request stops waiting for
// it: what then takes (a socket's place) keeps the view in use with no gap
// in which the janitor could evict it.
func (r *viewRegistry) getThen(ctx context.Context, user string, then func(v *userView)) (*userView, error) {
	r.mu.Lock()
	v, ok := r.views[user]
	if !ok {
		if r.p.bg.Err() != nil {
			r.mu.Unlock()
			return nil, errViewClosed
		}
		v = newUserView(r.p, user)
		r.views[user] = v
		r.p.wg.Add(1)
		go v.run()
	}
	// Counted under r.mu, which the janitor holds while it evicts.
	v.mu.Lock()
	v.waiting++
	v.mu.Unlock()
	r.mu.Unlock()
	r.p.testSignals.viewAwaited.Signal(user)

	var err error
	select {
	case <-v.ready:
		err = v.err
	case <-ctx.Done():
		err = fmt.Errorf("wait for job state of %s: %w", user, ctx.Err())
	}
	v.mu.Lock()
	v.waiting--
	v.lastUsed = time.Now()
	if err == nil && then != nil {
		then(v)
	}
	v.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return v, nil
}

// remove forgets v if it is still the registered view of its user.
func (r *viewRegistry) remove(v *userView) {
	r.mu.Lock()
	if r.views[v.user] == v {
		delete(r.views, v.user)
	}
	r.mu.Unlock()
}

// janitor evicts views that had no socket and no request for
// ViewIdleTimeout: their watch and subscription cost the broker.
func (r *viewRegistry) janitor() {
	defer r.p.wg.Done()
	idle := r.p.cfg.ViewIdleTimeout
	tick := time.NewTicker(max(idle/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-r.p.bg.Done():
			return
		case now := <-tick.C:
			var evicted []string
			r.mu.Lock()
			for user, v := range r.views {
				if v.idleSince(now) > idle {
					delete(r.views, user)
					v.cancel()
					evicted = append(evicted, user)
				}
			}
			r.mu.Unlock()
			r.p.testSignals.janitorPassed.Signal(janitorPass{at: now, evicted: evicted})
		}
	}
}

func (r *viewRegistry) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for user, v := range r.views {
		delete(r.views, user)
		v.cancel()
	}
}
