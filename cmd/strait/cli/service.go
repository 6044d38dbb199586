package cli

import (
	"cmp"
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/meshname"
)

func newServiceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "service", Short: "Register, list and inspect services"}
	cmd.AddCommand(newServiceRegisterCmd(g), newServiceDeregisterCmd(g), newServiceListCmd(g), newServiceShowCmd(g), newServiceHeartbeatCmd(g))
	return cmd
}

// parsePort parses name=port[/protocol] (the port number may be omitted
// when no instance is registered).
func parsePort(s string) (*apipb.ServicePort, uint32, error) {
	name, rest, hasNum := strings.Cut(s, "=")
	numStr, proto, hasProto := strings.Cut(rest, "/")
	if base, _, _ := strings.Cut(s, "/"); !hasNum && base != "" && strings.Trim(base, "0123456789") == "" {
		// "--port 8080" would make a port named "8080" with no number.
		return nil, 0, fmt.Errorf("--port %s: name the port, such as http=%s/http or tcp=%s", s, base, base)
	}
	if !hasNum {
		name, proto, hasProto = strings.Cut(s, "/")
		numStr = ""
	}
	p := &apipb.ServicePort{Name: name, Protocol: apipb.Protocol_PROTOCOL_TCP}
	if hasProto {
		v, ok := apipb.Protocol_value["PROTOCOL_"+strings.ToUpper(proto)]
		if !ok || v == 0 {
			return nil, 0, fmt.Errorf("--port %s: protocol %q is not tcp, http or grpc", s, proto)
		}
		p.Protocol = apipb.Protocol(v)
	}
	var num uint64
	if numStr != "" {
		var err error
		if num, err = strconv.ParseUint(numStr, 10, 16); err != nil || num == 0 {
			return nil, 0, fmt.Errorf("--port %s: %q is not a port number 1-65535", s, numStr)
		}
	}
	return p, uint32(num), nil
}

func parseKV(flag string, kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, usageError{fmt.Errorf("--%s %q: want key=value", flag, kv)}
		}
		m[k] = v
	}
	return m, nil
}

func newServiceRegisterCmd(g *globals) *cobra.Command {
	var (
		ns, name, id, address, zone string
		ports, meta                 []string
		ttl                         time.Duration
	)
	cmd := &cobra.Command{
		Use:   "register",
		Short: "Register a service, and optionally one instance of it",
		Example: `  strait service register --ns payments --svc api --port http=8080/http --address 10.0.1.5 --id api-1
  strait service register --ns payments --svc api --port http/http          # the definition only`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &apipb.RegisterRequest{Service: &apipb.Service{Namespace: ns, Name: name}}
			nums := map[string]uint32{}
			for _, ps := range ports {
				p, num, err := parsePort(ps)
				if err != nil {
					return usageError{err}
				}
				req.Service.Ports = append(req.Service.Ports, p)
				if num != 0 {
					nums[p.Name] = num
				}
			}
			var err error
			if req.Service.Meta, err = parseKV("meta", meta); err != nil {
				return err
			}
			if address != "" || id != "" {
				in := &apipb.Instance{Id: id, Address: address, Ports: nums, Zone: zone}
				if ttl > 0 {
					in.Ttl = durationpb.New(ttl)
				}
				req.Instance = in
			}
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				resp, err := cl.Catalog.Register(ctx, req)
				if err != nil {
					return err
				}
				if g.json {
					return g.printJSON(resp)
				}
				what := fmt.Sprintf("service %s/%s", cmp.Or(req.Service.Namespace, meshname.DefaultNamespace), name)
				if req.Instance != nil {
					what += fmt.Sprintf(", instance %s (%s)", id, address)
				}
				fmt.Fprintf(g.stdout, "Registered %s at index %d\n", what, resp.Index)
				return nil
			})
		},
	}
	f := cmd.Flags()
	svcFlags(f, &ns, &name)
	f.StringArrayVar(&ports, "port", nil, "named port: name=number/protocol (tcp, http, grpc); repeatable")
	f.StringArrayVar(&meta, "meta", nil, "metadata key=value; repeatable")
	f.StringVar(&id, "id", "", "instance ID")
	f.StringVar(&address, "address", "", "instance IP address")
	f.StringVar(&zone, "zone", "", "instance locality zone")
	f.DurationVar(&ttl, "ttl", 0, "instance turns critical without a heartbeat for this long")
	return cmd
}

func newServiceDeregisterCmd(g *globals) *cobra.Command {
	var ns, name, id string
	cmd := &cobra.Command{
		Use:   "deregister",
		Short: "Remove an instance (--id), or a service and all its instances",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				resp, err := cl.Catalog.Deregister(ctx, &apipb.DeregisterRequest{Namespace: ns, Service: name, InstanceId: id})
				if err != nil {
					return err
				}
				if g.json {
					return g.printJSON(resp)
				}
				svc := cmp.Or(ns, meshname.DefaultNamespace) + "/" + name
				if id != "" {
					fmt.Fprintf(g.stdout, "Deregistered instance %s of service %s at index %d\n", id, svc, resp.Index)
				} else {
					fmt.Fprintf(g.stdout, "Deregistered service %s and its instances at index %d\n", svc, resp.Index)
				}
				return nil
			})
		},
	}
	svcFlags(cmd.Flags(), &ns, &name)
	cmd.Flags().StringVar(&id, "id", "", "instance ID (omit to remove the whole service)")
	return cmd
}

