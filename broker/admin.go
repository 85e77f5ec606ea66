package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/spf13/pflag"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/atelier-run/atelier/pkg/broker"
	"github.com/atelier-run/atelier/pkg/cli"
	"github.com/atelier-run/atelier/pkg/wire"
)

// adminCommands are the instructor's and operator's controls; each calls
// the broker's HTTP admin API.
var adminCommands = map[string]string{
	"pause":   "pause dispatch (running jobs go on)",
	"resume":  "resume dispatch",
	"policy":  "policy round-robin|fifo|priority: switch the scheduling policy",
	"bump":    "bump USER JOB: run a queued job first",
	"cancel":  "cancel USER JOB...: cancel jobs at any stage",
	"drain":   "drain AGENT: the agent finishes its jobs and takes no more",
	"undrain": "undrain AGENT: the agent takes jobs again",
	"queues":  "queues: list unfinished jobs in dispatch order",
}

func admin(cmd string, args []string) error {
	fs := pflag.NewFlagSet(cmd, pflag.ExitOnError)
	url := cli.String(fs, "broker", "ATELIER_BROKER_URL", "http://127.0.0.1:8191", "broker HTTP URL")
	token := cli.String(fs, "token", "ATELIER_ADMIN_TOKEN", "", "admin token (default: read from <data>/meta/admin-token)")
	dataDir := cli.String(fs, "data", "ATELIER_DATA", "./data", "data directory (to find the admin token)")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: atelier-broker %s [flags]\n", adminCommands[cmd])
		fs.PrintDefaults()
	}
	_ = fs.Parse(args)
	cli.MustApplyEnv(fs)
	args = fs.Args()
	if *token == "" {
		data, err := os.ReadFile(broker.AdminTokenPath(*dataDir))
		if err != nil {
			return fmt.Errorf("no --token and no admin token in %s: %w", *dataDir, err)
		}
		*token = strings.TrimSpace(string(data))
	}
	c := adminClient{url: strings.TrimRight(*url, "/"), token: *token}

	need := func(n int) error {
		if len(args) < n {
			fs.Usage()
			return errors.New("missing arguments")
		}
		return nil
	}
	switch cmd {
	case "pause", "resume":
		return c.post(cmd, struct{}{}, nil)
	case "policy":
		if err := need(1); err != nil {
			return err
		}
		return c.post(cmd, wire.PolicyRequest{Policy: args[0]}, nil)
	case "bump":
		if err := need(2); err != nil {
			return err
		}
		return c.post(cmd, wire.BumpRequest{User: args[0], JobID: args[1]}, nil)
	case "cancel":
		if err := need(2); err != nil {
			return err
		}
		var reply wire.CancelReply
		if err := c.post(cmd, wire.CancelRequest{User: args[0], JobIDs: args[1:]}, &reply); err != nil {
			return err
		}
		fmt.Printf("cancelled or interrupted: %s\n", strings.Join(reply.Affected, " "))
		return nil
	case "drain", "undrain":
		if err := need(1); err != nil {
			return err
		}
		return c.post(cmd, wire.DrainRequest{Agent: args[0]}, nil)
	case "queues":
		var reply wire.QueuesReply
		if err := c.post(cmd, struct{}{}, &reply); err != nil {
			return err
		}
		printQueues(os.Stdout, reply)
		return nil
	}
	return fmt.Errorf("unknown command %q", cmd)
}

type adminClient struct{ url, token string }

func (c adminClient) post(op string, req, reply any) error {
	body, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url+"/api/admin/"+op, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hr.Header.Set("Authorization", "Bearer "+c.token)
	hr.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	var common wire.APIReply
	_ = json.Unmarshal(data, &common)
	if resp.StatusCode != http.StatusOK {
		if common.Error != "" {
			return fmt.Errorf("%s: %s", op, common.Error)
		}
		return fmt.Errorf("%s: %s: %s", op, resp.Status, strings.TrimSpace(string(data)))
	}
	if reply != nil {
		return json.Unmarshal(data, reply)
	}
	fmt.Printf("%s: ok\n", op)
	return nil
}

func printQueues(w io.Writer, q wire.QueuesReply) {
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
