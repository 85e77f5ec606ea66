package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/atelier-run/atelier/pkg/broker"
	"github.com/atelier-run/atelier/pkg/brokerapi"
	"github.com/atelier-run/atelier/pkg/cli"
	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/scheduler"
	"github.com/atelier-run/atelier/pkg/wire"
)

// adminTimeout bounds one admin API request.
const adminTimeout = 30 * time.Second

// adminCall is one instructor or operator control: it calls the broker
// API with its arguments and prints the outcome.
type adminCall func(ctx context.Context, api *brokerapi.Client, cmd *cobra.Command, args []string) error

// newAdminCommands are the instructor's and operator's controls; each
// calls the broker's HTTP admin API with the admin token.
func newAdminCommands() []*cobra.Command {
	policies := []string{string(scheduler.RoundRobin), string(scheduler.FIFO), string(scheduler.Priority)}
	return []*cobra.Command{
		adminCommand("pause", "Pause dispatch (running jobs go on)", cli.NoArgs, okAfter(func(ctx context.Context, api *brokerapi.Client, _ []string) error {
			return api.Pause(ctx, wire.PauseRequest{})
		})),
		adminCommand("resume", "Resume dispatch", cli.NoArgs, okAfter(func(ctx context.Context, api *brokerapi.Client, _ []string) error {
			return api.Resume(ctx, wire.PauseRequest{})
		})),
		withValidArgs(adminCommand("policy "+strings.Join(policies, "|"), "Switch the scheduling policy (kept across restarts)", cli.ExactArgs(1),
			okAfter(func(ctx context.Context, api *brokerapi.Client, args []string) error {
				return api.SetPolicy(ctx, wire.PolicyRequest{Policy: args[0]})
			})), policies),
		adminCommand("bump USER JOB", "Run a queued job first", cli.ExactArgs(2), okAfter(func(ctx context.Context, api *brokerapi.Client, args []string) error {
			return api.Bump(ctx, wire.BumpRequest{User: args[0], JobID: args[1]})
		})),
		adminCommand("cancel USER JOB...", "Cancel jobs at any stage: queued, dispatched, running", cli.MinimumArgs(2), cancelJobs),
		adminCommand("drain AGENT", "The agent finishes its jobs and takes no more", cli.ExactArgs(1), okAfter(func(ctx context.Context, api *brokerapi.Client, args []string) error {
			return api.Drain(ctx, wire.DrainRequest{Agent: args[0]})
		})),
		adminCommand("undrain AGENT", "The agent takes jobs again", cli.ExactArgs(1), okAfter(func(ctx context.Context, api *brokerapi.Client, args []string) error {
			return api.Undrain(ctx, wire.DrainRequest{Agent: args[0]})
		})),
		adminCommand("queues", "List unfinished jobs in dispatch order", cli.NoArgs, listQueues),
	}
}

// adminCommand is one control with the admin API's flags.
func adminCommand(use, short string, args cobra.PositionalArgs, call adminCall) *cobra.Command {
	cmd := &cobra.Command{Use: use, Short: short, Args: args, GroupID: "control"}
	fs := cmd.Flags()
	url := brokerURLFlag(fs, "broker")
	token := adminTokenFlags(fs, "admin token (default: read from <data>/meta/admin-token)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		tok, err := token(true)
		if err != nil {
			return err
		}
		api := brokerapi.New(brokerapi.HTTPTransport{URL: *url, Token: tok}, brokerapi.WithTimeout(adminTimeout))
		return call(cmd.Context(), api, cmd, args)
	}
	return cmd
}

func withValidArgs(cmd *cobra.Command, valid []string) *cobra.Command {
	cmd.ValidArgs = valid
	return cmd
}

// okAfter is a control whose answer is only success: it prints
// "<command>: ok".
func okAfter(call func(ctx context.Context, api *brokerapi.Client, args []string) error) adminCall {
	return func(ctx context.Context, api *brokerapi.Client, cmd *cobra.Command, args []string) error {
		if err := call(ctx, api, args); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", cmd.Name())
		return nil
	}
}

func cancelJobs(ctx context.Context, api *brokerapi.Client, cmd *cobra.Command, args []string) error {
	affected, err := api.Cancel(ctx, wire.CancelRequest{User: args[0], JobIDs: args[1:]})
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "cancelled or interrupted: %s\n", strings.Join(affected, " "))
	return nil
}

func listQueues(ctx context.Context, api *brokerapi.Client, cmd *cobra.Command, _ []string) error {
	q, err := api.Queues(ctx, wire.QueuesRequest{})
	if err != nil {
		return err
	}
	writeQueues(cmd.OutOrStdout(), q)
	return nil
}

// brokerURLFlag defines the flag (name) of the broker's HTTP address.
func brokerURLFlag(fs *pflag.FlagSet, name string) *string {
	return cli.String(fs, name, "ATELIER_BROKER_URL", "http://"+broker.DefaultHTTPAddr, "the broker's HTTP address")
}

// adminTokenFlags defines --token and --data and returns a function that
// reads the token once they are parsed: --token, else the one the broker
// keeps in the data directory; required says whether its absence is an
// error.
func adminTokenFlags(fs *pflag.FlagSet, usage string) func(required bool) (string, error) {
	token := cli.String(fs, "token", "ATELIER_ADMIN_TOKEN", "", usage)
	dataDir := cli.String(fs, "data", "ATELIER_DATA", datalayout.DefaultRoot, "data directory (to find the admin token)")
	return func(required bool) (string, error) {
		if *token != "" {
			return *token, nil
		}
		data, err := os.ReadFile(broker.AdminTokenPath(*dataDir))
		if err != nil && required {
			return "", fmt.Errorf("no --token and no admin token in %s: %w", *dataDir, err)
		}
		return strings.TrimSpace(string(data)), nil
	}
}

func writeQueues(w io.Writer, q wire.QueuesReply) {
	state := "running"
	if q.Paused {
		state = "PAUSED"
	}
	fmt.Fprintf(w, "dispatch %s, policy %s, %d unfinished jobs\n", state, q.Policy, len(q.Jobs))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POS\tSTATE\tUSER\tJOB\tPOOL\tAGENT/SLOT\tAGE")
	for _, j := range q.Jobs {
		pos := "-"
		if j.Position > 0 {
			pos = fmt.Sprint(j.Position)
		}
		if j.Bumped {
			pos += "*"
		}
		where := ""
		if j.Agent != "" {
			where = j.Agent + "/" + j.Slot
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", pos, j.State, j.User, j.ID, j.Pool, where, time.Since(j.CreatedAt).Round(time.Second))
	}
	tw.Flush()
}
