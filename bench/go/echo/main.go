// Command gatehouse-ext-plugin-echo is the floor for `npm run bench:runner`:
// a bare APISIX ext-plugin server that does no work at all. It answers every
// PrepareConf with token 1 and every HTTPReqCall with the request's id and
// no action, so a load generator measures only framing, FlatBuffers and the
// Unix socket. Any other message type closes the connection.
package main

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"

	hrc "github.com/api7/ext-plugin-proto/go/A6/HTTPReqCall"
	pc "github.com/api7/ext-plugin-proto/go/A6/PrepareConf"
	flatbuffers "github.com/google/flatbuffers/go"
)

const (
	rpcPrepareConf = 1
	rpcHTTPReqCall = 2
)

func main() {
	socket := flag.String("socket", "", "Unix socket path to listen on (required)")
	flag.Parse()
	if *socket == "" {
		fmt.Fprintln(os.Stderr, "echo: -socket is required")
		os.Exit(2)
	}

	_ = os.Remove(*socket) // a stale socket from an earlier run
	ln, err := net.Listen("unix", *socket)
	if err != nil {
		fmt.Fprintf(os.Stderr, "echo: listen %s: %s\n", *socket, err)
		os.Exit(1)
	}
	if err := os.Chmod(*socket, 0o766); err != nil {
		fmt.Fprintf(os.Stderr, "echo: chmod %s: %s\n", *socket, err)
		os.Exit(1)
	}

	quit := make(chan os.Signal, 1)
	signal.Notify(quit, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-quit
		ln.Close()
		os.Remove(*socket)
		os.Exit(0)
	}()

	for {
		conn, err := ln.Accept()
		if err != nil {
			continue // the listener is closing; the signal handler exits
		}
		go serve(conn)
	}
}

// serve answers frames on one connection until it closes or sends something
// other than PrepareConf or HTTPReqCall.
func serve(conn net.Conn) {
	defer conn.Close()
	r := bufio.NewReaderSize(conn, 64<<10)
	b := flatbuffers.NewBuilder(256)
	var header [4]byte
	var in, out []byte
	var req hrc.Req

	for {
		if _, err := io.ReadFull(r, header[:]); err != nil {
			return
		}
		ty := header[0]
		n := int(header[1])<<16 | int(header[2])<<8 | int(header[3])
		if cap(in) < n {
			in = make([]byte, n)
		}
		in = in[:n]
		if _, err := io.ReadFull(r, in); err != nil {
			return
		}

		b.Reset()
		switch ty {
		case rpcPrepareConf:
			pc.RespStart(b)
			pc.RespAddConfToken(b, 1)
			b.Finish(pc.RespEnd(b))
		case rpcHTTPReqCall:
			req.Init(in, flatbuffers.GetUOffsetT(in))
			hrc.RespStart(b)
			hrc.RespAddId(b, req.Id())
			hrc.RespAddActionType(b, hrc.ActionNONE)
			b.Finish(hrc.RespEnd(b))
		default:
			return
		}

		payload := b.FinishedBytes()
		binary.BigEndian.PutUint32(header[:], uint32(len(payload)))
		header[0] = ty
		out = append(append(out[:0], header[:]...), payload...)
		if _, err := conn.Write(out); err != nil {
			return
		}
	}
}
