// Command gatehouse-http-load is the HTTP load generator for
// `npm run bench:gateway`: N keep-alive connections to one URL, one request
// at a time on each (a closed loop, like the benchmarks' other drivers), and
// one JSON line on stdout with throughput, latency and every status seen.
//
// With -rate it paces instead (for `npm run bench:soak`): an open loop at that
// many requests per second over all connections, each connection sending on
// its own fixed schedule (one request every connections/rate seconds, the
// connections staggered). A request held back by the answer before it has
// its latency measured from the time it was due to be sent, not from when the
// connection was free to send it, so a stall shows up in the latency of every
// request it held back (no coordinated omission); one sent on time, from when
// it was sent (a sleeping timer's lateness is not the server's). A
// connection that falls behind sends its overdue requests back to back until
// it is on schedule again. With -interval, one JSON line per interval (by due
// time) comes before the final line: its calls, errors, p50 and p99.
//
// It is built so as not to be the bottleneck: each connection writes a
// request built once, reads the answer through a reused buffer (status line,
// headers, a Content-Length or chunked body, discarded) and records its
// latency into a preallocated slice. The gateway's no-plugin route is the
// proof: it must go well above every other route driven the same way.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"gatehouse/bench-go/internal/load"
	"math"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type result struct {
	// Calls counted (after the warm-up), their rate and latency.
	load.Summary
	// Every answer, warm-up included: what the server served while it ran.
	Served int `json:"served"`
	// Answers with another status than -status, and broken connections.
	Errors     int            `json:"errors"`
	Statuses   map[string]int `json:"statuses"`
	Reconnects int            `json:"reconnects"`
	// This process's own CPU time (user + system) over the answers it read.
	CPUMicrosPerCall float64 `json:"cpuMicrosPerCall"`
}

var fail = load.Failer("http-load")

type worker struct {
	address  string
	request  []byte
	conn     net.Conn
	r        *bufio.Reader
	expect   int
	samples  []int64 // latencies in ns of counted calls
	served   int
	errors   int
	statuses map[int]int
	reconns  int
	end      time.Time
	// Paced (-rate): the first due time and the period; dueAt / errAt are the
	// due times (ns after start) of counted calls and of errors.
	first  time.Time
	period time.Duration
	start  time.Time
	dueAt  []int64
	errAt  []int64
}

func (w *worker) dial() error {
	if w.conn != nil {
		w.conn.Close()
	}
	c, err := net.Dial("tcp", w.address)
	if err != nil {
		return err
	}
	w.conn = c
	if w.r == nil {
		w.r = bufio.NewReaderSize(c, 64<<10)
	} else {
		w.r.Reset(c)
	}
	return nil
}

// line reads one header line without its CRLF.
func (w *worker) line() ([]byte, error) {
	l, err := w.r.ReadSlice('\n')
	if err != nil {
		return nil, err
	}
	return bytes.TrimRight(l, "\r\n"), nil
}

// readResponse reads one whole response; it returns the status and whether
// the server will close the connection.
func (w *worker) readResponse() (int, bool, error) {
	status, err := w.line()
	if err != nil {
		return 0, false, err
	}
	// "HTTP/1.1 200 OK"
	if len(status) < 12 || !bytes.HasPrefix(status, []byte("HTTP/1.")) {
		return 0, false, fmt.Errorf("bad status line %q", status)
	}
	code, err := strconv.Atoi(string(status[9:12]))
	if err != nil {
		return 0, false, fmt.Errorf("bad status line %q", status)
	}
	length, chunked, closing := -1, false, false
	for {
		l, err := w.line()
		if err != nil {
			return 0, false, err
		}
		if len(l) == 0 {
			break
		}
		name, value, _ := bytes.Cut(l, []byte(":"))
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("content-length")):
			if length, err = strconv.Atoi(string(value)); err != nil {
				return 0, false, fmt.Errorf("bad content-length %q", value)
			}
		case bytes.EqualFold(name, []byte("transfer-encoding")):
			chunked = bytes.Contains(bytes.ToLower(value), []byte("chunked"))
		case bytes.EqualFold(name, []byte("connection")):
			closing = bytes.EqualFold(value, []byte("close"))
		}
	}
	switch {
	case chunked:
		for {
			l, err := w.line()
			if err != nil {
				return 0, false, err
			}
			size, _, _ := bytes.Cut(l, []byte(";"))
			n, err := strconv.ParseInt(string(bytes.TrimSpace(size)), 16, 64)
			if err != nil {
				return 0, false, fmt.Errorf("bad chunk size %q", l)
			}
			if n == 0 {
				for { // trailers, then the empty line
					l, err := w.line()
					if err != nil {
						return 0, false, err
					}
					if len(l) == 0 {
						break
					}
				}
				break
			}
			if _, err := w.r.Discard(int(n) + 2); err != nil {
				return 0, false, err
			}
		}
	case length >= 0:
		if _, err := w.r.Discard(length); err != nil {
			return 0, false, err
		}
	case code == 204 || code == 304:
	default:
		return 0, false, fmt.Errorf("a response without length (status %d)", code)
	}
	return code, closing, nil
}

