package cli

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"
)

// testRoot is a root that runs (like atelier-agent without a subcommand),
// a group and a leaf with flags.
func testRoot(ran *string, got *struct {
	n int
	d time.Duration
	b bool
	s string
	z int64
}) *cobra.Command {
	root := &cobra.Command{Use: "tool", RunE: func(*cobra.Command, []string) error { *ran = "root"; return nil }}
	group := &cobra.Command{Use: "user", Short: "users"}
	leaf := &cobra.Command{Use: "add", Short: "add a user", RunE: func(*cobra.Command, []string) error {
		*ran = "add"
		return nil
	}}
	n := Int(leaf.Flags(), "n", "CLI_TEST_INT", 1, "a number")
	d := Duration(leaf.Flags(), "d", "CLI_TEST_DURATION", time.Second, "a duration")
	b := Bool(leaf.Flags(), "b", "CLI_TEST_BOOL", false, "a switch")
	s := String(leaf.Flags(), "s", "CLI_TEST_STRING", "def", "a string")
	z := Size(leaf.Flags(), "z", "CLI_TEST_SIZE", 100<<30, "a size")
	leaf.PostRun = func(*cobra.Command, []string) { got.n, got.d, got.b, got.s, got.z = *n, *d, *b, *s, *z }
	fail := &cobra.Command{Use: "fail", RunE: func(*cobra.Command, []string) error { return errors.New("it broke") }}
	pair := &cobra.Command{Use: "pair A B", Args: ExactArgs(2), RunE: func(*cobra.Command, []string) error { *ran = "pair"; return nil }}
	group.AddCommand(leaf)
	root.AddCommand(group, fail, pair)
	return root
}

func run(t *testing.T, args ...string) (code int, ran string, stderr string) {
	t.Helper()
	var got struct {
		n int
		d time.Duration
		b bool
		s string
		z int64
	}
	var out bytes.Buffer
	code = ExecuteArgs(context.Background(), testRoot(&ran, &got), args, &out)
	return code, ran, out.String()
}

func TestStrictCommandLine(t *testing.T) {
	for _, c := range []struct {
		args     []string
		code     int
		ran      string
		inStderr string
	}{
		{nil, 0, "root", ""},
		{[]string{"user", "add"}, 0, "add", ""},
		{[]string{"pair", "a", "b"}, 0, "pair", ""},
		// Every misuse is a usage error (2) and runs nothing.
		{[]string{"hlep"}, ExitUsage, "", `unknown command "hlep" for "tool"`},
		{[]string{"user"}, ExitUsage, "", "tool user wants a subcommand"},
		{[]string{"user", "bogus"}, ExitUsage, "", `unknown command "bogus" for "tool user"`},
		{[]string{"user", "add", "stray"}, ExitUsage, "", `tool user add takes no arguments`},
		{[]string{"user", "add", "--role", "x"}, ExitUsage, "", "unknown flag: --role"},
		{[]string{"pair", "a"}, ExitUsage, "", "tool pair wants 2 argument(s), got 1"},
		{[]string{"fail"}, 1, "", "tool: it broke"},
	} {
		code, ran, stderr := run(t, c.args...)
		require.Equal(t, c.code, code, "%q: %s", c.args, stderr)
		require.Equal(t, c.ran, ran, "%q", c.args)
		require.Contains(t, stderr, c.inStderr, "%q", c.args)
		if code == ExitUsage {
			require.Contains(t, stderr, "-h' for usage", "%q", c.args)
		}
	}
}

