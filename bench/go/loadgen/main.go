// Command gatehouse-ext-plugin-load is the load generator for
// `npm run bench:runner`: it drives an APISIX ext-plugin runner over its Unix
// socket the way APISIX does (PrepareConf once, then HTTPReqCall after
// HTTPReqCall), and prints one JSON line with throughput and latency.
//
// It is built so as not to be the bottleneck: every connection builds its
// request once and only patches the id in place per call, reads answers into
// a reused buffer and records latencies into a preallocated slice.
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"gatehouse/bench-go/internal/load"
	"io"
	"math"
	"net"
	"os"
	"strings"
	"time"

	"github.com/api7/ext-plugin-proto/go/A6"
	errpb "github.com/api7/ext-plugin-proto/go/A6/Err"
	hrc "github.com/api7/ext-plugin-proto/go/A6/HTTPReqCall"
	pc "github.com/api7/ext-plugin-proto/go/A6/PrepareConf"
	flatbuffers "github.com/google/flatbuffers/go"
)

const (
	rpcError       = 0
	rpcPrepareConf = 1
	rpcHTTPReqCall = 2
	maxPayload     = 1<<24 - 1
)

// entry is a name and a value: a header, a conf entry.
type entry = load.Header

type result struct {
	load.Summary
	Errors    int    `json:"errors"`
	ConfToken uint32 `json:"confToken"`
}

var fail = load.Failer("ext-plugin-load")

func main() {
	var extra load.Headers
	socket := flag.String("socket", "", "runner's Unix socket path (required)")
	conns := flag.Int("connections", 8, "concurrent connections, one goroutine each")
	seconds := flag.Float64("seconds", 5, "measured duration in seconds")
	warmup := flag.Float64("warmup", 0.5, "seconds of calls made before measuring (not counted)")
	confJSON := flag.String("conf", `[{"name":"noop","value":"{}"}]`, "plugin conf: JSON array of {name, value}")
	path := flag.String("path", "/llm/v1/chat/completions", "request path")
	method := flag.String("method", "GET", "request method")
	rate := flag.Float64("rate", 0, "calls per second over all connections, each connection on its own fixed schedule (0: back to back, as fast as answered)")
	distinct := flag.Bool("distinct-paths", false, "make every call's path distinct: -path plus \"/\" and 8 hex digits, rewritten in place per call (inputs that never repeat)")
	flag.Var(&extra, "header", "extra request header \"name: value\" (repeatable)")
	flag.Parse()

	if *socket == "" {
		fail("-socket is required")
	}
	if *conns < 1 || *seconds <= 0 || *warmup < 0 || *rate < 0 {
		fail("-connections must be >= 1, -seconds > 0, -warmup >= 0, -rate >= 0")
	}
	var conf []entry
	if err := json.Unmarshal([]byte(*confJSON), &conf); err != nil {
		fail("-conf: %s", err)
	}
	m, ok := A6.EnumValuesMethod[strings.ToUpper(*method)]
	if !ok {
		fail("-method: unknown method %q", *method)
	}

	token, err := prepare(*socket, conf)
	if err != nil {
		fail("prepare conf: %s", err)
	}

	headers := append([]entry{
		{Name: "host", Value: "api.example.com"},
		{Name: "content-type", Value: "application/json"},
		{Name: "user-agent", Value: "bench"},
		{Name: "accept", Value: "*/*"},
	}, extra...)

	callPath := *path
	if *distinct {
		callPath += "/00000000"
	}
	var workers []*worker
	dialErrors := 0
	for i := 0; i < *conns; i++ {
		c, err := net.Dial("unix", *socket)
		if err != nil {
			fmt.Fprintf(os.Stderr, "ext-plugin-load: connect: %s\n", err)
			dialErrors++
			continue
		}
		defer c.Close()
		w := &worker{
			conn:  c,
			r:     bufio.NewReaderSize(c, 64<<10),
			frame: buildReqCall(callPath, m, headers, token),
			id:    uint32(i + 1),
			step:  uint32(*conns),
		}
		w.req = hrc.GetRootAsReq(w.frame[4:], 0)
		if *distinct {
			// A view into the frame: the last 8 bytes of the path, patched per call.
			p := w.req.Path()
			w.pathSuffix = p[len(p)-8:]
		}
		workers = append(workers, w)
	}
	if len(workers) == 0 {
		fail("no connection could be opened")
	}

	start := time.Now()
	measureFrom := start.Add(time.Duration(*warmup * float64(time.Second)))
	deadline := measureFrom.Add(time.Duration(*seconds * float64(time.Second)))
	// Room for about 200k calls per second per connection before growing.
	capacity := int(math.Min(*seconds*200_000, 50_000_000) / float64(len(workers)))

	for i, w := range workers {
		w.samples = make([]int64, 0, capacity)
		if *rate > 0 {
			// One call every connections/rate seconds on each connection, the
			// connections' schedules spread evenly over one period.
			w.period = time.Duration(float64(len(workers)) / *rate * float64(time.Second))
			w.due = start.Add(w.period * time.Duration(i) / time.Duration(len(workers)))
		}
	}
	load.Each(len(workers), func(i int) { workers[i].run(measureFrom, deadline) })

	res := result{Errors: dialErrors, ConfToken: token}
	var all []int64
	var end time.Time
	for _, w := range workers {
		all = append(all, w.samples...)
		res.Errors += w.errors
		if w.end.After(end) {
			end = w.end
		}
	}
	res.Summary = load.Summarize(all, measureFrom, end)

	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}

// frame prefixes a payload with the ext-plugin header: type, 3-byte length.
func frame(ty byte, payload []byte) []byte {
	out := make([]byte, 4+len(payload))
	binary.BigEndian.PutUint32(out, uint32(len(payload)))
	out[0] = ty
	copy(out[4:], payload)
	return out
}

