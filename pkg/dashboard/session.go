package dashboard

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/wire"
)

const (
	sessionCookie = "atelier_dashboard"
	// loginCookie carries the login form's CSRF token (double submit):
	// there is no session yet to keep it in.
	loginCookie = "atelier_dashboard_login"
	csrfHeader  = "X-CSRF-Token"
)

// session is one instructor's login. Sessions live in the broker's memory:
// a broker restart logs everyone out, which a workshop survives, and no
// secret needs to be kept on disk.
type session struct {
	user    string
	role    registry.Role
	csrf    string
	expires time.Time
}

type sessions struct {
	ttl time.Duration
	now func() time.Time

	mu   sync.Mutex
	byID map[string]*session
}

func newSessions(ttl time.Duration, now func() time.Time) *sessions {
	return &sessions{ttl: ttl, now: now, byID: map[string]*session{}}
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (s *sessions) create(u registry.User) (string, *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for id, se := range s.byID {
		if now.After(se.expires) {
			delete(s.byID, id)
		}
	}
	id := randomToken()
	se := &session{user: u.ID, role: u.Role, csrf: randomToken(), expires: now.Add(s.ttl)}
	s.byID[id] = se
	return id, se
}

func (s *sessions) get(id string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	se := s.byID[id]
	if se == nil {
		return nil
	}
	if s.now().After(se.expires) {
		delete(s.byID, id)
		return nil
	}
	cp := *se
	return &cp
}

func (s *sessions) delete(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byID, id)
}

func (d *Dashboard) secure(r *http.Request) bool {
	return d.cfg.SecureCookies || r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"
}

func (d *Dashboard) setCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: value, Path: d.cfg.Prefix, MaxAge: maxAge,
		HttpOnly: true, Secure: d.secure(r), SameSite: http.SameSiteStrictMode,
	})
}

// privileged re-reads the user from the registry, so an instructor who was
// disabled or demoted loses the dashboard at once, not when the session
// expires.
func (d *Dashboard) privileged(id string) (registry.User, bool) {
	u, err := d.cfg.Registry.Get(id)
	if err != nil || u.Status != registry.StatusActive {
		return registry.User{}, false
	}
	return u, u.Role == registry.RoleInstructor || u.Role == registry.RoleAdmin
}

// requireSession lets a request through with a valid session of an
// instructor or admin; a POST (csrf) must also carry the session's CSRF
// token and come from the dashboard's own origin.
func (d *Dashboard) requireSession(next func(http.ResponseWriter, *http.Request, *session), csrf bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		se := d.sessionOf(r)
		if se == nil {
			http.Error(w, "log in first", http.StatusUnauthorized)
			return
		}
		if _, ok := d.privileged(se.user); !ok {
			http.Error(w, "forbidden: the dashboard is for instructors", http.StatusForbidden)
			return
		}
		if csrf && !d.csrfOK(r, se.csrf) {
			http.Error(w, "forbidden: missing or wrong CSRF token", http.StatusForbidden)
			return
		}
		next(w, r, se)
	}
}

