package hostilepeer

import (
	"context"
	"fmt"
	"time"

	"github.com/straitmesh/strait/controlplane/api/apipb"
)

// FloodNamespace is the namespace of the services the scripts invent.
const FloodNamespace = "flood"

// eventBatch is how many services (with their instances) one event
// carries: well under the importer's message size limit.
const eventBatch = 1000

// FloodService is the i-th invented service and its one instance.
func FloodService(i int) (*apipb.Change, *apipb.Change) {
	name := fmt.Sprintf("svc-%d", i)
	svc := &apipb.Change{Change: &apipb.Change_Service{Service: &apipb.Service{Namespace: FloodNamespace, Name: name,
		Ports: []*apipb.ServicePort{{Name: "tcp", Protocol: apipb.Protocol_PROTOCOL_TCP}}}}}
	n := i + 1
	addr := fmt.Sprintf("10.%d.%d.%d", (n>>16)&0xff, (n>>8)&0xff, n&0xff)
	in := &apipb.Change{Change: &apipb.Change_Instance{Instance: &apipb.Instance{Namespace: FloodNamespace, Service: name,
		Id: name + "-1", Address: addr, Ports: map[string]uint32{"tcp": 7000}}}}
	return svc, in
}

// resync sends services [from, to) as one complete resync at version,
// with gateways (nil: none announced) on its first event.
func resync(send func(*apipb.ReplicationEvent) error, from, to int, version uint64, gateways []string) error {
	first := true
	for i := from; i < to || first; {
		ev := &apipb.ReplicationEvent{Version: version, Resync: first}
		if first && gateways != nil {
			ev.Gateways = &apipb.GatewaySet{Addresses: gateways}
		}
		first = false
		for ; i < to && len(ev.Changes) < 2*eventBatch; i++ {
			svc, in := FloodService(i)
			ev.Changes = append(ev.Changes, svc, in)
		}
		ev.Synced = i >= to
		if err := send(ev); err != nil {
			return err
		}
	}
	return nil
}

// Flood is a resync of n services with one instance each, all in one
// full export (the audit's H2 used 66,000), then silence but for
// heartbeats.
func Flood(n int) Script {
	return func(ctx context.Context, send func(*apipb.ReplicationEvent) error) error {
		if err := resync(send, 0, n, 1, nil); err != nil {
			return err
		}
		return heartbeats(ctx, send, 1)
	}
}

// NeverFinish starts a resync and sends services until about limit bytes
// have gone, then stays silent but for heartbeats: the resync never
// completes.
func NeverFinish(limit int) Script {
	return func(ctx context.Context, send func(*apipb.ReplicationEvent) error) error {
		sent, i := 0, 0
		for first := true; sent < limit; first = false {
			ev := &apipb.ReplicationEvent{Version: 1, Resync: first}
			for ; len(ev.Changes) < 2*eventBatch; i++ {
				svc, in := FloodService(i)
				ev.Changes = append(ev.Changes, svc, in)
			}
			if err := send(ev); err != nil {
				return err
			}
			sent += eventBatch * 120 // about the wire size of a batch
		}
		return heartbeats(ctx, send, 1)
	}
}

// Gateways is a small valid export announcing gateways as the peer's
// gateway addresses (garbage, oversized strings, the real site's own
// internal ports: whatever the caller puts in).
func Gateways(gateways []string) Script {
	return func(ctx context.Context, send func(*apipb.ReplicationEvent) error) error {
		if err := resync(send, 0, 1, 1, gateways); err != nil {
			return err
		}
		return heartbeats(ctx, send, 1)
	}
}

// Churn exports n services, then every interval, for rounds rounds,
// replaces all of them by n new ones (new names: each needs a new
// virtual IP in the real site).
func Churn(n, rounds int, interval time.Duration) Script {
	return func(ctx context.Context, send func(*apipb.ReplicationEvent) error) error {
		if err := resync(send, 0, n, 1, nil); err != nil {
			return err
		}
		t := time.NewTicker(interval)
		defer t.Stop()
		for r := 1; r <= rounds; r++ {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
			ev := &apipb.ReplicationEvent{Version: uint64(r + 1)}
			for i := (r - 1) * n; i < r*n; i++ {
				ev.Changes = append(ev.Changes, &apipb.Change{Change: &apipb.Change_ServiceDeleted{
					ServiceDeleted: &apipb.ServiceKey{Namespace: FloodNamespace, Name: fmt.Sprintf("svc-%d", i)}}})
			}
			for i := r * n; i < (r+1)*n; i++ {
				svc, in := FloodService(i)
				ev.Changes = append(ev.Changes, svc, in)
			}
			if err := send(ev); err != nil {
				return err
			}
		}
		return heartbeats(ctx, send, uint64(rounds+1))
	}
}

// heartbeats keeps the stream alive (an event with only a version) until
// ctx ends, as a live exporter would.
func heartbeats(ctx context.Context, send func(*apipb.ReplicationEvent) error, version uint64) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := send(&apipb.ReplicationEvent{Version: version}); err != nil {
				return err
			}
		}
	}
}
