// Package registry keeps the participants and their instances in
// data/meta/instance-registry.json.
//
// The file is the single source of truth shared by processes: the admin CLI
// adds users while the proxy runs, so every read checks whether the file
// changed on disk and reloads it, and every change is a read-modify-write
// under an advisory file lock, written atomically (temporary file + rename).
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"github.com/atelier-run/atelier/pkg/datalayout"
)

// Sentinel errors; match with errors.Is.
var (
	ErrUnknownUser     = errors.New("unknown user")
	ErrBadPassword     = errors.New("bad password")
	ErrUserExists      = errors.New("user already exists")
	ErrUserDisabled    = errors.New("user disabled")
	ErrInvalidUser     = errors.New("invalid user")
	ErrInvalidPassword = errors.New("invalid password")
)

// Role says what a user may see and do.
type Role string

const (
	RoleParticipant Role = "participant"
	RoleInstructor  Role = "instructor"
	RoleAdmin       Role = "admin"
)

// Valid reports whether r is a known role.
func (r Role) Valid() bool {
	switch r {
	case RoleParticipant, RoleInstructor, RoleAdmin:
		return true
	}
	return false
}

// Status is the life-cycle state of a user and its instance.
type Status string

const (
	// StatusActive users can log in and submit jobs.
	StatusActive Status = "active"
	// StatusDisabled users are kept (with their files) but cannot log in.
	StatusDisabled Status = "disabled"
)

// DefaultPool is the GPU pool of users created without one.
const DefaultPool = "default"

// MaxPasswordLen is bcrypt's limit: longer passwords would be silently
// truncated, so they are refused.
const MaxPasswordLen = 72

// Quotas bound what one user may consume. Zero means "no per-user limit"
// (the broker's global defaults apply).
type Quotas struct {
	StorageBytes int64 `json:"storage_bytes,omitempty"`
	MaxQueued    int   `json:"max_queued,omitempty"`
	MaxRunning   int   `json:"max_running,omitempty"`
}

// User is one entry of the registry: a person and their ComfyUI instance
// (instance id = user id).
type User struct {
	ID           string    `json:"id"`
	DisplayName  string    `json:"display_name,omitempty"`
	Role         Role      `json:"role"`
	PasswordHash string    `json:"password_hash,omitempty"`
	Status       Status    `json:"status"`
	Pool         string    `json:"pool"`
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at,omitzero"`

	// Instance settings used by the per-user compose generation.
	Port   int     `json:"port,omitempty"`
	Image  string  `json:"image,omitempty"`
	Quotas *Quotas `json:"quotas,omitempty"`
	// UIUpstream is the base URL of the participant's own ComfyUI UI
	// (e.g. "http://127.0.0.1:8301"), to which the proxy forwards
	// everything it does not answer itself. Empty: the proxy's URL
	// template (--ui-upstream) applies.
	UIUpstream string `json:"ui_upstream,omitempty"`

	// Extra keeps fields written by newer versions (or by hand), so a
	// read-modify-write by an older binary does not drop them.
	Extra map[string]json.RawMessage `json:"-"`
}

// Config configures a Registry.
type Config struct {
	// Path of the registry file. Required; usually Layout.RegistryPath().
	Path string
	// BcryptCost for new password hashes. Default bcrypt.DefaultCost (10);
	// tests use bcrypt.MinCost.
	BcryptCost int
	// Logger for reloads. Default: a disabled logger.
	Logger *zerolog.Logger
	// Now returns the current time. Default time.Now.
	Now func() time.Time
}

