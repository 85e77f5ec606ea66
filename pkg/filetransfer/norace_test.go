//go:build !race

package filetransfer_test

const raceEnabled = false
