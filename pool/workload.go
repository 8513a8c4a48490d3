package pool

import (
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Workload learns, per normalised statement fingerprint, how often it runs
// and how long it takes, and, per hour of the week, how busy the pool is.
// It is safe for concurrent use.
//
// # Hours of the week
//
// Hours of the week are in UTC. The busy time of each record, the interval
// [at, at+d), is split among the hours it overlaps, so a transaction from
// 09:30 to 10:30 adds 30 minutes to 09:00 and 30 minutes to 10:00. A
// statement counts towards the rate of the hour it started in.
//
// The mean of an hour of the week divides its totals by how many times that
// hour occurred in the span of history: from the hour of the first record to
// the hour of the latest record's end, both counted whole. So an hour that
// was quiet in some weeks is averaged down by them, and one that never
// occurred in the span has no mean. The span has no holes: while kproxy was
// down, its hours count as quiet.
//
// # Durations
//
// Each pattern keeps a histogram of durations with 8 linear buckets per
// power of two from 2¹⁰ ns (about 1µs) to 2³⁷ ns (about 137 s). A quantile
// is reported as the middle of its bucket, which is within 6.25% of the true
// quantile (nearest rank) for durations in that range; shorter durations are
// reported as about 1µs and longer ones as about 133 s.
type Workload struct {
	mu          sync.Mutex
	maxPatterns int
	patterns    *simplelru.LRU[uint64, *patternStats] // guarded by mu; least recently seen first
	hours       [weekHours]hourStats                  // guarded by mu; Sunday 00:00 UTC first
	// firstHour and lastHour are the hours (since the Unix epoch) of the
	// first record's start and the latest record's end; guarded by mu, and
	// meaningless while empty.
	firstHour, lastHour int64
	empty               bool // guarded by mu; no record yet
}

// weekHours is the number of hours in a week.
const weekHours = 7 * 24

// epochHourOfWeek is the hour of the week of the Unix epoch, Thursday
// 00:00 UTC, counting from Sunday 00:00.
const epochHourOfWeek = 4 * 24

// maxExampleBytes bounds a pattern's example text.
const maxExampleBytes = 200

// fullConfidenceWeeks is how many weeks of history give a forecast full
// confidence.
const fullConfidenceWeeks = 4

// hourStats is what one hour of the week accumulated over all weeks.
type hourStats struct {
	busySeconds float64 // connection-seconds held
	statements  int64   // records that started in the hour
}

// patternStats is what one fingerprint accumulated.
type patternStats struct {
	example      string
	count        int64
	totalSeconds float64
	lastSeen     time.Time // latest start
	hist         [durationBuckets]int64
}

// NewWorkload returns an empty Workload that keeps at most maxPatterns
// fingerprints, dropping the least recently seen one to make room for a new
// one. A maxPatterns below 1 is taken as 1.
func NewWorkload(maxPatterns int) *Workload {
	maxPatterns = max(maxPatterns, 1)
	// NewLRU fails only for a size below 1.
	lru, _ := simplelru.NewLRU[uint64, *patternStats](maxPatterns, nil)
	return &Workload{maxPatterns: maxPatterns, patterns: lru, empty: true}
}

// Record adds one statement or transaction that started at at and held a
// connection for d. The first example seen of a fingerprint is kept, cut to
// 200 bytes; later ones are ignored. A fingerprint of 0 means the statement
// is unknown: its busy time counts towards the hours of the week, but it is
// no pattern. A negative d is taken as 0.
func (w *Workload) Record(fingerprint uint64, example string, at time.Time, d time.Duration) {
	d = max(d, 0)
	w.mu.Lock()
	defer w.mu.Unlock()

	start := unixHour(at)
	end := start
	if d > 0 {
		end = unixHour(at.Add(d - 1))
	}
	if w.empty {
		w.firstHour, w.lastHour, w.empty = start, end, false
	} else {
		w.firstHour, w.lastHour = min(w.firstHour, start), max(w.lastHour, end)
	}
	w.hours[hourOfWeek(start)].statements++
	spreadOverHours(at, d, func(h int, seconds float64) { w.hours[h].busySeconds += seconds })

	if fingerprint == 0 {
		return
	}
	ps, ok := w.patterns.Get(fingerprint)
	if !ok {
		ps = w.newPatternLocked(fingerprint)
		ps.example = cutExample(example)
	}
	ps.count++
	ps.totalSeconds += d.Seconds()
	ps.hist[durationBucket(d)]++
	if at.After(ps.lastSeen) {
		ps.lastSeen = at
	}
}

// newPatternLocked adds an empty pattern for fingerprint, reusing the
// least recently seen one's memory when the Workload is full.
func (w *Workload) newPatternLocked(fingerprint uint64) *patternStats {
	var ps *patternStats
	if w.patterns.Len() >= w.maxPatterns {
		_, ps, _ = w.patterns.RemoveOldest()
		*ps = patternStats{}
	} else {
		ps = new(patternStats)
	}
	w.patterns.Add(fingerprint, ps)
	return ps
}

// cutExample cuts s to maxExampleBytes at a character boundary and copies
// it, so that it does not keep a larger buffer alive.
func cutExample(s string) string {
	if len(s) > maxExampleBytes {
		n := maxExampleBytes
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n]
	}
	return strings.Clone(s)
}

