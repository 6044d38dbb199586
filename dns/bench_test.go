package dns_test

import (
	"fmt"
	"testing"

	mdns "github.com/miekg/dns"
)

// BenchmarkServeDNS is the handler alone (in-memory writer), with 1,000
// services of 10 instances: the per-query cost without sockets.
func BenchmarkServeDNS(b *testing.B) {
	ts := start(b)
	for s := 0; s < 1000; s++ {
		for i := 0; i < 10; i++ {
			k := s*10 + i
			ts.register(b, "bench", fmt.Sprintf("svc-%d", s), fmt.Sprintf("i%d", i), fmt.Sprintf("10.%d.%d.%d", byte(k>>16), byte(k>>8), byte(k)), true)
		}
	}
	waitAnswers(b, ts.addr, "svc-999.bench.aws-east.mesh", 10)
	reqs := make([]*mdns.Msg, 1000)
	for i := range reqs {
		reqs[i] = new(mdns.Msg)
		reqs[i].SetQuestion(fmt.Sprintf("svc-%d.bench.aws-east.mesh.", i), mdns.TypeA)
	}
	w := &memWriter{}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		ts.srv.ServeDNS(w, reqs[i%len(reqs)])
		i++
	}
}
