package proxy

import (
	"context"
	"crypto/sha256"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/wire"
)

// realm is the HTTP basic auth realm the browser shows in its login dialog.
const realm = "Atelier"

// maxAuthCacheEntries bounds the auth cache; past it the cache is cleared,
// which only costs a bcrypt check per active participant.
const maxAuthCacheEntries = 10_000

// session is who is asking (Caller) and on whose behalf (User: the /<user>
// prefix). They differ only for instructors and admins.
type session struct {
	Caller registry.User
	// User is the participant whose prefix the request is under.
	User string
	// Pool is User's pool, which selects the catalog.
	Pool string
}

type sessionKey struct{}

func sessionFrom(ctx context.Context) session {
	s, _ := ctx.Value(sessionKey{}).(session)
	return s
}

// authCache remembers successful password checks: bcrypt costs tens of
// milliseconds, and the ComfyUI frontend makes dozens of requests per page.
// The key is a hash of id and password, so a changed password misses.
type authCache struct {
	reg *registry.Registry
	ttl time.Duration

	mu      sync.Mutex
	entries map[[32]byte]authEntry
}

type authEntry struct {
	user    registry.User
	expires time.Time
}

func newAuthCache(reg *registry.Registry, ttl time.Duration) *authCache {
	return &authCache{reg: reg, ttl: ttl, entries: map[[32]byte]authEntry{}}
}

func (a *authCache) authenticate(id, password string) (registry.User, error) {
	h := sha256.New()
	h.Write([]byte(id))
	h.Write([]byte{0})
	h.Write([]byte(password))
	var key [32]byte
	copy(key[:], h.Sum(nil))
	now := time.Now()

	a.mu.Lock()
	e, ok := a.entries[key]
	a.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.user, nil
	}
	u, err := a.reg.Authenticate(id, password)
	if err != nil {
		return registry.User{}, err
	}
	a.mu.Lock()
	if len(a.entries) >= maxAuthCacheEntries {
		clear(a.entries)
	}
	a.entries[key] = authEntry{user: u, expires: now.Add(a.ttl)}
	a.mu.Unlock()
	return u, nil
}

// privileged reports whether a role may act under other participants'
// prefixes.
func privileged(u registry.User) bool {
	return u.Role == registry.RoleInstructor || u.Role == registry.RoleAdmin
}

// lookupUser returns the participant whose prefix a privileged caller uses.
func (p *Proxy) lookupUser(id string) (registry.User, error) {
	return p.cfg.Registry.Get(id)
}

func unauthorized(w http.ResponseWriter, msg string) {
	w.Header().Set("WWW-Authenticate", `Basic realm="`+realm+`", charset="UTF-8"`)
	writePlain(w, http.StatusUnauthorized, msg)
}

// authed wraps a handler of a /{user}/… route: basic auth against the
// registry, then the prefix check (a participant reaches only their own
// prefix; instructors and admins may read others').
func (p *Proxy) authed(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, password, ok := r.BasicAuth()
		if !ok {
			unauthorized(w, "authentication required")
			return
		}
		caller, err := p.auth.authenticate(id, password)
		if err != nil {
			if !errors.Is(err, registry.ErrUnknownUser) && !errors.Is(err, registry.ErrBadPassword) &&
				!errors.Is(err, registry.ErrUserDisabled) {
				p.log.Error().Err(err).Str("user", id).Msg("authentication failed")
			}
			unauthorized(w, "wrong user name or password")
			return
		}
		target := r.PathValue("user")
		if datalayout.ValidUserID(target) != nil {
			writePlain(w, http.StatusNotFound, "not found")
			return
		}
		s := session{Caller: caller, User: caller.ID, Pool: caller.Pool}
		if target != caller.ID {
			// Instructors and admins may look (GET, including the
			// WebSocket), never act, in a participant's name.
			if !privileged(caller) || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
				writePlain(w, http.StatusForbidden, "forbidden: this is another participant's space")
				return
			}
			tu, err := p.lookupUser(target)
			if err != nil {
				writePlain(w, http.StatusNotFound, "no such participant")
				return
			}
			s.User, s.Pool = tu.ID, tu.Pool
		}
		if s.Pool == "" {
			s.Pool = wire.DefaultPool
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, s)))
	})
}