func (c *Config) withDefaults() (Config, error) {
	cfg := *c
	if cfg.Path == "" {
		return cfg, errors.New("registry: Config.Path is required")
	}
	if cfg.BcryptCost == 0 {
		cfg.BcryptCost = bcrypt.DefaultCost
	}
	if cfg.BcryptCost < bcrypt.MinCost || cfg.BcryptCost > bcrypt.MaxCost {
		return cfg, fmt.Errorf("registry: BcryptCost %d out of range %d..%d", cfg.BcryptCost, bcrypt.MinCost, bcrypt.MaxCost)
	}
	if cfg.Logger == nil {
		l := zerolog.Nop()
		cfg.Logger = &l
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return cfg, nil
}

// Registry is the participants/instances registry. It is safe for concurrent
// use, and for use by several processes on the same file.
type Registry struct {
	cfg Config

	mu     sync.Mutex
	users  map[string]User
	loaded os.FileInfo // of the file as last read or written; nil if absent

	// dummyHash makes Authenticate of an unknown user cost as much as that
	// of a known one, so response times do not reveal which ids exist.
	dummyHash []byte
}

// Open returns the registry at cfg.Path, loading it if the file exists. A
// missing file is an empty registry; the file (and its directory) is created
// by the first change.
func Open(cfg Config) (*Registry, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	dummy, err := bcrypt.GenerateFromPassword([]byte("atelier-dummy-password"), c.BcryptCost)
	if err != nil {
		return nil, fmt.Errorf("registry: dummy hash: %w", err)
	}
	r := &Registry{cfg: c, users: map[string]User{}, dummyHash: dummy}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.refreshLocked(); err != nil {
		return nil, err
	}
	return r, nil
}

// Get returns the user id.
func (r *Registry) Get(id string) (User, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.refreshLocked(); err != nil {
		return User{}, err
	}
	u, ok := r.users[id]
	if !ok {
		return User{}, fmt.Errorf("registry: %q: %w", id, ErrUnknownUser)
	}
	return u.clone(), nil
}

// List returns all users sorted by id.
func (r *Registry) List() ([]User, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.refreshLocked(); err != nil {
		return nil, err
	}
	out := make([]User, 0, len(r.users))
	for _, u := range r.users {
		out = append(out, u.clone())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Authenticate checks id's password and returns the user. It returns
// ErrUnknownUser or ErrBadPassword (both worth the same "invalid
// credentials" answer to the client) or ErrUserDisabled. The bcrypt
// comparison runs outside the lock, and an unknown id is compared against a
// dummy hash so it takes as long as a wrong password.
func (r *Registry) Authenticate(id, password string) (User, error) {
	u, err := r.Get(id)
	if err != nil {
		if errors.Is(err, ErrUnknownUser) {
			_ = bcrypt.CompareHashAndPassword(r.dummyHash, []byte(password))
		}
		return User{}, err
	}
	hash := []byte(u.PasswordHash)
	if len(hash) == 0 {
		hash = r.dummyHash
	}
	if err := bcrypt.CompareHashAndPassword(hash, []byte(password)); err != nil || len(u.PasswordHash) == 0 {
		return User{}, fmt.Errorf("registry: %q: %w", id, ErrBadPassword)
	}
	if u.Status != StatusActive {
		return User{}, fmt.Errorf("registry: %q: %w", id, ErrUserDisabled)
	}
	return u, nil
}

// Create adds u with password (which may be empty for a user that cannot log
// in until SetPassword). Defaults: role participant, status active, pool
// "default", CreatedAt now. u.PasswordHash is ignored. ErrUserExists if the
// id is taken.
func (r *Registry) Create(ctx context.Context, u User, password string) (User, error) {
	if err := datalayout.ValidUserID(u.ID); err != nil {
		return User{}, fmt.Errorf("registry: create: %w: %w", ErrInvalidUser, err)
	}
	if u.Role == "" {
		u.Role = RoleParticipant
	}
	if !u.Role.Valid() {
		return User{}, fmt.Errorf("registry: create %q: %w: role %q", u.ID, ErrInvalidUser, u.Role)
	}
	if u.Status == "" {
		u.Status = StatusActive
	}
	if u.Pool == "" {
		u.Pool = DefaultPool
	}
	u.PasswordHash = ""
	if password != "" {
		h, err := r.hash(password)
		if err != nil {
			return User{}, fmt.Errorf("registry: create %q: %w", u.ID, err)
		}
		u.PasswordHash = h
	}
	now := r.cfg.Now().UTC()
	if u.CreatedAt.IsZero() {
		u.CreatedAt = now
	}
	u.UpdatedAt = now
	err := r.mutate(ctx, func(users map[string]User) error {
		if _, ok := users[u.ID]; ok {
			return fmt.Errorf("registry: create %q: %w", u.ID, ErrUserExists)
		}
		users[u.ID] = u
		return nil
	})
	if err != nil {
		return User{}, err
	}
	return u.clone(), nil
}

// Update applies fn to user id and saves the result. fn must not change the
// id; use SetPassword for passwords.
func (r *Registry) Update(ctx context.Context, id string, fn func(*User) error) (User, error) {
	var out User
	err := r.mutate(ctx, func(users map[string]User) error {
		u, ok := users[id]
		if !ok {
			return fmt.Errorf("registry: update %q: %w", id, ErrUnknownUser)
		}
		u = u.clone()
		hash := u.PasswordHash
		if err := fn(&u); err != nil {
			return err
		}
		if u.ID != id {
			return fmt.Errorf("registry: update %q: %w: id cannot change", id, ErrInvalidUser)
		}
		if !u.Role.Valid() {
			return fmt.Errorf("registry: update %q: %w: role %q", id, ErrInvalidUser, u.Role)
		}
		u.PasswordHash = hash
		u.UpdatedAt = r.cfg.Now().UTC()
		users[id] = u
		out = u
		return nil
	})
	return out, err
}

// SetPassword replaces id's password.
func (r *Registry) SetPassword(ctx context.Context, id, password string) error {
	if password == "" {
		return fmt.Errorf("registry: set password %q: %w: empty", id, ErrInvalidPassword)
	}
	// Hash before taking the lock: bcrypt is deliberately slow.
	h, err := r.hash(password)
	if err != nil {
		return fmt.Errorf("registry: set password %q: %w", id, err)
	}
	return r.mutate(ctx, func(users map[string]User) error {
		u, ok := users[id]
		if !ok {
			return fmt.Errorf("registry: set password %q: %w", id, ErrUnknownUser)
		}
		u.PasswordHash = h
		u.UpdatedAt = r.cfg.Now().UTC()
		users[id] = u
		return nil
	})
}

// Delete removes user id from the registry. The instance's files are not
// touched: deleting data is a separate, explicit admin step.
func (r *Registry) Delete(ctx context.Context, id string) error {
	return r.mutate(ctx, func(users map[string]User) error {
		if _, ok := users[id]; !ok {
			return fmt.Errorf("registry: delete %q: %w", id, ErrUnknownUser)
		}
		delete(users, id)
		return nil
	})
}

func (r *Registry) hash(password string) (string, error) {
	if len(password) > MaxPasswordLen {
		return "", fmt.Errorf("%w: longer than %d bytes", ErrInvalidPassword, MaxPasswordLen)
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), r.cfg.BcryptCost)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return string(h), nil
}

// mutate runs fn on a fresh copy of the users under the in-process mutex and
// the cross-process file lock, and saves the result if fn succeeds.
func (r *Registry) mutate(ctx context.Context, fn func(map[string]User) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(r.cfg.Path), 0o700); err != nil {
		return fmt.Errorf("registry: create directory: %w", err)
	}
	unlock, err := lockFile(r.cfg.Path + ".lock")
	if err != nil {
		return fmt.Errorf("registry: lock: %w", err)
	}
	defer unlock()
	// Another process may have written since our last look.
	if err := r.refreshLocked(); err != nil {
		return err
	}
	users := make(map[string]User, len(r.users)+1)
	for id, u := range r.users {
		users[id] = u
	}
	if err := fn(users); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := r.saveLocked(users); err != nil {
		return err
	}
	r.users = users
	return nil
}

// clone copies the reference-typed fields so callers cannot mutate the
// registry's copy.
func (u User) clone() User {
	if u.Quotas != nil {
		q := *u.Quotas
		u.Quotas = &q
	}
	if u.Extra != nil {
		m := make(map[string]json.RawMessage, len(u.Extra))
		for k, v := range u.Extra {
			m[k] = v
		}
		u.Extra = m
	}
	return u
}
