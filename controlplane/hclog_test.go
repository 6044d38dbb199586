package controlplane

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// lockedBuffer is a bytes.Buffer safe for Raft's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestHclogAdapterRendersHclogValues(t *testing.T) {
	var buf lockedBuffer
	l := newHclog(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), "raft")
	l.Info("initial configuration", "servers", hclog.Fmt("%+v", []struct{ ID string }{{"s1"}}), "mask", hclog.Hex(255), "mode", hclog.Octal(8), "bits", hclog.Binary(5), "q", hclog.Quote("a\tb"))
	l.With("peer", hclog.Fmt("%s-%d", "s", 2)).Warn("heartbeat failed", "err", fmt.Errorf("read: %w", errClosedForTest))
	out := buf.String()
	for _, want := range []string{"servers=[{ID:s1}]", "mask=0xff", "mode=010", "bits=0b101", `q="\"a\\tb\""`, "peer=s-2", "level=WARN"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "%") {
		t.Errorf("a format verb reached the log:\n%s", out)
	}
}

var errClosedForTest = fmt.Errorf("not closed")

// TestRaftLogsNoFormatVerbs starts a real (in-memory) Raft node through the
// adapter, as a server does: its lines carry no literal %+v.
func TestRaftLogsNoFormatVerbs(t *testing.T) {
	var buf lockedBuffer
	cfg := raft.DefaultConfig()
	cfg.LocalID = "s1"
	cfg.Logger = newHclog(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), "raft")
	store := raft.NewInmemStore()
	_, trans := raft.NewInmemTransport("s1")
	conf := raft.Configuration{Servers: []raft.Server{{ID: "s1", Address: trans.LocalAddr()}}}
	if err := raft.BootstrapCluster(cfg, store, store, raft.NewInmemSnapshotStore(), trans, conf); err != nil {
		t.Fatal(err)
	}
	r, err := raft.NewRaft(cfg, &raft.MockFSM{}, store, store, raft.NewInmemSnapshotStore(), trans)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Shutdown().Error(); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if !strings.Contains(out, "initial configuration") {
		t.Fatalf("raft logged no initial configuration:\n%s", out)
	}
	if strings.Contains(out, "%+v") || strings.Contains(out, "%v") {
		t.Fatalf("a format verb reached the log:\n%s", out)
	}
}

func TestHclogAdapterShutdownIsNotAnError(t *testing.T) {
	var buf lockedBuffer
	l := newHclog(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})), "raft")
	l.Error("failed to accept connection", "error", fmt.Errorf("accept: %w", net.ErrClosed))
	l.Error("a real failure", "error", errClosedForTest)
	out := buf.String()
	if strings.Contains(out, "failed to accept connection") || !strings.Contains(out, "a real failure") {
		t.Fatalf("log:\n%s", out)
	}
}
