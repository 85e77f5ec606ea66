package main

import (
	"net"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/atelier-run/atelier/pkg/broker"
	"github.com/atelier-run/atelier/pkg/cli"
	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/natsembed"
	"github.com/atelier-run/atelier/pkg/proxy"
)

// defaultGPUs is how many simulated GPUs the demo agent has.
const defaultGPUs = 2

// newRoot is atelier-devstack: flags → devstack → run. It takes no
// arguments.
func newRoot() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "atelier-devstack [flags]",
		Short: "The whole system on one machine, as make run starts it",
	}
	fs := cmd.Flags()
	d := &devstack{}
	fs.StringVar(&d.bin, "bin", "./bin", "directory with atelier-broker, atelier-proxy, atelier-agent")
	dataDir := cli.String(fs, "data", "ATELIER_DATA", datalayout.DefaultRoot, "data directory")
	natsAddr := cli.String(fs, "nats-listen", "ATELIER_NATS_LISTEN", net.JoinHostPort(natsembed.DefaultHost, strconv.Itoa(natsembed.DefaultPort)), "embedded NATS listener")
	brokerAt := cli.String(fs, "broker-http", "ATELIER_BROKER_HTTP", broker.DefaultHTTPAddr, "broker HTTP (dashboard)")
	proxyAt := cli.String(fs, "proxy-listen", "ATELIER_PROXY_LISTEN", proxy.DefaultAddr, "proxy HTTP for participants")
	gpus := cli.Int(fs, "gpus", "ATELIER_GPUS", defaultGPUs, "simulated GPUs of the agent")
	logFormat := cli.String(fs, "log-format", "ATELIER_LOG_FORMAT", "console", "json or console")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		d.dataDir, d.natsAddr, d.brokerAt, d.proxyAt, d.gpus, d.logFormat = *dataDir, *natsAddr, *brokerAt, *proxyAt, *gpus, *logFormat
		return d.run(cmd.Context())
	}
	return cmd
}
