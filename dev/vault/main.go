// Vault links the Snowflake database plugin, whose package init parses a
// bundled CA certificate with a negative serial number; Go 1.23 and later
// reject those by default and the init panics, so restore the old parsing.
// (A //go:debug line only counts above the package clause.)

//go:debug x509negativeserial=1

// Command vault is HashiCorp Vault's own CLI and server, built from a pinned,
// MPL-2.0 licensed module version (see go.mod) so that tests and `npm start`
// run against the real HTTP API rather than an imitation of it.
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() {
	os.Exit(command.Run(os.Args[1:]))
}
