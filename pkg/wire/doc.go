// Package wire is Atelier's wire contract: the names of every NATS stream,
// key-value bucket, consumer and subject, and the types that travel on them.
//
// Every component (broker, proxy, agent) imports this package so that they
// agree on the contract by construction. The broker is the only writer of
// job and agent state (the JOBS and AGENTS buckets); agents and proxies send
// requests and reports, and the broker applies each state transition by
// compare-and-set.
package wire
