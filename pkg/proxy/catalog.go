package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/atelier-run/atelier/pkg/comfyvalidate"
	"github.com/atelier-run/atelier/pkg/wire"
)

// poolCatalog is a pool's merged ComfyUI catalog, decoded once per change so
// that validating a prompt and serving /object_info do not decompress and
// parse megabytes of JSON per request.
type poolCatalog struct {
	wire.Catalog
	// classes maps a node class to its object_info entry.
	classes map[string]json.RawMessage
	// outputNodes holds the classes whose object_info says output_node.
	outputNodes map[string]bool
	// validate is the catalog as ComfyUI's validation sees it (nil when
	// the pool's object_info could not be read that way).
	validate *comfyvalidate.ObjectInfo
	// newerErrors: the pool's ComfyUI is 2026-era (0.38+), so the
	// participant's frontend (bundled with it) expects newer error shapes.
	newerErrors bool
	// order is object_info's class order; uploads are the upload combos
	// per class, whose options the proxy fills per participant.
	order   []string
	uploads map[string][]uploadInput
}

func (c *poolCatalog) hasClass(class string) bool {
	_, ok := c.classes[class]
	return ok
}

func (c *poolCatalog) isOutputNode(class string) bool { return c.outputNodes[class] }

func decodePoolCatalog(b []byte) (*poolCatalog, error) {
	cat, err := wire.DecodeCatalog(b)
	if err != nil {
		return nil, err
	}
	pc := &poolCatalog{Catalog: cat, classes: map[string]json.RawMessage{}, outputNodes: map[string]bool{}}
	if len(cat.ObjectInfo) == 0 || isNull(cat.ObjectInfo) {
		return pc, nil
	}
	if err := json.Unmarshal(cat.ObjectInfo, &pc.classes); err != nil {
		return nil, fmt.Errorf("decode object_info of pool %q: %w", cat.Pool, err)
	}
	vc, err := comfyvalidate.FromObjectInfo(cat.ObjectInfo)
	if err != nil {
		return nil, fmt.Errorf("decode object_info of pool %q: %w", cat.Pool, err)
	}
	pc.validate = vc
	pc.order = vc.Classes()
	pc.uploads = uploadInputsOf(vc)
	pc.newerErrors = newerComfy(cat.SystemStats)
	for class, raw := range pc.classes {
		var def struct {
			OutputNode bool `json:"output_node"`
		}
		// A malformed entry is not fatal: the class still exists, it is
		// just not an output node.
		if json.Unmarshal(raw, &def) == nil && def.OutputNode {
			pc.outputNodes[class] = true
		}
	}
	return pc, nil
}

// catalogCache keeps every pool's catalog up to date with one KV watch on
// CATALOG's pool.* keys: there are few pools and they change rarely.
type catalogCache struct {
	p *Proxy

	mu      sync.Mutex
	pools   map[string]*poolCatalog
	running bool
	ready   chan struct{} // closed when the initial values are loaded
}

func newCatalogCache(p *Proxy) *catalogCache {
	return &catalogCache{p: p, pools: map[string]*poolCatalog{}}
}

// get returns the pool's catalog, or nil when no agent of the pool has
// reported one yet. It starts the watch on first use and waits (bounded by
// ctx) for its initial values.
func (c *catalogCache) get(ctx context.Context, pool string) (*poolCatalog, error) {
	ready, err := c.ensure(ctx)
	if err != nil {
		return nil, err
	}
	select {
	case <-ready:
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for catalogs: %w", ctx.Err())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pools[pool], nil
}

// poolsExcept lists the pools with a catalog other than pool, sorted.
func (c *catalogCache) poolsExcept(pool string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for name := range c.pools {
		if name != pool {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

func (c *catalogCache) ensure(ctx context.Context) (chan struct{}, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		return c.ready, nil
	}
	if c.p.bg.Err() != nil {
		return nil, fmt.Errorf("catalogs: %w", errViewClosed)
	}
	kv, err := c.p.bucket(ctx, wire.BucketCatalog)
	if err != nil {
		return nil, err
	}
	w, err := kv.Watch(c.p.bg, wire.PoolCatalogKey("*"))
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", wire.BucketCatalog, err)
	}
	c.running = true
	c.ready = make(chan struct{})
	c.p.wg.Add(1)
	go c.run(w, c.ready)
	return c.ready, nil
}

func (c *catalogCache) run(w jetstream.KeyWatcher, ready chan struct{}) {
	defer c.p.wg.Done()
	log := c.p.log.With().Str("component", "catalog").Logger()
	initial := true
	defer func() {
		_ = w.Stop()
		c.mu.Lock()
		c.running = false
		if initial {
			close(ready)
		}
		c.mu.Unlock()
	}()
	for {
		select {
		case <-c.p.bg.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				log.Warn().Msg("catalog watch ended; restarting on next use")
				return
			}
			if e == nil {
				if initial {
					initial = false
					close(ready)
				}
				continue
			}
			pool := e.Key()[len(wire.PoolCatalogKey("")):]
			if e.Operation() != jetstream.KeyValuePut {
				c.mu.Lock()
				delete(c.pools, pool)
				c.mu.Unlock()
				c.p.testSignals.catalogApplied.Signal(catalogChange{pool: pool, deleted: true})
				continue
			}
			pc, err := decodePoolCatalog(e.Value())
			if err != nil {
				// Keep the previous catalog: a broken update must not
				// make every prompt of the pool unvalidatable.
				log.Error().Err(err).Str("pool", pool).Msg("undecodable pool catalog ignored")
				continue
			}
			c.mu.Lock()
			c.pools[pool] = pc
			c.mu.Unlock()
			c.p.testSignals.catalogApplied.Signal(catalogChange{pool: pool})
		}
	}
}

// errNoBucket is wrapped when the broker has not provisioned a bucket yet.
var errNoBucket = errors.New("bucket not provisioned")

// newerComfy reports whether system_stats names a ComfyUI of 0.38 or later
// (comfyui-api.md's [newer]): its frontend understands missing_node_type.
func newerComfy(stats json.RawMessage) bool {
	var st struct {
		System struct {
			Version string `json:"comfyui_version"`
		} `json:"system"`
	}
	if len(stats) == 0 || json.Unmarshal(stats, &st) != nil {
		return false
	}
	var major, minor int
	if _, err := fmt.Sscanf(st.System.Version, "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major > 0 || minor >= 38
}
