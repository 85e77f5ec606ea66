package dashboard

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteText prints s as tables for a terminal (`atelier-broker status`).
func WriteText(w io.Writer, s Snapshot) error {
	var b strings.Builder
	writeHeadline(&b, s)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	writePools(tw, s.Pools)
	writeAgents(tw, s.Agents)
	writeUsers(tw, s.Users)
	writeQueue(tw, s.Queue)
	writeFailed(tw, s.Failed)
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeHeadline is the first two lines: the queue's state and the totals.
func writeHeadline(w io.Writer, s Snapshot) {
	t := s.Totals
	state := "queue running"
	switch {
	case !s.API:
		state = "queue state unknown (broker API unavailable)"
	case s.Paused:
		state = "queue PAUSED"
	}
	if s.Policy != "" {
		state += ", policy " + s.Policy
	}
	fmt.Fprintf(w, "Atelier at %s — %s\n", s.At.Local().Format("15:04:05"), state)
	fmt.Fprintf(w, "waiting %d (queued %d, dispatched %d)  running %d  GPUs busy %d/%d  agents %d",
		t.Queued+t.Dispatched, t.Queued, t.Dispatched, t.Running, t.BusySlots, t.Slots, t.Agents)
	if t.DoneLastHour >= 0 {
		fmt.Fprintf(w, "  last hour: %d done, %d failed", t.DoneLastHour, t.FailedLastHour)
	}
	fmt.Fprintln(w)
}

func writePools(tw io.Writer, pools []PoolDepth) {
	if len(pools) == 0 {
		return
	}
	fmt.Fprintln(tw, "\nPOOL\tQUEUED\tDISPATCHED\tRUNNING\tGPUS BUSY")
	for _, p := range pools {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d/%d\n", p.Pool, p.Queued, p.Dispatched, p.Running, p.BusySlots, p.Slots)
	}
}

// writeAgents is one row per GPU slot (one for an agent without slots).
func writeAgents(tw io.Writer, agents []AgentView) {
	fmt.Fprintln(tw, "\nAGENT\tSLOT\tGPU\tSTATE\tJOB\tUSER\tPROGRESS\tVRAM USED\tUTIL\tHEARTBEAT")
	if len(agents) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	for _, a := range agents {
		hb := fmtAge(a.HeartbeatAge)
		switch {
		case a.Lost:
			hb += " LOST"
		case a.Draining:
			hb += " draining"
		}
		if len(a.Slots) == 0 {
			fmt.Fprintf(tw, "%s\t-\t\t\t\t\t\t\t\t%s\n", a.Agent, hb)
		}
		for _, sl := range a.Slots {
			vram := "-"
			if sl.VRAMTotal > 0 {
				vram = fmt.Sprintf("%s/%s", fmtBytes(sl.VRAMTotal-sl.VRAMFree), fmtBytes(sl.VRAMTotal))
			}
			util := sl.Utilization
			if util <= 1 {
				util *= 100
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.0f%%\t%s\n", a.Agent, sl.ID, dash(sl.GPU), sl.State,
				dash(short(sl.JobID)), dash(sl.User), fmtProgress(sl.Progress), vram, util, hb)
		}
	}
}

func writeUsers(tw io.Writer, users []UserDepth) {
	if len(users) == 0 {
		return
	}
	fmt.Fprintln(tw, "\nPARTICIPANT\tQUEUED\tRUNNING\tDONE\tFAILED")
	for _, u := range users {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\n", u.User, u.Queued+u.Dispatched, u.Running, u.Succeeded, u.Failed)
	}
}

func writeQueue(tw io.Writer, queue []JobView) {
	if len(queue) == 0 {
		return
	}
	fmt.Fprintln(tw, "\nPOS\tJOB\tUSER\tPOOL\tSTATE\tWHERE\tPROGRESS\tWAIT\tRUN")
	for _, j := range queue {
		pos := "-"
		if j.Position > 0 {
			pos = fmt.Sprint(j.Position)
		}
		where := "-"
		if j.Agent != "" {
			where = j.Agent + "/" + j.Slot
		}
		run := "-"
		if j.RunS > 0 {
			run = fmtAge(j.RunS)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", pos, short(j.ID), j.User, j.Pool, j.State, where,
			fmtProgress(j.Progress), fmtAge(j.WaitS), run)
	}
}

// writeFailed lists the five latest failures.
func writeFailed(tw io.Writer, failed []JobView) {
	if len(failed) == 0 {
		return
	}
	fmt.Fprintln(tw, "\nFAILED\tUSER\tFINISHED\tERROR")
	for _, j := range failed[:min(len(failed), 5)] {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", short(j.ID), j.User, j.FinishedAt.Local().Format("15:04:05"), oneLine(j.Error, 80))
	}
}

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func fmtProgress(p *Progress) string {
	if p == nil || p.Max == 0 {
		return "-"
	}
	return fmt.Sprintf("%d/%d", p.Value, p.Max)
}

func fmtAge(s float64) string {
	d := time.Duration(s * float64(time.Second)).Round(time.Second)
	if d < time.Minute {
		return fmt.Sprintf("%ds", int(d.Seconds()))
	}
	return d.String()
}

func fmtBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return s
}
