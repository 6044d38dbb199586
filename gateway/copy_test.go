package gateway

import (
	"bytes"
	"testing"
)

// TestCopyPooledSwitchesBuffers: a bulk copy moves to the large buffer
// mid-stream without losing or reordering a byte; a short one stays small.
func TestCopyPooledSwitchesBuffers(t *testing.T) {
	for _, size := range []int{0, 1, smallCopy, fullReads*smallCopy + 7, 3*largeCopy + 11} {
		src := make([]byte, size)
		for i := range src {
			src[i] = byte(i * 7)
		}
		var dst bytes.Buffer
		if n := copyPooled(&dst, bytes.NewReader(src)); n != int64(size) || !bytes.Equal(dst.Bytes(), src) {
			t.Fatalf("size %d: copied %d, equal %v", size, n, bytes.Equal(dst.Bytes(), src))
		}
	}
}
