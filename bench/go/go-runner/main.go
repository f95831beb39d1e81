// Command gatehouse-bench-go-runner is the official Apache APISIX Go plugin
// runner with two trivial plugins, used as a yardstick for `npm run bench:runner`.
//
//	noop  does nothing, so APISIX carries on with the request;
//	stop  answers every request itself: conf {"status":200,"body":"ok"}.
//
// It reads APISIX_LISTEN_ADDRESS (unix:/path) and APISIX_CONF_EXPIRE_TIME
// from the environment, like any ext-plugin runner started by APISIX.
package main

import (
	"encoding/json"
	"net/http"
	"os"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
	"github.com/apache/apisix-go-plugin-runner/pkg/log"
	"github.com/apache/apisix-go-plugin-runner/pkg/plugin"
	"github.com/apache/apisix-go-plugin-runner/pkg/runner"
	"go.uber.org/zap/zapcore"
)

// Noop lets every request through untouched.
type Noop struct{ plugin.DefaultPlugin }

func (*Noop) Name() string                             { return "noop" }
func (*Noop) ParseConf(in []byte) (interface{}, error) { return nil, nil }

// Stop answers every request with a fixed status and body.
type Stop struct{ plugin.DefaultPlugin }

type stopConf struct {
	Status int    `json:"status"`
	Body   string `json:"body"`
}

func (*Stop) Name() string { return "stop" }

func (*Stop) ParseConf(in []byte) (interface{}, error) {
	conf := stopConf{Status: http.StatusOK}
	err := json.Unmarshal(in, &conf)
	return conf, err
}

func (*Stop) RequestFilter(conf interface{}, w http.ResponseWriter, r pkgHTTP.Request) {
	c := conf.(stopConf)
	w.WriteHeader(c.Status)
	if _, err := w.Write([]byte(c.Body)); err != nil {
		log.Errorf("stop: write: %s", err)
	}
}

func main() {
	cfg := runner.RunnerConfig{LogLevel: zapcore.WarnLevel, LogOutput: os.Stderr}
	// Set the logger up before registering, so that nothing goes to stdout.
	log.NewLogger(cfg.LogLevel, cfg.LogOutput)
	for _, p := range []plugin.Plugin{&Noop{}, &Stop{}} {
		if err := plugin.RegisterPlugin(p); err != nil {
			log.Fatalf("register plugin %s: %s", p.Name(), err)
		}
	}
	runner.Run(cfg)
}
