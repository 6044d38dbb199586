package cli

import (
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/straitmesh/strait/controlplane"
)

func version() string { return "strait " + controlplane.Version }

func pemCert(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// table writes aligned columns.
type table struct{ w *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{w: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cols ...string) { fmt.Fprintln(t.w, strings.Join(cols, "\t")) }
func (t *table) flush() error       { return t.w.Flush() }

func lowerEnum(s, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(s, prefix))
}

func ago(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.Round(time.Millisecond).String() + " ago"
}

// selfCommand is how to run this binary again from the shell that started
// it: the name as typed when it finds this binary (from PATH, or a path such
// as bin/strait relative to the current directory), else "strait" when that
// is this binary on PATH, else the absolute path.
func selfCommand() string {
	exe, err := os.Executable()
	if err != nil {
		return "strait"
	}
	same := func(p string) bool {
		a, err1 := os.Stat(p)
		b, err2 := os.Stat(exe)
		return err1 == nil && err2 == nil && os.SameFile(a, b)
	}
	if typed := os.Args[0]; typed != "" {
		if strings.ContainsRune(typed, filepath.Separator) {
			if same(typed) {
				return shellQuote(typed)
			}
		} else if p, err := exec.LookPath(typed); err == nil && same(p) {
			return shellQuote(typed)
		}
	}
	if p, err := exec.LookPath("strait"); err == nil && same(p) {
		return "strait"
	}
	return shellQuote(exe)
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+=:,@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
