package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The leader-task runner is driven here by a leadership flag instead of a
// Raft node: what it does with leadership (order, cancellation, the
// term's context) does not depend on where leadership comes from, and
// the real path is covered by the cluster tests that lose and regain a
// leader (TestClusterSurvivesLeaderLoss, TestNewLeaderSignsWithTheReplicatedCA).

// events records what steps and tasks did, in order.
type events struct {
	mu  sync.Mutex
	got []string
}

func (e *events) add(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got = append(e.got, s)
}

func (e *events) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.got)
}

// waitFor polls cond until it holds, failing after 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// runLeader runs r under a leadership flag the test sets.
func runLeader(t *testing.T, r *leaderRunner) (setLeader func(bool)) {
	t.Helper()
	var leads atomic.Bool
	changed := make(chan bool, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, leads.Load, changed) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return func(v bool) {
		leads.Store(v)
		select {
		case changed <- v:
		default:
		}
	}
}

func TestLeaderRunnerTerms(t *testing.T) {
	r := newLeaderRunner(slog.New(slog.NewTextHandler(io.Discard, nil)))
	var ev events
	var terms atomic.Int32
	r.Prepare("first", func(context.Context) error { ev.add("prepare first"); return nil })
	r.Prepare("second", func(ctx context.Context) error {
		if _, ok := r.Context(); ok {
			t.Error("the term's context is published before the prepare steps are done")
		}
		ev.add("prepare second")
		return nil
	})
	for _, name := range []string{"a", "b"} {
		r.Go(name, func(ctx context.Context) error {
			if name == "a" {
				terms.Add(1)
			}
			ev.add("start " + name)
			<-ctx.Done()
			ev.add("stop " + name)
			return nil
		})
	}
	setLeader := runLeader(t, r)

	if _, ok := r.Context(); ok {
		t.Fatal("a follower has a leader context")
	}
	setLeader(true)
	waitFor(t, "both tasks to start", func() bool { return len(ev.list()) == 4 })
	got := ev.list()
	if got[0] != "prepare first" || got[1] != "prepare second" || !slices.Contains(got[2:], "start a") || !slices.Contains(got[2:], "start b") {
		t.Fatalf("first term: %q, want the prepare steps in order, then both tasks", got)
	}
	lctx, ok := r.Context()
	if !ok {
		t.Fatal("no leader context while leading")
	}

	setLeader(false)
	waitFor(t, "both tasks to stop", func() bool { return len(ev.list()) == 6 })
	if lctx.Err() == nil {
		t.Error("the term's context outlived the term")
	}
	waitFor(t, "the leader context to be withdrawn", func() bool { _, ok := r.Context(); return !ok })

	setLeader(true)
	waitFor(t, "the second term's tasks", func() bool { return terms.Load() == 2 && len(ev.list()) == 10 })
}

func TestLeaderRunnerFailures(t *testing.T) {
	tests := []struct {
		name      string
		prepare   error
		wantTasks bool
	}{
		{"a failed step starts no task", errors.New("bootstrap: disk full"), false},
		{"leadership lost during the steps starts no task", fmt.Errorf("barrier: %w", errNotLeading), false},
		{"steps done: the tasks run", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newLeaderRunner(slog.New(slog.NewTextHandler(io.Discard, nil)))
			var prepared, started, failing atomic.Int32
			r.Prepare("step", func(context.Context) error { prepared.Add(1); return tt.prepare })
			r.Go("task", func(ctx context.Context) error { started.Add(1); <-ctx.Done(); return nil })
			// A task that fails is not restarted within the term: it
			// runs once per term, and the others keep running.
			r.Go("failing", func(context.Context) error { failing.Add(1); return errors.New("broken") })
			setLeader := runLeader(t, r)
			setLeader(true)
			waitFor(t, "the prepare step", func() bool { return prepared.Load() == 1 })
			if tt.wantTasks {
				waitFor(t, "the tasks", func() bool { return started.Load() == 1 && failing.Load() == 1 })
				if _, ok := r.Context(); !ok {
					t.Error("no leader context while the tasks run")
				}
			}
			setLeader(false)
			waitFor(t, "the term to end", func() bool { _, ok := r.Context(); return !ok })
			if !tt.wantTasks && (started.Load() != 0 || failing.Load() != 0) {
				t.Errorf("tasks started after a failed prepare step: %d, %d", started.Load(), failing.Load())
			}
			if tt.wantTasks && failing.Load() != 1 {
				t.Errorf("the failing task ran %d times in one term, want 1", failing.Load())
			}
		})
	}
}
