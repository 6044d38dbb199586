package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	"github.com/straitmesh/strait/apiclient"
)

// Most nouns have a list command (one API call, printed as a table, or as
// the response's JSON with --json) and commands that change one object
// and say so (nothing on stdout with --json). listCmd and actionCmd are
// those two shapes; each command gives its cobra metadata, its call and
// its words.

// listCmd gives cmd (its Use, Short, Args) a RunE that calls list, then
// prints the response as JSON with --json, or else a table of header with
// one row per item.
func listCmd[R proto.Message, T any](g *globals, cmd *cobra.Command, list func(context.Context, *apiclient.Client) (R, error),
	items func(R) []T, header []string, row func(T) []string) *cobra.Command {
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
			resp, err := list(ctx, cl)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(resp)
			}
			t := newTable(g.stdout, header...)
			for _, it := range items(resp) {
				t.row(row(it)...)
			}
			return t.flush()
		})
	}
	return cmd
}

// actionCmd gives cmd (its Use, Short, Args) a RunE that calls do with the
// command's arguments, then prints the line done makes of them (nothing
// with --json).
func actionCmd(g *globals, cmd *cobra.Command, do func(ctx context.Context, cl *apiclient.Client, args []string) error,
	done func(args []string) string) *cobra.Command {
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
			if err := do(ctx, cl, args); err != nil {
				return err
			}
			if !g.json {
				fmt.Fprintln(g.stdout, done(args))
			}
			return nil
		})
	}
	return cmd
}
