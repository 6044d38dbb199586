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
	return fmt.Errorf("output differs from golden file %s (- golden, + got):\n%s\nIf the change is intended, regenerate the golden files with\n\t%s\nand review their diff before committing",
		path, Diff(want, got, maxDiffLines), Regenerate)
}

// CheckUnused fails t for each file in dir that is not in used (the paths
// the test passed to Check): a golden file that no case produces any more,
// which would otherwise be kept and reviewed for nothing. With update it
// removes them instead. Call it only when every case ran (not under a
// -run that selects some).
func CheckUnused(t testing.TB, dir string, used []string, update bool) {
	t.Helper()
	if err := checkUnused(dir, used, update); err != nil {
		t.Fatal(err)
	}
}

func checkUnused(dir string, used []string, update bool) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list golden files: %w", err)
	}
	keep := map[string]bool{}
	for _, p := range used {
		keep[filepath.Clean(p)] = true
	}
	var stale []string
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if e.IsDir() || keep[p] {
			continue
		}
		if update {
			if err := os.Remove(p); err != nil {
				return fmt.Errorf("remove unused golden file: %w", err)
			}
			continue
		}
		stale = append(stale, p)
	}
	if len(stale) > 0 {
		return fmt.Errorf("golden files no case produces: %v: remove them with\n\t%s", stale, Regenerate)
	}
	return nil
}
