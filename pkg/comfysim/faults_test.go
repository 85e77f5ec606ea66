package comfysim

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestFaultExecutionErrorAndOOM(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ws := b.dial(t, "/ws?clientId=f")
	ws.next()

	status, _ := b.post(t, "/sim/fault", map[string]any{"kind": "execution_error", "node": "ImageBlur", "message": "boom", "count": 1})
	require.Equal(t, http.StatusOK, status)
	id := b.submit(t, workflow(t, "workflow-noweights.json"), "f")
	msgs := ws.until(id)
	n := len(msgs)
	require.Equal(t, []string{"executing", "execution_error", "status", "executing"}, types(msgs[n-4:]))
	var ee struct {
		PromptID         string                     `json:"prompt_id"`
		NodeID           string                     `json:"node_id"`
		NodeType         string                     `json:"node_type"`
		Executed         []string                   `json:"executed"`
		ExceptionMessage string                     `json:"exception_message"`
		ExceptionType    string                     `json:"exception_type"`
		Traceback        []string                   `json:"traceback"`
		CurrentInputs    map[string]json.RawMessage `json:"current_inputs"`
		CurrentOutputs   []string                   `json:"current_outputs"`
		Timestamp        int64                      `json:"timestamp"`
	}
	require.NoError(t, json.Unmarshal(msgs[n-3].Data, &ee))
	require.Equal(t, "3", ee.NodeID)
	require.Equal(t, "ImageBlur", ee.NodeType)
	require.Equal(t, []string{"1", "2", "6"}, ee.Executed)
	require.Equal(t, "boom\n", ee.ExceptionMessage)
	require.Equal(t, "RuntimeError", ee.ExceptionType)
	require.NotEmpty(t, ee.Traceback)
	require.JSONEq(t, `[3]`, string(ee.CurrentInputs["blur_radius"]))
	require.NotZero(t, ee.Timestamp)

	var hist map[string]struct {
		Outputs map[string]json.RawMessage `json:"outputs"`
		Status  struct {
			StatusStr string              `json:"status_str"`
			Completed bool                `json:"completed"`
			Messages  [][]json.RawMessage `json:"messages"`
		} `json:"status"`
	}
	b.getJSON(t, "/history/"+id, &hist)
	require.Equal(t, "error", hist[id].Status.StatusStr)
	require.False(t, hist[id].Status.Completed)
	last := hist[id].Status.Messages[len(hist[id].Status.Messages)-1]
	require.JSONEq(t, `"execution_error"`, string(last[0]))
	require.JSONEq(t, string(msgs[n-3].Data), string(last[1]))
	// Partial outputs are kept: the preview ran before the failure.
	require.Contains(t, hist[id].Outputs, "6")

	// count 1: the fault is gone; now an OOM in the sampler at step 3.
	b.sim.SetFault(Fault{Kind: FaultOOM, Node: "14", After: 3})
	id = b.submit(t, workflow(t, "workflow-txt2img.json"), "f")
	msgs = ws.until(id)
	require.Len(t, find(msgs, "progress"), 2)
	errs := find(msgs, "execution_error")
	require.Len(t, errs, 1)
	require.NoError(t, json.Unmarshal(errs[0].Data, &ee))
	require.Equal(t, "torch.OutOfMemoryError", ee.ExceptionType)
	require.True(t, strings.HasPrefix(ee.ExceptionMessage, "Allocation on device 0 would exceed allowed memory. (out of memory)"))
	require.Contains(t, ee.ExceptionMessage, "\nThis error means you ran out of memory on your GPU.")
}

func TestFaultHangAndInterrupt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sim.SetFault(Fault{Kind: FaultHang, Node: "14", After: 5})
	ws := b.dial(t, "/ws?clientId=h")
	ws.next()
	id := b.submit(t, workflow(t, "workflow-txt2img.json"), "h")
	for {
		m := ws.next()
		if m.Type == "progress" && strings.Contains(string(m.Data), `"value": 4`) {
			break
		}
	}
	// A socket reconnecting with the owner's sid is told the running node.
	ws2 := b.dial(t, "/ws?clientId=h")
	require.Equal(t, "status", ws2.next().Type)
	again := ws2.next()
	require.Equal(t, "executing", again.Type)
	require.JSONEq(t, `{"node": "14"}`, string(again.Data))

	status, _ := b.post(t, "/interrupt", nil)
	require.Equal(t, http.StatusOK, status)
	msgs := ws2.until(id)
	require.Equal(t, []string{"execution_interrupted", "status", "executing"}, types(msgs))
	require.Contains(t, string(msgs[0].Data), `"node_id": "14", "node_type": "KSampler"`)
}

func TestFaultCrash(t *testing.T) {
	t.Parallel()
	crashed := make(chan struct{})
	b := setup(t, func(c *Config) { c.OnCrash = func() { close(crashed) } })
	b.sim.SetFault(Fault{Kind: FaultCrash, Node: "4"})
	ws := b.dial(t, "/ws?clientId=c")
	ws.next()
	id := b.submit(t, workflow(t, "workflow-noweights.json"), "c")
	select {
	case <-crashed:
	case <-time.After(execWait):
		t.Fatal("OnCrash not called")
	}
	// The socket dies without execution_success / executing null.
	for {
		_, _, err := ws.conn.Read(t.Context())
		if err != nil {
			break
		}
	}
	require.Eventually(t, func() bool {
		_, err := http.Get(b.url + "/history/" + id)
		return err != nil
	}, 5*time.Second, 10*time.Millisecond)
}

func TestFaultSlowStart(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// Long enough that the request right after the fault is set still
	// falls in it on a loaded machine.
	status, _ := b.post(t, "/sim/fault", `{"kind": "slow_start", "delay": "2s"}`)
	require.Equal(t, http.StatusOK, status)
	status, _, _ = b.get(t, "/system_stats")
	require.Equal(t, http.StatusServiceUnavailable, status)
	require.Eventually(t, func() bool {
		status, _, _ := b.get(t, "/system_stats")
		return status == http.StatusOK
	}, 10*time.Second, 20*time.Millisecond)
	status, _ = b.post(t, "/sim/fault", `{"kind": "bogus"}`)
	require.Equal(t, http.StatusBadRequest, status)
}
