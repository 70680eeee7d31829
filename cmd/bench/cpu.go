package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times (100 on Linux).
const clockTicks = 100

// procCPU returns a process's own CPU seconds and those of its reaped children, and its
// parent, from /proc/<pid>/stat.
func procCPU(pid int) (own, children float64, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, 0, false
	}
	s := string(b)
	// The command name may hold spaces; fields start after the last ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, 0, false
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
	if len(f) < 15 {
		return 0, 0, 0, false
	}
	num := func(k int) float64 { v, _ := strconv.ParseFloat(f[k-3], 64); return v / clockTicks }
	ppid, _ = strconv.Atoi(f[4-3])
	return num(14) + num(15), num(16) + num(17), ppid, true
}

// serverCPU is the CPU seconds PostgreSQL has used so far: the postmaster, its live children
// (backends call setsid, so they are found by parent, not process group) and those reaped.
func serverCPU(dataDir string) float64 {
	b, err := os.ReadFile(filepath.Join(dataDir, "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	pm, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if pm == 0 {
		return 0
	}
	total := 0.0
	if own, reaped, _, ok := procCPU(pm); ok {
		total += own + reaped
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if own, _, ppid, ok := procCPU(pid); ok && ppid == pm {
			total += own
		}
	}
	return total
}
