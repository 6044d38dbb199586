package gateway

import (
	"testing"
	"time"
)

func TestPoolLeastLoadedAndEjection(t *testing.T) {
	p := newPool(2, time.Minute, 0)
	now := time.Unix(1000, 0)
	p.now = func() time.Time { return now }
	p.set([]string{"a", "b", "c"})
	// Three picks land on three different endpoints: each pick loads one.
	seen := map[string]bool{}
	var held []*endpoint
	for range 3 {
		e := p.pick(nil)
		seen[e.addr] = true
		held = append(held, e)
	}
	if len(seen) != 3 {
		t.Fatalf("picks went to %v, want all three", seen)
	}
	// Release b: it is now the least loaded.
	for _, e := range held {
		if e.addr == "b" {
			p.done(e)
		}
	}
	if e := p.pick(nil); e.addr != "b" {
		t.Fatalf("picked %s, want the least loaded b", e.addr)
	}
	// Two failures eject a; tried endpoints are skipped.
	a := p.eps["a"]
	p.connected(a, false)
	p.connected(a, false)
	for range 20 {
		e := p.pick(map[*endpoint]bool{p.eps["b"]: true})
		if e.addr == "a" {
			t.Fatal("picked an ejected endpoint while another was available")
		}
		p.done(e)
	}
	// Once its ejection ends, a is back.
	now = now.Add(2 * time.Minute)
	if e := p.pick(map[*endpoint]bool{p.eps["b"]: true, p.eps["c"]: true}); e == nil || e.addr != "a" {
		t.Fatalf("after the ejection: %v", e)
	}
	// Updating the list keeps the state of those that stay.
	p.set([]string{"a", "d"})
	if p.eps["a"] != a || len(p.order) != 2 {
		t.Fatal("endpoint state lost across an update")
	}
}

func TestPoolConnectionLimit(t *testing.T) {
	p := newPool(1, time.Second, 2)
	p.set([]string{"a"})
	for range 2 {
		if p.pick(nil) == nil {
			t.Fatal("under the limit, picks must succeed")
		}
	}
	if p.pick(nil) != nil {
		t.Fatal("a third connection passed a limit of two")
	}
}
