package metrics

import (
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// The gauges are computed at scrape time from the observer's maps rather
// than kept with Inc/Dec: a transition that is seen twice (a reload) or
// missed cannot skew them for the rest of the broker's life.
var (
	descQueueDepth = prometheus.NewDesc("atelier_queue_depth",
		"Jobs waiting for a GPU (queued, no ticket released yet), by pool.", []string{"pool"}, nil)
	descUserJobs = prometheus.NewDesc("atelier_user_jobs",
		"Unfinished jobs per participant, by pool and state (queued, dispatched, running): the participant's queue depth.", []string{"user", "pool", "state"}, nil)
	descJobs = prometheus.NewDesc("atelier_jobs",
		"Unfinished jobs by state (queued, dispatched, running).", []string{"state"}, nil)
	descAgentUp = prometheus.NewDesc("atelier_agent_up",
		"1 while the agent heartbeats, 0 once the broker took it for lost.", []string{"agent", "pool"}, nil)
	descAgentDraining = prometheus.NewDesc("atelier_agent_draining",
		"1 while the agent drains (takes no new jobs).", []string{"agent"}, nil)
	descHeartbeatAge = prometheus.NewDesc("atelier_agent_heartbeat_age_seconds",
		"Seconds since the agent's last heartbeat.", []string{"agent"}, nil)
	descSlots = prometheus.NewDesc("atelier_agent_slots",
		"GPU slots of live agents by state (idle, busy, starting, down).", []string{"agent", "pool", "state"}, nil)
	descGPUUtil = prometheus.NewDesc("atelier_gpu_utilization_ratio",
		"GPU utilisation as the agent reports it (0-1).", []string{"agent", "slot", "gpu"}, nil)
	descVRAMTotal = prometheus.NewDesc("atelier_gpu_memory_total_bytes",
		"GPU memory of the slot's device.", []string{"agent", "slot", "gpu"}, nil)
	descVRAMUsed = prometheus.NewDesc("atelier_gpu_memory_used_bytes",
		"GPU memory in use on the slot's device.", []string{"agent", "slot", "gpu"}, nil)
	descScratch = prometheus.NewDesc("atelier_agent_scratch_bytes",
		"Disk used under the agent's scratch root (staged inputs, spooled outputs).", []string{"agent"}, nil)
	descNATSConnected = prometheus.NewDesc("atelier_nats_connected",
		"1 while the broker's NATS connection is connected.", nil, nil)
	descNATSReconnects = prometheus.NewDesc("atelier_nats_reconnects_total",
		"Reconnects of the broker's NATS connection.", nil, nil)
	descNATSMsgs = prometheus.NewDesc("atelier_nats_messages_total",
		"Messages through the broker's NATS connection, by direction (in, out).", []string{"direction"}, nil)
	descNATSBytes = prometheus.NewDesc("atelier_nats_bytes_total",
		"Bytes through the broker's NATS connection, by direction (in, out): includes output file transfers.", []string{"direction"}, nil)
)

var slotStates = []wire.SlotState{wire.SlotIdle, wire.SlotBusy, wire.SlotStarting, wire.SlotDown}

var unfinishedStates = []wire.JobState{wire.StateQueued, wire.StateDispatched, wire.StateRunning}

type stateCollector struct{ m *Metrics }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descQueueDepth, descUserJobs, descJobs, descAgentUp, descAgentDraining,
		descHeartbeatAge, descSlots, descGPUUtil, descVRAMTotal, descVRAMUsed, descScratch,
		descNATSConnected, descNATSReconnects, descNATSMsgs, descNATSBytes} {
		ch <- d
	}
}

