// Command atelier-proxy speaks the ComfyUI API to participants: it
// authenticates them, queues their prompts on the broker and streams
// progress, history and outputs back (pkg/proxy).
//
//	atelier-proxy [flags]
package main

import (
	"os"

	"github.com/atelier-run/atelier/pkg/cli"
)

func main() { os.Exit(cli.Execute(newRoot())) }
