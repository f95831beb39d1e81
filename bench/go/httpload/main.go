// Command gatehouse-http-load is the HTTP load generator for
// `npm run bench:gateway`: N keep-alive connections to one URL, one request
// at a time on each (a closed loop, like the benchmarks' other drivers), and
// one JSON line on stdout with throughput, latency and every status seen.
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
	"math"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type headerFlags []string

func (h *headerFlags) String() string { return strings.Join(*h, ", ") }

func (h *headerFlags) Set(s string) error {
	name, value, ok := strings.Cut(s, ":")
	if !ok || strings.TrimSpace(name) == "" {
		return fmt.Errorf("want \"name: value\", got %q", s)
	}
	*h = append(*h, strings.TrimSpace(name)+": "+strings.TrimSpace(value))
	return nil
}

type result struct {
	// Calls counted (after the warm-up) and their rate.
	Calls          int     `json:"calls"`
	Seconds        float64 `json:"seconds"`
	CallsPerSecond float64 `json:"callsPerSecond"`
	// Every answer, warm-up included: what the server served while it ran.
	Served int `json:"served"`
	// Answers with another status than -status, and broken connections.
	Errors     int            `json:"errors"`
	Statuses   map[string]int `json:"statuses"`
	Reconnects int            `json:"reconnects"`
	P50Us      float64        `json:"p50Us"`
	P99Us      float64        `json:"p99Us"`
	P999Us     float64        `json:"p999Us"`
	// This process's own CPU time (user + system) over the answers it read.
	CPUMicrosPerCall float64 `json:"cpuMicrosPerCall"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "http-load: "+format+"\n", args...)
	os.Exit(1)
}

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
	for {
		t0 := time.Now()
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
				} else {
					w.samples = append(w.samples, t1.Sub(t0).Nanoseconds())
				}
			}
			if closing { // nginx's keepalive_requests: a new connection, as a client would
				if w.dial() != nil {
					w.errors++
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

func percentileUs(sorted []int64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	if i < 0 {
		i = 0
	}
	return float64(sorted[i]) / 1e3
}

func main() {
	var headers headerFlags
	target := flag.String("url", "", "URL to call (http only, required)")
	method := flag.String("method", "GET", "request method")
	body := flag.String("body", "", "request body")
	expect := flag.Int("status", 200, "the status every answer must have")
	conns := flag.Int("connections", 8, "concurrent connections, one goroutine each")
	seconds := flag.Float64("seconds", 5, "measured duration in seconds")
	warmup := flag.Float64("warmup", 0.5, "seconds of calls made before measuring (served, not counted)")
	flag.Var(&headers, "header", "request header \"name: value\" (repeatable)")
	flag.Parse()

	u, err := url.Parse(*target)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		fail("-url must be an http:// URL, got %q", *target)
	}
	if *conns < 1 || *seconds <= 0 || *warmup < 0 {
		fail("-connections must be >= 1, -seconds > 0, -warmup >= 0")
	}
	var req strings.Builder
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: gatehouse-http-load\r\n", strings.ToUpper(*method), u.RequestURI(), u.Host)
	for _, h := range headers {
		req.WriteString(h + "\r\n")
	}
	if *body != "" || *method != "GET" {
		fmt.Fprintf(&req, "Content-Length: %d\r\n", len(*body))
	}
	req.WriteString("\r\n" + *body)

	start := time.Now()
	measureFrom := start.Add(time.Duration(*warmup * float64(time.Second)))
	deadline := measureFrom.Add(time.Duration(*seconds * float64(time.Second)))
	capacity := int(math.Min(*seconds*100_000, 20_000_000) / float64(*conns))
	workers := make([]*worker, *conns)
	for i := range workers {
		w := &worker{address: u.Host, request: []byte(req.String()), expect: *expect, statuses: map[int]int{}, samples: make([]int64, 0, capacity)}
		if err := w.dial(); err != nil {
			fail("connect %s: %s", u.Host, err)
		}
		workers[i] = w
	}
	cpuBefore := cpuMicros()
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func(w *worker) {
			defer wg.Done()
			w.run(measureFrom, deadline)
		}(w)
	}
	wg.Wait()
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
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	res.Calls = len(all)
	if end.After(measureFrom) {
		res.Seconds = end.Sub(measureFrom).Seconds()
		res.CallsPerSecond = float64(res.Calls) / res.Seconds
	}
	res.P50Us = percentileUs(all, 0.50)
	res.P99Us = percentileUs(all, 0.99)
	res.P999Us = percentileUs(all, 0.999)
	if res.Served > 0 {
		res.CPUMicrosPerCall = cpu / float64(res.Served)
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}
