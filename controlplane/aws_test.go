package controlplane_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	sdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	sd "github.com/aws/aws-sdk-go-v2/service/servicediscovery"
	sdtypes "github.com/aws/aws-sdk-go-v2/service/servicediscovery/types"
	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/cloud/aws"
	"github.com/straitmesh/strait/cloud/aws/awstest"
	"github.com/straitmesh/strait/controlplane"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/controlplanetest"
	"github.com/straitmesh/strait/trust/keywrap"
)

// Every test here calls real AWS APIs on an emulator (moto_server) on
// loopback, reset per test.

// awsServer runs one server with cfg until the test ends; it returns the
// server and a channel with Run's result.
func awsServer(t *testing.T, cfg controlplane.Config) (*controlplane.Server, chan error) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		if os.Getenv("STRAIT_TEST_LOGS") != "" {
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("test_node", cfg.NodeID)
		}
	}
	cfg.Raft = controlplanetest.FastRaft
	s, err := controlplane.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("server %s did not stop", cfg.NodeID)
		}
	})
	return s, done
}

// lockedBuffer is a log sink tests can read while servers write to it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// freePort returns a port free on every one of ips.
func freePort(t *testing.T, ips ...string) int {
	t.Helper()
	for range 50 {
		p := 20000 + rand.IntN(30000)
		ok := true
		for _, ip := range ips {
			ln, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(p)))
			if err != nil {
				ok = false
				break
			}
			ln.Close()
		}
		if ok {
			return p
		}
	}
	t.Fatal("no free port")
	return 0
}

func listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// tagInstances runs instances tagged strait-site=tag at the given private
// IPs of a VPC on loopback (the emulator allows it).
func tagInstances(t *testing.T, c *aws.Clients, tag string, ips ...string) {
	t.Helper()
	ctx := context.Background()
	vpcs, err := c.EC2.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{Filters: []ec2types.Filter{{Name: sdk.String("cidr"), Values: []string{"127.0.0.0/16"}}}})
	if err != nil {
		t.Fatal(err)
	}
	var subnet *string
	if len(vpcs.Vpcs) == 0 {
		vpc, err := c.EC2.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: sdk.String("127.0.0.0/16")})
		if err != nil {
			t.Fatal(err)
		}
		sub, err := c.EC2.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: vpc.Vpc.VpcId, CidrBlock: sdk.String("127.0.1.0/24")})
		if err != nil {
			t.Fatal(err)
		}
		subnet = sub.Subnet.SubnetId
	} else {
		subs, err := c.EC2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{Filters: []ec2types.Filter{{Name: sdk.String("vpc-id"), Values: []string{*vpcs.Vpcs[0].VpcId}}}})
		if err != nil {
			t.Fatal(err)
		}
		subnet = subs.Subnets[0].SubnetId
	}
	for _, ip := range ips {
		_, err := c.EC2.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: sdk.String("ami-12c6146b"), MinCount: sdk.Int32(1), MaxCount: sdk.Int32(1),
			SubnetId: subnet, PrivateIpAddress: sdk.String(ip),
			TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance,
				Tags: []ec2types.Tag{{Key: sdk.String("strait-site"), Value: sdk.String(tag)}}}}})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestRetryJoinFromEC2Tags: three servers, each on its own address, find
