package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	sdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/straitmesh/strait/cloud/aws"
	"github.com/straitmesh/strait/cloud/aws/awstest"
)

// TestGatewayFindsServersFromTags: `strait gateway --server
// "provider=aws ..."` waits until tagged servers exist, then dials them;
// plain addresses pass through untouched.
func TestGatewayFindsServersFromTags(t *testing.T) {
	cfg := awstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if got, err := resolveServers(ctx, []string{"10.0.0.1:7400"}, cfg, t.Logf); err != nil || len(got) != 1 || got[0] != "10.0.0.1:7400" {
		t.Fatalf("plain addresses: %v %v", got, err)
	}
	if _, err := resolveServers(ctx, []string{"provider=aws tag_key=x"}, cfg, t.Logf); err == nil || !strings.Contains(err.Error(), "tag_value") {
		t.Fatalf("a bad spec: %v", err)
	}
	c, err := aws.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	found := make(chan []string, 1)
	logged := make(chan struct{}, 100)
	go func() {
		addrs, err := resolveServers(ctx, []string{"provider=aws tag_key=strait-site tag_value=aws-east"}, cfg, func(string, ...any) { logged <- struct{}{} })
		if err != nil {
			t.Error(err)
		}
		found <- addrs
	}()
	select {
	case <-logged: // nothing tagged yet: it says so and retries
	case <-ctx.Done():
		t.Fatal("no retry reported")
	}
	vpc, err := c.EC2.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: sdk.String("10.20.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := c.EC2.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: vpc.Vpc.VpcId, CidrBlock: sdk.String("10.20.1.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.EC2.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: sdk.String("ami-12c6146b"), MinCount: sdk.Int32(1), MaxCount: sdk.Int32(1),
		SubnetId: sub.Subnet.SubnetId, PrivateIpAddress: sdk.String("10.20.1.10"),
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance,
			Tags: []ec2types.Tag{{Key: sdk.String("strait-site"), Value: sdk.String("aws-east")}}}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case addrs := <-found:
		if len(addrs) != 1 || addrs[0] != "10.20.1.10:7400" {
			t.Fatalf("found %v", addrs)
		}
	case <-ctx.Done():
		t.Fatal("servers never found")
	}
}
