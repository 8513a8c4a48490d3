package pool

import (
	"bytes"
	"math"
	"strconv"
	"time"
)

// Defaults for the SizerConfig fields left at zero.
const (
	defaultTargetUtilization = 0.75
	defaultHeadroom          = 1.2
	defaultGrowCooldown      = time.Second
	defaultShrinkCooldown    = 10 * time.Second
	defaultShrinkStep        = 0.25
	defaultEmergencyWait     = 100 * time.Millisecond
)

const (
	// flapWindow and flapReversals define flapping: more than flapReversals
	// changes of direction within flapWindow.
	flapWindow    = 60 * time.Second
	flapReversals = 2
	// maxEstimate caps the estimates before they become ints, so that absurd
	// samples cannot overflow.
	maxEstimate = 1 << 30
)

// SizerConfig tunes a Sizer. A field that is zero or negative takes the
// default written beside it.
type SizerConfig struct {
	// Min and Max bound the pool's capacity. A negative Min counts as 0 and a
	// Max below Min is raised to Min.
	Min, Max int
	// TargetUtilization is the share of the pool the sizer aims to keep busy
	// (busy / size). Default 0.75; values above 1 count as 1.
	TargetUtilization float64
	// Headroom multiplies the Little's law estimate. Default 1.2.
	Headroom float64
	// GrowCooldown is the least time between two grows. Default 1s. An
	// emergency ignores it.
	GrowCooldown time.Duration
	// ShrinkCooldown is how long the target must stay below the size, and
	// how long since the last change of any kind, before a shrink. Default
	// 10s.
	ShrinkCooldown time.Duration
	// ShrinkStep is the largest fraction of the size one shrink removes,
	// rounded down but at least one connection. Default 0.25; values above 1
	// count as 1.
	ShrinkStep float64
	// EmergencyWait is the p99 acquire wait that makes a grow an emergency,
	// which ignores GrowCooldown. Default 100ms.
	EmergencyWait time.Duration
}

// withDefaults returns c with defaults filled in and bounds made consistent.
func (c SizerConfig) withDefaults() SizerConfig {
	c.Min = max(c.Min, 0)
	c.Max = max(c.Max, c.Min)
	if !(c.TargetUtilization > 0) || math.IsInf(c.TargetUtilization, 0) {
		c.TargetUtilization = defaultTargetUtilization
	}
	c.TargetUtilization = min(c.TargetUtilization, 1)
	if !(c.Headroom > 0) || math.IsInf(c.Headroom, 0) {
		c.Headroom = defaultHeadroom
	}
	if c.GrowCooldown <= 0 {
		c.GrowCooldown = defaultGrowCooldown
	}
	if c.ShrinkCooldown <= 0 {
		c.ShrinkCooldown = defaultShrinkCooldown
	}
	if !(c.ShrinkStep > 0) || math.IsInf(c.ShrinkStep, 0) {
		c.ShrinkStep = defaultShrinkStep
	}
	c.ShrinkStep = min(c.ShrinkStep, 1)
	if c.EmergencyWait <= 0 {
		c.EmergencyWait = defaultEmergencyWait
	}
	return c
}

// SizerSample is what the pool measured over the last interval.
type SizerSample struct {
	// Now is the time of the sample, from the pool's clock. The sizer reads
	// no clock of its own.
	Now time.Time
	// Interval is the length of the interval the sample covers. Without a
	// positive Interval the Little's law estimate is skipped.
	Interval time.Duration
	// Size is the pool's current capacity.
	Size int
	// Busy is the mean number of connections in use over the interval.
	Busy float64
	// Waiting is the number of acquirers waiting now.
	Waiting int
	// Arrivals is the number of acquisitions completed in the interval.
	Arrivals int64
	// ServiceTime is the mean time a connection was held per acquisition.
	ServiceTime time.Duration
	// AcquireP99 is the p99 acquire wait in the interval.
	AcquireP99 time.Duration
	// Forecast is the size workload learning recommends for the coming
	// horizon; 0 means none.
	Forecast int
	// Budget is the most connections this pool may have now, its share of
	// the backend's budget; 0 means no limit beyond Max.
	Budget int
}

