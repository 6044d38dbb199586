package controlplane

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api"
	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state"
	"github.com/straitmesh/strait/controlplane/state/statepb"
	"github.com/straitmesh/strait/trust/ca"
)

// CA rotation runs on the leader in three steps, each a Raft command:
//
//  1. prepare: a new root is published in the bundle but does not sign;
//  2. activate, once the propagation delay has passed (every agent,
//     workload and peer trusts the new root by then): it signs, and the
//     old root retires; every server and agent re-issues its SVIDs from
//     the new root at once;
//  3. drop, once every leaf the old root can have signed has expired.
//
// Preparation starts on `strait ca rotate` or when the active root has
// used 80% of its lifetime. All decisions use the server's clock.

// rotationLeeway covers the longest leaf the old root can have signed.
func (s *Server) maxLeafTTL() time.Duration {
	if s.cfg.MaxLeafTTL > 0 {
		return s.cfg.MaxLeafTTL
	}
	return max(s.cfg.ServerSVIDTTL, api.MaxSVIDTTL, api.AgentSVIDTTL) + ca.Backdate
}

// prepareRoot commits a new prepared root. Leader only.
func (s *Server) prepareRoot(ctx context.Context) (*statepb.CARoot, error) {
	root, err := ca.Generate(s.id.td, s.cfg.Now(), 0)
	if err != nil {
		return nil, err
	}
	keyDER, err := root.MarshalKey()
	if err != nil {
		return nil, err
	}
	sealed, err := s.id.kek.Seal(keyDER, []byte(s.id.td.Name()))
	if err != nil {
		return nil, err
	}
	r := &statepb.CARoot{Certificate: root.Certificate().Raw, SealedKey: sealed}
	if _, _, err := s.Apply(ctx, &statepb.Command{Cmd: &statepb.Command_PrepareRoot{PrepareRoot: r}}); err != nil {
		return nil, err
	}
	s.log.Info("ca root prepared", "activates_after", s.cfg.CAPropagationDelay)
	return r, nil
}

// rotateStep takes whichever rotation step is due. Leader only.
func (s *Server) rotateStep(ctx context.Context) error {
	site := s.store.Site()
	if site == nil {
		return nil
	}
	now := s.cfg.Now()
	prepared := false
	for _, r := range site.Roots {
		switch r.Phase {
		case statepb.RootPhase_ROOT_PHASE_PREPARED:
			prepared = true
			if now.Before(r.Since.AsTime().Add(s.cfg.CAPropagationDelay)) {
				continue
			}
			cmd := &statepb.Command{Cmd: &statepb.Command_ActivateRoot{ActivateRoot: &statepb.ActivateRoot{
				Certificate: r.Certificate, DropAfter: timestamppb.New(now.Add(s.maxLeafTTL())),
			}}}
			if _, _, err := s.Apply(ctx, cmd); err != nil {
				return fmt.Errorf("activate root: %w", err)
			}
			s.log.Info("ca root activated; the previous root retires", "drop_after", now.Add(s.maxLeafTTL()))
			return nil
		case statepb.RootPhase_ROOT_PHASE_RETIRED:
			if now.Before(r.DropAfter.AsTime()) {
				continue
			}
			cmd := &statepb.Command{Cmd: &statepb.Command_DropRoot{DropRoot: &statepb.DropRoot{Certificate: r.Certificate}}}
			if _, _, err := s.Apply(ctx, cmd); err != nil {
				return fmt.Errorf("drop root: %w", err)
			}
			s.log.Info("retired ca root dropped from the bundle")
			return nil
		}
	}
	if !prepared {
		cert, err := x509.ParseCertificate(site.Root.Certificate)
		if err != nil {
			return err
		}
		life := cert.NotAfter.Sub(cert.NotBefore)
		if !now.Before(cert.NotBefore.Add(life * 4 / 5)) {
			s.log.Info("ca root is 80% through its life; preparing its successor", "expires", cert.NotAfter)
			_, err := s.prepareRoot(ctx)
			return err
		}
	}
	return nil
}