// readFrame reads one whole frame into buf (grown as needed).
func readFrame(r *bufio.Reader, buf []byte) (byte, []byte, error) {
	var header [4]byte
	if _, err := io.ReadFull(r, header[:]); err != nil {
		return 0, buf, err
	}
	n := int(header[1])<<16 | int(header[2])<<8 | int(header[3])
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	_, err := io.ReadFull(r, buf)
	return header[0], buf, err
}

func textEntries(b *flatbuffers.Builder, entries []entry) []flatbuffers.UOffsetT {
	offs := make([]flatbuffers.UOffsetT, len(entries))
	for i, e := range entries {
		name, value := b.CreateString(e.Name), b.CreateString(e.Value)
		A6.TextEntryStart(b)
		A6.TextEntryAddName(b, name)
		A6.TextEntryAddValue(b, value)
		offs[i] = A6.TextEntryEnd(b)
	}
	return offs
}

func vectorOf(b *flatbuffers.Builder, offs []flatbuffers.UOffsetT) flatbuffers.UOffsetT {
	b.StartVector(4, len(offs), 4)
	for i := len(offs) - 1; i >= 0; i-- {
		b.PrependUOffsetT(offs[i])
	}
	return b.EndVector(len(offs))
}

// prepare sends PrepareConf on a connection of its own and returns the token.
func prepare(socket string, conf []entry) (uint32, error) {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return 0, err
	}
	defer c.Close()

	b := flatbuffers.NewBuilder(1024)
	confVec := vectorOf(b, textEntries(b, conf))
	key := b.CreateString("bench")
	pc.ReqStart(b)
	pc.ReqAddConf(b, confVec)
	pc.ReqAddKey(b, key)
	b.Finish(pc.ReqEnd(b))
	if _, err := c.Write(frame(rpcPrepareConf, b.FinishedBytes())); err != nil {
		return 0, err
	}

	ty, buf, err := readFrame(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	switch ty {
	case rpcPrepareConf:
		return pc.GetRootAsResp(buf, 0).ConfToken(), nil
	case rpcError:
		return 0, fmt.Errorf("runner answered error %s", errpb.GetRootAsResp(buf, 0).Code())
	default:
		return 0, fmt.Errorf("runner answered unexpected type %d", ty)
	}
}

// buildReqCall builds a whole HTTPReqCall frame once. The id is set non-zero
// so that FlatBuffers stores the field and MutateId can patch it later.
func buildReqCall(path string, m A6.Method, headers []entry, token uint32) []byte {
	b := flatbuffers.NewBuilder(1024)
	ip := b.CreateByteVector([]byte{127, 0, 0, 1})
	p := b.CreateString(path)
	args := vectorOf(b, textEntries(b, []entry{{Name: "stream", Value: "false"}}))
	hdrs := vectorOf(b, textEntries(b, headers))
	hrc.ReqStart(b)
	hrc.ReqAddId(b, 1)
	hrc.ReqAddSrcIp(b, ip)
	hrc.ReqAddPath(b, p)
	hrc.ReqAddArgs(b, args)
	hrc.ReqAddHeaders(b, hdrs)
	hrc.ReqAddMethod(b, m)
	hrc.ReqAddConfToken(b, token)
	b.Finish(hrc.ReqEnd(b))
	payload := b.FinishedBytes()
	if len(payload) > maxPayload {
		fail("request too large: %d bytes", len(payload))
	}
	return frame(rpcHTTPReqCall, payload)
}

type worker struct {
	conn     net.Conn
	r        *bufio.Reader
	frame    []byte   // the whole request frame, patched in place
	req      *hrc.Req // view of frame[4:] used to patch the id
	id, step uint32   // ids are distinct across connections
	samples  []int64  // latencies in ns of counted calls
	errors   int
	end      time.Time     // when the last call finished
	period   time.Duration // with -rate: time between this connection's calls (0: back to back)
	due      time.Time     // with -rate: when the next call is due
	// with -distinct-paths: the path's last 8 bytes inside frame, set to the call's id in hex
	pathSuffix []byte
}

// run makes calls back to back (or, with a period, each when it is due, at
// once when late) until the deadline; calls that start before measureFrom are
// warm-up and not counted.
func (w *worker) run(measureFrom, deadline time.Time) {
	var buf []byte
	var resp hrc.Resp
	for {
		if w.period > 0 {
			if wait := time.Until(w.due); wait > 0 {
				time.Sleep(wait)
			}
			w.due = w.due.Add(w.period)
		}
		id := w.id
		w.id += w.step
		if !w.req.MutateId(id) {
			fail("cannot patch the request id")
		}
		if w.pathSuffix != nil {
			const hex = "0123456789abcdef"
			for i := 7; i >= 0; i-- {
				w.pathSuffix[i] = hex[(id>>(4*(7-i)))&0xf]
			}
		}
		t0 := time.Now()
		_, err := w.conn.Write(w.frame)
		var ty byte
		if err == nil {
			ty, buf, err = readFrame(w.r, buf)
		}
		t1 := time.Now()
		w.end = t1
		counted := !t0.Before(measureFrom)
		if err != nil {
			w.errors++ // the runner closed the connection or broke the frame
			return
		}
		if counted {
			if ty == rpcHTTPReqCall {
				resp.Init(buf, flatbuffers.GetUOffsetT(buf))
			}
			if ty != rpcHTTPReqCall || resp.Id() != id {
				w.errors++
			} else {
				w.samples = append(w.samples, t1.Sub(t0).Nanoseconds())
			}
		}
		if !t1.Before(deadline) {
			return
		}
	}
}
