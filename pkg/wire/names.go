package wire

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Streams, buckets and consumers.
const (
	// StreamSubmit holds accepted jobs that have not reached a final state,
	// one subject per user (submit.<user>). Per-subject limits cap each
	// user's backlog.
	StreamSubmit = "SUBMIT"
	// StreamDispatch is the work queue of tickets the dispatcher releases in
	// fair order, one subject and one durable pull consumer per pool.
	StreamDispatch = "DISPATCH"
	// StreamReports is the durable log of agents' reports on a job's life;
	// the broker consumes it and applies the reports to JOBS.
	StreamReports = "REPORTS"

	// BucketJobs holds every job's state, key <user>.<job>.
	BucketJobs = "JOBS"
	// BucketAgents holds the last heartbeat of each live agent, key <agent>.
	BucketAgents = "AGENTS"
	// BucketCatalog holds each agent's ComfyUI catalog (key agent.<agent>)
	// and the merged catalog of each pool (key pool.<pool>).
	BucketCatalog = "CATALOG"

	// BucketBroker holds the broker's own settings that must survive a
	// restart (pause, policy), key "settings".
	BucketBroker = "BROKER"

	// ConsumerReports is the broker's durable consumer on REPORTS.
	ConsumerReports = "broker"
)

// Subject prefixes. Use the functions below to build full subjects.
const (
	prefixSubmit    = "submit"
	prefixDispatch  = "dispatch"
	prefixReport    = "report"
	prefixClaim     = "claim"
	prefixHeartbeat = "hb"
	prefixCatalog   = "catalog"
	prefixEvent     = "evt"
	prefixControl   = "ctl.agent"
	prefixBrokerAPI = "api.broker"

	// FilePutPrefix is the subject prefix of output uploads (agent → broker).
	FilePutPrefix = "file.put"
	// FileGetPrefix is the subject prefix of input downloads (broker → agent).
	FileGetPrefix = "file.get"
)

// DefaultNATSURL is where agents and proxies find the broker's NATS unless
// told otherwise: the embedded server's default listener (natsembed's
// DefaultHost and DefaultPort, NATS's own port on loopback).
const DefaultNATSURL = "nats://127.0.0.1:4222"

// DefaultPool is the pool of agents and participants that name none.
const DefaultPool = "default"

// SubmitSubject is where the proxy publishes user's accepted jobs.
func SubmitSubject(user string) string { return prefixSubmit + "." + user }

// SubmitSubjects matches every user's submissions.
const SubmitSubjects = prefixSubmit + ".>"

// DispatchSubject is where the dispatcher releases tickets for a pool.
func DispatchSubject(pool string) string { return prefixDispatch + "." + pool }

// DispatchSubjects matches every pool's tickets.
const DispatchSubjects = prefixDispatch + ".>"

// DispatchConsumer is the durable pull consumer name of a pool.
func DispatchConsumer(pool string) string { return "pool-" + pool }

// ReportSubject is where an agent reports on a job.
func ReportSubject(agent, job string) string { return prefixReport + "." + agent + "." + job }

// ReportSubjects matches every report.
const ReportSubjects = prefixReport + ".>"

// ClaimSubject is the request subject on which an agent claims a ticket.
func ClaimSubject(agent string) string { return prefixClaim + "." + agent }

// ClaimSubjects matches every agent's claims.
const ClaimSubjects = prefixClaim + ".*"

// HeartbeatSubject is where an agent publishes its heartbeat.
func HeartbeatSubject(agent string) string { return prefixHeartbeat + "." + agent }

// HeartbeatSubjects matches every agent's heartbeats.
const HeartbeatSubjects = prefixHeartbeat + ".*"

// CatalogSubject is the request subject on which an agent sends its catalog.
func CatalogSubject(agent string) string { return prefixCatalog + "." + agent }

// CatalogSubjects matches every agent's catalog.
const CatalogSubjects = prefixCatalog + ".*"

// EventSubject carries the lossy live events of one job (core NATS).
func EventSubject(agent, user, job string) string {
	return prefixEvent + "." + agent + "." + user + "." + job
}

// EventSubjects matches the live events of every job.
const EventSubjects = prefixEvent + ".*.*.*"

// UserEventSubjects matches the live events of all of a user's jobs.
func UserEventSubjects(user string) string { return prefixEvent + ".*." + user + ".*" }

// ControlSubject is the request subject the broker uses to command an agent.
func ControlSubject(agent string) string { return prefixControl + "." + agent }

// BrokerAPISubject is the request subject of a broker API operation.
func BrokerAPISubject(op string) string { return prefixBrokerAPI + "." + op }