// rotateLoop runs rotation steps while this server leads.
func (s *Server) rotateLoop(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		if err := s.rotateStep(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("ca rotation step failed; will retry", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// RotateCA implements api.Node.
func (s *Server) RotateCA(ctx context.Context) (*apipb.CARootStatus, error) {
	r, err := s.prepareRoot(ctx)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(r.Certificate)
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	return rootStatus("prepared", cert, now, now.Add(s.cfg.CAPropagationDelay)), nil
}

// tsTime is ts as a time, the zero time when ts is unset (AsTime would
// say 1970).
func tsTime(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}

func rootStatus(phase string, c *x509.Certificate, since, next time.Time) *apipb.CARootStatus {
	st := &apipb.CARootStatus{
		Phase: phase, SubjectKeyId: fmt.Sprintf("%x", c.SubjectKeyId),
		NotBefore: timestamppb.New(c.NotBefore), NotAfter: timestamppb.New(c.NotAfter),
	}
	if !since.IsZero() {
		st.Since = timestamppb.New(since)
	}
	if !next.IsZero() {
		st.NextStep = timestamppb.New(next)
	}
	return st
}

// CAStatus implements api.Node.
func (s *Server) CAStatus() (*apipb.CAStatusResponse, error) {
	site := s.store.Site()
	if site == nil {
		return nil, state.ErrNotBootstrapped
	}
	resp := &apipb.CAStatusResponse{BundleSequence: site.BundleSequence}
	active, err := x509.ParseCertificate(site.Root.Certificate)
	if err != nil {
		return nil, err
	}
	since := tsTime(site.Root.Since)
	if since.IsZero() {
		// Sites bootstrapped before the first root recorded its time: the
		// root was made when the site was, which is its certificate's start.
		since = active.NotBefore
	}
	resp.Roots = append(resp.Roots, rootStatus("active", active, since, time.Time{}))
	for _, r := range site.Roots {
		c, err := x509.ParseCertificate(r.Certificate)
		if err != nil {
			return nil, err
		}
		switch r.Phase {
		case statepb.RootPhase_ROOT_PHASE_PREPARED:
			resp.Roots = append(resp.Roots, rootStatus("prepared", c, tsTime(r.Since), tsTime(r.Since).Add(s.cfg.CAPropagationDelay)))
		case statepb.RootPhase_ROOT_PHASE_RETIRED:
			resp.Roots = append(resp.Roots, rootStatus("retired", c, tsTime(r.Since), tsTime(r.DropAfter)))
		}
	}
	return resp, nil
}

// authorities parses the site's trusted roots, active first.
func authorities(site *statepb.Bootstrap) ([]*x509.Certificate, error) {
	ders := [][]byte{site.Root.Certificate}
	for _, r := range site.Roots {
		ders = append(ders, r.Certificate)
	}
	out := make([]*x509.Certificate, 0, len(ders))
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// followIdentity keeps this server's trust bundle and SVID in step with
// the site's roots: new roots are trusted as soon as they are prepared,
// and the SVID is re-issued as soon as another root signs.
func (s *Server) followIdentity(ctx context.Context) error {
	var seq uint64
	for {
		changed := s.store.IdentityChanged()
		if site := s.store.Site(); site != nil && site.BundleSequence != seq {
			if err := s.syncBundle(site); err != nil {
				s.log.Warn("trust bundle update failed", "err", err)
			} else {
				seq = site.BundleSequence
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

func (s *Server) syncBundle(site *statepb.Bootstrap) error {
	auth, err := authorities(site)
	if err != nil {
		return err
	}
	cur := s.ident.Bundle().X509Authorities()
	if !sameCerts(cur, auth) {
		s.ident.SetBundle(bundleOf(s.id.td, auth))
		sv := s.ident.SVID()
		if err := s.ident.SetSVID(sv.Certificates, sv.PrivateKey); err != nil { // re-present with the new roots
			return err
		}
		if s.id.persistent {
			if err := dataDir(s.cfg.DataDir).writeIdentity(sv.Certificates, sv.PrivateKey, auth); err != nil {
				return err
			}
		}
	}
	return s.renewSVID()
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i].Raw, b[i].Raw) {
			return false
		}
	}
	return true
}