// svcFlags adds --ns and --svc, the flags that name a service in every
// command, and --name, the old spelling of --svc in the service commands,
// hidden.
func svcFlags(f *pflag.FlagSet, ns, svc *string) {
	f.StringVar(ns, "ns", "", "namespace (default \"default\")")
	f.StringVar(svc, "svc", "", "service name")
	f.StringVar(svc, "name", "", "service name (the old spelling of --svc)")
	_ = f.MarkHidden("name")
}

func readMode(consistent bool) apipb.ReadMode {
	if consistent {
		return apipb.ReadMode_READ_MODE_CONSISTENT
	}
	return apipb.ReadMode_READ_MODE_LOCAL
}

func newServiceListCmd(g *globals) *cobra.Command {
	var ns string
	var consistent bool
	cmd := listCmd(g, &cobra.Command{
		Use:   "list",
		Short: "List services",
		Args:  cobra.NoArgs,
	}, func(ctx context.Context, cl *apiclient.Client) (*apipb.ListServicesResponse, error) {
		return cl.Catalog.ListServices(ctx, &apipb.ListServicesRequest{Namespace: ns, Mode: readMode(consistent)})
	}, (*apipb.ListServicesResponse).GetServices, []string{"NAMESPACE", "SERVICE", "PEER", "PORTS", "INSTANCES", "PASSING"}, func(s *apipb.ServiceSummary) []string {
		peer := cmp.Or(s.Service.Peer, "-")
		if s.Stale {
			peer += " (stale)"
		}
		return []string{s.Service.Namespace, s.Service.Name, peer, portsString(s.Service.Ports), strconv.Itoa(int(s.Instances)), strconv.Itoa(int(s.Passing))}
	})
	cmd.Flags().StringVar(&ns, "ns", "", "only this namespace")
	cmd.Flags().BoolVar(&consistent, "consistent", false, "read through the leader (linearizable)")
	return cmd
}

func portsString(ps []*apipb.ServicePort) string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Name+"/"+lowerEnum(p.Protocol.String(), "PROTOCOL_"))
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, ",")
}

func newServiceShowCmd(g *globals) *cobra.Command {
	var ns, name, peer string
	var consistent, passing bool
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show a service and its instances",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, cl *apiclient.Client) error {
				resp, err := cl.Catalog.GetService(ctx, &apipb.GetServiceRequest{Namespace: ns, Name: name, Peer: peer, Mode: readMode(consistent), PassingOnly: passing})
				if err != nil {
					return err
				}
				if g.json {
					return g.printJSON(resp)
				}
				s := resp.Service
				fmt.Fprintf(g.stdout, "Service %s/%s  ports %s", s.Namespace, s.Name, portsString(s.Ports))
				if s.Peer != "" {
					fmt.Fprintf(g.stdout, "  imported from %s", s.Peer)
					if resp.Stale {
						fmt.Fprint(g.stdout, " (stale: the peer has not been heard from; last known instances)")
					}
				}
				fmt.Fprintln(g.stdout)
				t := newTable(g.stdout, "ID", "ADDRESS", "PORTS", "ZONE", "HEALTH")
				for _, in := range resp.Instances {
					var ps []string
					for n, p := range in.Ports {
						ps = append(ps, fmt.Sprintf("%s=%d", n, p))
					}
					sort.Strings(ps)
					t.row(in.Id, in.Address, strings.Join(ps, ","), cmp.Or(in.Zone, "-"), lowerEnum(in.Health.String(), "HEALTH_"))
				}
				return t.flush()
			})
		},
	}
	svcFlags(cmd.Flags(), &ns, &name)
	cmd.Flags().BoolVar(&consistent, "consistent", false, "read through the leader (linearizable)")
	cmd.Flags().BoolVar(&passing, "passing", false, "only passing instances")
	cmd.Flags().StringVar(&peer, "peer", "", "the peer an imported service comes from")
	return cmd
}

func newServiceHeartbeatCmd(g *globals) *cobra.Command {
	var ns, name, id string
	cmd := actionCmd(g, &cobra.Command{
		Use:   "heartbeat",
		Short: "Send a heartbeat for an instance registered with --ttl",
		Args:  cobra.NoArgs,
	}, func(ctx context.Context, cl *apiclient.Client, _ []string) error {
		_, err := cl.Catalog.Heartbeat(ctx, &apipb.HeartbeatRequest{Namespace: ns, Service: name, InstanceId: id})
		return err
	}, func([]string) string {
		return fmt.Sprintf("Heartbeat recorded for instance %s of service %s/%s", id, cmp.Or(ns, meshname.DefaultNamespace), name)
	})
	svcFlags(cmd.Flags(), &ns, &name)
	cmd.Flags().StringVar(&id, "id", "", "instance ID")
	return cmd
}
