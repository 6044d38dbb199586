// Package golden compares what a test produced with a golden file, a
// reviewed copy of the expected output kept under testdata/golden, and
// rewrites the file instead when the test binary runs with -update.
//
// Each test package that has golden files declares its own flag:
//
//	var update = flag.Bool("update", false, "rewrite the golden files from the current output")
//
// and calls Check(t, path, got, *update). A mismatch fails the test with
// the first differing lines as a unified diff and the command that
// regenerates every golden file of the repository (Regenerate, also
// `make golden`). A regenerated file is a change of behaviour: its diff is
// reviewed like code.
//
// The package only compares bytes: producing deterministic output
// (sorted keys, no addresses, times or random IDs) is the caller's job.
// It is imported by tests only, never by a program; it keeps no state and
// is safe for concurrent use.
package golden
