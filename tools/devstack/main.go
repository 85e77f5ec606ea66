// Command atelier-devstack is what `make run` starts: the whole system on
// the embedded default, as separate processes — the broker with embedded
// NATS, the proxy, and one agent with simulated GPUs — plus demo
// participants. Ctrl-C stops everything cleanly.
package main

import (
	"os"

	"github.com/atelier-run/atelier/pkg/cli"
)

func main() { os.Exit(cli.Execute(newRoot())) }
