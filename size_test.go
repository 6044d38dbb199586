package strait_test

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Size limits that keep one type or file from growing every feature (the
// cautionary tale is a single type holding a whole product). Generated
// code is exempt.
const (
	maxMethodsPerType = 40
	maxLinesPerFile   = 800
)

// goFiles calls fn for every Go file of the module that is not generated.
func goFiles(t *testing.T, fn func(path string, src []byte)) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if isGenerated(src) {
			return nil
		}
		n++
		fn(path, src)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 100 {
		t.Fatalf("found only %d Go files: the walk is broken", n)
	}
}

// isGenerated follows the convention of https://go.dev/s/generatedcode.
func isGenerated(src []byte) bool {
	for line := range bytes.Lines(src) {
		if bytes.HasPrefix(line, []byte("// Code generated ")) && bytes.HasSuffix(bytes.TrimSpace(line), []byte("DO NOT EDIT.")) {
			return true
		}
		if bytes.HasPrefix(line, []byte("package ")) {
			return false
		}
	}
	return false
}

// TestNoFileOverLimit: no Go file, tests included, passes maxLinesPerFile.
func TestNoFileOverLimit(t *testing.T) {
	goFiles(t, func(path string, src []byte) {
		if n := bytes.Count(src, []byte("\n")); n > maxLinesPerFile {
			t.Errorf("%s has %d lines (limit %d): split it by concern", path, n, maxLinesPerFile)
		}
	})
}

// TestNoTypeOverLimit: no type has more than maxMethodsPerType methods
// (exported and unexported, over all the files of its package).
func TestNoTypeOverLimit(t *testing.T) {
	methods := map[string]int{} // "dir.Type" -> count
	fset := token.NewFileSet()
	goFiles(t, func(path string, src []byte) {
		if strings.HasSuffix(path, "_test.go") {
			return
		}
		f, err := parser.ParseFile(fset, path, src, parser.SkipObjectResolution)
		if err != nil {
			t.Errorf("parse %s: %v", path, err)
			return
		}
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Recv == nil || len(fd.Recv.List) == 0 {
				continue
			}
			if name := recvType(fd.Recv.List[0].Type); name != "" {
				methods[filepath.Dir(path)+"."+name]++
			}
		}
	})
	var over []string
	for typ, n := range methods {
		if n > maxMethodsPerType {
			over = append(over, typ)
		}
	}
	sort.Strings(over)
	for _, typ := range over {
		t.Errorf("%s has %d methods (limit %d): give its jobs to types of their own", typ, methods[typ], maxMethodsPerType)
	}
	if len(methods) < 50 {
		t.Fatalf("found only %d types with methods: the parse is broken", len(methods))
	}
}

func recvType(e ast.Expr) string {
	switch x := e.(type) {
	case *ast.StarExpr:
		return recvType(x.X)
	case *ast.IndexExpr:
		return recvType(x.X)
	case *ast.IndexListExpr:
		return recvType(x.X)
	case *ast.Ident:
		return x.Name
	}
	return ""
}
