package wire

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSanitizeTokenMakesValidTokens(t *testing.T) {
	for in, want := range map[string]string{
		"gpu-box-1":             "gpu-box-1",
		"box.example.com":       "box-example-com",
		"_hidden":               "xhidden",
		"-x":                    "xx",
		"h\u00e9":               "h--",
		strings.Repeat("a", 70): strings.Repeat("a", 64),
	} {
		got := SanitizeToken(in)
		require.Equal(t, want, got, in)
		require.NoError(t, ValidateToken("agent", got))
	}
	require.Empty(t, SanitizeToken(""))
}