// SizerDecision is the sizer's verdict for one sample.
type SizerDecision struct {
	// Size is the capacity to apply; it equals the sample's Size when
	// nothing changes.
	Size int
	// Changed reports whether Size differs from the sample's Size.
	Changed bool
	// Emergency reports a grow made because the p99 acquire wait reached
	// EmergencyWait; such a grow ignores GrowCooldown.
	Emergency bool
	// Reasons explain the decision in plain words, estimate first and action
	// last. There is always at least one. The caller owns the slice.
	Reasons []string
}

// Sizer decides a pool's capacity from what the pool measured. It grows
// quickly and shrinks slowly:
//
//   - The target is the largest of Little's law (arrival rate × mean service
//     time × Headroom), Busy / TargetUtilization and the Forecast, rounded
//     up; with clients waiting it is at least Size + Waiting.
//   - A grow jumps straight to the target, at most once per GrowCooldown. When
//     the p99 acquire wait reaches EmergencyWait the grow ignores the
//     cooldown and adds at least one connection, since a long wait shows that
//     the averages missed a burst.
//   - A shrink needs the target to have stayed below the size for
//     ShrinkCooldown, counted from no earlier than the last change, and
//     removes at most ShrinkStep of the size (at least one connection).
//   - When the direction of change reversed more than twice within a minute,
//     shrinks are held for 2 × ShrinkCooldown.
//   - The size stays within [Min, min(Max, Budget)]. A size above that is cut
//     at once, ignoring cooldowns. When Budget is below Min the budget wins:
//     it protects Postgres, which matters more than a warm pool.
//
// Forced changes (to the bounds) reset the shrink cooldown but do not count
// as grows or as reversals, since the sizer did not choose them.
//
// A Sizer holds the history its cooldowns need. It is not safe for
// concurrent use: the pool calls Next from one goroutine. It starts no
// goroutines and never sleeps.
type Sizer struct {
	cfg SizerConfig

	lastGrow   time.Time // last grow the sizer chose; zero when none
	lastChange time.Time // last change of any kind; zero when none
	belowSince time.Time // since when the target has stayed below the size; zero when it has not
	lastDir    int       // direction of the last chosen change: +1, -1, or 0 when none

	reversals  [flapReversals + 1]time.Time // most recent first
	nReversals int                          // how many entries of reversals are set
	dampedAt   time.Time                    // when flapping was last found; zero when never

	why reasonWriter // reused by every call to Next
}

// NewSizer returns a Sizer with cfg's zero or negative fields set to their
// defaults.
func NewSizer(cfg SizerConfig) *Sizer {
	return &Sizer{cfg: cfg.withDefaults()}
}

