package golden

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDiff(t *testing.T) {
	lines := func(n int, change map[int]string) string {
		var b strings.Builder
		for i := 1; i <= n; i++ {
			s, ok := change[i]
			if !ok {
				s = "line " + string(rune('a'+i%26))
			}
			if s != "<gone>" {
				b.WriteString(s + "\n")
			}
		}
		return b.String()
	}
	tests := []struct {
		name, want, got string
		max             int
		diff            string
	}{
		{name: "equal", want: "a\nb\n", got: "a\nb\n", max: 10, diff: ""},
		{name: "one line changed", want: "a\nb\nc\n", got: "a\nB\nc\n", max: 10,
			diff: "@@ -1,3 +1,3 @@\n a\n-b\n+B\n c"},
		{name: "line added at the end", want: "a\n", got: "a\nb\n", max: 10,
			diff: "@@ -1,1 +1,2 @@\n a\n+b"},
		{name: "into an empty file", want: "", got: "a\n", max: 10,
			diff: "@@ -0,0 +1,1 @@\n+a"},
		{name: "far apart changes make two hunks", want: lines(20, nil), got: lines(20, map[int]string{2: "X", 18: "Y"}), max: 100,
			diff: "@@ -1,5 +1,5 @@\n line b\n-line c\n+X\n line d\n line e\n line f\n" +
				"@@ -15,6 +15,6 @@\n line p\n line q\n line r\n-line s\n+Y\n line t\n line u"},
		{name: "a removed line keeps the rest aligned", want: "a\nb\nc\nd\n", got: "a\nc\nd\n", max: 10,
			diff: "@@ -1,4 +1,3 @@\n a\n-b\n c\n d"},
		{name: "cut to the first lines", want: "a\nb\nc\n", got: "x\ny\nz\n", max: 3,
			diff: "@@ -1,3 +1,3 @@\n-a\n-b\n... 4 more diff lines"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Diff([]byte(tt.want), []byte(tt.got), tt.max); got != tt.diff {
				t.Fatalf("diff:\n%s\nwant:\n%s", got, tt.diff)
			}
		})
	}
}

// TestCheck: a missing file and a mismatch fail, saying how to
// regenerate; update writes the file, after which the same output passes.
func TestCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "golden", "01.case.json")
	err := check(path, []byte("{}"), false)
	if err == nil || !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), Regenerate) {
		t.Fatalf("missing file: %v", err)
	}
	if err := check(path, []byte("{\n  \"a\": 1\n}"), true); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "{\n  \"a\": 1\n}\n" {
		t.Fatalf("written %q, %v", b, err)
	}
	if err := check(path, []byte("{\n  \"a\": 1\n}\n\n"), false); err != nil {
		t.Fatalf("the same output with other trailing newlines: %v", err)
	}
	err = check(path, []byte("{\n  \"a\": 2\n}"), false)
	if err == nil || !strings.Contains(err.Error(), "-  \"a\": 1\n+  \"a\": 2") || !strings.Contains(err.Error(), Regenerate) {
		t.Fatalf("mismatch: %v", err)
	}
}

// TestCheckUnused: a file no case wrote fails the check, and -update
// removes it, keeping the used ones.
func TestCheckUnused(t *testing.T) {
	dir := t.TempDir()
	used, old := filepath.Join(dir, "01.kept.json"), filepath.Join(dir, "02.gone.json")
	for _, p := range []string{used, old} {
		if err := os.WriteFile(p, []byte("{}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := checkUnused(dir, []string{used}, false); err == nil || !strings.Contains(err.Error(), "02.gone.json") || strings.Contains(err.Error(), "01.kept") {
		t.Fatalf("unused file: %v", err)
	}
	if err := checkUnused(dir, []string{used}, true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Fatalf("the unused file is still there: %v", err)
	}
	if err := checkUnused(dir, []string{used}, false); err != nil {
		t.Fatalf("after update: %v", err)
	}
}
