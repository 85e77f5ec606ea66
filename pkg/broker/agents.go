package broker

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
)

type agentEntry struct {
	hb       wire.Heartbeat
	lastSeen time.Time
}

// agentAlive reports whether the agent process boot still heartbeats.
func (b *Broker) agentAlive(agent, boot string) bool {
	a := b.state.agents[agent]
	return a != nil && (boot == "" || a.hb.Boot == boot) && time.Since(a.lastSeen) < b.cfg.AgentTimeout
}

func (b *Broker) handleHeartbeat(ctx context.Context, m *nats.Msg) {
	var hb wire.Heartbeat
	if err := json.Unmarshal(m.Data, &hb); err != nil {
		b.log.Warn().Err(err).Str("subject", m.Subject).Msg("drop undecodable heartbeat")
		return
	}
	if strings.TrimPrefix(m.Subject, "hb.") != hb.Agent || wire.ValidateToken("agent", hb.Agent) != nil {
		b.log.Warn().Str("subject", m.Subject).Str("agent", hb.Agent).Msg("drop heartbeat whose subject does not match it")
		return
	}
	if hb.Pool == "" {
		hb.Pool = wire.DefaultPool
	}
	if wire.ValidateToken("pool", hb.Pool) != nil {
		b.log.Warn().Str("agent", hb.Agent).Str("pool", hb.Pool).Msg("drop heartbeat with an invalid pool")
		return
	}
	_ = b.do(ctx, func() { b.agentSeen(ctx, hb) })
}

func (b *Broker) agentSeen(ctx context.Context, hb wire.Heartbeat) {
	a := b.state.agents[hb.Agent]
	if a == nil {
		b.log.Info().Str("agent", hb.Agent).Str("pool", hb.Pool).Int("slots", len(hb.Slots)).Msg("agent joined")
		a = &agentEntry{}
		b.state.agents[hb.Agent] = a
	} else if a.hb.Boot != hb.Boot {
		b.log.Info().Str("agent", hb.Agent).Msg("agent restarted")
	}
	a.hb, a.lastSeen = hb, time.Now()
	b.cfg.Observer.AgentSeen(hb)
	if !b.state.pools[hb.Pool] {
		if _, err := wire.EnsurePoolConsumer(ctx, b.res.Dispatch, hb.Pool, b.cfg.Limits); err != nil {
			b.log.Error().Err(err).Str("pool", hb.Pool).Msg("create pool consumer")
		} else {
			b.state.pools[hb.Pool] = true
		}
	}
	data, _ := json.Marshal(hb)
	if _, err := b.res.Agents.Put(ctx, hb.Agent, data); err != nil {
		b.log.Warn().Err(err).Str("agent", hb.Agent).Msg("record heartbeat")
	}
	b.dispatch(ctx, hb.Pool)
}

// housekeep forgets agents that stopped heartbeating (their slots stop
// counting; their tickets come back after AckWait and are re-claimed) and
// retries dispatch.
func (b *Broker) housekeep(ctx context.Context) {
	for id, a := range b.state.agents {
		if time.Since(a.lastSeen) > b.cfg.AgentTimeout {
			b.log.Warn().Str("agent", id).Time("last_seen", a.lastSeen).Msg("agent lost")
			delete(b.state.agents, id)
			b.cfg.Observer.AgentLost(id)
		}
	}
	b.pruneStopped()
	b.dispatchAll(ctx)
}

// handleCatalog stores an agent's catalog and merges its pool's.
func (b *Broker) handleCatalog(ctx context.Context, m *nats.Msg) {
	respond := func(errText string) {
		data, _ := json.Marshal(wire.CatalogAck{Error: errText})
		_ = m.Respond(data)
	}
	c, err := wire.DecodeCatalog(m.Data)
	if err != nil {
		respond(err.Error())
		return
	}
	c.Agent = strings.TrimPrefix(m.Subject, "catalog.")
	if c.Pool == "" {
		c.Pool = wire.DefaultPool
	}
	if wire.ValidateToken("agent", c.Agent) != nil || wire.ValidateToken("pool", c.Pool) != nil {
		respond("invalid agent or pool name")
		return
	}
	var errText string
	if err := b.do(ctx, func() {
		if err := b.storeCatalog(ctx, c); err != nil {
			errText = err.Error()
		}
	}); err != nil {
		return
	}
	respond(errText)
}

func (b *Broker) storeCatalog(ctx context.Context, c wire.Catalog) error {
	b.state.catalogs[c.Agent] = c
	data, err := wire.EncodeCatalog(c)
	if err != nil {
		return err
	}
	if _, err := b.res.Catalog.Put(ctx, wire.AgentCatalogKey(c.Agent), data); err != nil {
		return err
	}
	merged := b.mergePoolCatalog(c.Pool)
	data, err = wire.EncodeCatalog(merged)
	if err != nil {
		return err
	}
	if _, err := b.res.Catalog.Put(ctx, wire.PoolCatalogKey(c.Pool), data); err != nil {
		return err
	}
	b.log.Info().Str("agent", c.Agent).Str("pool", c.Pool).Msg("catalog stored")
	return nil
}

// mergePoolCatalog unions the node classes and models of the pool's
// agents: a pool's agents are meant to be alike, and the union lets a pool
// keep its catalog while one agent restarts.
func (b *Broker) mergePoolCatalog(pool string) wire.Catalog {
	merged := wire.Catalog{Pool: pool, At: now(), Models: map[string][]string{}}
	nodes := map[string]json.RawMessage{}
	embeddings := map[string]bool{}
	for _, id := range slices.Sorted(maps.Keys(b.state.catalogs)) {
		c := b.state.catalogs[id]
		if c.Pool != pool {
			continue
		}
		var oi map[string]json.RawMessage
		if err := json.Unmarshal(c.ObjectInfo, &oi); err == nil {
			for k, v := range oi {
				nodes[k] = v
			}
		}
		for folder, files := range c.Models {
			merged.Models[folder] = unionSorted(merged.Models[folder], files)
		}
		for _, e := range c.Embeddings {
			embeddings[e] = true
		}
		if merged.SystemStats == nil {
			merged.SystemStats = c.SystemStats
		}
	}
	merged.ObjectInfo, _ = json.Marshal(nodes)
	merged.Embeddings = slices.Sorted(maps.Keys(embeddings))
	return merged
}

func unionSorted(a, b []string) []string {
	set := map[string]bool{}
	for _, s := range a {
		set[s] = true
	}
	for _, s := range b {
		set[s] = true
	}
	return slices.Sorted(maps.Keys(set))
}
