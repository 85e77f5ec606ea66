package transfertest

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ProcStatus reads a "kB" field such as VmRSS or VmHWM of /proc/<pid>/status
// (pid 0: this process) in bytes.
func ProcStatus(pid int, field string) (int64, error) {
	path := "/proc/self/status"
	if pid > 0 {
		path = "/proc/" + strconv.Itoa(pid) + "/status"
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != field {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("transfertest: %s: %w", field, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("transfertest: no %s in %s", field, path)
}

// RSSSampler records the peak resident set size of a process by polling
// VmRSS. (VmHWM would do for the process's whole life, but a test wants the
// growth during one transfer, after set-up allocated what it needed.)
type RSSSampler struct {
	pid  int
	base int64

	mu   sync.Mutex
	peak int64
	stop chan struct{}
	done chan struct{}
}

// StartRSSSampler samples pid (0: this process) every interval.
func StartRSSSampler(pid int, interval time.Duration) *RSSSampler {
	s := &RSSSampler{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	s.base, _ = ProcStatus(pid, "VmRSS")
	s.peak = s.base
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			s.sample()
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *RSSSampler) sample() {
	if v, err := ProcStatus(s.pid, "VmRSS"); err == nil {
		s.mu.Lock()
		s.peak = max(s.peak, v)
		s.mu.Unlock()
	}
}

// Stop ends sampling and returns the RSS at start and the peak seen.
func (s *RSSSampler) Stop() (base, peak int64) {
	select {
	case <-s.stop:
	default:
		s.sample()
		close(s.stop)
	}
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.base, s.peak
}
