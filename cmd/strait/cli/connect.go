package cli

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane"
)

// defaultAPIPort is the port of an --addr given without one: the port a
// server binds when told nothing.
var defaultAPIPort = func() string {
	_, port, _ := net.SplitHostPort(controlplane.DefaultBindAddr)
	return port
}()

// parseAddrs splits --addr (or STRAIT_ADDR): one or more servers separated
// by commas, each host:port or a bare host, which gets the default port.
func parseAddrs(s string) ([]string, error) {
	var out []string
	for a := range strings.SplitSeq(s, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		host, port, err := net.SplitHostPort(a)
		switch {
		case err == nil && host != "" && port != "":
			out = append(out, a)
		case err == nil:
			return nil, usageError{fmt.Errorf("--addr %q: want host:port or a host (port %s)", a, defaultAPIPort)}
		case !strings.Contains(a, ":") || net.ParseIP(a) != nil:
			// A host name or IPv4 address, or a bare IPv6 address.
			out = append(out, net.JoinHostPort(a, defaultAPIPort))
		case strings.HasPrefix(a, "[") && strings.HasSuffix(a, "]"):
			out = append(out, net.JoinHostPort(strings.Trim(a, "[]"), defaultAPIPort))
		default:
			return nil, usageError{fmt.Errorf("--addr %q: want host:port or a host (port %s)", a, defaultAPIPort)}
		}
	}
	return out, nil
}

// clientConfig resolves where and how to connect: flags, then the
// environment, then the dev context. It returns the addresses to name in
// errors.
func (g *globals) clientConfig() (apiclient.Config, error) {
	addrs, err := parseAddrs(cmp.Or(g.addr, os.Getenv("STRAIT_ADDR")))
	if err != nil {
		return apiclient.Config{}, err
	}
	cfg := apiclient.Config{Addrs: addrs, Token: cmp.Or(g.token, os.Getenv("STRAIT_TOKEN")), CAFile: cmp.Or(g.caFile, os.Getenv("STRAIT_CA_FILE"))}
	if len(cfg.Addrs) > 0 && cfg.CAFile != "" && cfg.Token != "" {
		return cfg, nil
	}
	dc, ctxPath, err := readDevContext()
	if err != nil {
		if len(cfg.Addrs) > 0 {
			return cfg, nil
		}
		if p := os.Getenv("STRAIT_DEV_CONTEXT"); p != "" {
			if errors.Is(err, fs.ErrNotExist) {
				return cfg, fmt.Errorf("no server address: STRAIT_DEV_CONTEXT names %s, which does not exist (has its dev server stopped?); pass --addr or set STRAIT_ADDR otherwise", p)
			}
			return cfg, fmt.Errorf("no server address: %w", err)
		}
		return cfg, errors.New("no server address: pass --addr or set STRAIT_ADDR (or start `strait server --dev`, which the CLI then finds by itself)")
	}
	if len(cfg.Addrs) > 0 && !slices.Contains(cfg.Addrs, dc.Addr) {
		if cfg.CAFile == "" {
			return cfg, fmt.Errorf("no CA for %s: pass --ca-file or set STRAIT_CA_FILE (a server's <data_dir>/tls/ca.pem); the dev context %s is for %s", strings.Join(cfg.Addrs, ","), ctxPath, dc.Addr)
		}
		return cfg, nil
	}
	if len(cfg.Addrs) == 0 {
		cfg.Addrs = []string{dc.Addr}
	}
	cfg.Token = cmp.Or(cfg.Token, dc.Token)
	if cfg.CAFile == "" {
		if cfg.CA, err = dc.certs(); err != nil {
			return cfg, fmt.Errorf("dev context %s: %w", ctxPath, err)
		}
	}
	return cfg, nil
}

// connError is a failure to reach or trust a server, said as what to check,
// with gRPC's own words kept as the detail.
type connError struct {
	hint string
	raw  error
}

func (e *connError) Error() string { return e.hint + "\n  detail: " + describe(e.raw) }
func (e *connError) Unwrap() error { return e.raw }

var (
	dialAddrRE = regexp.MustCompile(`dial tcp (\S+?): `)
	otherTDRE  = regexp.MustCompile(`no bundle for trust domain \\?"([^"\\]+)\\?"`)
)

// explainConn translates the transport errors a client meets into what to
// check; other errors pass unchanged. addrs are the servers tried, td the
// trust domain of the CA the client was given.
func explainConn(err error, addrs []string, td string) error {
	st, ok := status.FromError(err)
	if !ok || (st.Code() != codes.Unavailable && st.Code() != codes.DeadlineExceeded) {
		return err
	}
	msg := st.Message()
	addr := strings.Join(addrs, ",")
	if m := dialAddrRE.FindStringSubmatch(msg); m != nil {
		addr = m[1]
	}
	var hint string
	switch {
	case strings.Contains(msg, "connection refused"):
		hint = fmt.Sprintf("no server at %s: is `strait server` running there? check --addr or STRAIT_ADDR (the API port is %s unless bind_addr says otherwise)", addr, defaultAPIPort)
	case strings.Contains(msg, "no such host"):
		hint = fmt.Sprintf("cannot resolve the host of %s: check --addr or STRAIT_ADDR", addr)
	case otherTDRE.MatchString(msg):
		other := otherTDRE.FindStringSubmatch(msg)[1]
		hint = fmt.Sprintf("the server at %s belongs to trust domain %s, but the CA you gave is %s's: check --ca-file / STRAIT_CA_FILE or the context file (STRAIT_DEV_CONTEXT), or --addr", addr, other, td)
	case strings.Contains(msg, "certificate signed by unknown authority"), strings.Contains(msg, "x509svid: could not verify"):
		hint = fmt.Sprintf("the server's certificate at %s is not from this site's CA: check --ca-file / STRAIT_CA_FILE or the context file (STRAIT_DEV_CONTEXT)", addr)
	case strings.Contains(msg, "is not a server of"):
		hint = fmt.Sprintf("%s is not a server's API port (a gateway or agent answered): check --addr", addr)
	case strings.Contains(msg, "first record does not look like a TLS handshake"), strings.Contains(msg, "tls: "):
		hint = fmt.Sprintf("%s does not speak the API's TLS: it is not a server's API port (the metrics, DNS or bundle port?); check --addr", addr)
	case st.Code() == codes.DeadlineExceeded && strings.Contains(msg, "waiting for connections"):
		hint = fmt.Sprintf("no answer from %s within --timeout: is it a server's API port (%s by default), and reachable from here? check --addr", addr, defaultAPIPort)
	case strings.Contains(msg, "connection error") || strings.Contains(msg, "Error while dialing"):
		hint = fmt.Sprintf("cannot connect to %s: check --addr and that a server runs there", addr)
	default:
		return err
	}
	return &connError{hint: hint, raw: err}
}
