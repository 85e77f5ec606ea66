// Command atelier-comfysim runs the ComfyUI simulator (pkg/comfysim) as a
// process, with ComfyUI's own flag names where they exist, so the agent's
// process runtime can start it exactly like `python main.py --port ...`.
//
//	atelier-comfysim --listen 127.0.0.1 --port 8188 --base-directory /tmp/comfy \
//	    --models 'checkpoints=v1-5-pruned-emaonly-fp16.safetensors;loras=x.safetensors'
//
// Simulator-only flags start with --sim- or describe the fake GPU
// (--step-delay, --models, --device-name, --vram-total). A crash fault
// exits with status 1; SIGINT and SIGTERM stop the server.
package main

import (
	"os"

	"github.com/atelier-run/atelier/pkg/cli"
)

func main() { os.Exit(cli.Execute(newRoot())) }
