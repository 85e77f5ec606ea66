package broker

import (
	"context"
	"encoding/json"
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
	if agent, err := wire.ParseHeartbeatSubject(m.Subject); err != nil || agent != hb.Agent {
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
			b.testSignals.poolConsumerReady.Signal(hb.Pool)
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
	b.testSignals.housekept.Signal(struct{}{})
}
