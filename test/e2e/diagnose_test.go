package e2e

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/atelier-run/atelier/pkg/wire"
)

// logUnfinished logs, when the test has failed, what the broker's streams
// say about every job that is not final: its JOBS record, its tickets in
// DISPATCH and the pool consumers' state. A restart test that loses a job
// fails minutes after the cause; this is what tells the cause. Call it
// deferred in the test body, so that it runs before the processes stop.
func (s *system) logUnfinished(t *testing.T) {
	if !t.Failed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitTimeout())
	defer cancel()
	nc, err := nats.Connect(s.natsURL)
	if err != nil {
		t.Logf("diagnose: connect: %v", err)
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Logf("diagnose: %v", err)
		return
	}
	if kv, err := js.KeyValue(ctx, wire.BucketJobs); err == nil {
		keys, _ := kv.Keys(ctx)
		for _, k := range keys {
			e, err := kv.Get(ctx, k)
			if err != nil {
				continue
			}
			var r wire.JobRecord
			if json.Unmarshal(e.Value(), &r) == nil && !r.State.Final() {
				t.Logf("diagnose: JOBS %s rev %d: state %s agent %q slot %q boot %q attempt %d releases %d reason %q",
					k, e.Revision(), r.State, r.Agent, r.Slot, r.AgentBoot, r.Attempt, r.Releases, r.Reason)
			}
		}
	}
	st, err := js.Stream(ctx, wire.StreamDispatch)
	if err != nil {
		t.Logf("diagnose: DISPATCH: %v", err)
		return
	}
	info, _ := st.Info(ctx)
	if info != nil {
		t.Logf("diagnose: DISPATCH msgs %d first %d last %d", info.State.Msgs, info.State.FirstSeq, info.State.LastSeq)
		for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
			if m, err := st.GetMsg(ctx, seq); err == nil {
				t.Logf("diagnose: DISPATCH seq %d: %s", seq, m.Data)
			}
		}
	}
	lister := st.ListConsumers(ctx)
	for ci := range lister.Info() {
		t.Logf("diagnose: consumer %s: delivered %d ack floor %d pending %d ack pending %d redelivered %d waiting %d",
			ci.Name, ci.Delivered.Stream, ci.AckFloor.Stream, ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.NumWaiting)
	}
	if dt, err := js.Stream(ctx, "DEADTICKETS"); err == nil {
		if di, err := dt.Info(ctx); err == nil {
			t.Logf("diagnose: DEADTICKETS msgs %d", di.State.Msgs)
		}
	}
}
