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

// Every subject a parser reads is one its builder writes, and what is not
// (another prefix, a token too many or too few, a name that is not a
// token) is refused.
func TestParseSubjects(t *testing.T) {
	type parsed = []string
	parsers := map[string]func(string) (parsed, error){
		"submit": func(s string) (parsed, error) { u, err := ParseSubmitSubject(s); return parsed{u}, err },
		"report": func(s string) (parsed, error) { a, j, err := ParseReportSubject(s); return parsed{a, j}, err },
		"claim":  func(s string) (parsed, error) { a, err := ParseClaimSubject(s); return parsed{a}, err },
		"hb":     func(s string) (parsed, error) { a, err := ParseHeartbeatSubject(s); return parsed{a}, err },
		"catalog": func(s string) (parsed, error) {
			a, err := ParseCatalogSubject(s)
			return parsed{a}, err
		},
		"evt": func(s string) (parsed, error) { a, u, j, err := ParseEventSubject(s); return parsed{a, u, j}, err },
		"api": func(s string) (parsed, error) { op, err := ParseBrokerAPISubject(s); return parsed{op}, err },
	}
	for _, c := range []struct {
		parser, subject string
		want            parsed // nil: refused
	}{
		{"submit", SubmitSubject("user001"), parsed{"user001"}},
		{"submit", "submit.", nil},
		{"submit", "submit.a.b", nil},
		{"submit", "submitx.user001", nil},
		{"submit", "report.user001", nil},
		{"report", ReportSubject("box-1", "job_9"), parsed{"box-1", "job_9"}},
		{"report", "report.box-1", nil},
		{"report", "report.box-1.job.x", nil},
		{"report", "report..job", nil},
		{"claim", ClaimSubject("box-1"), parsed{"box-1"}},
		{"claim", "claim.*", nil},
		{"claim", "claim.>", nil},
		{"hb", HeartbeatSubject("box-1"), parsed{"box-1"}},
		{"hb", "hb.-box", nil},
		{"hb", "hb", nil},
		{"catalog", CatalogSubject("box-1"), parsed{"box-1"}},
		{"catalog", "catalog.box 1", nil},
		{"evt", EventSubject("box-1", "user001", "j1"), parsed{"box-1", "user001", "j1"}},
		{"evt", "evt.box-1.user001", nil},
		{"api", BrokerAPISubject(OpQueues), parsed{OpQueues}},
		{"api", "api.broker.", nil},
		{"api", "api.broker.a.b", nil},
		{"api", "api.brokers.queues", nil},
	} {
		got, err := parsers[c.parser](c.subject)
		if c.want == nil {
			require.ErrorIs(t, err, ErrInvalidSubject, "%s %q", c.parser, c.subject)
			continue
		}
		require.NoError(t, err, "%s %q", c.parser, c.subject)
		require.Equal(t, c.want, got, "%s %q", c.parser, c.subject)
	}
}
