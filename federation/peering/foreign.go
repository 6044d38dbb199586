package peering

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/trust/bundleendpoint"
)

// Foreign bundles are refreshed by the leader, each trust domain in its own
// goroutine so that an unreachable peer delays nobody (for a peer whose
// replication stream is alive, a failure is only logged at debug level: the
// stream carries its bundle, and its endpoint may sit behind the gateways): at half the
// bundle's refresh hint after a success (5m hint when none is given), and
// every 30s at most after a failure. The last known bundle stays in use
// through failures; every attempt's outcome is committed, so any server
// shows the status.

const (
	defaultForeignHint = 5 * time.Minute
	maxFailureRetry    = 30 * time.Second
)

// FetchForeign fetches a foreign bundle from its endpoint: one fetch,
// authenticated per the record's profile (against its stored bundle for
// https_spiffe).
func (m *Manager) FetchForeign(ctx context.Context, f *statepb.ForeignBundle) (*spiffebundle.Bundle, error) {
	td, err := spiffeid.TrustDomainFromString(f.TrustDomain)
	if err != nil {
		return nil, err
	}
	cfg := bundleendpoint.FetchConfig{URL: f.EndpointUrl, TrustDomain: td, WebRoots: m.cfg.ForeignWebRoots}
	if f.EndpointSpiffeId != "" {
		if cfg.EndpointID, err = spiffeid.FromString(f.EndpointSpiffeId); err != nil {
			return nil, err
		}
		known, err := bundleendpoint.Parse(td, f.Bundle)
		if err != nil {
			return nil, fmt.Errorf("stored bundle: %w", err)
		}
		cfg.Trusted = known.X509Bundle()
	}
	return bundleendpoint.Fetch(ctx, cfg)
}

// nextRefresh is when a foreign bundle should be fetched again.
func nextRefresh(f *statepb.ForeignBundle) time.Time {
	hint := defaultForeignHint
	if f.RefreshHintSeconds > 0 {
		hint = time.Duration(f.RefreshHintSeconds) * time.Second
	}
	interval := max(hint/2, time.Second)
	switch {
	case f.LastAttempt == nil:
		return time.Time{}
	case f.LastError != "":
		return f.LastAttempt.AsTime().Add(min(interval, maxFailureRetry))
	}
	return f.LastAttempt.AsTime().Add(interval)
}

// refreshForeign runs while this server leads.
func (m *Manager) refreshForeign(ctx context.Context) {
	var (
		mu       sync.Mutex
		fetching = map[string]bool{}
		wg       sync.WaitGroup
	)
	defer wg.Wait()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		now := m.cfg.Now()
		for _, f := range m.cfg.Store.ForeignBundles() {
			mu.Lock()
			busy := fetching[f.TrustDomain]
			if !busy && !now.Before(nextRefresh(f)) {
				fetching[f.TrustDomain] = true
				wg.Add(1)
				go func() {
					defer wg.Done()
					m.refreshOne(ctx, f)
					mu.Lock()
					delete(fetching, f.TrustDomain)
					mu.Unlock()
				}()
			}
			mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// replicationFresh reports whether f is a peer whose replication stream
// is fresh (see ReplicationFresh).
func (m *Manager) replicationFresh(f *statepb.ForeignBundle, now time.Time) bool {
	return ReplicationFresh(m.cfg.Store, f, now, m.cfg.StaleAfter)
}

// ReplicationFresh reports whether f is a peer whose replication stream
// has been heard from within staleAfter (peer_stale_after): the stream
// carries every change of its bundle (and crosses the gateways, where the
// bundle endpoint may not be reachable).
func ReplicationFresh(st interface {
	PeerImport(peer string) (*statepb.PeerImport, bool)
}, f *statepb.ForeignBundle, now time.Time, staleAfter time.Duration) bool {
	if f.PeerName == "" {
		return false
	}
	imp, ok := st.PeerImport(f.PeerName)
	return ok && imp.LastContact != nil && now.Sub(imp.LastContact.AsTime()) < staleAfter
}

func (m *Manager) refreshOne(ctx context.Context, f *statepb.ForeignBundle) {
	fctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	b, err := m.FetchForeign(fctx, f)
	cancel()
	if ctx.Err() != nil {
		return
	}
	rec := proto.Clone(f).(*statepb.ForeignBundle)
	now := m.cfg.Now()
	rec.LastAttempt = timestamppb.New(now)
	if err == nil {
		seq, _ := b.SequenceNumber()
		if seq < f.Sequence {
			err = fmt.Errorf("endpoint served sequence %d, older than the %d already held", seq, f.Sequence)
		}
	}
	if err == nil {
		doc, merr := b.Marshal()
		if merr != nil {
			err = merr
		} else {
			rec.Bundle, rec.LastError, rec.LastSuccess = doc, "", timestamppb.New(now)
			rec.Sequence, _ = b.SequenceNumber()
			if h, ok := b.RefreshHint(); ok {
				rec.RefreshHintSeconds = int64(h / time.Second)
			}
		}
	}
	if err != nil {
		rec.LastError = err.Error()
		lvl := slog.LevelWarn
		if m.replicationFresh(f, now) {
			lvl = slog.LevelDebug
		}
		m.log.Log(ctx, lvl, "foreign bundle refresh failed; keeping the last known bundle", "trust_domain", f.TrustDomain, "err", err)
	}
	// The relationship may have been removed or replaced meanwhile.
	if cur, ok := m.cfg.Store.ForeignBundle(f.TrustDomain); !ok || cur.EndpointUrl != f.EndpointUrl {
		return
	}
	if _, _, aerr := m.cfg.Consensus.Apply(ctx, &statepb.Command{Cmd: &statepb.Command_SetForeignBundle{SetForeignBundle: rec}}); aerr != nil && ctx.Err() == nil {
		m.log.Warn("foreign bundle status not committed", "trust_domain", f.TrustDomain, "err", aerr)
	}
}
