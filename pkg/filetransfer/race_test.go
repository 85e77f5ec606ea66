//go:build race

package filetransfer_test

// raceEnabled skips the multi-GB transfers under the race detector, which
// slows them ten-fold without checking anything the smaller ones do not.
const raceEnabled = true
