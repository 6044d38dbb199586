package golden

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// Regenerate is the command that rewrites every golden file of the
// repository from the current output.
const Regenerate = "go test ./controlplane/xds ./cmd/strait/cli -update"

// maxDiffLines bounds the diff a mismatch prints.
const maxDiffLines = 60

// Check compares got with the golden file at path (relative to the test's
// package directory, such as "testdata/golden/01.name.json"). With update
// it writes got to path instead, creating its directory. got is compared
// and written with exactly one trailing newline.
func Check(t testing.TB, path string, got []byte, update bool) {
	t.Helper()
	if err := check(path, got, update); err != nil {
		t.Fatal(err)
	}
}

// check is Check returning what failed.
func check(path string, got []byte, update bool) error {
	got = append(bytes.TrimRight(got, "\n"), '\n')
	if update {
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, got) {
			return nil
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return fmt.Errorf("update golden file: %w", err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			return fmt.Errorf("update golden file: %w", err)
		}
		return nil
	}
	want, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("golden file %s does not exist: create it with\n\t%s\nand review it before committing", path, Regenerate)
	}
	if err != nil {
		return fmt.Errorf("read golden file: %w", err)
	}
	if bytes.Equal(want, got) {
		return nil
	}
	return fmt.Errorf("output differs from golden file %s (- golden, + got):\n%s\nIf the change is intended, regenerate the golden files with\n\t%s\nand review their diff before committing.",
		path, Diff(want, got, maxDiffLines), Regenerate)
}
