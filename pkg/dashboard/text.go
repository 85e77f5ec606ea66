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
	fmt.Fprintf(&b, "Atelier at %s — %s\n", s.At.Local().Format("15:04:05"), state)
	fmt.Fprintf(&b, "waiting %d (queued %d, dispatched %d)  running %d  GPUs busy %d/%d  agents %d",
		t.Queued+t.Dispatched, t.Queued, t.Dispatched, t.Running, t.BusySlots, t.Slots, t.Agents)
	if t.DoneLastHour >= 0 {
		fmt.Fprintf(&b, "  last hour: %d done, %d failed", t.DoneLastHour, t.FailedLastHour)
	}
	b.WriteString("\n")

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	if len(s.Pools) > 0 {
		fmt.Fprintln(tw, "\nPOOL\tQUEUED\tDISPATCHED\tRUNNING\tGPUS BUSY")
		for _, p := range s.Pools {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d/%d\n", p.Pool, p.Queued, p.Dispatched, p.Running, p.BusySlots, p.Slots)
		}
	}
	fmt.Fprintln(tw, "\nAGENT\tSLOT\tGPU\tSTATE\tJOB\tUSER\tPROGRESS\tVRAM USED\tUTIL\tHEARTBEAT")
	if len(s.Agents) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	for _, a := range s.Agents {
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
	if len(s.Users) > 0 {
		fmt.Fprintln(tw, "\nPARTICIPANT\tQUEUED\tRUNNING\tDONE\tFAILED")
		for _, u := range s.Users {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\n", u.User, u.Queued+u.Dispatched, u.Running, u.Succeeded, u.Failed)
		}
	}
	if len(s.Queue) > 0 {
		fmt.Fprintln(tw, "\nPOS\tJOB\tUSER\tPOOL\tSTATE\tWHERE\tPROGRESS\tWAIT\tRUN")
		for _, j := range s.Queue {
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
	if len(s.Failed) > 0 {
		fmt.Fprintln(tw, "\nFAILED\tUSER\tFINISHED\tERROR")
		for i, j := range s.Failed {
			if i == 5 {
				break
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", short(j.ID), j.User, j.FinishedAt.Local().Format("15:04:05"), oneLine(j.Error, 80))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := io.WriteString(w, b.String())
	return err
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
