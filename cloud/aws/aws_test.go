package aws_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	sdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/straitmesh/strait/cloud/aws"
	"github.com/straitmesh/strait/cloud/aws/awstest"
	"github.com/straitmesh/strait/trust/keywrap"
)

func TestParseDiscovery(t *testing.T) {
	for _, tt := range []struct {
		spec, err string
		want      aws.Discovery
	}{
		{spec: "provider=aws region=us-east-1 tag_key=strait-site tag_value=aws-east",
			want: aws.Discovery{Region: "us-east-1", TagKey: "strait-site", TagValue: "aws-east", AddrType: "private_v4", Port: 7400}},
		{spec: "provider=aws tag_key=k tag_value=v addr_type=public_v4 port=8500",
			want: aws.Discovery{TagKey: "k", TagValue: "v", AddrType: "public_v4", Port: 8500}},
		{spec: "provider=gce tag_key=k tag_value=v", err: "provider must be aws"},
		{spec: "provider=aws tag_key=k", err: "tag_key and tag_value are required"},
		{spec: "provider=aws tag_key=k tag_value=v port=0", err: "not a port number"},
		{spec: "provider=aws tag_key=k tag_value=v addr_type=ipv6", err: "addr_type"},
		{spec: "provider=aws tag_key=k tag_value=v colour=blue", err: `unknown key "colour"`},
		{spec: "provider=aws tag_key=k tag_key=v", err: "given twice"},
		{spec: "provider=aws tag_key", err: "want key=value"},
	} {
		got, err := aws.ParseDiscovery(tt.spec)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: error %v, want %q", tt.spec, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q: %+v %v, want %+v", tt.spec, got, err, tt.want)
		}
	}
	if err := aws.ValidateJoin([]string{"10.0.0.1:7400", "provider=aws tag_key=a tag_value=b"}); err != nil {
		t.Fatal(err)
	}
	if err := aws.ValidateJoin([]string{"10.0.0.1"}); err == nil {
		t.Fatal("an address without a port was accepted")
	}
}

func TestConfigRejectsBadEndpoints(t *testing.T) {
	for _, e := range []map[string]string{{"sqs": "http://x"}, {"ec2": "ftp://x"}, {"*": "not a url"}} {
		if err := (aws.Config{Endpoints: e}).Validate(); err == nil {
			t.Errorf("%v accepted", e)
		}
	}
}

// RunInstances places tagged instances at the given private IPs (in a VPC
// on loopback, which the emulator allows), returning their IDs.
func RunInstances(t *testing.T, c *aws.Clients, tag string, ips ...string) []string {
	t.Helper()
	ctx := context.Background()
	vpc, err := c.EC2.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: sdk.String("127.0.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := c.EC2.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: vpc.Vpc.VpcId, CidrBlock: sdk.String("127.0.1.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, ip := range ips {
		in := &ec2.RunInstancesInput{ImageId: sdk.String("ami-12c6146b"), MinCount: sdk.Int32(1), MaxCount: sdk.Int32(1),
			SubnetId: sub.Subnet.SubnetId, PrivateIpAddress: sdk.String(ip)}
		if tag != "" {
			in.TagSpecifications = []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance,
				Tags: []ec2types.Tag{{Key: sdk.String("strait-site"), Value: sdk.String(tag)}}}}
		}
		out, err := c.EC2.RunInstances(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sdk.ToString(out.Instances[0].InstanceId))
	}
	return ids
}

func TestDiscoveryFindsRunningTaggedInstances(t *testing.T) {
	cfg := awstest.Start(t)
	ctx := context.Background()
	c, err := aws.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ids := RunInstances(t, c, "aws-east", "127.0.1.13", "127.0.1.11", "127.0.1.12")
	RunInstances(t, c, "aws-west", "127.0.1.20")
	RunInstances(t, c, "", "127.0.1.21")
	if _, err := c.EC2.StopInstances(ctx, &ec2.StopInstancesInput{InstanceIds: ids[:1]}); err != nil {
		t.Fatal(err)
	}
	got, err := aws.ResolveAddrs(ctx, []string{"10.9.9.9:7400", "provider=aws tag_key=strait-site tag_value=aws-east port=7500"}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.9.9.9:7400", "127.0.1.11:7500", "127.0.1.12:7500"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("discovered %v, want %v (running, tagged aws-east, sorted)", got, want)
	}
}

