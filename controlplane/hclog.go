package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"strconv"

	"github.com/hashicorp/go-hclog"
)

// hclogAdapter lets hashicorp/raft log through slog. Raft's Info level is
// chatty but useful (elections, membership); Trace maps to Debug.
type hclogAdapter struct {
	l    *slog.Logger
	name string
	args []any
}

var _ hclog.Logger = (*hclogAdapter)(nil)

func newHclog(l *slog.Logger, name string) hclog.Logger {
	return &hclogAdapter{l: l.With("component", name), name: name}
}

func (h *hclogAdapter) level(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace, hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	}
	return slog.LevelInfo
}

func (h *hclogAdapter) Log(l hclog.Level, msg string, args ...any) {
	args = hclogArgs(args)
	lvl := h.level(l)
	if lvl >= slog.LevelError && closedConnErr(args) {
		// Raft's transport reports the listener closed under it at
		// shutdown as an error; it is the shutdown.
		lvl = slog.LevelDebug
	}
	h.l.Log(context.Background(), lvl, msg, args...)
}

// hclogArgs renders the values hclog formats itself (hclog.Fmt, Hex,
// Octal, Binary, Quote) as hclog would; slog would print hclog.Fmt's
// format string and arguments as a list ("[%+v [...]]").
func hclogArgs(args []any) []any {
	var out []any
	for i, a := range args {
		var v any
		switch a := a.(type) {
		case hclog.Format:
			if len(a) == 0 {
				v = ""
			} else if f, ok := a[0].(string); ok {
				v = fmt.Sprintf(f, a[1:]...)
			} else {
				v = fmt.Sprint(a...)
			}
		case hclog.Hex:
			v = "0x" + strconv.FormatUint(uint64(a), 16)
		case hclog.Octal:
			v = "0" + strconv.FormatUint(uint64(a), 8)
		case hclog.Binary:
			v = "0b" + strconv.FormatUint(uint64(a), 2)
		case hclog.Quote:
			v = strconv.Quote(string(a))
		default:
			continue
		}
		if out == nil {
			out = append([]any(nil), args...)
		}
		out[i] = v
	}
	if out == nil {
		return args
	}
	return out
}

// closedConnErr reports whether an argument is an error saying a network
// connection or listener was closed.
func closedConnErr(args []any) bool {
	for _, a := range args {
		if err, ok := a.(error); ok && errors.Is(err, net.ErrClosed) {
			return true
		}
	}
	return false
}
func (h *hclogAdapter) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *hclogAdapter) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *hclogAdapter) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *hclogAdapter) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *hclogAdapter) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }
func (h *hclogAdapter) enabled(l slog.Level) bool     { return h.l.Enabled(context.Background(), l) }
func (h *hclogAdapter) IsTrace() bool                 { return h.enabled(slog.LevelDebug) }
func (h *hclogAdapter) IsDebug() bool                 { return h.enabled(slog.LevelDebug) }
func (h *hclogAdapter) IsInfo() bool                  { return h.enabled(slog.LevelInfo) }
func (h *hclogAdapter) IsWarn() bool                  { return h.enabled(slog.LevelWarn) }
func (h *hclogAdapter) IsError() bool                 { return h.enabled(slog.LevelError) }
func (h *hclogAdapter) ImpliedArgs() []any            { return h.args }
func (h *hclogAdapter) With(args ...any) hclog.Logger {
	return &hclogAdapter{l: h.l.With(hclogArgs(args)...), name: h.name, args: append(append([]any(nil), h.args...), args...)}
}
func (h *hclogAdapter) Name() string                        { return h.name }
func (h *hclogAdapter) Named(name string) hclog.Logger      { return newHclog(h.l, h.name+"."+name) }
func (h *hclogAdapter) ResetNamed(name string) hclog.Logger { return newHclog(h.l, name) }
func (h *hclogAdapter) SetLevel(hclog.Level)                {}
func (h *hclogAdapter) GetLevel() hclog.Level               { return hclog.Info }
func (h *hclogAdapter) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return slog.NewLogLogger(h.l.Handler(), slog.LevelInfo)
}
func (h *hclogAdapter) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return h.StandardLogger(nil).Writer()
}
