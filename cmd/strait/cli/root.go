// Package cli implements the strait command line: one file per noun, each
// verb a cobra command. Results go to stdout (a stable JSON form with
// --json), diagnostics to stderr. Exit status: 0 success, 1 failure,
// 2 bad usage.
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane"
)

// globals are the connection flags every client verb shares.
type globals struct {
	addr, token, caFile string
	json                bool
	timeout             time.Duration
	stdout, stderr      io.Writer
}

type usageError struct{ error }

// Main runs the CLI and returns the exit status.
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return execute(ctx, args, stdout, stderr)
}

// execute runs the CLI until ctx ends and returns the exit status.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globals{stdout: stdout, stderr: stderr}
	root := newRoot(g)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "error:", describe(err))
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// describe turns gRPC errors into "message (Code)".
func describe(err error) string {
	var ce *connError
	if errors.As(err, &ce) {
		return ce.Error()
	}
	if st, ok := status.FromError(err); ok {
		return fmt.Sprintf("%s (%s)", st.Message(), st.Code())
	}
	return err.Error()
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:           "strait",
		Short:         "Strait connects services across clouds and datacenters",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(flagError)
	pf := root.PersistentFlags()
	pf.StringVar(&g.addr, "addr", "", "server address host:port (env STRAIT_ADDR)")
	pf.StringVar(&g.token, "token", "", "ACL token (env STRAIT_TOKEN)")
	pf.StringVar(&g.caFile, "ca-file", "", "the site's CA certificates, PEM (env STRAIT_CA_FILE)")
	pf.BoolVar(&g.json, "json", false, "print results as JSON")
	pf.DurationVar(&g.timeout, "timeout", 30*time.Second, "how long a command may take")
	root.AddCommand(
		newServerCmd(g),
		newDemoCmd(g),
		newAgentCmd(g),
		newGatewayCmd(g),
		newDNSCmd(g),
		newWorkloadCmd(g),
		newCACmd(g),
		newBundleCmd(g),
		newFederationCmd(g),
		newExportCmd(g),
		newUnexportCmd(g),
		newIntentionCmd(g),
		newConfigCmd(g),
		newServiceCmd(g),
		newTokenCmd(g),
		newOperatorCmd(g),
		newStatusCmd(g),
		newPingCmd(g),
		newVersionCmd(g),
	)
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	strictUsage(root)
	g.registerCompletions(root)
	return root
}

// client connects using flags, then the environment, then the dev context.
func (g *globals) client() (*apiclient.Client, error) {
	cfg, err := g.clientConfig()
	if err != nil {
		return nil, err
	}
	return apiclient.Dial(cfg)
}

// withClient connects, runs f with a context bounded by --timeout, and
// closes the connection. A failure to reach or trust the server is said as
// what to check.
func (g *globals) withClient(cmd *cobra.Command, f func(context.Context, *apiclient.Client) error) error {
	cfg, err := g.clientConfig()
	if err != nil {
		return err
	}
	cl, err := apiclient.Dial(cfg)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
	defer cancel()
	if err := f(ctx, cl); err != nil {
		return explainConn(err, cfg.Addrs, cl.TrustDomain())
	}
	return nil
}

var jsonOpts = protojson.MarshalOptions{UseProtoNames: true}

// printJSON prints a message in the stable JSON form: the proto3 JSON
// mapping with proto field names, re-indented because protojson varies its
// whitespace on purpose.
func (g *globals) printJSON(m proto.Message) error {
	return writeJSON(g.stdout, jsonOpts, m)
}

// writeJSON writes m to w as opts marshal it, indented.
func writeJSON(w io.Writer, opts protojson.MarshalOptions, m proto.Message) error {
	b, err := opts.Marshal(m)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err = w.Write(out.Bytes())
	return err
}

func newVersionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if g.json {
				return json.NewEncoder(g.stdout).Encode(map[string]string{"version": controlplane.Version})
			}
			fmt.Fprintln(g.stdout, version())
			return nil
		},
	}
}