func TestDiscoveryReportsAWSErrors(t *testing.T) {
	cfg := awstest.Start(t)
	cfg.Endpoints = map[string]string{"ec2": "http://127.0.0.1:1"} // nothing listens
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := aws.ResolveAddrs(ctx, []string{"provider=aws tag_key=strait-site tag_value=aws-east"}, cfg)
	if err == nil || !strings.Contains(err.Error(), "ec2:DescribeInstances") {
		t.Fatalf("error %v, want one naming ec2:DescribeInstances", err)
	}
}

func newKey(t *testing.T, c *aws.Clients) string {
	t.Helper()
	out, err := c.KMS.CreateKey(context.Background(), &kms.CreateKeyInput{Description: sdk.String("strait test")})
	if err != nil {
		t.Fatal(err)
	}
	return sdk.ToString(out.KeyMetadata.KeyId)
}

func TestKMSEnvelopeRoundTripAndRefusals(t *testing.T) {
	cfg := awstest.Start(t)
	ctx := context.Background()
	c, err := aws.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	k, err := aws.NewKMS(c, newKey(t, c))
	if err != nil {
		t.Fatal(err)
	}
	kek, err := keywrap.Generate()
	if err != nil {
		t.Fatal(err)
	}
	site := map[string]string{"strait:site": "aws-east", "strait:trust-domain": "aws-east.strait"}
	env, err := keywrap.SealEnvelope(ctx, kek, k, aws.KMSService, site, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(env.SealedKEK), string(kek.Raw())) {
		t.Fatal("the KEK is in the envelope in the clear")
	}
	got, err := env.Open(ctx, k, site)
	if err != nil || got.ID() != kek.ID() {
		t.Fatalf("open: %v (%v)", err, got)
	}
	// Another site's context is refused by KMS.
	other := map[string]string{"strait:site": "aws-west", "strait:trust-domain": "aws-east.strait"}
	if _, err := env.Open(ctx, k, other); !errors.Is(err, keywrap.ErrKeyService) {
		t.Fatalf("opened with another site's encryption context: %v", err)
	}
	// Another KMS key is refused too.
	k2, _ := aws.NewKMS(c, newKey(t, c))
	if _, err := env.Open(ctx, k2, site); !errors.Is(err, keywrap.ErrKeyService) {
		t.Fatalf("opened with another KMS key: %v", err)
	}
	// A new data key seals the same KEK.
	env2, err := keywrap.SealEnvelope(ctx, kek, k, aws.KMSService, site, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if string(env2.DataKey) == string(env.DataKey) || env2.KEKID != env.KEKID {
		t.Fatal("a rotation did not change the data key, or changed the KEK")
	}
	// A tampered envelope fails closed.
	env2.SealedKEK[len(env2.SealedKEK)-1] ^= 1
	if _, err := env2.Open(ctx, k, site); err == nil || errors.Is(err, keywrap.ErrKeyService) {
		t.Fatalf("a tampered envelope: %v", err)
	}
}

// FuzzParseDiscovery: any retry_join entry is parsed or refused with an
// error, never a panic, and what parses is complete.
func FuzzParseDiscovery(f *testing.F) {
	f.Add("provider=aws region=us-east-1 tag_key=strait-site tag_value=aws-east")
	f.Add("provider=aws tag_key=k tag_value=v port=8500 addr_type=public_v4")
	f.Add("provider=aws tag_key==")
	f.Fuzz(func(t *testing.T, s string) {
		d, err := aws.ParseDiscovery(s)
		if err != nil {
			return
		}
		if d.TagKey == "" || d.TagValue == "" || d.Port < 1 || d.Port > 65535 || (d.AddrType != "private_v4" && d.AddrType != "public_v4") {
			t.Fatalf("%q parsed to an incomplete %+v", s, d)
		}
		if err := aws.ValidateJoin([]string{s}); err != nil {
			t.Fatalf("%q parses but does not validate: %v", s, err)
		}
	})
}
