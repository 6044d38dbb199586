package gateway_test

import (
	"os"
	"syscall"
	"testing"
)

// TestMain turns on grpc-go's SPIFFE trust bundle maps (gRFC A87) for
// the proxyless test: grpc-go reads the switch once, at package init, so
// the test binary re-executes itself with it set.
func TestMain(m *testing.M) {
	const env = "GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE"
	if os.Getenv(env) != "true" {
		os.Setenv(env, "true")
		exe, err := os.Executable()
		if err == nil {
			err = syscall.Exec(exe, os.Args, os.Environ())
		}
		panic(err) // Exec returns only on failure
	}
	os.Exit(m.Run())
}
