// Package cli holds what the thin mains share: cobra commands that treat
// an unknown subcommand or a stray argument as a usage error (exit status
// 2), flags whose defaults an environment variable can override, and a
// context cancelled by SIGINT or SIGTERM.
//
// A main is flags/env → Config → Run(ctx):
//
//	func main() { os.Exit(cli.Execute(newRootCommand())) }
package cli
