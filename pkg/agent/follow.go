package agent

import (
	"context"
	"encoding/json"
	"time"

	"github.com/atelier-run/atelier/internal/backoff"
	"github.com/atelier-run/atelier/pkg/comfyapi"
	"github.com/atelier-run/atelier/pkg/comfyclient"
	"github.com/atelier-run/atelier/pkg/wire"
)

// historyCheckInterval is how long follow waits for a message before it
// asks ComfyUI's history whether the prompt ended without it seeing the
// end (a lost message must not hold a GPU slot forever).
const historyCheckInterval = 10 * time.Second

// follower is the state of one follow: the outbox relaying the events,
// the timers watching ComfyUI, the rounds of withdrawing an interrupted
// prompt, and how ComfyUI said the prompt ended, once it did.
type follower struct {
	r   *run
	box *outbox
	// quiet runs the history check; stall is the watchdog: any message
	// about this prompt (progress included) proves ComfyUI is alive and
	// working on it. It measures ComfyUI's silence only: outputs ship in
	// the background (outbox), and the end waits for them with the
	// watchdog off (ComfyUI is done).
	quiet, stall *time.Timer
	// Once interrupted, the prompt is withdrawn from ComfyUI in rounds
	// (withdraw.go) until ComfyUI ended it or dropped it unrun:
	// interruptReq is then nil and withdrawC ticks the rounds.
	interruptReq   <-chan struct{}
	withdraw       *time.Timer
	withdrawC      <-chan time.Time
	withdrawPauses *backoff.Backoff
	// out is how the prompt ended, once ComfyUI said so (the closing
	// "executing" message may still be due).
	out *outcome
}

// comfyMessage is one message read from ComfyUI's WebSocket, or why the
// reading ended.
type comfyMessage struct {
	m   comfyclient.Message
	err error
}

// follow relays ComfyUI's messages for this prompt until it ends.
func (r *run) follow(ctx context.Context, conn *comfyclient.Conn, exited <-chan struct{}) (outcome, error) {
	readCtx, stopReading := context.WithCancel(ctx)
	defer stopReading()
	msgs := readMessages(readCtx, conn)
	f := r.newFollower(ctx)
	defer f.stop()
	for {
		select {
		case <-ctx.Done():
			return outcome{}, ctx.Err()
		case <-f.interruptReq:
			f.interruptReq, f.withdrawC = nil, f.withdraw.C
			if r.withdrawRound(ctx) {
				return f.ended(ctx, interruptedOutcome(), nil)
			}
			f.withdraw.Reset(f.withdrawPauses.Next())
		case <-f.withdrawC:
			if f.out != nil {
				continue // ComfyUI ended it; only the closing message is due
			}
			if r.withdrawRound(ctx) {
				return f.ended(ctx, interruptedOutcome(), nil)
			}
			f.withdraw.Reset(f.withdrawPauses.Next())
		case <-exited:
			return outcome{}, errComfyExited
		case <-f.stall.C:
			return outcome{}, errStalled
		case <-f.box.failed:
			return outcome{}, f.box.error()
		case <-f.quiet.C:
			if _, err := r.history(ctx); err == nil {
				r.log.Warn().Msg("prompt ended without its closing message; taking the result from history")
				o, err := r.outcomeFromHistory(ctx)
				return f.ended(ctx, o, err)
			}
			f.quiet.Reset(historyCheckInterval)
		case n := <-msgs:
			if n.err != nil {
				if f.out != nil {
					return f.ended(ctx, *f.out, nil) // the end was seen; only the trailer is lost
				}
				return outcome{}, n.err
			}
			if o, done, err := f.handle(ctx, n.m); done {
				return o, err
			}
		}
	}
}

