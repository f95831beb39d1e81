// Command opa is OPA's own CLI, built from a pinned module version so that
// every machine compiles policies with the same compiler (see go.mod).
package main

import (
	"os"

	"github.com/open-policy-agent/opa/cmd"
)

func main() {
	if err := cmd.RootCommand.Execute(); err != nil {
		os.Exit(1)
	}
}