// requireInstructor is requireSession for read-only API routes that the
// status command also reads, with HTTP basic auth of an instructor.
func (d *Dashboard) requireInstructor(next func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	withSession := d.requireSession(next, false)
	return func(w http.ResponseWriter, r *http.Request) {
		id, pw, ok := r.BasicAuth()
		if !ok {
			withSession(w, r)
			return
		}
		u, err := d.cfg.Registry.Authenticate(id, pw)
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Basic realm="atelier dashboard"`)
			http.Error(w, "invalid credentials", http.StatusUnauthorized)
			return
		}
		if u.Role != registry.RoleInstructor && u.Role != registry.RoleAdmin {
			http.Error(w, "forbidden: the dashboard is for instructors", http.StatusForbidden)
			return
		}
		next(w, r, &session{user: u.ID, role: u.Role})
	}
}

func (d *Dashboard) sessionOf(r *http.Request) *session {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return nil
	}
	return d.auth.get(c.Value)
}

// csrfOK checks the token (header or form field) and, when the browser
// says where the request comes from, that it is this host.
func (d *Dashboard) csrfOK(r *http.Request, want string) bool {
	if origin := r.Header.Get("Origin"); origin != "" {
		u, err := url.Parse(origin)
		if err != nil || u.Host != r.Host {
			return false
		}
	}
	got := r.Header.Get(csrfHeader)
	if got == "" {
		got = r.PostFormValue("csrf")
	}
	return want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

func (d *Dashboard) handleIndex(w http.ResponseWriter, r *http.Request) {
	se := d.sessionOf(r)
	if se == nil {
		http.Redirect(w, r, d.cfg.Prefix+"login", http.StatusSeeOther)
		return
	}
	if _, ok := d.privileged(se.user); !ok {
		d.renderForbidden(w, se.user)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = d.pages.ExecuteTemplate(w, "index.html", map[string]string{
		"Prefix": d.cfg.Prefix, "User": se.user, "Role": string(se.role), "CSRF": se.csrf,
	})
}

func (d *Dashboard) handleLoginForm(w http.ResponseWriter, r *http.Request) {
	d.renderLogin(w, r, http.StatusOK, "")
}

func (d *Dashboard) renderLogin(w http.ResponseWriter, r *http.Request, code int, msg string) {
	token := randomToken()
	d.setCookie(w, r, loginCookie, token, 600)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_ = d.pages.ExecuteTemplate(w, "login.html", map[string]string{"Prefix": d.cfg.Prefix, "CSRF": token, "Error": msg})
}

func (d *Dashboard) renderForbidden(w http.ResponseWriter, user string) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(http.StatusForbidden)
	_ = d.pages.ExecuteTemplate(w, "forbidden.html", map[string]string{"Prefix": d.cfg.Prefix, "User": user})
}

func (d *Dashboard) handleLogin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	c, err := r.Cookie(loginCookie)
	if err != nil || c.Value == "" || subtle.ConstantTimeCompare([]byte(c.Value), []byte(r.PostFormValue("csrf"))) != 1 {
		d.renderLogin(w, r, http.StatusForbidden, "The form expired; please try again.")
		return
	}
	id, pw := r.PostFormValue("user"), r.PostFormValue("password")
	u, err := d.cfg.Registry.Authenticate(id, pw)
	if err != nil {
		msg := "Unknown user or wrong password."
		if errors.Is(err, registry.ErrUserDisabled) {
			msg = "This account is disabled."
		}
		d.log.Info().Str("user", id).Str("remote", r.RemoteAddr).Msg("dashboard: login refused")
		d.renderLogin(w, r, http.StatusUnauthorized, msg)
		return
	}
	d.setCookie(w, r, loginCookie, "", -1)
	if u.Role != registry.RoleInstructor && u.Role != registry.RoleAdmin {
		d.log.Info().Str("user", u.ID).Msg("dashboard: participant login refused")
		d.renderForbidden(w, u.ID)
		return
	}
	sid, _ := d.auth.create(u)
	d.setCookie(w, r, sessionCookie, sid, int(d.cfg.SessionTTL.Seconds()))
	d.log.Info().Str("user", u.ID).Str("role", string(u.Role)).Msg("dashboard: login")
	http.Redirect(w, r, d.cfg.Prefix, http.StatusSeeOther)
}

func (d *Dashboard) handleLogout(w http.ResponseWriter, r *http.Request, _ *session) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		d.auth.delete(c.Value)
	}
	d.setCookie(w, r, sessionCookie, "", -1)
	http.Redirect(w, r, d.cfg.Prefix+"login", http.StatusSeeOther)
}

// caller is the broker API caller of a session.
func (se *session) caller() wire.Caller {
	role := wire.RoleInstructor
	if se.role == registry.RoleAdmin {
		role = wire.RoleAdmin
	}
	return wire.Caller{User: se.user, Role: role}
}