type userKey struct {
	user, pool string
	state      wire.JobState
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	m.mu.Lock()
	pools := map[string]int{}
	users := map[userKey]int{}
	byState := map[wire.JobState]int{}
	for _, j := range m.jobs {
		pools[j.pool] += 0 // a pool with jobs in flight shows depth 0
		if j.state == wire.StateQueued {
			pools[j.pool]++
		}
		users[userKey(j)]++
		byState[j.state]++
	}
	type agentRow struct {
		a    agentInfo
		live bool
	}
	agents := make([]agentRow, 0, len(m.agents))
	for _, a := range m.agents {
		agents = append(agents, agentRow{*a, !a.lost})
		pools[a.hb.Pool] += 0
	}
	conn := m.conn
	now := m.cfg.Now()
	m.mu.Unlock()

	for pool, n := range pools {
		ch <- prometheus.MustNewConstMetric(descQueueDepth, prometheus.GaugeValue, float64(n), pool)
	}
	for k, n := range users {
		ch <- prometheus.MustNewConstMetric(descUserJobs, prometheus.GaugeValue, float64(n), k.user, k.pool, string(k.state))
	}
	for _, s := range unfinishedStates {
		ch <- prometheus.MustNewConstMetric(descJobs, prometheus.GaugeValue, float64(byState[s]), string(s))
	}
	for _, r := range agents {
		hb := r.a.hb
		ch <- prometheus.MustNewConstMetric(descAgentUp, prometheus.GaugeValue, b2f(r.live), hb.Agent, hb.Pool)
		ch <- prometheus.MustNewConstMetric(descHeartbeatAge, prometheus.GaugeValue, now.Sub(r.a.lastSeen).Seconds(), hb.Agent)
		if !r.live {
			continue // its slots and GPUs are unknown now
		}
		ch <- prometheus.MustNewConstMetric(descAgentDraining, prometheus.GaugeValue, b2f(hb.Draining), hb.Agent)
		ch <- prometheus.MustNewConstMetric(descScratch, prometheus.GaugeValue, float64(hb.ScratchBytes), hb.Agent)
		counts := map[wire.SlotState]int{}
		for _, s := range hb.Slots {
			counts[s.State]++
			if s.VRAMTotal > 0 {
				ch <- prometheus.MustNewConstMetric(descVRAMTotal, prometheus.GaugeValue, float64(s.VRAMTotal), hb.Agent, s.ID, s.GPU)
				ch <- prometheus.MustNewConstMetric(descVRAMUsed, prometheus.GaugeValue, float64(s.VRAMTotal-s.VRAMFree), hb.Agent, s.ID, s.GPU)
			}
			ch <- prometheus.MustNewConstMetric(descGPUUtil, prometheus.GaugeValue, utilRatio(s.Utilization), hb.Agent, s.ID, s.GPU)
		}
		for _, st := range slotStates {
			ch <- prometheus.MustNewConstMetric(descSlots, prometheus.GaugeValue, float64(counts[st]), hb.Agent, hb.Pool, string(st))
		}
	}
	if conn != nil {
		if nc := conn(); nc != nil {
			st := nc.Stats()
			ch <- prometheus.MustNewConstMetric(descNATSConnected, prometheus.GaugeValue, b2f(nc.IsConnected()))
			ch <- prometheus.MustNewConstMetric(descNATSReconnects, prometheus.CounterValue, float64(st.Reconnects))
			ch <- prometheus.MustNewConstMetric(descNATSMsgs, prometheus.CounterValue, float64(st.InMsgs), "in")
			ch <- prometheus.MustNewConstMetric(descNATSMsgs, prometheus.CounterValue, float64(st.OutMsgs), "out")
			ch <- prometheus.MustNewConstMetric(descNATSBytes, prometheus.CounterValue, float64(st.InBytes), "in")
			ch <- prometheus.MustNewConstMetric(descNATSBytes, prometheus.CounterValue, float64(st.OutBytes), "out")
		}
	}
}

// utilRatio accepts a utilisation reported as a ratio or as a percentage:
// the wire contract does not pin the unit, and nvidia-smi speaks percent.
func utilRatio(u float64) float64 {
	if u > 1 {
		return u / 100
	}
	return u
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