// each other from EC2 tags. The two joiners start before the first
// server's instance is tagged, find only themselves, and retry until it
// appears; then the site has three voters.
func TestRetryJoinFromEC2Tags(t *testing.T) {
	cfg := awstest.Start(t)
	ctx := controlplanetest.Ctx(t)
	clients, err := aws.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ips := []string{"127.0.1.11", "127.0.1.12", "127.0.1.13"}
	port := freePort(t, ips...)
	addr := func(i int) string { return net.JoinHostPort(ips[i], fmt.Sprint(port)) }

	tokens := make(chan string, 1)
	first, _ := awsServer(t, controlplane.Config{Site: "aws-east", NodeID: "s0", DataDir: t.TempDir(), Listener: listen(t, addr(0)),
		Bootstrap: true, OnBootstrap: func(tok string) { tokens <- tok }})
	var mgmt string
	select {
	case mgmt = <-tokens:
	case <-time.After(30 * time.Second):
		t.Fatal("no bootstrap")
	}
	cl, err := apiclient.Dial(apiclient.Config{Addr: addr(0), Token: mgmt, CA: first.Bundle().X509Authorities()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	tok, err := cl.ACL.CreateToken(ctx, &apipb.CreateTokenRequest{Kind: apipb.TokenKind_TOKEN_KIND_SERVER, MaxUses: 2})
	if err != nil {
		t.Fatal(err)
	}
	spec := fmt.Sprintf("provider=aws region=%s tag_key=strait-site tag_value=aws-east port=%d", awstest.Region, port)
	tagInstances(t, clients, "aws-east", ips[1], ips[2])
	logs := make([]*lockedBuffer, 3)
	for i := 1; i < 3; i++ {
		logs[i] = &lockedBuffer{}
		awsServer(t, controlplane.Config{Site: "aws-east", NodeID: fmt.Sprintf("s%d", i), DataDir: t.TempDir(), Listener: listen(t, addr(i)),
			RetryJoin: []string{spec}, JoinToken: tok.Secret, AWS: cfg, Logger: slog.New(slog.NewTextHandler(logs[i], nil))})
	}
	// Both joiners find only each other, are not admitted, and say so.
	controlplanetest.WaitFor(t, 30*time.Second, func() error {
		for i := 1; i < 3; i++ {
			if !strings.Contains(logs[i].String(), "retry_join: not admitted yet") {
				return fmt.Errorf("s%d has not retried yet", i)
			}
		}
		return nil
	})
	if n := voters(t, first); n != 1 {
		t.Fatalf("%d voters before the first server was discoverable", n)
	}
	tagInstances(t, clients, "aws-east", ips[0])
	controlplanetest.WaitFor(t, 60*time.Second, func() error {
		if n := voters(t, first); n != 3 {
			return fmt.Errorf("%d voters", n)
		}
		return nil
	})
}

func voters(t *testing.T, s *controlplane.Server) int {
	f := s.Raft().GetConfiguration()
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, sv := range f.Configuration().Servers {
		if sv.Suffrage == raft.Voter {
			n++
		}
	}
	return n
}

// TestKMSWrappedKEK: with a KMS key configured, the KEK never touches the
// disk in the clear; a restart opens it through KMS; with KMS
// unreachable, or the key's use denied, the server refuses to start with
// a clear error and the file is untouched; an old data key is rotated at
// start, the KEK (and so the CA key sealed with it) unchanged.
func TestKMSWrappedKEK(t *testing.T) {
	cfg := awstest.Start(t)
	ctx := controlplanetest.Ctx(t)
	clients, err := aws.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	key, err := clients.KMS.CreateKey(ctx, &kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	keyID := sdk.ToString(key.KeyMetadata.KeyId)
	ks, _ := aws.NewKMS(clients, keyID)
	dir := t.TempDir()
	base := controlplane.Config{Site: "aws-east", NodeID: "s0", DataDir: dir, KeyService: ks, KeyServiceName: aws.KMSService}
	run := func(c controlplane.Config) (*controlplane.Server, context.CancelFunc, chan error) {
		c.Listener = listen(t, "127.0.0.1:0")
		c.Raft = controlplanetest.FastRaft
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		s, err := controlplane.New(c)
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(rctx) }()
		return s, cancel, done
	}
	stop := func(cancel context.CancelFunc, done chan error) {
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	c := base
	c.Bootstrap = true
	s, cancel, done := run(c)
	waitLeader(t, s)
	roots := fmt.Sprint(s.Bundle().X509Authorities()[0].SerialNumber)
	stop(cancel, done)

	kekFile := filepath.Join(dir, "kek")
	raw, err := os.ReadFile(kekFile)
	if err != nil {
		t.Fatal(err)
	}
	env, err := keywrap.ReadEnvelope(kekFile)
	if err != nil {
		t.Fatal(err)
	}
	if env.Service != aws.KMSService || env.KeyID == "" {
		t.Fatalf("envelope %+v", env)
	}

	// Restart: the KEK opens through KMS, and the CA key with it.
	s, cancel, done = run(base)
	waitLeader(t, s)
	if got := fmt.Sprint(s.Bundle().X509Authorities()[0].SerialNumber); got != roots {
		t.Fatalf("root changed across a restart: %s, was %s", got, roots)
	}
	if b, err := s.Authority().GetBundleForTrustDomain(s.TrustDomain()); err != nil {
		t.Fatal(err)
	} else if _, err := b.Marshal(); err != nil {
		t.Fatal(err)
	}
	stop(cancel, done)

	// KMS unreachable: a clear error, nothing changed on disk.
	down := base
	downClients, _ := aws.New(ctx, aws.Config{Region: awstest.Region, Endpoints: map[string]string{"kms": "http://127.0.0.1:1"}})
	down.KeyService, _ = aws.NewKMS(downClients, keyID)
	down.DataKeyRotation = time.Nanosecond
	_, _, done = run(down)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "key service") || !strings.Contains(err.Error(), "unchanged") {
			t.Fatalf("start with KMS down: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("a server started without its KEK")
	}
	// Denied: another key cannot decrypt this data key.
	other, _ := clients.KMS.CreateKey(ctx, &kms.CreateKeyInput{})
	denied := base
	denied.KeyService, _ = aws.NewKMS(clients, sdk.ToString(other.KeyMetadata.KeyId))
	_, _, done = run(denied)
	if err := <-done; err == nil || !strings.Contains(err.Error(), "key service") {
		t.Fatalf("start with another KMS key: %v", err)
	}
	if now, _ := os.ReadFile(kekFile); !bytes.Equal(now, raw) {
		t.Fatal("a failed start changed the KEK file")
	}

	// An old data key is replaced at start; the site is the same.
	rot := base
	rot.DataKeyRotation = time.Nanosecond
	s, cancel, done = run(rot)
	waitLeader(t, s)
	if got := fmt.Sprint(s.Bundle().X509Authorities()[0].SerialNumber); got != roots {
		t.Fatalf("root changed across a data key rotation: %s, was %s", got, roots)
	}
	stop(cancel, done)
	env2, err := keywrap.ReadEnvelope(kekFile)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(env2.DataKey, env.DataKey) || env2.KEKID != env.KEKID {
		t.Fatal("rotation did not replace the data key, or changed the KEK")
	}
	if fi, _ := os.Stat(kekFile); fi.Mode().Perm() != 0o600 {
		t.Fatalf("kek file mode %04o", fi.Mode().Perm())
	}
}

func waitLeader(t *testing.T, s *controlplane.Server) {
	t.Helper()
	select {
	case <-s.Started():
	case <-time.After(30 * time.Second):
		t.Fatal("server did not start")
	}
	controlplanetest.WaitFor(t, 30*time.Second, func() error {
		if !s.IsLeader() || s.Store().Site() == nil {
			return fmt.Errorf("not leading a bootstrapped site yet")
		}
		return nil
	})
}

// TestBundlePublishedToS3: the leader writes the site's bundle to S3, and
// the object follows a CA rotation to the new root alone, each version a
// valid SPIFFE bundle for the site.
func TestBundlePublishedToS3(t *testing.T) {
	cfg := awstest.Start(t)
	ctx := controlplanetest.Ctx(t)
	clients, err := aws.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := clients.S3.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: sdk.String("bundles")}); err != nil {
		t.Fatal(err)
	}
	c := controlplanetest.Start(t, 1, controlplanetest.Options{Site: "aws-east", Tweak: func(c *controlplane.Config) {
		c.CAPropagationDelay, c.MaxLeafTTL = time.Second, 3*time.Second
		c.LeaderTasks = []controlplane.LeaderTask{{Name: "bundle-s3", Run: func(ctx context.Context, s *controlplane.CloudSite) error {
			p := &aws.BundlePublisher{Clients: clients, Bucket: "bundles", Key: "aws-east/bundle.json", Source: s, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
			return p.Run(ctx)
		}}}
	}})
	td := spiffeid.RequireTrustDomainFromString("aws-east.strait")
	object := func() (*spiffebundle.Bundle, error) {
		out, err := clients.S3.GetObject(ctx, &s3.GetObjectInput{Bucket: sdk.String("bundles"), Key: sdk.String("aws-east/bundle.json")})
		if err != nil {
			return nil, err
		}
		defer out.Body.Close()
		b, err := io.ReadAll(out.Body)
		if err != nil {
			return nil, err
		}
		return spiffebundle.Parse(td, b)
	}
	var before *spiffebundle.Bundle
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		before, err = object()
		return err
	})
	if len(before.X509Authorities()) != 1 {
		t.Fatalf("%d roots published", len(before.X509Authorities()))
	}
	if _, err := c.Client(0).Operator.RotateCA(ctx, &apipb.RotateCARequest{}); err != nil {
		t.Fatal(err)
	}
	controlplanetest.WaitFor(t, 30*time.Second, func() error {
		b, err := object()
		if err != nil {
			return err
		}
		roots := b.X509Authorities()
		if len(roots) != 1 || roots[0].Equal(before.X509Authorities()[0]) {
			return fmt.Errorf("object has %d roots", len(roots))
		}
		return nil
	})
}

