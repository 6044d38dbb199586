package controlplane

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// leaderRunner runs the leader-only work of a server: every term this
// server leads, it runs the prepare steps in the order they were added,
// then starts every task, and cancels them all when the term ends. It is
// the one place leader-only goroutines start; components register with
// it when the server is built:
//
//	r.Prepare(name, func(ctx context.Context) error) // ordered, before any task
//	r.Go(name, func(ctx context.Context) error)      // concurrent, for the whole term
//
// A prepare step's error ends this term's leader work before any task
// starts (logged as "leader setup failed", unless it is errNotLeading);
// the next term tries again. A task's error is logged ("leader task
// stopped") and the task runs again on the next term only; a task
// returns nil when its context ends. The context given to steps and
// tasks ends when leadership is lost or the server stops; Context
// returns it to code that serves on the leader's behalf (a peer's
// replication stream), from the end of the prepare steps to the end of
// the term.
//
// Goroutines: Run owns one goroutine per term (lead), which owns one
// goroutine per task. Prepare and Go must be called before Run.
type leaderRunner struct {
	log     *slog.Logger
	prepare []leaderStep
	tasks   []leaderStep
	leading atomic.Pointer[context.Context]
}

type leaderStep struct {
	name string
	run  func(context.Context) error
}

// errNotLeading ends a term's prepare steps quietly: leadership was lost
// before the term's work could start.
var errNotLeading = errors.New("no longer the leader")

func newLeaderRunner(log *slog.Logger) *leaderRunner { return &leaderRunner{log: log} }

// Prepare adds a step run, in order, at the start of every term before
// any task starts.
func (l *leaderRunner) Prepare(name string, run func(context.Context) error) {
	l.prepare = append(l.prepare, leaderStep{name, run})
}

// Go adds a task run for the whole of every term.
func (l *leaderRunner) Go(name string, run func(context.Context) error) {
	l.tasks = append(l.tasks, leaderStep{name, run})
}

// Context is the current term's context, while this server leads and its
// prepare steps are done.
func (l *leaderRunner) Context() (context.Context, bool) {
	p := l.leading.Load()
	if p == nil {
		return nil, false
	}
	return *p, true
}

// Run follows leadership until ctx ends: isLeader says whether this
// server leads now, and changed signals that it may have changed.
// Notifications may be dropped (Raft's LeaderCh does when nobody
// listens), so Run also looks again every second.
func (l *leaderRunner) Run(ctx context.Context, isLeader func() bool, changed <-chan bool) error {
	var stop func()
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		leads := isLeader()
		switch {
		case leads && stop == nil:
			stop = l.start(ctx)
		case !leads && stop != nil:
			stop()
			stop = nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-tick.C:
		}
	}
}

// start runs lead until the returned function is called.
func (l *leaderRunner) start(ctx context.Context) (stop func()) {
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); l.lead(lctx) }()
	return func() { cancel(); <-done }
}

// lead runs one term's work until ctx ends.
func (l *leaderRunner) lead(ctx context.Context) {
	l.log.Info("leadership gained")
	defer l.log.Info("leadership lost")
	for _, p := range l.prepare {
		if err := p.run(ctx); err != nil {
			if !errors.Is(err, errNotLeading) && ctx.Err() == nil {
				l.log.Error("leader setup failed", "step", p.name, "err", err)
			}
			return
		}
	}
	l.leading.Store(&ctx)
	defer l.leading.Store(nil)
	var wg sync.WaitGroup
	for _, t := range l.tasks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := t.run(ctx); err != nil && ctx.Err() == nil {
				l.log.Error("leader task stopped", "task", t.name, "err", err)
			}
		}()
	}
	wg.Wait()
}
