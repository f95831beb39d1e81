// Command gatehouse-bench-upstream is the upstream of `npm run bench:gateway`:
// an HTTP server that does as little as it can, so that the gateway, not the
// upstream, is what is measured. It answers 200 "ok" to everything, except
// POST .../chat/completions, which it answers with a fixed, whole
// (non-streamed) OpenAI chat completion carrying `usage`, as an LLM would:
// the LLM route's budget is settled from it.
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
)

const completion = `{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"llama-3",` +
	`"choices":[{"index":0,"message":{"role":"assistant","content":"Gatehouse puts policy in front of APIs and LLMs."},"finish_reason":"stop"}],` +
	`"usage":{"prompt_tokens":12,"completion_tokens":10,"total_tokens":22}}`

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on")
	flag.Parse()
	ok := []byte("ok")
	chat := []byte(completion)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		h := w.Header()
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/chat/completions") {
			h.Set("Content-Type", "application/json")
			h.Set("Content-Length", strconv.Itoa(len(chat)))
			_, _ = w.Write(chat)
			return
		}
		h.Set("Content-Type", "text/plain")
		h.Set("Content-Length", "2")
		_, _ = w.Write(ok)
	})
	if err := (&http.Server{Addr: *addr, Handler: handler}).ListenAndServe(); err != nil {
		fmt.Fprintf(os.Stderr, "upstream: %s\n", err)
		os.Exit(1)
	}
}