// TestCloudMapSync: services registered in Cloud Map (as ECS registers
// them) appear in the catalog and follow changes and deletions; local
// services are published into the namespace and withdrawn when gone;
// neither direction feeds the other.
func TestCloudMapSync(t *testing.T) {
	cfg := awstest.Start(t)
	ctx := controlplanetest.Ctx(t)
	clients, err := aws.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := clients.CloudMap.CreateHttpNamespace(ctx, &sd.CreateHttpNamespaceInput{Name: sdk.String("ecs")}); err != nil {
		t.Fatal(err)
	}
	var nsID string
	controlplanetest.WaitFor(t, 10*time.Second, func() error {
		out, err := clients.CloudMap.ListNamespaces(ctx, &sd.ListNamespacesInput{})
		if err != nil || len(out.Namespaces) == 0 {
			return fmt.Errorf("namespace not listed yet: %v", err)
		}
		nsID = sdk.ToString(out.Namespaces[0].Id)
		return nil
	})
	orders, err := clients.CloudMap.CreateService(ctx, &sd.CreateServiceInput{Name: sdk.String("orders"), NamespaceId: sdk.String(nsID)})
	if err != nil {
		t.Fatal(err)
	}
	reg := func(id, ip, port string) {
		t.Helper()
		if _, err := clients.CloudMap.RegisterInstance(ctx, &sd.RegisterInstanceInput{ServiceId: orders.Service.Id, InstanceId: sdk.String(id),
			Attributes: map[string]string{"AWS_INSTANCE_IPV4": ip, "AWS_INSTANCE_PORT": port}}); err != nil {
			t.Fatal(err)
		}
	}
	reg("task1", "10.1.0.5", "8080")
	reg("Task_2", "10.1.0.6", "8080") // not a DNS label: mapped to a stable ID

	c := controlplanetest.Start(t, 1, controlplanetest.Options{Site: "aws-east", Tweak: func(c *controlplane.Config) {
		c.LeaderTasks = []controlplane.LeaderTask{{Name: "cloudmap", Run: func(ctx context.Context, s *controlplane.CloudSite) error {
			sync := &aws.CloudMapSync{Clients: clients, Namespace: "ecs", StraitNamespace: "ecs", Publish: true, Site: "aws-east",
				Catalog: s, Interval: 200 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
			return sync.Run(ctx)
		}}}
	}})
	cl := c.Client(0)
	instances := func(ns, svc string) (map[string]string, error) {
		r, err := cl.Catalog.GetService(ctx, &apipb.GetServiceRequest{Namespace: ns, Name: svc})
		if err != nil {
			return nil, err
		}
		out := map[string]string{}
		for _, in := range r.Instances {
			out[in.Id] = fmt.Sprintf("%s:%d %s %s", in.Address, in.Ports["tcp"], in.Health, in.Meta["source"])
		}
		return out, nil
	}
	expect := func(ns, svc string, want map[string]string) {
		t.Helper()
		controlplanetest.WaitFor(t, 20*time.Second, func() error {
			got, err := instances(ns, svc)
			if err != nil && len(want) > 0 {
				return err
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("%s/%s: %v, want %v", ns, svc, got, want)
			}
			return nil
		})
	}
	mapped := aws.CatalogInstanceID("Task_2")
	if mapped == "Task_2" || !strings.HasPrefix(mapped, "cm-") {
		t.Fatalf("Task_2 mapped to %q", mapped)
	}
	expect("ecs", "orders", map[string]string{
		"task1": "10.1.0.5:8080 HEALTH_PASSING aws-cloudmap",
		mapped:  "10.1.0.6:8080 HEALTH_PASSING aws-cloudmap",
	})
	// Changes and deletions in Cloud Map follow.
	reg("task1", "10.1.0.7", "8081")
	if _, err := clients.CloudMap.DeregisterInstance(ctx, &sd.DeregisterInstanceInput{ServiceId: orders.Service.Id, InstanceId: sdk.String("Task_2")}); err != nil {
		t.Fatal(err)
	}
	expect("ecs", "orders", map[string]string{"task1": "10.1.0.7:8081 HEALTH_PASSING aws-cloudmap"})

	// Health follows Cloud Map's (custom health checks, as ECS reports them).
	pay, err := clients.CloudMap.CreateService(ctx, &sd.CreateServiceInput{Name: sdk.String("pay"), NamespaceId: sdk.String(nsID),
		HealthCheckCustomConfig: &sdtypes.HealthCheckCustomConfig{}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := clients.CloudMap.RegisterInstance(ctx, &sd.RegisterInstanceInput{ServiceId: pay.Service.Id, InstanceId: sdk.String("p1"),
		Attributes: map[string]string{"AWS_INSTANCE_IPV4": "10.1.0.8", "AWS_INSTANCE_PORT": "9090"}}); err != nil {
		t.Fatal(err)
	}
	setHealth := func(st sdtypes.CustomHealthStatus) {
		t.Helper()
		if _, err := clients.CloudMap.UpdateInstanceCustomHealthStatus(ctx, &sd.UpdateInstanceCustomHealthStatusInput{
			ServiceId: pay.Service.Id, InstanceId: sdk.String("p1"), Status: st}); err != nil {
			t.Fatal(err)
		}
	}
	setHealth(sdtypes.CustomHealthStatusUnhealthy)
	expect("ecs", "pay", map[string]string{"p1": "10.1.0.8:9090 HEALTH_CRITICAL aws-cloudmap"})
	setHealth(sdtypes.CustomHealthStatusHealthy)
	expect("ecs", "pay", map[string]string{"p1": "10.1.0.8:9090 HEALTH_PASSING aws-cloudmap"})
	if _, err := clients.CloudMap.DeregisterInstance(ctx, &sd.DeregisterInstanceInput{ServiceId: pay.Service.Id, InstanceId: sdk.String("p1")}); err != nil {
		t.Fatal(err)
	}
	expect("ecs", "pay", nil)
	// The service itself, deleted from Cloud Map, leaves the catalog.
	if _, err := clients.CloudMap.DeleteService(ctx, &sd.DeleteServiceInput{Id: pay.Service.Id}); err != nil {
		t.Fatal(err)
	}
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		if _, err := cl.Catalog.GetService(ctx, &apipb.GetServiceRequest{Namespace: "ecs", Name: "pay"}); status.Code(err) != codes.NotFound {
			return fmt.Errorf("ecs/pay is still in the catalog (%v)", err)
		}
		return nil
	})

	// A local service is published as "<svc>.<ns>", marked as this site's.
	register := func(id string) {
		t.Helper()
		if _, err := cl.Catalog.Register(ctx, &apipb.RegisterRequest{
			Service:  &apipb.Service{Namespace: "shop", Name: "web", Ports: []*apipb.ServicePort{{Name: "http", Protocol: apipb.Protocol_PROTOCOL_HTTP}}},
			Instance: &apipb.Instance{Id: id, Address: "10.2.0.9", Ports: map[string]uint32{"http": 8443}},
		}); err != nil {
			t.Fatal(err)
		}
	}
	register("web-1")
	published := func() (map[string]map[string]string, error) {
		out := map[string]map[string]string{}
		svcs, err := clients.CloudMap.ListServices(ctx, &sd.ListServicesInput{})
		if err != nil {
			return nil, err
		}
		for _, s := range svcs.Services {
			ins, err := clients.CloudMap.ListInstances(ctx, &sd.ListInstancesInput{ServiceId: s.Id})
			if err != nil {
				return nil, err
			}
			for _, in := range ins.Instances {
				out[sdk.ToString(s.Name)+"/"+sdk.ToString(in.Id)] = in.Attributes
			}
		}
		return out, nil
	}
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		got, err := published()
		if err != nil {
			return err
		}
		a := got["web.shop/web-1"]
		if a["AWS_INSTANCE_IPV4"] != "10.2.0.9" || a["AWS_INSTANCE_PORT"] != "8443" || a[aws.SiteAttr] != "aws-east" {
			return fmt.Errorf("published: %v", got)
		}
		// Never back: imported instances are not published, and what was
		// published is not imported.
		if len(got) != 2 {
			return fmt.Errorf("cloud map holds %v; want orders/task1 and web.shop/web-1 only", got)
		}
		return nil
	})
	sums, err := cl.Catalog.ListServices(ctx, &apipb.ListServicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range sums.Services {
		names = append(names, s.Service.Namespace+"/"+s.Service.Name)
	}
	if fmt.Sprint(names) != "[ecs/orders shop/web]" {
		t.Fatalf("catalog holds %v", names)
	}
	// Gone locally: withdrawn from Cloud Map.
	if _, err := cl.Catalog.Deregister(ctx, &apipb.DeregisterRequest{Namespace: "shop", Service: "web", InstanceId: "web-1"}); err != nil {
		t.Fatal(err)
	}
	controlplanetest.WaitFor(t, 20*time.Second, func() error {
		got, err := published()
		if err != nil {
			return err
		}
		if _, ok := got["web.shop/web-1"]; ok || len(got) != 1 {
			return fmt.Errorf("cloud map still holds %v", got)
		}
		return nil
	})
}