// ErrInvalidSubject is returned when a subject is not of the form its
// parser reads, or one of its tokens is not a valid name.
var ErrInvalidSubject = errors.New("wire: invalid subject")

// ParseSubmitSubject reads the user of a submit.<user> subject.
func ParseSubmitSubject(subject string) (user string, err error) {
	t, err := parseSubject(subject, prefixSubmit, "user")
	return first(t), err
}

// ParseReportSubject reads the agent and job of a report.<agent>.<job>
// subject.
func ParseReportSubject(subject string) (agent, job string, err error) {
	t, err := parseSubject(subject, prefixReport, "agent", "job")
	if err != nil {
		return "", "", err
	}
	return t[0], t[1], nil
}

// ParseClaimSubject reads the agent of a claim.<agent> subject.
func ParseClaimSubject(subject string) (agent string, err error) {
	t, err := parseSubject(subject, prefixClaim, "agent")
	return first(t), err
}

// ParseHeartbeatSubject reads the agent of an hb.<agent> subject.
func ParseHeartbeatSubject(subject string) (agent string, err error) {
	t, err := parseSubject(subject, prefixHeartbeat, "agent")
	return first(t), err
}

// ParseCatalogSubject reads the agent of a catalog.<agent> subject.
func ParseCatalogSubject(subject string) (agent string, err error) {
	t, err := parseSubject(subject, prefixCatalog, "agent")
	return first(t), err
}

// ParseEventSubject reads the agent, user and job of an
// evt.<agent>.<user>.<job> subject.
func ParseEventSubject(subject string) (agent, user, job string, err error) {
	t, err := parseSubject(subject, prefixEvent, "agent", "user", "job")
	if err != nil {
		return "", "", "", err
	}
	return t[0], t[1], t[2], nil
}

// ParseBrokerAPISubject reads the operation of an api.broker.<op> subject.
// It does not check that the operation is one the broker knows.
func ParseBrokerAPISubject(subject string) (op string, err error) {
	t, err := parseSubject(subject, prefixBrokerAPI, "operation")
	return first(t), err
}

// parseSubject splits subject into prefix (one or more tokens) and one
// token per name, each of which must pass ValidateToken.
func parseSubject(subject, prefix string, names ...string) ([]string, error) {
	rest, ok := strings.CutPrefix(subject, prefix+".")
	if !ok {
		return nil, fmt.Errorf("%w: %q does not start with %q", ErrInvalidSubject, subject, prefix+".")
	}
	tokens := strings.Split(rest, ".")
	if len(tokens) != len(names) {
		return nil, fmt.Errorf("%w: %q: want %s.<%s>", ErrInvalidSubject, subject, prefix, strings.Join(names, ">.<"))
	}
	for i, tok := range tokens {
		if err := ValidateToken(names[i], tok); err != nil {
			return nil, fmt.Errorf("%w: %q: %w", ErrInvalidSubject, subject, err)
		}
	}
	return tokens, nil
}

func first(tokens []string) string {
	if len(tokens) == 0 {
		return ""
	}
	return tokens[0]
}

// JobKey is the JOBS key of a job.
func JobKey(user, job string) string { return user + "." + job }

// UserJobKeys matches all JOBS keys of a user.
func UserJobKeys(user string) string { return user + ".>" }

// AgentCatalogKey is the CATALOG key of one agent's catalog.
func AgentCatalogKey(agent string) string { return "agent." + agent }

// PoolCatalogKey is the CATALOG key of a pool's merged catalog.
func PoolCatalogKey(pool string) string { return "pool." + pool }

// ErrInvalidName is returned when a user, agent, pool or job name cannot be
// used as a subject token.
var ErrInvalidName = errors.New("wire: invalid name")

// tokenRE is what a user, agent, pool or job id may look like: it must be a
// single NATS subject token and a safe file-name component.
var tokenRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_-]{0,63}$`)

// ValidateToken checks that s can be used as a user, agent, pool or job id.
func ValidateToken(kind, s string) error {
	if !tokenRE.MatchString(s) {
		return fmt.Errorf("%w: %s %q (want 1-64 of letters, digits, '-', '_', starting with a letter or digit)", ErrInvalidName, kind, s)
	}
	return nil
}

// SanitizeToken turns s (a host name, say) into a string ValidateToken
// accepts: characters other than letters, digits, '-' and '_' become '-',
// a leading '-' or '_' becomes 'x', and it is cut to 64 characters. An
// empty s stays empty.
func SanitizeToken(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '-'
		}
	}
	if len(b) > 0 && (b[0] == '-' || b[0] == '_') {
		b[0] = 'x'
	}
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}
