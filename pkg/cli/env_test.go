package cli

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestFlagsTakeTheirDefaultFromEnv(t *testing.T) {
	t.Setenv("CLI_TEST_INT", "42")
	t.Setenv("CLI_TEST_DURATION", "90s")
	t.Setenv("CLI_TEST_STRING", "from-env")
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	i := Int(fs, "i", "CLI_TEST_INT", 1, "")
	d := Duration(fs, "d", "CLI_TEST_DURATION", time.Second, "")
	s := String(fs, "s", "CLI_TEST_STRING", "def", "")
	u := Int(fs, "u", "CLI_TEST_UNSET", 7, "")
	require.NoError(t, fs.Parse(nil))
	require.Equal(t, 42, *i)
	require.Equal(t, 90*time.Second, *d)
	require.Equal(t, "from-env", *s)
	require.Equal(t, 7, *u)

	// A flag on the command line wins over the environment.
	require.NoError(t, fs.Parse([]string{"-i", "3"}))
	require.Equal(t, 3, *i)
}

func TestBadEnvValueIsRefused(t *testing.T) {
	t.Setenv("CLI_TEST_BAD", "abc")
	for _, define := range []func(fs *flag.FlagSet){
		func(fs *flag.FlagSet) { Int(fs, "n", "CLI_TEST_BAD", 1, "") },
		func(fs *flag.FlagSet) { Duration(fs, "d", "CLI_TEST_BAD", time.Second, "") },
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		var out bytes.Buffer
		fs.SetOutput(&out)
		require.Panics(t, func() { define(fs) })
		require.Contains(t, out.String(), `invalid value "abc" for CLI_TEST_BAD`)
	}
}

// A main's flag set (ExitOnError) exits with status 2 and says why, like a
// bad flag value: checked in a child process.
func TestBadEnvValueExitsAMain(t *testing.T) {
	if os.Getenv("CLI_TEST_CHILD") == "1" {
		fs := flag.NewFlagSet("child", flag.ExitOnError)
		Duration(fs, "ticket-check-interval", "CLI_TEST_BAD", time.Second, "")
		os.Exit(0) // not reached
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestBadEnvValueExitsAMain$")
	cmd.Env = append(os.Environ(), "CLI_TEST_CHILD=1", "CLI_TEST_BAD=soon")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "output: %s", out)
	require.Equal(t, 2, exit.ExitCode())
	require.Contains(t, string(out), `invalid value "soon" for CLI_TEST_BAD`)
}