func TestFlagsTakeTheirDefaultFromEnv(t *testing.T) {
	t.Setenv("CLI_TEST_INT", "42")
	t.Setenv("CLI_TEST_DURATION", "90s")
	t.Setenv("CLI_TEST_BOOL", "1")
	t.Setenv("CLI_TEST_SIZE", "2TiB")
	var ran string
	var got struct {
		n int
		d time.Duration
		b bool
		s string
		z int64
	}
	require.Equal(t, 0, ExecuteArgs(context.Background(), testRoot(&ran, &got), []string{"user", "add"}, &bytes.Buffer{}))
	require.Equal(t, 42, got.n)
	require.Equal(t, 90*time.Second, got.d)
	require.True(t, got.b)
	require.Equal(t, "def", got.s)
	require.Equal(t, int64(2<<40), got.z)

	// A flag on the command line wins over the environment.
	require.Equal(t, 0, ExecuteArgs(context.Background(), testRoot(&ran, &got), []string{"user", "add", "--n", "3", "--b=false"}, &bytes.Buffer{}))
	require.Equal(t, 3, got.n)
	require.False(t, got.b)
}

// A value in the environment that the flag cannot take stops the command
// with a usage error naming the variable, rather than running with the
// default.
func TestBadEnvValueIsAUsageError(t *testing.T) {
	for env, value := range map[string]string{"CLI_TEST_INT": "abc", "CLI_TEST_DURATION": "soon", "CLI_TEST_BOOL": "maybe", "CLI_TEST_SIZE": "big"} {
		t.Run(env, func(t *testing.T) {
			t.Setenv(env, value)
			code, ran, stderr := run(t, "user", "add")
			require.Equal(t, ExitUsage, code)
			require.Empty(t, ran)
			require.Contains(t, stderr, `invalid value "`+value+`" for `+env)
		})
	}
}

func TestHelpListsSubcommands(t *testing.T) {
	var ran string
	var got struct {
		n int
		d time.Duration
		b bool
		s string
		z int64
	}
	root := testRoot(&ran, &got)
	var out bytes.Buffer
	root.SetOut(&out)
	require.Equal(t, 0, ExecuteArgs(context.Background(), root, []string{"-h"}, &bytes.Buffer{}))
	require.Contains(t, out.String(), "user")
	require.Contains(t, out.String(), "pair")
	require.Empty(t, ran)

	// A subcommand's help shows its own flags and their variables.
	out.Reset()
	require.Equal(t, 0, ExecuteArgs(context.Background(), root, []string{"user", "add", "-h"}, &bytes.Buffer{}))
	require.Contains(t, out.String(), "(env CLI_TEST_DURATION)")
}

func TestSizes(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "500GiB": 500 << 30, "2tb": 2e12, "1.5KiB": 1536, "7": 7, " 3 MiB ": 3 << 20} {
		n, err := ParseSize(in)
		require.NoError(t, err, in)
		require.Equal(t, want, n, in)
	}
	for _, bad := range []string{"", "x", "-1GiB", "GiB"} {
		_, err := ParseSize(bad)
		require.Error(t, err, bad)
	}
	require.Equal(t, "100GiB", FormatSize(100<<30))
	require.Equal(t, "1000", FormatSize(1000))
}

// A log format or level the logger does not know is a usage error, from
// the flag or its environment variable.
func TestLogFlags(t *testing.T) {
	newRoot := func() *cobra.Command {
		cmd := &cobra.Command{Use: "tool"}
		logger := LogFlags(cmd.Flags(), "tool", "json")
		cmd.RunE = func(*cobra.Command, []string) error { _, err := logger(); return err }
		return cmd
	}
	require.Equal(t, 0, ExecuteArgs(context.Background(), newRoot(), []string{"--log-level", "debug"}, &bytes.Buffer{}))
	var out bytes.Buffer
	require.Equal(t, ExitUsage, ExecuteArgs(context.Background(), newRoot(), []string{"--log-format", "xml"}, &out))
	require.Contains(t, out.String(), `log format "xml"`)
	t.Setenv("ATELIER_LOG_LEVEL", "loud")
	out.Reset()
	require.Equal(t, ExitUsage, ExecuteArgs(context.Background(), newRoot(), nil, &out))
	require.Contains(t, out.String(), `log level "loud"`)
}
