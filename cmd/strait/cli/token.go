package cli

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane/api/apipb"
)

func newTokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Create, list and revoke ACL tokens"}
	cmd.AddCommand(newTokenCreateCmd(g), newTokenListCmd(g), newTokenRevokeCmd(g))
	return cmd
}

func newTokenCreateCmd(g *globals) *cobra.Command {
	var (
		kind, desc string
		ttl        time.Duration
		maxUses    uint32
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a token; its secret is printed once",
		Long: `Create a token. Kinds:
  management  everything, including tokens
  write       catalog reads and writes
  read        catalog reads and status
  server      lets new servers join this site (one unless --max-uses, at most 7; 1h unless --ttl)
  agent       lets agents join this site (one within 24h unless --max-uses and --ttl)
  gateway     lets gateways join this site (one within 24h unless --max-uses and --ttl)

A fleet started from one template (an autoscaling group) needs a token for as many
nodes, for as long, as it will start: say so with --max-uses and --ttl. Hand join tokens
to daemons in a file (--join-token @FILE) or STRAIT_JOIN_TOKEN, never on the command line.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			k, ok := apipb.TokenKind_value["TOKEN_KIND_"+strings.ToUpper(kind)]
			if !ok || k == 0 {
				return usageError{fmt.Errorf("--kind %q: want management, write, read, server, agent or gateway", kind)}
			}
			req := &apipb.CreateTokenRequest{Kind: apipb.TokenKind(k), Description: desc, MaxUses: maxUses}
			if ttl > 0 {
				req.Ttl = durationpb.New(ttl)
			}
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				resp, err := cl.ACL.CreateToken(ctx, req)
				if err != nil {
					return err
				}
				if g.json {
					return g.printJSON(resp)
				}
				fmt.Fprintf(g.stdout, "Accessor: %s\nSecret:   %s\n", resp.Token.AccessorId, resp.Secret)
				if resp.Token.ExpireTime != nil {
					fmt.Fprintf(g.stdout, "Expires:  %s\n", resp.Token.ExpireTime.AsTime().Format(time.RFC3339))
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&kind, "kind", "", "management, write, read, server, agent or gateway")
	f.StringVar(&desc, "description", "", "what the token is for")
	f.DurationVar(&ttl, "ttl", 0, "lifetime (default: none; 1h for server tokens, 24h for agent and gateway tokens)")
	f.Uint32Var(&maxUses, "max-uses", 0, "number of uses (default unlimited; 1 for server, agent and gateway tokens)")
	return cmd
}

func newTokenListCmd(g *globals) *cobra.Command {
	return listCmd(g, &cobra.Command{
		Use:   "list",
		Short: "List tokens (never their secrets)",
		Args:  cobra.NoArgs,
	}, func(ctx context.Context, cl *apiclient.Client) (*apipb.ListTokensResponse, error) {
		return cl.ACL.ListTokens(ctx, &apipb.ListTokensRequest{})
	}, (*apipb.ListTokensResponse).GetTokens, []string{"ACCESSOR", "KIND", "USES", "EXPIRES", "DESCRIPTION"}, func(tok *apipb.Token) []string {
		uses := strconv.Itoa(int(tok.Uses))
		if tok.MaxUses > 0 {
			uses += "/" + strconv.Itoa(int(tok.MaxUses))
		}
		exp := "never"
		if tok.ExpireTime != nil {
			exp = tok.ExpireTime.AsTime().Format(time.RFC3339)
		}
		return []string{tok.AccessorId, lowerEnum(tok.Kind.String(), "TOKEN_KIND_"), uses, exp, cmp.Or(tok.Description, "-")}
	})
}

func newTokenRevokeCmd(g *globals) *cobra.Command {
	return actionCmd(g, &cobra.Command{
		Use:   "revoke ACCESSOR",
		Short: "Revoke a token by its accessor ID",
		Args:  cobra.ExactArgs(1),
	}, func(ctx context.Context, cl *apiclient.Client, args []string) error {
		_, err := cl.ACL.RevokeToken(ctx, &apipb.RevokeTokenRequest{AccessorId: args[0]})
		return err
	}, func(args []string) string { return "Revoked token " + args[0] })
}

// joinTokenHelp is the help of the daemons' --join-token flags.
const joinTokenHelp = "join token, first start only: @FILE reads it from FILE (env STRAIT_JOIN_TOKEN otherwise); the token itself also works, but every user of the host can read a command line"

// readJoinToken resolves a daemon's --join-token: "@FILE" reads the token
// from FILE; empty falls back to STRAIT_JOIN_TOKEN (which may be @FILE
// too); anything else is the token itself, with a warning on stderr, since
// /proc/PID/cmdline shows it to every user of the host.
func readJoinToken(g *globals, flag string) (string, error) {
	v := flag
	if v == "" {
		v = os.Getenv("STRAIT_JOIN_TOKEN")
	} else if !strings.HasPrefix(v, "@") {
		fmt.Fprintln(g.stderr, "warning: a join token on the command line is visible to every user of this host; pass --join-token @FILE or set STRAIT_JOIN_TOKEN")
	}
	path, ok := strings.CutPrefix(v, "@")
	if !ok {
		return strings.TrimSpace(v), nil
	}
	tok, err := readTokenFile(path)
	if err != nil {
		return "", fmt.Errorf("--join-token: %w", err)
	}
	return tok, nil
}
