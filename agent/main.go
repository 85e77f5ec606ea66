// Command atelier-agent runs on a GPU box: one slot per GPU, each bound to
// one ComfyUI, pulling jobs from the broker's queue.
//
//	atelier-agent [flags]                 run the agent (SIGTERM drains, then exits)
//	atelier-agent prepare [flags]         create the scratch layout and ComfyUI links
//	atelier-agent healthcheck --url URL   exit 0 when URL answers 200 (container health checks)
//
// Everything it does is in pkg/agent; this is flags and environment →
// agent.Config → agent.Run.
package main

import (
	"os"

	"github.com/atelier-run/atelier/pkg/cli"
)

func main() { os.Exit(cli.Execute(newRoot())) }
