package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/cli"
)

// Misuse of the command line is a usage error that starts nothing: an
// agent would join the default NATS. (A start is what every other case
// would do: these return before it, with the usage status.)
func TestCommandLineIsStrict(t *testing.T) {
	for _, args := range [][]string{
		{"hlep"},
		{"stray"},
		{"--docker-no-gpu", "1"}, // a boolean takes no separate value: "1" is an argument
		{"--no-such-flag"},
		{"prepare", "extra"},
		{"healthcheck", "--url", "http://127.0.0.1:1/", "extra"},
		{"--runtime", "tape"},
		{"--runtime", "docker"}, // no --docker-image
		{"--gpus", "0,0"},
		{"--log-level", "chatty"},
	} {
		var stderr bytes.Buffer
		code := cli.ExecuteArgs(context.Background(), newRoot(), args, &stderr)
		require.Equal(t, cli.ExitUsage, code, "%q: %s", args, stderr.String())
		require.Contains(t, stderr.String(), "Run 'atelier-agent", "%q", args)
	}
}

// help and -h print the help, with the subcommands, and start nothing.
func TestHelpStartsNothing(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		root := newRoot()
		var out bytes.Buffer
		root.SetOut(&out)
		require.Equal(t, 0, cli.ExecuteArgs(context.Background(), root, args, &bytes.Buffer{}), "%q", args)
		require.Contains(t, out.String(), "prepare", "%q", args)
		require.Contains(t, out.String(), "healthcheck", "%q", args)
		require.Contains(t, out.String(), "--nats-url", "%q", args)
	}
}

// The flags default to pkg/agent's defaults, and the boolean variables
// take today's values (1) as well as true/false.
func TestFlagsMakeTheConfig(t *testing.T) {
	fs := pflag.NewFlagSet("atelier-agent", pflag.ContinueOnError)
	config := agentFlags(fs)
	require.NoError(t, fs.Parse(nil))
	cfg, err := config()
	require.NoError(t, err)
	require.Equal(t, agent.DefaultEventTimeout, cfg.EventTimeout)
	require.Equal(t, agent.DefaultDrainTimeout, cfg.DrainTimeout)
	require.Equal(t, agent.DefaultRetryDelay, cfg.RetryDelay)
	require.Equal(t, int64(agent.DefaultInputCacheBytes), cfg.InputCacheBytes)
	require.Equal(t, agent.DefaultNATSURL, cfg.NATSURL)
	require.Equal(t, agent.DefaultRuntime, cfg.RuntimeConfig.Kind)
	require.Equal(t, agent.DefaultBasePort, cfg.RuntimeConfig.BasePort)
	require.Equal(t, agent.DefaultSimStepDelay, cfg.RuntimeConfig.SimStepDelay)
	require.Equal(t, agent.DefaultDockerHealthInterval, cfg.RuntimeConfig.DockerHealthInterval)
	require.Equal(t, agent.DefaultComfyCommand, cfg.RuntimeConfig.ComfyCommand)
	require.False(t, cfg.KeepOutputs || cfg.DisablePrefetch || cfg.RuntimeConfig.DockerNoGPU)

	t.Setenv("ATELIER_KEEP_OUTPUTS", "1")
	t.Setenv("ATELIER_NO_PREFETCH", "true")
	t.Setenv("ATELIER_DOCKER_NO_GPU", "1")
	t.Setenv("ATELIER_INPUT_CACHE_SIZE", "0")
	t.Setenv("ATELIER_DRAIN_TIMEOUT", "90s")
	fs = pflag.NewFlagSet("atelier-agent", pflag.ContinueOnError)
	config = agentFlags(fs)
	require.NoError(t, fs.Parse([]string{"--comfy-args", "--step-delay 5ms --cpu", "--docker-health-cmd", "/atelier-healthcheck healthcheck"}))
	require.NoError(t, cli.ApplyEnv(fs))
	cfg, err = config()
	require.NoError(t, err)
	require.True(t, cfg.KeepOutputs)
	require.True(t, cfg.DisablePrefetch)
	require.True(t, cfg.RuntimeConfig.DockerNoGPU)
	require.Equal(t, int64(-1), cfg.InputCacheBytes, "0 is no cap")
	require.Equal(t, 90*time.Second, cfg.DrainTimeout)
	require.Equal(t, []string{"--step-delay", "5ms", "--cpu"}, cfg.RuntimeConfig.ComfyArgs)
	require.Equal(t, []string{"/atelier-healthcheck", "healthcheck"}, cfg.RuntimeConfig.DockerHealthCmd)
}
