package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func repo(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		p := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(text), 0o644))
	}
	out, err := exec.Command("git", "-C", dir, "init", "-q").CombinedOutput()
	require.NoError(t, err, "%s", out)
	return dir
}

func refs(ps []Problem) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.File+": "+p.Ref)
	}
	return out
}

func TestDanglingReferencesAreFound(t *testing.T) {
	dir := repo(t, map[string]string{
		"docs/api.md":    "# API\n## 2. Routes\n### 2.1 Prompt\n## 3. WebSocket\n",
		"docs/DESIGN.md": "# Design\n## Data layout\n",
		"pkg/a/a.go": `package a

// Fine: api.md §2.1, §3 and DESIGN.md "Data layout", pkg/a/a.go, b.go,
// docs/api.md and nats.go's reconnect buffer.
// Dangling: api.md §4, DESIGN.md "Scheduling", gone.md, pkg/a/gone.go, c.go.
var s = "a string is not a comment: gone2.md"
`,
		"pkg/a/b.go":  "package a\n",
		"README.md":   "See [the API](docs/api.md) and [nothing](docs/none.md); shared/api.md.\n",
		"docs/ext.md": "<!-- doccheck: names files of other projects -->\nriver's `internal/x/y.go`, z.go and api.md §9.\n",
	})
	ps, err := Check(dir)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{
		"README.md: docs/none.md",
		"README.md: shared/api.md",
		"docs/ext.md: api.md §9",
		"pkg/a/a.go: api.md §4",
		`pkg/a/a.go: DESIGN.md "Scheduling"`,
		"pkg/a/a.go: gone.md",
		"pkg/a/a.go: pkg/a/gone.go",
		"pkg/a/a.go: c.go",
	}, refs(ps))
}

// The repository itself has no dangling reference (make test runs the
// command as well; this keeps go test ./... honest on its own).
func TestRepositoryHasNoDanglingReference(t *testing.T) {
	ps, err := Check("../..")
	require.NoError(t, err)
	require.Empty(t, ps)
}
