// Package diskstore is the file store on mello's own disk: participants'
// files in each instance's input, output and temp folders
// (data/instances/<user>/…, pkg/datalayout), written under a temporary name
// and renamed into place, so a reader never sees half a file and a crash
// leaves none.
package diskstore
