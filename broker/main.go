// Command atelier-broker runs Atelier's broker on mello: embedded NATS
// JetStream (or a client of an external cluster), the dispatcher, the job
// state, the file store and the HTTP endpoints (pkg/brokerd). Its
// subcommands manage the participants registry and, through the broker's
// HTTP admin API, the workshop.
//
//	atelier-broker [serve] [flags]
//	atelier-broker user add|list|passwd [flags]
//	atelier-broker status | pause | resume | policy | bump | cancel | drain | undrain | queues
package main

import (
	"os"

	"github.com/atelier-run/atelier/pkg/cli"
)

func main() { os.Exit(cli.Execute(newRoot())) }
