package gateway

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
)

type recordingConn struct {
	net.Conn
	writes [][]byte
}

func (r *recordingConn) Write(p []byte) (int, error) {
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
}

func frameHdr(typ byte, length uint32) []byte {
	h := make([]byte, yamuxHeaderSize)
	h[1] = typ
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

// TestFrameCoalescing: a data header and its body leave as one write;
// other frames, empty data frames and oversized bodies as they came; the
// bytes on the wire are the same in every case.
func TestFrameCoalescing(t *testing.T) {
	for _, tt := range []struct {
		name   string
		writes [][]byte
		want   int // writes on the connection
	}{
		{"data frame", [][]byte{frameHdr(yamuxTypeData, 3), []byte("abc")}, 1},
		{"window update", [][]byte{frameHdr(1, 0)}, 1},
		{"empty data (a FIN)", [][]byte{frameHdr(yamuxTypeData, 0)}, 1},
		{"two frames", [][]byte{frameHdr(yamuxTypeData, 1), []byte("a"), frameHdr(2, 0), frameHdr(yamuxTypeData, 2), []byte("bc")}, 3},
		{"oversized body", [][]byte{frameHdr(yamuxTypeData, maxCoalesced+1), make([]byte, maxCoalesced+1)}, 2},
		{"a body of another length", [][]byte{frameHdr(yamuxTypeData, 5), []byte("ab")}, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recordingConn{}
			c := coalesceFrames(rec)
			var sent []byte
			for _, w := range tt.writes {
				if n, err := c.Write(w); err != nil || n != len(w) {
					t.Fatalf("write: %d %v", n, err)
				}
				sent = append(sent, w...)
			}
			if len(rec.writes) != tt.want {
				t.Fatalf("%d writes, want %d", len(rec.writes), tt.want)
			}
			if got := bytes.Join(rec.writes, nil); !bytes.Equal(got, sent) {
				t.Fatal("the bytes on the wire differ from those written")
			}
		})
	}
}

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
