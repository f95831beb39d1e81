// Package load holds what the benchmarks' load generators share: repeated
// "name: value" header flags, nearest-rank percentiles of latency samples,
// and the way a generator gives up on bad flags.
package load

import (
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// Header is one -header flag, its name trimmed and lower-cased.
type Header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Headers collects repeated -header "name: value" flags (flag.Value).
type Headers []Header

func (h *Headers) String() string { return fmt.Sprint(*h) }

func (h *Headers) Set(s string) error {
	name, value, ok := strings.Cut(s, ":")
	if !ok || strings.TrimSpace(name) == "" {
		return fmt.Errorf("want \"name: value\", got %q", s)
	}
	*h = append(*h, Header{strings.ToLower(strings.TrimSpace(name)), strings.TrimSpace(value)})
	return nil
}

// PercentileUs returns the nearest-rank percentile p (0..1) of sorted
// nanosecond samples, in µs; 0 without samples.
func PercentileUs(sorted []int64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	if i < 0 {
		i = 0
	}
	return float64(sorted[i]) / 1e3
}

// Failer prints "<name>: <message>" on stderr and exits 1.
func Failer(name string) func(format string, args ...interface{}) {
	return func(format string, args ...interface{}) {
		fmt.Fprintf(os.Stderr, name+": "+format+"\n", args...)
		os.Exit(1)
	}
}

// Summary is what every generator reports of the calls it counted (after
// the warm-up): how many, their rate, and their latency percentiles.
type Summary struct {
	Calls          int     `json:"calls"`
	Seconds        float64 `json:"seconds"`
	CallsPerSecond float64 `json:"callsPerSecond"`
	P50Us          float64 `json:"p50Us"`
	P99Us          float64 `json:"p99Us"`
	P999Us         float64 `json:"p999Us"`
}

// Summarize sorts the counted calls' latencies (ns) in place and sums them
// up over the time from measureFrom to end.
func Summarize(latencies []int64, measureFrom, end time.Time) Summary {
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	s := Summary{Calls: len(latencies)}
	if end.After(measureFrom) {
		s.Seconds = end.Sub(measureFrom).Seconds()
		s.CallsPerSecond = float64(s.Calls) / s.Seconds
	}
	s.P50Us = PercentileUs(latencies, 0.50)
	s.P99Us = PercentileUs(latencies, 0.99)
	s.P999Us = PercentileUs(latencies, 0.999)
	return s
}

// Each runs run(i) for every i below n, each on its own goroutine, and
// returns when all have.
func Each(n int, run func(i int)) {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			run(i)
		}(i)
	}
	wg.Wait()
}
