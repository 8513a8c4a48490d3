package pool

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestLatencyQuantilesAreWithinAQuarterOfTheTruth(t *testing.T) {
	var h latencyHist
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Millisecond)
	}
	s := h.snapshot()
	for _, q := range []float64{0.5, 0.9, 0.99} {
		truth := time.Duration(q*1000) * time.Millisecond
		got := s.quantile(q)
		assert.InEpsilon(t, float64(truth), float64(got), 0.25, "q=%v: got %s, truth %s", q, got, truth)
		assert.GreaterOrEqual(t, got, truth, "the upper edge of the bucket")
	}
	assert.Equal(t, 500500*time.Microsecond, s.mean())
	assert.Zero(t, latencySnap{}.quantile(0.99))
}

func TestLatencySnapshotsSubtractToTheIntervalBetweenThem(t *testing.T) {
	var h latencyHist
	h.add(time.Second)
	before := h.snapshot()
	for range 99 {
		h.add(time.Millisecond)
	}
	d := h.snapshot().minus(before)
	assert.Equal(t, int64(99), d.count)
	assert.InEpsilon(t, float64(time.Millisecond), float64(d.quantile(0.99)), 0.25)
}

func TestLatencyBucketsCoverTheRangeInOrder(t *testing.T) {
	prev := -1
	for d := time.Microsecond; d < time.Hour; d = d * 9 / 8 {
		b := latencyBucket(d)
		assert.GreaterOrEqual(t, b, prev)
		assert.LessOrEqual(t, d, bucketUpper(b), "%s in bucket %d", d, b)
		prev = b
	}
	assert.Equal(t, 0, latencyBucket(-time.Second))
	assert.Equal(t, latencyBuckets-1, latencyBucket(1000*time.Hour))
}