// unixHour returns the hour of t since the Unix epoch, rounded down.
func unixHour(t time.Time) int64 {
	return floorDiv(t.Unix(), 3600)
}

// hourOfWeek returns the hour of the week, from Sunday 00:00 UTC, of the
// hour h since the Unix epoch.
func hourOfWeek(h int64) int {
	return int(floorMod(h+epochHourOfWeek, weekHours))
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

func floorMod(a, b int64) int64 { return a - floorDiv(a, b)*b }

// spreadOverHours adds to each hour of the week the seconds of [at, at+d)
// that fall in it.
func spreadOverHours(at time.Time, d time.Duration, add func(hour int, seconds float64)) {
	if d <= 0 {
		return
	}
	const week = weekHours * time.Hour
	if weeks := d / week; weeks > 0 {
		for h := range weekHours {
			add(h, float64(weeks)*3600)
		}
		d -= weeks * week
	}
	hour := unixHour(at)
	// Offset of at into its hour.
	off := time.Duration(at.Unix()-hour*3600)*time.Second + time.Duration(at.Nanosecond())
	for d > 0 {
		part := min(time.Hour-off, d)
		add(hourOfWeek(hour), part.Seconds())
		d -= part
		hour++
		off = 0
	}
}

// weeksObservedLocked returns how many times the hour of the week h
// occurred in the span of history.
func (w *Workload) weeksObservedLocked(h int) int64 {
	if w.empty {
		return 0
	}
	n := w.lastHour - w.firstHour + 1
	weeks := n / weekHours
	if floorMod(int64(h-hourOfWeek(w.firstHour)), weekHours) < n%weekHours {
		weeks++
	}
	return weeks
}

// Pattern is what a Workload learned about one fingerprint. In JSON the
// fingerprint is 16 hexadecimal digits, as pg_query writes fingerprints.
type Pattern struct {
	Fingerprint uint64  `json:"fingerprint"`
	Example     string  `json:"example"` // first example seen, cut to 200 bytes
	Count       int64   `json:"count"`
	MeanMillis  float64 `json:"mean_ms"`
	// P99Millis is the 99th percentile duration, within 6.25% (see
	// Workload).
	P99Millis float64 `json:"p99_ms"`
}

// MarshalJSON writes the fingerprint in hexadecimal.
func (p Pattern) MarshalJSON() ([]byte, error) {
	type fields Pattern
	return json.Marshal(struct {
		Fingerprint string `json:"fingerprint"`
		fields
	}{hexFingerprint(p.Fingerprint), fields(p)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (p *Pattern) UnmarshalJSON(b []byte) error {
	type fields Pattern
	v := struct {
		Fingerprint string `json:"fingerprint"`
		*fields
	}{fields: (*fields)(p)}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	fp, err := parseFingerprint(v.Fingerprint)
	p.Fingerprint = fp
	return err
}

func hexFingerprint(fp uint64) string { return fmt.Sprintf("%016x", fp) }

func parseFingerprint(s string) (uint64, error) {
	fp, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("fingerprint %q is not 16 hexadecimal digits", s)
	}
	return fp, nil
}

// FrequentPatterns returns the n patterns that ran most often, most often
// first (ties by fingerprint); all of them when n < 1. The slice is the
// caller's.
func (w *Workload) FrequentPatterns(n int) []Pattern {
	w.mu.Lock()
	out := make([]Pattern, 0, w.patterns.Len())
	for _, fp := range w.patterns.Keys() {
		ps, _ := w.patterns.Peek(fp)
		out = append(out, ps.pattern(fp))
	}
	w.mu.Unlock()

	slices.SortFunc(out, func(a, b Pattern) int {
		if c := cmp.Compare(b.Count, a.Count); c != 0 {
			return c
		}
		return cmp.Compare(a.Fingerprint, b.Fingerprint)
	})
	if n > 0 && n < len(out) {
		out = out[:n]
	}
	return out
}

func (ps *patternStats) pattern(fp uint64) Pattern {
	p := Pattern{Fingerprint: fp, Example: ps.example, Count: ps.count}
	if ps.count > 0 {
		p.MeanMillis = ps.totalSeconds * 1000 / float64(ps.count)
		p.P99Millis = ps.quantile(0.99).Seconds() * 1000
	}
	return p
}

// quantile returns the nearest-rank quantile q of the durations, as the
// middle of its bucket.
func (ps *patternStats) quantile(q float64) time.Duration {
	rank := max(int64(math.Ceil(q*float64(ps.count))), 1)
	var seen int64
	for i, n := range ps.hist {
		if seen += n; seen >= rank {
			return durationBucketMiddle(i)
		}
	}
	return durationBucketMiddle(durationBuckets - 1)
}

// The duration histogram: durationSub linear buckets per power of two from
// 2^durationMinExp ns up to 2^durationMaxExp ns.
const (
	durationMinExp  = 10
	durationMaxExp  = 37
	durationSub     = 8 // a power of two
	durationSubBits = 3 // log2(durationSub)
	durationBuckets = (durationMaxExp - durationMinExp) * durationSub
)

// durationBucket returns the histogram bucket of d. Bucket i holds
// [lo, lo + 2^(e-3)) with e = 10 + i/8 and lo = 2^e + (i%8)·2^(e-3), so its
// middle is within 2^(e-4)/2^e = 1/16 of anything in it.
func durationBucket(d time.Duration) int {
	v := uint64(max(d, 0))
	switch {
	case v < 1<<durationMinExp:
		return 0
	case v >= 1<<durationMaxExp:
		return durationBuckets - 1
	}
	e := bits.Len64(v) - 1
	sub := int(v>>(e-durationSubBits)) & (durationSub - 1)
	return (e-durationMinExp)*durationSub + sub
}

// durationBucketMiddle returns the middle of bucket i.
func durationBucketMiddle(i int) time.Duration {
	e := durationMinExp + i/durationSub
	lo := uint64(durationSub+i%durationSub) << (e - durationSubBits)
	return time.Duration(lo + 1<<(e-durationSubBits-1))
}

// HourOfWeek is what a Workload learned about one hour of the week, in
// UTC.
type HourOfWeek struct {
	Day  time.Weekday `json:"day"`
	Hour int          `json:"hour"`
	// MeanBusy is the mean number of busy connections over the hour: its
	// busy connection-seconds / 3600 / the times it occurred.
	MeanBusy float64 `json:"mean_busy_connections"`
	// MeanRate is the mean number of statements started per second.
	MeanRate float64 `json:"mean_per_second"`
}

// PeakHours returns the n hours of the week with the most busy
// connections on average, busiest first (ties in week order from Sunday
// 00:00); all hours with any busy time when n < 1. Hours without busy time
// are left out. The slice is the caller's.
func (w *Workload) PeakHours(n int) []HourOfWeek {
	w.mu.Lock()
	var out []HourOfWeek
	for h := range weekHours {
		if w.hours[h].busySeconds <= 0 {
			continue
		}
		out = append(out, w.hourLocked(h))
	}
	w.mu.Unlock()

	// Stable: ties stay in week order.
	slices.SortStableFunc(out, func(a, b HourOfWeek) int { return cmp.Compare(b.MeanBusy, a.MeanBusy) })
	if n > 0 && n < len(out) {
		out = out[:n]
	}
	return out
}

func (w *Workload) hourLocked(h int) HourOfWeek {
	out := HourOfWeek{Day: time.Weekday(h / 24), Hour: h % 24}
	if weeks := w.weeksObservedLocked(h); weeks > 0 {
		out.MeanBusy = w.hours[h].busySeconds / 3600 / float64(weeks)
		out.MeanRate = float64(w.hours[h].statements) / 3600 / float64(weeks)
	}
	return out
}

// Forecast is what a Workload expects over [At, At+Horizon).
type Forecast struct {
	At      time.Time     `json:"at"`
	Horizon time.Duration `json:"horizon_ns"`
	// ExpectedRate is the expected number of statements started per
	// second.
	ExpectedRate float64 `json:"expected_per_second"`
	// ExpectedBusy is the expected number of busy connections: busy
	// connection-seconds per second.
	ExpectedBusy float64 `json:"expected_busy_connections"`
	// RecommendedPoolSize is ExpectedBusy × (1 + headroom) rounded up; at
	// least 1 when any busy time is expected, 0 without history.
	RecommendedPoolSize int `json:"recommended_pool_size"`
	// Confidence, 0 to 1, is the number of weeks of history of the hours
	// covered, over 4, at most 1; weighted like the expectations.
	Confidence float64 `json:"confidence"`
}

// Forecast returns what the history says about [at, at+horizon): the mean
// over the hours of the week the window covers, each weighted by the time
// the window spends in it, of their mean busy connections and rates. Hours
// of the week that never occurred in the history are left out of the means
// (but count as no confidence); with none left, the forecast expects
// nothing. A horizon below 1ns forecasts the hour of at. A negative
// headroom is taken as 0.
func (w *Workload) Forecast(at time.Time, horizon time.Duration, headroom float64) Forecast {
	f := Forecast{At: at, Horizon: horizon}
	var weights [weekHours]float64 // seconds of the window in each hour of the week
	spreadOverHours(at, max(horizon, 1), func(h int, seconds float64) { weights[h] += seconds })

	w.mu.Lock()
	defer w.mu.Unlock()
	var covered, observed, busy, rate, confidence float64
	for h, wt := range weights {
		if wt == 0 {
			continue
		}
		covered += wt
		weeks := w.weeksObservedLocked(h)
		confidence += wt * min(float64(weeks)/fullConfidenceWeeks, 1)
		if weeks == 0 {
			continue
		}
		observed += wt
		busy += wt * w.hours[h].busySeconds / 3600 / float64(weeks)
		rate += wt * float64(w.hours[h].statements) / 3600 / float64(weeks)
	}
	if observed == 0 {
		return f
	}
	f.ExpectedBusy = busy / observed
	f.ExpectedRate = rate / observed
	f.Confidence = confidence / covered
	if f.ExpectedBusy > 0 {
		// The tolerance keeps float error (15 × 1.2 = 18.000000000000004)
		// from adding a connection.
		want := f.ExpectedBusy * (1 + max(headroom, 0))
		f.RecommendedPoolSize = max(int(math.Ceil(want-1e-9)), 1)
	}
	return f
}

// WorkloadSnapshot is everything a Workload learned, for saving across
// restarts (see Restore) and for stats. Its JSON form is stable within a
// Version.
type WorkloadSnapshot struct {
	// Version is the layout of the snapshot, workloadSnapshotVersion.
	Version int `json:"version"`
	// FirstHour and LastHour are the start of the hour of the first
	// record and of the hour of the latest record's end; zero when empty.
	FirstHour time.Time `json:"first_hour,omitzero"`
	LastHour  time.Time `json:"last_hour,omitzero"`
	// Hours holds the hours of the week with any record.
	Hours []HourSnapshot `json:"hours"`
	// Patterns holds the patterns, least recently seen (LastSeen) first.
	Patterns []PatternSnapshot `json:"patterns"`
}

// workloadSnapshotVersion is the Version that Snapshot writes and Restore
// reads.
const workloadSnapshotVersion = 1

// HourSnapshot is the totals of one hour of the week (UTC) over all weeks.
type HourSnapshot struct {
	Day         time.Weekday `json:"day"`
	Hour        int          `json:"hour"`
	BusySeconds float64      `json:"busy_seconds"`
	Statements  int64        `json:"statements"`
}

// PatternSnapshot is the totals of one pattern. In JSON the fingerprint is
// 16 hexadecimal digits.
type PatternSnapshot struct {
	Fingerprint  uint64    `json:"fingerprint"`
	Example      string    `json:"example"`
	Count        int64     `json:"count"`
	TotalSeconds float64   `json:"total_seconds"`
	LastSeen     time.Time `json:"last_seen"`
	// Histogram holds the non-empty duration buckets as [bucket, count]
	// pairs; bucket i is described at the Workload type.
	Histogram [][2]int64 `json:"histogram"`
}

// MarshalJSON writes the fingerprint in hexadecimal.
func (p PatternSnapshot) MarshalJSON() ([]byte, error) {
	type fields PatternSnapshot
	return json.Marshal(struct {
		Fingerprint string `json:"fingerprint"`
		fields
	}{hexFingerprint(p.Fingerprint), fields(p)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (p *PatternSnapshot) UnmarshalJSON(b []byte) error {
	type fields PatternSnapshot
	v := struct {
		Fingerprint string `json:"fingerprint"`
		*fields
	}{fields: (*fields)(p)}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	fp, err := parseFingerprint(v.Fingerprint)
	p.Fingerprint = fp
	return err
}

// Snapshot returns a copy of everything w learned. The snapshot is the
// caller's.
func (w *Workload) Snapshot() WorkloadSnapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := WorkloadSnapshot{Version: workloadSnapshotVersion, Hours: []HourSnapshot{}, Patterns: []PatternSnapshot{}}
	if w.empty {
		return s
	}
	s.FirstHour = time.Unix(w.firstHour*3600, 0).UTC()
	s.LastHour = time.Unix(w.lastHour*3600, 0).UTC()
	for h, hs := range w.hours {
		if hs.busySeconds == 0 && hs.statements == 0 {
			continue
		}
		s.Hours = append(s.Hours, HourSnapshot{
			Day: time.Weekday(h / 24), Hour: h % 24, BusySeconds: hs.busySeconds, Statements: hs.statements,
		})
	}
	for _, fp := range w.patterns.Keys() {
		ps, _ := w.patterns.Peek(fp)
		p := PatternSnapshot{
			Fingerprint: fp, Example: ps.example, Count: ps.count, TotalSeconds: ps.totalSeconds,
			LastSeen: ps.lastSeen, Histogram: [][2]int64{},
		}
		for i, n := range ps.hist {
			if n != 0 {
				p.Histogram = append(p.Histogram, [2]int64{int64(i), n})
			}
		}
		s.Patterns = append(s.Patterns, p)
	}
	// Restore orders by LastSeen; so does the snapshot, to match.
	slices.SortStableFunc(s.Patterns, func(a, b PatternSnapshot) int { return a.LastSeen.Compare(b.LastSeen) })
	return s
}

// Restore adds what a snapshot holds to what w learned, typically a saved
// snapshot into a new Workload after a restart. Restoring the same
// snapshot twice counts it twice. Of the patterns, the most recently seen
// are kept, up to maxPatterns. A snapshot of another Version, and hours
// and buckets out of range, are ignored.
func (w *Workload) Restore(s WorkloadSnapshot) {
	if s.Version != workloadSnapshotVersion {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()

	if !s.FirstHour.IsZero() && !s.LastHour.IsZero() {
		first, last := unixHour(s.FirstHour), unixHour(s.LastHour)
		if w.empty {
			w.firstHour, w.lastHour, w.empty = first, last, false
		} else {
			w.firstHour, w.lastHour = min(w.firstHour, first), max(w.lastHour, last)
		}
	}
	for _, hs := range s.Hours {
		if hs.Day < time.Sunday || hs.Day > time.Saturday || hs.Hour < 0 || hs.Hour > 23 {
			continue
		}
		h := &w.hours[int(hs.Day)*24+hs.Hour]
		h.busySeconds += hs.BusySeconds
		h.statements += hs.Statements
	}

	type entry struct {
		fp uint64
		ps *patternStats
	}
	all := make([]entry, 0, w.patterns.Len()+len(s.Patterns))
	byFP := make(map[uint64]*patternStats, cap(all))
	for _, fp := range w.patterns.Keys() {
		ps, _ := w.patterns.Peek(fp)
		all = append(all, entry{fp, ps})
		byFP[fp] = ps
	}
	for _, sp := range s.Patterns {
		if sp.Fingerprint == 0 {
			continue
		}
		ps, ok := byFP[sp.Fingerprint]
		if !ok {
			ps = &patternStats{example: cutExample(sp.Example)}
			all = append(all, entry{sp.Fingerprint, ps})
			byFP[sp.Fingerprint] = ps
		}
		ps.count += sp.Count
		ps.totalSeconds += sp.TotalSeconds
		if sp.LastSeen.After(ps.lastSeen) {
			ps.lastSeen = sp.LastSeen
		}
		for _, b := range sp.Histogram {
			if b[0] >= 0 && b[0] < durationBuckets {
				ps.hist[b[0]] += b[1]
			}
		}
	}
	// Stable: patterns seen at the same time keep their order of recency.
	slices.SortStableFunc(all, func(a, b entry) int { return a.ps.lastSeen.Compare(b.ps.lastSeen) })
	all = all[max(len(all)-w.maxPatterns, 0):]
	w.patterns.Purge()
	for _, e := range all {
		w.patterns.Add(e.fp, e.ps)
	}
}