// run makes calls back to back until the deadline; calls that start before
// measureFrom are warm-up and not counted (but served).
func (w *worker) run(measureFrom, deadline time.Time) {
	for k := int64(0); ; k++ {
		t0 := time.Now()
		if w.period > 0 {
			due := w.first.Add(time.Duration(k) * w.period)
			if !due.Before(deadline) {
				return
			}
			if d := due.Sub(t0); d > 0 {
				// On time: latency from the actual send (the timer's own lateness is not the server's).
				time.Sleep(d)
				t0 = time.Now()
			} else {
				t0 = due // held back by the answer before: latency from when it was due
			}
		}
		_, err := w.conn.Write(w.request)
		var code int
		var closing bool
		if err == nil {
			code, closing, err = w.readResponse()
		}
		t1 := time.Now()
		w.end = t1
		if err != nil {
			w.errors++
			w.statuses[0]++
			w.errAt = append(w.errAt, t0.Sub(w.start).Nanoseconds())
			fmt.Fprintf(os.Stderr, "http-load: %s\n", err)
			if w.dial() != nil {
				return
			}
			w.reconns++
		} else {
			w.served++
			if !t0.Before(measureFrom) {
				w.statuses[code]++
				if code != w.expect {
					w.errors++
					w.errAt = append(w.errAt, t0.Sub(w.start).Nanoseconds())
				} else {
					w.samples = append(w.samples, t1.Sub(t0).Nanoseconds())
					w.dueAt = append(w.dueAt, t0.Sub(w.start).Nanoseconds())
				}
			}
			if closing { // nginx's keepalive_requests: a new connection, as a client would
				if w.dial() != nil {
					w.errors++
					w.errAt = append(w.errAt, t1.Sub(w.start).Nanoseconds())
					return
				}
				w.reconns++
			}
		}
		if !t1.Before(deadline) {
			return
		}
	}
}

func cpuMicros() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e3
}

