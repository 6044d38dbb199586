package cli

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestTimestampsNeverReadAs1970(t *testing.T) {
	at := time.Date(2026, 12, 3, 7, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		ts   *timestamppb.Timestamp
		want string
	}{
		{nil, "-"},
		{&timestamppb.Timestamp{}, "-"},
		{timestamppb.New(time.Time{}), "-"},
		{timestamppb.New(at), "2026-12-03T07:00:00Z"},
	} {
		if got := tsString(tt.ts, time.RFC3339); got != tt.want {
			t.Errorf("tsString(%v) = %q, want %q", tt.ts, got, tt.want)
		}
	}
}
