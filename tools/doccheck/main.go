// Command doccheck fails when a comment or document cites a file or a
// section that does not exist: `comfyui-api.md §2.1`, `DESIGN.md "Data
// layout"`, `docs/BENCHMARKS.md`, `pkg/broker/tickets.go`, `orphans.go`,
// a Markdown link to a missing file. `make test` runs it, so a rename or
// a removed section cannot leave a dangling reference behind.
//
//	go run ./tools/doccheck [repository root]
package main

import (
	"fmt"
	"os"
)

func main() {
	root := "."
	if len(os.Args) > 1 {
		root = os.Args[1]
	}
	problems, err := Check(root)
	if err != nil {
		fmt.Fprintln(os.Stderr, "doccheck:", err)
		os.Exit(2)
	}
	for _, p := range problems {
		fmt.Println(p)
	}
	if len(problems) > 0 {
		fmt.Fprintf(os.Stderr, "doccheck: %d dangling reference(s)\n", len(problems))
		os.Exit(1)
	}
}