// Next returns the capacity the pool should apply after sample. It never
// returns a size outside [Min, min(Max, Budget)] (or [Budget, Budget] when
// Budget is below Min), and it tolerates nonsense in the sample: negative
// counts and durations count as zero, NaN and infinite Busy as zero.
func (s *Sizer) Next(sample SizerSample) SizerDecision {
	c := s.cfg
	now := sample.Now
	s.rewind(now)
	in := sanitize(sample)
	w := &s.why
	w.reset()
	var d SizerDecision

	// Bounds. The budget protects Postgres, so it wins over Min.
	lo, hi := c.Min, c.Max
	hiName := "max"
	if in.Budget > 0 && in.Budget < hi {
		hi, hiName = in.Budget, "budget"
	}
	if hi < lo {
		lo = hi
		w.text("budget ").count(hi).text(" below min ").count(c.Min).text(": budget wins").end()
	}

	target := s.estimate(in)
	if in.Waiting > 0 {
		target = max(target, addCapped(in.Size, in.Waiting))
		w.count(in.Waiting).text(" waiting").end()
	}
	emergency := in.AcquireP99 >= c.EmergencyWait

	// Forced changes: the current size must itself be within bounds.
	cur := in.Size
	switch {
	case cur > hi:
		w.text("over ").text(hiName).text(": size ").count(cur).text(" > ").text(hiName).text(" ").count(hi).end()
		cur = hi
	case cur < lo:
		w.text("below min: size ").count(cur).text(" < min ").count(lo).end()
		cur = lo
	}
	if cur != sample.Size {
		s.lastChange = now
	}

	if emergency && target <= cur {
		target = addCapped(cur, 1)
	}
	switch {
	case target > hi:
		w.text("capped: target ").count(target).text(" > ").text(hiName).text(" ").count(hi).end()
		target = hi
	case target < lo:
		w.text("raised: target ").count(target).text(" < min ").count(lo).end()
		target = lo
	}

	if target < cur {
		if s.belowSince.IsZero() {
			s.belowSince = now
		}
	} else {
		s.belowSince = time.Time{}
	}

	next := cur
	switch {
	case target > cur && emergency:
		next = target
		d.Emergency = true
		w.text("emergency: p99 wait ").dur(in.AcquireP99).text(" >= ").dur(c.EmergencyWait).
			text(": grow ").count(cur).text(" → ").count(next).end()
	case target > cur:
		if until := s.lastGrow.Add(c.GrowCooldown); !s.lastGrow.IsZero() && now.Before(until) {
			w.text("cooldown: grow to ").count(target).text(" held until ").clock(until).end()
			break
		}
		next = target
		w.text("grow: ").count(cur).text(" → ").count(next).end()
	case target < cur:
		if until := s.dampedAt.Add(2 * c.ShrinkCooldown); !s.dampedAt.IsZero() && now.Before(until) {
			w.text("flapping damped: shrink to ").count(target).text(" held until ").clock(until).end()
			break
		}
		since := s.belowSince
		if s.lastChange.After(since) {
			since = s.lastChange
		}
		if until := since.Add(c.ShrinkCooldown); now.Before(until) {
			w.text("cooldown: shrink to ").count(target).text(" held until ").clock(until).end()
			break
		}
		step := max(int(float64(cur)*c.ShrinkStep), 1)
		next = max(target, cur-step)
		w.text("shrink: ").count(cur).text(" → ").count(next).
			text(" (target ").count(target).text(", step ").count(step).text(")").end()
	default:
		w.text("steady: target ").count(target).text(" = size ").count(cur).end()
	}

	if next != cur {
		dir := 1
		if next < cur {
			dir = -1
		} else {
			s.lastGrow = now
		}
		s.lastChange = now
		if s.lastDir != 0 && dir != s.lastDir && s.reversed(now) {
			s.dampedAt = now
			w.text("flapping damped: ").count(flapReversals + 1).text(" reversals within ").dur(flapWindow).
				text(", shrinks held until ").clock(now.Add(2 * c.ShrinkCooldown)).end()
		}
		s.lastDir = dir
	}
	d.Size = next
	d.Changed = next != sample.Size
	d.Reasons = w.reasons()
	return d
}

// estimate returns the largest of the three estimates, rounded up, and
// writes a reason naming the one that won (Little's law on a tie).
func (s *Sizer) estimate(in SizerSample) int {
	c := s.cfg
	w := &s.why
	littleN, rate, little := -1, 0.0, 0.0
	if in.Interval > 0 {
		rate = float64(in.Arrivals) / in.Interval.Seconds()
		little = rate * in.ServiceTime.Seconds() * c.Headroom
		littleN = ceilConns(little)
	} else {
		w.text("little's law skipped: interval ").dur(in.Interval).end()
	}
	util := in.Busy / c.TargetUtilization
	utilN := ceilConns(util)
	switch {
	case in.Forecast > max(littleN, utilN):
		w.text("forecast: ").count(in.Forecast).text(" conns").end()
		return in.Forecast
	case utilN > littleN:
		w.text("utilization: ").fixed1(util).text(" conns (busy ").short(in.Busy).
			text(" / ").short(c.TargetUtilization).text(")").end()
		return utilN
	default:
		w.text("little's law: ").fixed1(little).text(" conns (λ=").short(rate).text("/s × W=").
			dur(in.ServiceTime).text(" × ").short(c.Headroom).text(")").end()
		return littleN
	}
}

