package gpu

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu
// --format=csv,noheader,nounits on an 8× H200 box: memory in MiB.
func TestParseGPUQueryH200(t *testing.T) {
	t.Parallel()
	out, err := os.ReadFile(filepath.Join("testdata", "nvidia-smi-h200x8.csv"))
	require.NoError(t, err)
	gpus, err := ParseQuery(out)
	require.NoError(t, err)
	require.Len(t, gpus, 8)
	for i, g := range gpus {
		require.Equal(t, i, g.Index)
		require.Equal(t, "NVIDIA H200", g.Name)
		require.Regexp(t, `^GPU-[0-9a-f-]{36}$`, g.UUID)
		require.EqualValues(t, 143771<<20, g.MemoryTotal)
	}
	require.EqualValues(t, 81526<<20, gpus[0].MemoryUsed)
	require.EqualValues(t, 98, gpus[0].Utilization)
	require.EqualValues(t, 120311<<20, gpus[3].MemoryUsed)
	require.EqualValues(t, 100, gpus[3].Utilization)
	require.Zero(t, gpus[7].MemoryUsed)
}

// Readings nvidia-smi cannot give ([N/A], [Not Supported]: MIG, some
// boards) are left zero; CRLF line ends are fine.
func TestParseGPUQueryUnavailableReadings(t *testing.T) {
	t.Parallel()
	out, err := os.ReadFile(filepath.Join("testdata", "nvidia-smi-na-crlf.csv"))
	require.NoError(t, err)
	gpus, err := ParseQuery(out)
	require.NoError(t, err)
	require.Len(t, gpus, 2)
	require.Equal(t, "NVIDIA A100-SXM4-80GB", gpus[0].Name)
	require.EqualValues(t, 81920<<20, gpus[0].MemoryTotal)
	require.EqualValues(t, 1024<<20, gpus[0].MemoryUsed)
	require.Zero(t, gpus[0].Utilization)
	require.Zero(t, gpus[1].MemoryTotal)
	require.Zero(t, gpus[1].MemoryUsed)
	require.EqualValues(t, 12, gpus[1].Utilization)
}

func TestParseGPUQueryRefusesGarbage(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{
		"No devices were found\n",                  // nvidia-smi's message (exit 6) on a box without GPUs
		"0, NVIDIA H200, GPU-x, 143771\n",          // fields missing: another --query-gpu
		"zero, NVIDIA H200, GPU-x, 143771, 0, 0\n", // not an index
	} {
		_, err := ParseQuery([]byte(bad))
		require.Error(t, err, bad)
	}
	gpus, err := ParseQuery([]byte("\n"))
	require.NoError(t, err)
	require.Empty(t, gpus)
}

func TestParseGPUList(t *testing.T) {
	t.Parallel()
	gpus, err := ParseList("4")
	require.NoError(t, err)
	require.Len(t, gpus, 4)
	require.Equal(t, 3, gpus[3].Index)
	gpus, err = ParseList(" 1, 3 ")
	require.NoError(t, err)
	require.Equal(t, []int{1, 3}, []int{gpus[0].Index, gpus[1].Index})
	for _, bad := range []string{"", "0", "-1", "x", "0,0", "1,,2", "1,-2"} {
		_, err := ParseList(bad)
		require.Error(t, err, bad)
	}
}

// Explicit GPUs take their names and UUIDs from nvidia-smi when it lists
// the same indexes.
func TestDescribeGPUs(t *testing.T) {
	t.Parallel()
	given, err := ParseList("2,5")
	require.NoError(t, err)
	out, err := os.ReadFile(filepath.Join("testdata", "nvidia-smi-h200x8.csv"))
	require.NoError(t, err)
	listed, err := ParseQuery(out)
	require.NoError(t, err)
	got := Describe(given, listed)
	require.Equal(t, 2, got[0].Index)
	require.Equal(t, "NVIDIA H200", got[0].Name)
	require.Equal(t, listed[5].UUID, got[1].UUID)
	require.Equal(t, "GPU 2", given[0].Name, "the given list is not changed")
	require.Equal(t, given, Describe(given, nil))
}
