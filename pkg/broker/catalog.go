package broker

import (
	"context"
	"encoding/json"
	"maps"
	"slices"

	"github.com/atelier-run/atelier/pkg/pyjson"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
)

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
	c.Agent, err = wire.ParseCatalogSubject(m.Subject)
	if c.Pool == "" {
		c.Pool = wire.DefaultPool
	}
	if err != nil || wire.ValidateToken("pool", c.Pool) != nil {
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

// mergePoolCatalog unions the catalogs of the pool's agents: their node
// classes, the options of every combo input (a model only some agents
// have stays in the pool's ckpt_name list), their model folders and
// embeddings. A pool's agents are meant to be alike; the union is what the
// pool as a whole can run, and it lets a pool keep its catalog while one
// agent restarts.
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
		if err := json.Unmarshal(c.ObjectInfo, &oi); err != nil {
			b.log.Warn().Err(err).Str("agent", id).Msg("catalog: undecodable object_info left out of the pool's")
		}
		for class, def := range oi {
			if prev, ok := nodes[class]; ok {
				def = mergeNodeDef(prev, def)
			}
			nodes[class] = def
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

// mergeNodeDef merges two agents' definitions of one node class: the later
// definition, with each of its combo inputs offering the options of both
// (the earlier's first, in their order, then the later's new ones). The
// definitions keep ComfyUI's key order and number spelling.
func mergeNodeDef(earlier, later json.RawMessage) json.RawMessage {
	ev, err1 := pyjson.Decode(earlier)
	lv, err2 := pyjson.Decode(later)
	eo, ok1 := ev.(pyjson.Object)
	lo, ok2 := lv.(pyjson.Object)
	if err1 != nil || err2 != nil || !ok1 || !ok2 {
		return later
	}
	eIn, _ := eo.Get("input")
	lIn, _ := lo.Get("input")
	eSecs, _ := eIn.(pyjson.Object)
	lSecs, ok := lIn.(pyjson.Object)
	if !ok {
		return later
	}
	for _, sec := range []string{"required", "optional"} {
		ls, _ := lSecs.Get(sec)
		es, _ := eSecs.Get(sec)
		lInputs, ok := ls.(pyjson.Object)
		eInputs, _ := es.(pyjson.Object)
		if !ok {
			continue
		}
		for i, m := range lInputs {
			ecfg, _ := eInputs.Get(m.Key)
			lInputs[i].Value = mergeCombo(ecfg, m.Value)
		}
	}
	out, err := pyjson.MarshalNoEscape(lo)
	if err != nil {
		return later
	}
	return out
}

// mergeCombo returns the later input config with the earlier's combo
// options added, when both are combos of the same form: [[options…],
// {opts}] or ["COMBO", {"options": [...]}].
func mergeCombo(earlier, later any) any {
	e, _ := earlier.([]any)
	l, ok := later.([]any)
	if !ok || len(e) == 0 || len(l) == 0 {
		return later
	}
	if eo, ok := e[0].([]any); ok {
		if lo, ok := l[0].([]any); ok {
			out := slices.Clone(l)
			out[0] = unionOptions(eo, lo)
			return out
		}
		return later
	}
	if e[0] != "COMBO" || l[0] != "COMBO" || len(e) < 2 || len(l) < 2 {
		return later
	}
	eOpts, _ := e[1].(pyjson.Object)
	lOpts, ok := l[1].(pyjson.Object)
	if !ok {
		return later
	}
	ev, _ := eOpts.Get("options")
	lv, _ := lOpts.Get("options")
	eo, _ := ev.([]any)
	lo, ok := lv.([]any)
	if !ok {
		return later
	}
	opts := slices.Clone(lOpts)
	opts.Set("options", unionOptions(eo, lo))
	out := slices.Clone(l)
	out[1] = opts
	return out
}

// unionOptions is a's options, then b's that a lacks.
func unionOptions(a, b []any) []any {
	seen := map[string]bool{}
	out := make([]any, 0, len(a)+len(b))
	for _, list := range [][]any{a, b} {
		for _, v := range list {
			k := pyjson.Repr(v)
			if !seen[k] {
				seen[k] = true
				out = append(out, v)
			}
		}
	}
	return out
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
