package aws

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"

	sdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// Discovery finds servers from EC2 tags: the running instances tagged
// TagKey=TagValue. Written in retry_join as
//
//	provider=aws region=us-east-1 tag_key=strait-site tag_value=aws-east
//
// with optional addr_type=private_v4|public_v4 (private_v4 by default)
// and port=N (the port the servers listen on, 7400 by default). Only
// ec2:DescribeInstances is needed.
type Discovery struct {
	Region, TagKey, TagValue, AddrType string
	Port                               int
}

// DefaultServerPort is where discovered servers are dialed when the
// spec names no port.
const DefaultServerPort = 7400

// ParseDiscovery parses a "provider=aws ..." spec.
func ParseDiscovery(s string) (Discovery, error) {
	kv, err := parseKV(s, "provider", "region", "tag_key", "tag_value", "addr_type", "port")
	if err != nil {
		return Discovery{}, fmt.Errorf("retry_join %q: %w", s, err)
	}
	if kv["provider"] != "aws" {
		return Discovery{}, fmt.Errorf("retry_join %q: provider must be aws", s)
	}
	d := Discovery{Region: kv["region"], TagKey: kv["tag_key"], TagValue: kv["tag_value"], AddrType: kv["addr_type"], Port: DefaultServerPort}
	if d.TagKey == "" || d.TagValue == "" {
		return Discovery{}, fmt.Errorf("retry_join %q: tag_key and tag_value are required", s)
	}
	switch d.AddrType {
	case "":
		d.AddrType = "private_v4"
	case "private_v4", "public_v4":
	default:
		return Discovery{}, fmt.Errorf("retry_join %q: addr_type must be private_v4 or public_v4", s)
	}
	if p, ok := kv["port"]; ok {
		if d.Port, err = strconv.Atoi(p); err != nil || d.Port < 1 || d.Port > 65535 {
			return Discovery{}, fmt.Errorf("retry_join %q: port %q is not a port number", s, p)
		}
	}
	return d, nil
}

// Addrs returns host:port of every running instance with the tag, sorted,
// using base for credentials and endpoints (the spec's region wins).
func (d Discovery) Addrs(ctx context.Context, base Config) ([]string, error) {
	if d.Region != "" {
		base.Region = d.Region
	}
	cl, err := New(ctx, base)
	if err != nil {
		return nil, err
	}
	return d.addrs(ctx, cl.EC2)
}

func (d Discovery) addrs(ctx context.Context, c *ec2.Client) ([]string, error) {
	in := &ec2.DescribeInstancesInput{Filters: []ec2types.Filter{
		{Name: sdk.String("tag:" + d.TagKey), Values: []string{d.TagValue}},
		{Name: sdk.String("instance-state-name"), Values: []string{"running"}},
	}}
	var out []string
	p := ec2.NewDescribeInstancesPaginator(c, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("discover servers (ec2:DescribeInstances, tag %s=%s): %w", d.TagKey, d.TagValue, err)
		}
		for _, r := range page.Reservations {
			for _, i := range r.Instances {
				ip := sdk.ToString(i.PrivateIpAddress)
				if d.AddrType == "public_v4" {
					ip = sdk.ToString(i.PublicIpAddress)
				}
				if ip != "" {
					out = append(out, net.JoinHostPort(ip, strconv.Itoa(d.Port)))
				}
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// IsDiscovery reports whether a join entry is a discovery spec rather
// than an address.
func IsDiscovery(entry string) bool {
	return strings.HasPrefix(strings.TrimSpace(entry), "provider=")
}

// ResolveAddrs turns join entries (host:port, or discovery specs) into
// addresses, in order, without duplicates. A spec that finds nothing
// adds nothing; a failing spec fails the whole call, since a partial
// list could make a server believe it is alone.
func ResolveAddrs(ctx context.Context, entries []string, base Config) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	add := func(a string) {
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	for _, e := range entries {
		if !IsDiscovery(e) {
			add(e)
			continue
		}
		d, err := ParseDiscovery(e)
		if err != nil {
			return nil, err
		}
		addrs, err := d.Addrs(ctx, base)
		if err != nil {
			return nil, err
		}
		for _, a := range addrs {
			add(a)
		}
	}
	return out, nil
}

// ValidateJoin checks join entries without calling AWS.
func ValidateJoin(entries []string) error {
	for _, e := range entries {
		if IsDiscovery(e) {
			if _, err := ParseDiscovery(e); err != nil {
				return err
			}
			continue
		}
		if _, _, err := net.SplitHostPort(e); err != nil {
			return fmt.Errorf("retry_join %q: neither host:port nor a provider=aws spec", e)
		}
	}
	return nil
}
