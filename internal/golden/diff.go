package golden

import (
	"fmt"
	"strings"
)

// contextLines is how many unchanged lines a hunk shows around a change.
const contextLines = 3

// maxCells bounds the table the line alignment fills (lines of want times
// lines of got, after their common head and tail): beyond it the changed
// middle is shown as removed, then added, without alignment.
const maxCells = 4 << 20

// op is one line of an edit script.
type op struct {
	kind byte // ' ' same, '-' only in want, '+' only in got
	text string
	a, b int // line numbers (from 1) in want and got this line is at or after
}

// Diff returns the differences between want and got as unified diff
// hunks ("@@ -a,n +b,m @@", lines prefixed with ' ', '-' or '+'), at
// most maxLines lines of them (then a line saying how many were left
// out). Equal inputs give "".
func Diff(want, got []byte, maxLines int) string {
	a, b := splitLines(string(want)), splitLines(string(got))
	ops := align(a, b)
	var out []string
	for _, h := range hunks(ops) {
		out = append(out, h...)
	}
	if len(out) > maxLines {
		left := len(out) - maxLines
		out = append(out[:maxLines], fmt.Sprintf("... %d more diff lines", left))
	}
	return strings.Join(out, "\n")
}

func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

// align returns an edit script from a to b: the common head and tail as
// they are, the middle aligned on a longest common subsequence of lines.
func align(a, b []string) []op {
	head := 0
	for head < len(a) && head < len(b) && a[head] == b[head] {
		head++
	}
	tail := 0
	for tail < len(a)-head && tail < len(b)-head && a[len(a)-1-tail] == b[len(b)-1-tail] {
		tail++
	}
	var ops []op
	for i := range head {
		ops = append(ops, op{' ', a[i], i + 1, i + 1})
	}
	ma, mb := a[head:len(a)-tail], b[head:len(b)-tail]
	ops = append(ops, alignMiddle(ma, mb, head)...)
	for i := range tail {
		ia, ib := len(a)-tail+i, len(b)-tail+i
		ops = append(ops, op{' ', a[ia], ia + 1, ib + 1})
	}
	return ops
}

// alignMiddle aligns a and b (which start after off common lines) with
// the classic longest-common-subsequence table.
func alignMiddle(a, b []string, off int) []op {
	var ops []op
	if (len(a)+1)*(len(b)+1) > maxCells {
		for i, s := range a {
			ops = append(ops, op{'-', s, off + i + 1, off + 1})
		}
		for j, s := range b {
			ops = append(ops, op{'+', s, off + len(a) + 1, off + j + 1})
		}
		return ops
	}
	// lcs[i][j] is the LCS length of a[i:] and b[j:].
	w := len(b) + 1
	lcs := make([]int, (len(a)+1)*w)
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i*w+j] = lcs[(i+1)*w+j+1] + 1
			} else {
				lcs[i*w+j] = max(lcs[(i+1)*w+j], lcs[i*w+j+1])
			}
		}
	}
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case i < len(a) && j < len(b) && a[i] == b[j]:
			ops = append(ops, op{' ', a[i], off + i + 1, off + j + 1})
			i, j = i+1, j+1
		case j < len(b) && (i == len(a) || lcs[i*w+j+1] > lcs[(i+1)*w+j]):
			ops = append(ops, op{'+', b[j], off + i + 1, off + j + 1})
			j++
		default:
			ops = append(ops, op{'-', a[i], off + i + 1, off + j + 1})
			i++
		}
	}
	return ops
}

// hunks groups the changes of ops, each with up to contextLines unchanged
// lines around it, hunks closer than twice that merged.
func hunks(ops []op) [][]string {
	var out [][]string
	for start := 0; start < len(ops); {
		// The next change.
		c := start
		for c < len(ops) && ops[c].kind == ' ' {
			c++
		}
		if c == len(ops) {
			break
		}
		from := max(c-contextLines, start)
		// Extend over changes separated by at most 2*context same lines.
		end, same := c, 0
		for k := c; k < len(ops) && same <= 2*contextLines; k++ {
			if ops[k].kind == ' ' {
				same++
			} else {
				same, end = 0, k
			}
		}
		to := min(end+1+contextLines, len(ops))
		out = append(out, hunk(ops[from:to]))
		start = to
	}
	return out
}

// hunk renders one group of ops with its header.
func hunk(ops []op) []string {
	var na, nb int
	lines := make([]string, 1, len(ops)+1)
	for _, o := range ops {
		if o.kind != '+' {
			na++
		}
		if o.kind != '-' {
			nb++
		}
		lines = append(lines, string(o.kind)+o.text)
	}
	a, b := ops[0].a, ops[0].b
	if na == 0 {
		a--
	}
	if nb == 0 {
		b--
	}
	lines[0] = fmt.Sprintf("@@ -%d,%d +%d,%d @@", a, na, b, nb)
	return lines
}