// readMessages reads conn until ctx ends or a read fails (the failure is
// the last message).
func readMessages(ctx context.Context, conn *comfyclient.Conn) <-chan comfyMessage {
	msgs := make(chan comfyMessage)
	go func() {
		for {
			m, err := conn.Next(ctx)
			select {
			case msgs <- comfyMessage{m, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return msgs
}

func (r *run) newFollower(ctx context.Context) *follower {
	f := &follower{
		r:              r,
		box:            r.startOutbox(ctx),
		quiet:          time.NewTimer(historyCheckInterval),
		stall:          time.NewTimer(r.s.a.cfg.EventTimeout),
		interruptReq:   r.interruptReq,
		withdraw:       time.NewTimer(time.Hour),
		withdrawPauses: backoff.New(withdrawPauses),
	}
	f.withdraw.Stop()
	return f
}

func (f *follower) stop() {
	f.quiet.Stop()
	f.stall.Stop()
	f.withdraw.Stop()
	f.box.stop()
}

// ended waits for the outputs still shipping, then returns how the prompt
// ended.
func (f *follower) ended(ctx context.Context, o outcome, err error) (outcome, error) {
	if err != nil {
		return o, err
	}
	if err := f.box.wait(ctx); err != nil {
		return outcome{}, err
	}
	return o, nil
}

// handle relays one message of ComfyUI's and notes what it says of the
// prompt; done when the prompt ended.
func (f *follower) handle(ctx context.Context, m comfyclient.Message) (o outcome, done bool, err error) {
	r := f.r
	if m.Type == "" {
		f.stall.Reset(r.s.a.cfg.EventTimeout)
		f.box.relay("", nil, r.translate(m.Binary))
		return outcome{}, false, nil
	}
	var head struct {
		PromptID string          `json:"prompt_id"`
		Node     json.RawMessage `json:"node"`
	}
	_ = json.Unmarshal(m.Data, &head)
	if head.PromptID != "" && head.PromptID != r.comfyID {
		return outcome{}, false, nil
	}
	ours := head.PromptID == r.comfyID
	if ours {
		// Only news of this prompt counts: status broadcasts and the
		// like must not keep the history check from running.
		f.stall.Reset(r.s.a.cfg.EventTimeout)
		f.quiet.Reset(historyCheckInterval)
	}
	data := r.translate(m.Data)
	if m.Type == comfyapi.MsgExecutionStart && ours {
		r.signal(stepExecuting)
		if f.withdrawC != nil {
			// ComfyUI began the prompt after it was interrupted: the
			// interrupt it lost while about to start it is due now.
			r.stopInComfy(ctx, r.comfyID)
		}
	}
	switch m.Type {
	case comfyapi.MsgStatus, comfyapi.MsgFeatureFlags, comfyapi.MsgLogs:
	case comfyapi.MsgExecuting:
		if ours && (len(head.Node) == 0 || string(head.Node) == "null") {
			if f.out == nil {
				f.out = &outcome{kind: wire.ReportSucceeded}
			}
			o, err := f.ended(ctx, *f.out, nil)
			return o, true, err
		}
		f.box.relay(m.Type, data, nil)
	case comfyapi.MsgExecuted:
		// Relayed by the outbox once its files are in mello.
		f.box.ship(data)
	case comfyapi.MsgExecutionSuccess:
		f.out = &outcome{kind: wire.ReportSucceeded}
		// ComfyUI is done with the prompt: let the slot hand it the next
		// one now, while this run reads the history, ships and reports.
		r.freeGPU()
	case comfyapi.MsgExecutionError:
		var e struct {
			ExceptionType string `json:"exception_type"`
		}
		_ = json.Unmarshal(data, &e)
		if e.ExceptionType == comfyapi.ExceptionExecutionBlocked {
			f.box.relay(m.Type, data, nil) // informational; the prompt goes on
			return outcome{}, false, nil
		}
		f.out = &outcome{kind: wire.ReportFailed, payload: data}
	case comfyapi.MsgExecutionInterrupted:
		f.out = &outcome{kind: wire.ReportInterrupted, payload: data}
	default:
		f.box.relay(m.Type, data, nil)
	}
	return outcome{}, false, nil
}
