// Package gpu finds the GPU box's GPUs and reads their memory and
// utilisation, by asking nvidia-smi (or the command given instead), or
// from an explicit list.
package gpu

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// GPU is one device as nvidia-smi reports it.
type GPU struct {
	Index int
	Name  string
	UUID  string
	// MemoryTotal and MemoryUsed are in bytes; Utilization in percent.
	MemoryTotal int64
	MemoryUsed  int64
	Utilization float64
}

// DefaultQuery is the nvidia-smi command the agent runs to discover GPUs
// and to read their memory and utilisation.
var DefaultQuery = []string{
	"nvidia-smi",
	"--query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu",
	"--format=csv,noheader,nounits",
}

// ErrNoQuery means the GPU query command is not installed (no NVIDIA
// driver on this box).
var ErrNoQuery = errors.New("GPU query command not found")

// Query runs cmd (DefaultQuery when empty) and parses its output.
func Query(ctx context.Context, cmd []string) ([]GPU, error) {
	if len(cmd) == 0 {
		cmd = DefaultQuery
	}
	if _, err := exec.LookPath(cmd[0]); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrNoQuery, cmd[0])
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	c := exec.CommandContext(ctx, cmd[0], cmd[1:]...)
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %s", cmd[0], err, strings.TrimSpace(stderr.String()))
	}
	return ParseQuery(out)
}

// ParseQuery parses nvidia-smi's
// --query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu
// --format=csv,noheader,nounits output. Memory is in MiB there. A reading
// nvidia-smi cannot give ("[N/A]", "[Not Supported]") is left zero.
func ParseQuery(out []byte) ([]GPU, error) {
	r := csv.NewReader(bytes.NewReader(out))
	r.TrimLeadingSpace = true
	r.FieldsPerRecord = -1
	var gpus []GPU
	for line := 1; ; line++ {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("GPU query line %d: %w", line, err)
		}
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue
		}
		if len(rec) < 6 {
			return nil, fmt.Errorf("GPU query line %d: want 6 fields, got %d", line, len(rec))
		}
		for i := range rec {
			rec[i] = strings.TrimSpace(rec[i])
		}
		idx, err := strconv.Atoi(rec[0])
		if err != nil {
			return nil, fmt.Errorf("GPU query line %d: index %q", line, rec[0])
		}
		num := func(s string) float64 {
			v, err := strconv.ParseFloat(s, 64)
			if err != nil {
				return 0
			}
			return v
		}
		gpus = append(gpus, GPU{
			Index: idx, Name: rec[1], UUID: rec[2],
			MemoryTotal: int64(num(rec[3]) * (1 << 20)),
			MemoryUsed:  int64(num(rec[4]) * (1 << 20)),
			Utilization: num(rec[5]),
		})
	}
	return gpus, nil
}

// ParseList parses an explicit GPU list ("0,1,2" or "4": a count) for
// boxes where nvidia-smi is not to be asked.
func ParseList(s string) ([]GPU, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("empty GPU list")
	}
	if !strings.Contains(s, ",") {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("GPU list %q: want a count or comma-separated indexes", s)
		}
		gpus := make([]GPU, n)
		for i := range gpus {
			gpus[i] = GPU{Index: i, Name: "GPU " + strconv.Itoa(i)}
		}
		return gpus, nil
	}
	var gpus []GPU
	seen := map[int]bool{}
	for _, f := range strings.Split(s, ",") {
		i, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || i < 0 || seen[i] {
			return nil, fmt.Errorf("GPU list %q: bad or repeated index %q", s, f)
		}
		seen[i] = true
		gpus = append(gpus, GPU{Index: i, Name: "GPU " + strconv.Itoa(i)})
	}
	return gpus, nil
}

// Describe completes an explicit GPU list (ParseList) with what
// nvidia-smi said of the same indexes (name, UUID), when it said anything:
// the slots are the ones given, their readings come from nvidia-smi.
func Describe(given, listed []GPU) []GPU {
	out := append([]GPU(nil), given...)
	for i := range out {
		for _, l := range listed {
			if l.Index == out[i].Index {
				out[i].Name, out[i].UUID = l.Name, l.UUID
			}
		}
	}
	return out
}