func main() {
	var headers load.Headers
	target := flag.String("url", "", "URL to call (http only, required)")
	method := flag.String("method", "GET", "request method")
	body := flag.String("body", "", "request body")
	expect := flag.Int("status", 200, "the status every answer must have")
	conns := flag.Int("connections", 8, "concurrent connections, one goroutine each")
	seconds := flag.Float64("seconds", 5, "measured duration in seconds")
	warmup := flag.Float64("warmup", 0.5, "seconds of calls made before measuring (served, not counted)")
	rate := flag.Float64("rate", 0, "requests per second over all connections, paced on an open loop (0: a closed loop, as fast as answered)")
	interval := flag.Float64("interval", 0, "with -rate: seconds per interval line (calls, errors, p50, p99 by due time) before the final line (0: none)")
	flag.Var(&headers, "header", "request header \"name: value\" (repeatable)")
	flag.Parse()

	u, err := url.Parse(*target)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		fail("-url must be an http:// URL, got %q", *target)
	}
	if *conns < 1 || *seconds <= 0 || *warmup < 0 {
		fail("-connections must be >= 1, -seconds > 0, -warmup >= 0")
	}
	if *rate < 0 || *interval < 0 || (*interval > 0 && *rate == 0) {
		fail("-rate must be >= 0, -interval >= 0 and only with -rate")
	}
	var req strings.Builder
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: gatehouse-http-load\r\n", strings.ToUpper(*method), u.RequestURI(), u.Host)
	for _, h := range headers {
		req.WriteString(h.Name + ": " + h.Value + "\r\n")
	}
	if *body != "" || *method != "GET" {
		fmt.Fprintf(&req, "Content-Length: %d\r\n", len(*body))
	}
	req.WriteString("\r\n" + *body)

	start := time.Now()
	measureFrom := start.Add(time.Duration(*warmup * float64(time.Second)))
	deadline := measureFrom.Add(time.Duration(*seconds * float64(time.Second)))
	perSecond := 100_000.0
	var period time.Duration
	if *rate > 0 {
		perSecond = *rate * 1.05
		period = time.Duration(float64(*conns) / *rate * float64(time.Second))
	}
	capacity := int(math.Min(*seconds*perSecond, 20_000_000) / float64(*conns))
	workers := make([]*worker, *conns)
	for i := range workers {
		w := &worker{address: u.Host, request: []byte(req.String()), expect: *expect, statuses: map[int]int{}, samples: make([]int64, 0, capacity)}
		if period > 0 {
			w.start = start
			w.period = period
			w.first = start.Add(time.Duration(i) * period / time.Duration(*conns))
			w.dueAt = make([]int64, 0, capacity)
		}
		if err := w.dial(); err != nil {
			fail("connect %s: %s", u.Host, err)
		}
		workers[i] = w
	}
	cpuBefore := cpuMicros()
	load.Each(len(workers), func(i int) { workers[i].run(measureFrom, deadline) })
	cpu := cpuMicros() - cpuBefore

	res := result{Statuses: map[string]int{}}
	var all []int64
	var end time.Time
	for _, w := range workers {
		w.conn.Close()
		all = append(all, w.samples...)
		res.Served += w.served
		res.Errors += w.errors
		res.Reconnects += w.reconns
		for code, n := range w.statuses {
			res.Statuses[strconv.Itoa(code)] += n
		}
		if w.end.After(end) {
			end = w.end
		}
	}
	if *interval > 0 {
		printIntervals(workers, measureFrom.Sub(start), deadline.Sub(start), time.Duration(*interval*float64(time.Second)))
	}
	res.Summary = load.Summarize(all, measureFrom, end)
	if res.Served > 0 {
		res.CPUMicrosPerCall = cpu / float64(res.Served)
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}

type intervalLine struct {
	Interval int     `json:"interval"`
	FromS    float64 `json:"fromS"`
	Seconds  float64 `json:"seconds"`
	Calls    int     `json:"calls"`
	Errors   int     `json:"errors"`
	P50Us    float64 `json:"p50Us"`
	P99Us    float64 `json:"p99Us"`
	MaxUs    float64 `json:"maxUs"`
}

// printIntervals prints one JSON line per interval of the measured time, the
// calls and errors counted by the time each was due.
func printIntervals(workers []*worker, from, to, every time.Duration) {
	n := int((to - from + every - 1) / every)
	lat := make([][]int64, n)
	errs := make([]int, n)
	index := func(at int64) int {
		i := int((time.Duration(at) - from) / every)
		if i < 0 || i >= n {
			return -1
		}
		return i
	}
	for _, w := range workers {
		for j, at := range w.dueAt {
			if i := index(at); i >= 0 {
				lat[i] = append(lat[i], w.samples[j])
			}
		}
		for _, at := range w.errAt {
			if i := index(at); i >= 0 {
				errs[i]++
			}
		}
	}
	for i := 0; i < n; i++ {
		sort.Slice(lat[i], func(a, b int) bool { return lat[i][a] < lat[i][b] })
		span := every
		if end := from + time.Duration(i+1)*every; end > to {
			span = to - (from + time.Duration(i)*every)
		}
		line := intervalLine{Interval: i, FromS: (time.Duration(i) * every).Seconds(), Seconds: span.Seconds(), Calls: len(lat[i]), Errors: errs[i], P50Us: load.PercentileUs(lat[i], 0.5), P99Us: load.PercentileUs(lat[i], 0.99)}
		if len(lat[i]) > 0 {
			line.MaxUs = float64(lat[i][len(lat[i])-1]) / 1e3
		}
		out, _ := json.Marshal(line)
		fmt.Println(string(out))
	}
}
