package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/atelier-run/atelier/pkg/broker"
	"github.com/atelier-run/atelier/pkg/cli"
	"github.com/atelier-run/atelier/pkg/dashboard"
)

// statusTimeout bounds one picture of the workshop.
const statusTimeout = 15 * time.Second

// newStatusCommand prints the workshop as tables: from the dashboard's
// snapshot API when instructor credentials are given (participants,
// positions, progress, failures), else from the broker's /api/status
// (queues, agents, and the participants when the admin token is at hand:
// --token, or the one in the data directory). --watch redraws it until
// Ctrl-C.
func newStatusCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "status [--watch] [flags]",
		Short:   "The workshop as tables (queues, agents, participants)",
		GroupID: "control",
	}
	fs := cmd.Flags()
	url := brokerURLFlag(fs, "url")
	user := cli.String(fs, "user", "ATELIER_INSTRUCTOR", "", "instructor account for the full picture (dashboard API)")
	password := cli.String(fs, "password", "ATELIER_INSTRUCTOR_PASSWORD", "", "its password")
	watch := fs.Bool("watch", false, "redraw every --interval until interrupted")
	interval := cli.Duration(fs, "interval", "ATELIER_STATUS_INTERVAL", 2*time.Second, "redraw interval with --watch")
	asJSON := fs.Bool("json", false, "print the snapshot as JSON")
	token := adminTokenFlags(fs, "admin token: /api/status then names the participants (default: the one in <data>/meta/admin-token, if readable)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		tok, _ := token(false)
		src := statusSource{base: strings.TrimRight(*url, "/"), user: *user, password: *password, token: tok,
			client: &http.Client{Timeout: 10 * time.Second}}
		out := cmd.OutOrStdout()
		if !*watch {
			ctx, cancel := context.WithTimeout(cmd.Context(), statusTimeout)
			defer cancel()
			return printStatus(ctx, out, src, *asJSON)
		}
		return watchStatus(cmd.Context(), out, src, *asJSON, *interval)
	}
	return cmd
}

// watchStatus redraws the status every interval until ctx ends.
func watchStatus(ctx context.Context, out io.Writer, src statusSource, asJSON bool, interval time.Duration) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		// Clear the screen and home the cursor, then draw.
		fmt.Fprint(out, "\033[H\033[2J")
		if err := printStatus(ctx, out, src, asJSON); err != nil {
			fmt.Fprintln(out, "atelier-broker status:", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

type statusSource struct {
	base, user, password, token string
	client                      *http.Client
}

func printStatus(ctx context.Context, w io.Writer, src statusSource, asJSON bool) error {
	snap, err := src.fetch(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(snap)
	}
	return dashboard.WriteText(w, snap)
}

func (s statusSource) fetch(ctx context.Context) (dashboard.Snapshot, error) {
	if s.user != "" {
		var snap dashboard.Snapshot
		err := s.get(ctx, "/dashboard/api/snapshot", true, &snap)
		return snap, err
	}
	var st broker.Status
	if err := s.get(ctx, "/api/status", false, &st); err != nil {
		return dashboard.Snapshot{}, err
	}
	return dashboard.FromStatus(st, time.Now()), nil
}

func (s statusSource) get(ctx context.Context, path string, auth bool, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+path, nil)
	if err != nil {
		return err
	}
	switch {
	case auth:
		req.SetBasicAuth(s.user, s.password)
	case s.token != "":
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("status: GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return errors.Join(fmt.Errorf("status: decode %s", path), err)
	}
	return nil
}
