package authority

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/straitmesh/strait/controlplane/api/apipb"
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

// rotateTick is how often the leader checks whether a rotation step is due.
const rotateTick = 200 * time.Millisecond

// prepareRoot commits a new prepared root. Leader only.
func (a *Authority) prepareRoot(ctx context.Context) (*statepb.CARoot, error) {
	root, err := ca.Generate(a.cfg.TrustDomain, a.cfg.Now(), 0)
	if err != nil {
		return nil, err
	}
	r, err := SealRoot(a.cfg.KEK, a.cfg.TrustDomain, root)
	if err != nil {
		return nil, err
	}
	if _, _, err := a.cfg.Consensus.Apply(ctx, &statepb.Command{Cmd: &statepb.Command_PrepareRoot{PrepareRoot: r}}); err != nil {
		return nil, err
	}
	a.log.Info("ca root prepared", "activates_after", a.cfg.CAPropagationDelay)
	return r, nil
}

// rotateStep takes whichever rotation step is due. Leader only.
func (a *Authority) rotateStep(ctx context.Context) error {
	site := a.cfg.Store.Site()
	if site == nil {
		return nil
	}
	now := a.cfg.Now()
	prepared := false
	for _, r := range site.Roots {
		switch r.Phase {
		case statepb.RootPhase_ROOT_PHASE_PREPARED:
			prepared = true
			if now.Before(r.Since.AsTime().Add(a.cfg.CAPropagationDelay)) {
				continue
			}
			cmd := &statepb.Command{Cmd: &statepb.Command_ActivateRoot{ActivateRoot: &statepb.ActivateRoot{
				Certificate: r.Certificate, DropAfter: timestamppb.New(now.Add(a.cfg.MaxLeafTTL)),
			}}}
			if _, _, err := a.cfg.Consensus.Apply(ctx, cmd); err != nil {
				return fmt.Errorf("activate root: %w", err)
			}
			a.log.Info("ca root activated; the previous root retires", "drop_after", now.Add(a.cfg.MaxLeafTTL))
			return nil
		case statepb.RootPhase_ROOT_PHASE_RETIRED:
			if now.Before(r.DropAfter.AsTime()) {
				continue
			}
			cmd := &statepb.Command{Cmd: &statepb.Command_DropRoot{DropRoot: &statepb.DropRoot{Certificate: r.Certificate}}}
			if _, _, err := a.cfg.Consensus.Apply(ctx, cmd); err != nil {
				return fmt.Errorf("drop root: %w", err)
			}
			a.log.Info("retired ca root dropped from the bundle")
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
			a.log.Info("ca root is 80% through its life; preparing its successor", "expires", cert.NotAfter)
			_, err := a.prepareRoot(ctx)
			return err
		}
	}
	return nil
}

// rotateLoop runs rotation steps until ctx (the leadership) ends.
func (a *Authority) rotateLoop(ctx context.Context) {
	t := time.NewTicker(rotateTick)
	defer t.Stop()
	for {
		if err := a.rotateStep(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("ca rotation step failed; will retry", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// RotateCA prepares a new CA root (leader only: Consensus refuses
// otherwise). It signs once the propagation delay has passed.
func (a *Authority) RotateCA(ctx context.Context) (*apipb.CARootStatus, error) {
	r, err := a.prepareRoot(ctx)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(r.Certificate)
	if err != nil {
		return nil, err
	}
	now := a.cfg.Now()
	return rootStatus("prepared", cert, now, now.Add(a.cfg.CAPropagationDelay)), nil
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

// CAStatus lists the site's roots and their phases, the active one first.
func (a *Authority) CAStatus() (*apipb.CAStatusResponse, error) {
	site := a.cfg.Store.Site()
	if site == nil {
		return nil, ErrNotBootstrapped
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
			resp.Roots = append(resp.Roots, rootStatus("prepared", c, tsTime(r.Since), tsTime(r.Since).Add(a.cfg.CAPropagationDelay)))
		case statepb.RootPhase_ROOT_PHASE_RETIRED:
			resp.Roots = append(resp.Roots, rootStatus("retired", c, tsTime(r.Since), tsTime(r.DropAfter)))
		}
	}
	return resp, nil
}
