// Command atelier-agent runs on a GPU box: one slot per GPU, each bound to
// one ComfyUI, pulling jobs from the broker's queue.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/cli"
	"github.com/atelier-run/atelier/pkg/logging"
)

func main() {
	fs := flag.NewFlagSet("atelier-agent", flag.ExitOnError)
	var (
		id        = cli.String(fs, "id", "ATELIER_AGENT_ID", "", "agent id (default: host name)")
		pool      = cli.String(fs, "pool", "ATELIER_POOL", "default", "pool this agent serves")
		natsURL   = cli.String(fs, "nats-url", "ATELIER_NATS_URL", "nats://127.0.0.1:4222", "broker's NATS URL")
		natsUser  = cli.String(fs, "nats-user", "ATELIER_NATS_USER", "", "NATS user")
		natsPass  = cli.String(fs, "nats-password", "ATELIER_NATS_PASSWORD", "", "NATS password")
		runtime   = cli.String(fs, "runtime", "ATELIER_RUNTIME", "external", "external (ComfyUI URLs) or simulated (built-in ComfyUI simulator per GPU)")
		comfyURLs = cli.String(fs, "comfy-urls", "ATELIER_COMFY_URLS", "http://127.0.0.1:8188", "external runtime: comma-separated ComfyUI URLs, one per GPU")
		gpus      = cli.Int(fs, "gpus", "ATELIER_GPUS", 2, "simulated runtime: number of simulated GPUs")
		simDir    = cli.String(fs, "sim-dir", "ATELIER_SIM_DIR", filepath.Join(os.TempDir(), "atelier-sim"), "simulated runtime: simulators' input/output/temp root")
		simStep   = cli.Duration(fs, "sim-step-delay", "ATELIER_SIM_STEP_DELAY", 20*time.Millisecond, "simulated runtime: time per sampler step")
		spool     = cli.String(fs, "spool", "ATELIER_SPOOL", "", "spool directory for outputs on their way to mello (default: a temp dir)")
		logFormat = cli.String(fs, "log-format", "ATELIER_LOG_FORMAT", "json", "json or console")
		logLevel  = cli.String(fs, "log-level", "ATELIER_LOG_LEVEL", "info", "debug, info, warn, error")
	)
	_ = fs.Parse(os.Args[1:])
	log := logging.Must(*logFormat, *logLevel, "atelier-agent")

	var rt agent.Runtime
	switch *runtime {
	case "external":
		rt = &agent.External{URLs: strings.Split(*comfyURLs, ",")}
	case "simulated":
		rt = &agent.Simulated{GPUs: *gpus, Dir: *simDir, StepDelay: *simStep, Logger: log}
	default:
		fmt.Fprintf(os.Stderr, "atelier-agent: --runtime %q: want external or simulated\n", *runtime)
		os.Exit(2)
	}
	ctx, cancel := cli.SignalContext()
	defer cancel()
	err := agent.Run(ctx, agent.Config{
		ID: *id, Pool: *pool, NATSURL: *natsURL, NATSUser: *natsUser, NATSPassword: *natsPass,
		Runtime: rt, SpoolDir: *spool, Logger: log,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "atelier-agent:", err)
		os.Exit(1)
	}
}
