// Command strait is the one binary of Strait: servers, agents, gateways,
// the demo, and the CLI verbs. See `strait --help`.
package main

import (
	"os"

	"github.com/straitmesh/strait/cmd/strait/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr)) }
