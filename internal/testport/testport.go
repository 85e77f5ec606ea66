// Package testport hands out loopback TCP ports to tests that start
// processes which bind them later (a broker's --http, a runtime's
// --base-port). Only tests use it.
//
// A port found free with net.Listen(":0") and closed again is in the
// kernel's ephemeral range, where it is not the test's: until the process
// binds it, any other program's listen on port 0 may be given it, and on
// Linux an outgoing connection may take it as its local port (connect()
// uses the even ports of the range, bind(":0") the odd ones, so the port
// after a bind(":0") one is a connection's as likely as not), and a
// closed connection keeps it for a minute in TIME_WAIT. On a machine
// running many tests that is a failure now and then: the process cannot
// bind ("address already in use").
//
// So the ports come from below the ephemeral range (Linux:
// /proc/sys/net/ipv4/ip_local_port_range), which the kernel never hands
// out by itself: between the check and the bind only a program choosing
// the same port explicitly could take it. Within one test binary no port
// is handed out twice; each binary starts at a random place, so two
// binaries running at once seldom try the same ports, and a port another
// has bound is seen taken and skipped.
package testport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// lowest is the least port handed out: below it are the well-known and
// the many registered services' ports.
const lowest = 10000

var (
	mu     sync.Mutex
	lo, hi int // the range [lo, hi) ports come from; hi == 0: not set yet
	next   int
	given  = map[int]bool{}
)

// Addr returns "127.0.0.1:<port>" with a port as Consecutive gives.
func Addr(tb testing.TB) string {
	tb.Helper()
	return "127.0.0.1:" + strconv.Itoa(Consecutive(tb, 1))
}

// Consecutive returns the first of n consecutive loopback ports that are
// free now and that no earlier call in this process returned.
func Consecutive(tb testing.TB, n int) int {
	tb.Helper()
	base, err := consecutive(n)
	if err != nil {
		tb.Fatal(err)
	}
	return base
}

func consecutive(n int) (int, error) {
	mu.Lock()
	defer mu.Unlock()
	if hi == 0 {
		lo, hi = lowest, ephemeralLow()
		if hi-lo >= 1000 {
			next = lo + rand.IntN(hi-lo)
		}
	}
	if hi-lo < 1000 {
		// The ephemeral range starts too low to leave room below it.
		return fromEphemeral(n)
	}
	for tries := 0; tries < hi-lo; tries++ {
		base := next
		if base+n > hi {
			base = lo
		}
		next = base + 1
		if free(base, n) {
			for i := range n {
				given[base+i] = true
			}
			next = base + n
			return base, nil
		}
	}
	return 0, fmt.Errorf("testport: no %d consecutive free ports in [%d, %d)", n, lo, hi)
}

// free reports whether ports base … base+n-1 were not handed out yet and
// can be bound on 127.0.0.1 now (a listener on any address holding one
// makes that bind fail too).
func free(base, n int) bool {
	for i := range n {
		if given[base+i] {
			return false
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(base+i))
		if err != nil {
			return false
		}
		l.Close()
	}
	return true
}

// ephemeralLow is the first port of the kernel's ephemeral range; 32768
// where it cannot be read (Linux's default; other systems' ranges start
// higher).
func ephemeralLow() int {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 32768
	}
	low, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return min(low, 32768)
}

// fromEphemeral is the fallback: ports the kernel picks, checked free.
func fromEphemeral(n int) (int, error) {
	for try := 0; try < 50; try++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		base := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if base+n < 65535 && !given[base] && free(base+1, n-1) {
			for i := range n {
				given[base+i] = true
			}
			return base, nil
		}
	}
	return 0, fmt.Errorf("testport: no %d consecutive free ports", n)
}
