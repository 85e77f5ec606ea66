package main

import (
	"github.com/spf13/cobra"
)

// newRoot is atelier-broker: without a subcommand it runs the broker (as
// serve does, with serve's flags), which scripts, the Dockerfile's
// entrypoint and tests rely on.
func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "atelier-broker [serve] [flags]",
		Short: "Atelier's broker: queue, dispatcher, job state, file store",
		Long: `atelier-broker runs Atelier's broker (queue, dispatcher, job state, file
store, dashboard) when given no subcommand or serve. The other subcommands
manage the participants registry (user) and, through the broker's HTTP
admin API, the workshop (status, pause, resume, policy, bump, cancel,
drain, undrain, queues).`,
	}
	root.RunE = serveFlags(root.Flags()).run
	root.AddGroup(&cobra.Group{ID: "run", Title: "Run the broker:"},
		&cobra.Group{ID: "users", Title: "Participants:"},
		&cobra.Group{ID: "control", Title: "Instructor and operator controls (HTTP admin API):"})
	root.AddCommand(newServeCommand(), newUserCommand(), newStatusCommand())
	root.AddCommand(newAdminCommands()...)
	return root
}