// reversed records a change of direction at now and reports whether it makes
// more than flapReversals within flapWindow.
func (s *Sizer) reversed(now time.Time) bool {
	copy(s.reversals[1:], s.reversals[:len(s.reversals)-1])
	s.reversals[0] = now
	s.nReversals = min(s.nReversals+1, len(s.reversals))
	oldest := s.reversals[len(s.reversals)-1]
	return s.nReversals == len(s.reversals) && now.Sub(oldest) < flapWindow
}

// rewind pulls remembered times back to now when the clock went backwards,
// so that a cooldown never waits for the clock to catch up.
func (s *Sizer) rewind(now time.Time) {
	for _, t := range []*time.Time{&s.lastGrow, &s.lastChange, &s.belowSince, &s.dampedAt} {
		if t.After(now) {
			*t = now
		}
	}
	for i := range s.reversals {
		if s.reversals[i].After(now) {
			s.reversals[i] = now
		}
	}
}

// sanitize turns nonsense in a sample into zeros.
func sanitize(in SizerSample) SizerSample {
	in.Size = max(in.Size, 0)
	in.Waiting = max(in.Waiting, 0)
	in.Arrivals = max(in.Arrivals, 0)
	in.ServiceTime = max(in.ServiceTime, 0)
	in.AcquireP99 = max(in.AcquireP99, 0)
	in.Forecast = min(max(in.Forecast, 0), maxEstimate)
	in.Budget = max(in.Budget, 0)
	if !(in.Busy > 0) || math.IsInf(in.Busy, 0) {
		in.Busy = 0
	}
	return in
}

// ceilConns rounds an estimate up to whole connections. The tolerance keeps
// float error (400 × 0.025 × 1.2 = 12.000000000000002) from adding one.
func ceilConns(x float64) int {
	if !(x > 0) {
		return 0
	}
	if x >= maxEstimate {
		return maxEstimate
	}
	return int(math.Ceil(x - 1e-9))
}

// addCapped returns a + b for non-negative a and b, capped at maxEstimate.
func addCapped(a, b int) int {
	if a >= maxEstimate || b >= maxEstimate-a {
		return maxEstimate
	}
	return a + b
}

// reasonWriter builds a decision's reasons in one reused buffer. reasons
// turns them into strings that share one allocation, which keeps Next cheap
// enough to run on every sample.
type reasonWriter struct {
	buf  []byte
	ends []int // where each finished reason ends in buf
}

func (w *reasonWriter) reset() { w.buf, w.ends = w.buf[:0], w.ends[:0] }

// end finishes the current reason.
func (w *reasonWriter) end() { w.ends = append(w.ends, len(w.buf)) }

func (w *reasonWriter) text(v string) *reasonWriter {
	w.buf = append(w.buf, v...)
	return w
}

func (w *reasonWriter) count(v int) *reasonWriter {
	w.buf = strconv.AppendInt(w.buf, int64(v), 10)
	return w
}

// fixed1 writes v with one decimal: 12 → "12.0".
func (w *reasonWriter) fixed1(v float64) *reasonWriter {
	w.buf = strconv.AppendFloat(w.buf, v, 'f', 1, 64)
	return w
}

// short writes v with at most two decimals: 400 → "400", 0.75 → "0.75".
func (w *reasonWriter) short(v float64) *reasonWriter {
	start := len(w.buf)
	w.buf = strconv.AppendFloat(w.buf, v, 'f', 2, 64)
	if bytes.IndexByte(w.buf[start:], '.') >= 0 {
		w.buf = bytes.TrimRight(w.buf, "0")
		w.buf = bytes.TrimSuffix(w.buf, []byte("."))
	}
	return w
}

func (w *reasonWriter) dur(v time.Duration) *reasonWriter {
	w.buf = append(w.buf, v.String()...)
	return w
}

// clock writes the time of day of t.
func (w *reasonWriter) clock(t time.Time) *reasonWriter {
	w.buf = t.AppendFormat(w.buf, "15:04:05.000")
	return w
}

// reasons returns the finished reasons. They do not share memory with w.
func (w *reasonWriter) reasons() []string {
	all := string(w.buf)
	out := make([]string, len(w.ends))
	start := 0
	for i, e := range w.ends {
		out[i] = all[start:e]
		start = e
	}
	return out
}
