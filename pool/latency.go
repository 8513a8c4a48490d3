package pool

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// latencyBuckets covers 1µs to about 70 minutes: four buckets per power of
// two, so a quantile read from it is within 25% of the true value.
const latencyBuckets = 4 * 32

// latencyHist counts durations in log-spaced buckets. Adding is one atomic
// increment; it is safe for concurrent use.
type latencyHist struct {
	b     [latencyBuckets]atomic.Int64
	sum   atomic.Int64 // nanoseconds
	count atomic.Int64
}

func latencyBucket(d time.Duration) int {
	u := uint64(max(d.Microseconds(), 0))
	if u < 4 {
		return int(u)
	}
	exp := bits.Len64(u) - 1
	sub := int(u>>(exp-2)) & 3
	return min(exp*4+sub, latencyBuckets-1)
}

// bucketUpper returns the upper edge of bucket i.
func bucketUpper(i int) time.Duration {
	if i < 4 {
		return time.Duration(i+1) * time.Microsecond
	}
	exp, sub := i/4, i%4
	return time.Duration(uint64(5+sub)<<(exp-2)) * time.Microsecond
}

func (h *latencyHist) add(d time.Duration) {
	h.b[latencyBucket(d)].Add(1)
	h.sum.Add(int64(d))
	h.count.Add(1)
}

// latencySnap is a copy of a histogram's counters; the difference of two
// snapshots describes the interval between them.
type latencySnap struct {
	b     [latencyBuckets]int64
	sum   int64
	count int64
}

func (h *latencyHist) snapshot() latencySnap {
	var s latencySnap
	for i := range h.b {
		s.b[i] = h.b[i].Load()
	}
	s.sum, s.count = h.sum.Load(), h.count.Load()
	return s
}

func (s latencySnap) minus(o latencySnap) latencySnap {
	for i := range s.b {
		s.b[i] -= o.b[i]
	}
	s.sum -= o.sum
	s.count -= o.count
	return s
}

// mean returns the mean duration, 0 when empty.
func (s latencySnap) mean() time.Duration {
	if s.count <= 0 {
		return 0
	}
	return time.Duration(s.sum / s.count)
}

// quantile returns the upper edge of the bucket holding quantile q, 0
// when empty.
func (s latencySnap) quantile(q float64) time.Duration {
	if s.count <= 0 {
		return 0
	}
	rank := int64(q*float64(s.count)+0.5) - 1
	rank = max(rank, 0)
	var seen int64
	for i, n := range s.b {
		seen += n
		if seen > rank {
			return bucketUpper(i)
		}
	}
	return bucketUpper(latencyBuckets - 1)
}
