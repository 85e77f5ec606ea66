package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/atelier-run/atelier/internal/backoff"
	"github.com/atelier-run/atelier/pkg/comfyclient"
	"github.com/atelier-run/atelier/pkg/wire"
)

// catalogCheckInterval is how often the catalog loop looks whether a slot's
// ComfyUI became healthy (again) since it last reported.
const catalogCheckInterval = time.Second

// catalogLoop reports the ComfyUI catalog once a slot is healthy, and
// again whenever a slot's ComfyUI restarts (its nodes may have changed).
func (a *Agent) catalogLoop(ctx context.Context) {
	defer a.wg.Done()
	var reported uint64
	for {
		gen := a.healthGeneration()
		if gen != reported {
			if err := a.reportCatalog(ctx); err != nil {
				a.log.Warn().Err(err).Msg("report catalog; retrying")
			} else {
				reported = gen
				a.signals.Catalog.Signal(struct{}{})
			}
		}
		if !backoff.Sleep(ctx, catalogCheckInterval) {
			return
		}
	}
}

// healthGeneration changes whenever a slot becomes healthy.
func (a *Agent) healthGeneration() uint64 {
	var g uint64
	for _, s := range a.slots {
		g += s.healthy.Load()
	}
	return g
}

func (a *Agent) reportCatalog(ctx context.Context) error {
	var src *slot
	for _, s := range a.slots {
		if s.healthy.Load() > 0 {
			src = s
			break
		}
	}
	if src == nil {
		return errors.New("no healthy slot")
	}
	c, err := collectCatalog(ctx, src.comfy)
	if err != nil {
		return err
	}
	c.Agent, c.Pool = a.cfg.ID, a.cfg.Pool
	rules := promptRulesFrom(c.ObjectInfo)
	a.rules.Store(&rules)
	data, err := wire.EncodeCatalog(c)
	if err != nil {
		return err
	}
	msg, err := a.nc.RequestWithContext(ctx, wire.CatalogSubject(a.cfg.ID), data)
	if err != nil {
		return fmt.Errorf("send catalog: %w", err)
	}
	var ack wire.CatalogAck
	if err := json.Unmarshal(msg.Data, &ack); err != nil {
		return fmt.Errorf("catalog answer: %w", err)
	}
	if ack.Error != "" {
		return fmt.Errorf("broker refused catalog: %s", ack.Error)
	}
	a.log.Info().Msg("catalog reported")
	return nil
}

func collectCatalog(ctx context.Context, c *comfyclient.Client) (wire.Catalog, error) {
	var cat wire.Catalog
	var err error
	if cat.ObjectInfo, err = c.ObjectInfo(ctx); err != nil {
		return cat, fmt.Errorf("object_info: %w", err)
	}
	folders, err := c.Models(ctx)
	if err != nil {
		return cat, fmt.Errorf("models: %w", err)
	}
	cat.Models = map[string][]string{}
	for _, f := range folders {
		files, err := c.ModelFiles(ctx, f)
		if err != nil {
			continue // a folder ComfyUI lists but cannot read: leave it out
		}
		cat.Models[f] = files
	}
	if cat.Embeddings, err = c.Embeddings(ctx); err != nil {
		return cat, fmt.Errorf("embeddings: %w", err)
	}
	// Whole, as ComfyUI wrote it: the proxy serves it to the frontend,
	// which reads fields this agent does not know.
	if cat.SystemStats, err = c.SystemStatsJSON(ctx); err != nil {
		return cat, fmt.Errorf("system_stats: %w", err)
	}
	cat.At = time.Now().UTC()
	return cat, nil
}

// promptRules is what the agent knows of its ComfyUI for rewriting
// prompts (rewritePrompt).
func (a *Agent) promptRules() promptRules {
	if r := a.rules.Load(); r != nil {
		return *r
	}
	return defaultPromptRules()
}
