package pool

import (
	"encoding/json"
	"math"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// workloadT0 is a Sunday 00:00 UTC, the start of week 0 of the synthetic
// traffic.
var workloadT0 = time.Date(2026, 1, 4, 0, 0, 0, 0, time.UTC)

// workloadAt returns day (0 Sunday) and hour:minute of the given week
// after workloadT0.
func workloadAt(week int, day time.Weekday, hour, minute int) time.Time {
	return workloadT0.AddDate(0, 0, 7*week+int(day)).Add(time.Duration(hour)*time.Hour + time.Duration(minute)*time.Minute)
}

// Fingerprints of the synthetic traffic.
const (
	fpWorkingHours = 0x1111
	fpMondayPeak   = 0x2222
	fpQuiet        = 0x3333
)

// syntheticBusyMilli returns the synthetic traffic of an hour of the week
// in thousandths of a busy connection (rate × hold time):
//   - Monday 10:00: 600/s × 25 ms = 15 busy connections;
//   - other weekday hours from 09:00 to 17:00: 200/s × 20 ms = 4;
//   - nights and weekends: 10/s × 5 ms = 0.05.
func syntheticBusyMilli(day time.Weekday, hour int) (busyMilli int64, fp uint64) {
	switch {
	case day == time.Monday && hour == 10:
		return 600 * 25, fpMondayPeak
	case day >= time.Monday && day <= time.Friday && hour >= 9 && hour < 17:
		return 200 * 20, fpWorkingHours
	default:
		return 10 * 5, fpQuiet
	}
}

// syntheticWorkload feeds weeks of synthetic traffic from workloadT0 into a
// new Workload. Each minute's statements are recorded as a few records of
// the same total busy time: one of 60 s per whole busy connection and one
// for the rest, so the busy time is exact and the test fast.
func syntheticWorkload(t testing.TB, weeks int) *Workload {
	t.Helper()
	w := NewWorkload(100)
	for week := range weeks {
		for day := time.Sunday; day <= time.Saturday; day++ {
			for hour := range 24 {
				busyMilli, fp := syntheticBusyMilli(day, hour)
				for minute := range 60 {
					at := workloadAt(week, day, hour, minute)
					for range busyMilli / 1000 {
						w.Record(fp, "SELECT synthetic", at, time.Minute)
					}
					if rest := time.Duration(busyMilli%1000) * time.Minute / 1000; rest > 0 {
						w.Record(fp, "SELECT synthetic", at, rest)
					}
				}
			}
		}
	}
	return w
}

func TestWorkloadPeakHoursFindTheMondayPeakThenWeekdayWorkingHours(t *testing.T) {
	w := syntheticWorkload(t, 3)

	peaks := w.PeakHours(0)
	require.Len(t, peaks, 168, "every hour of the week saw traffic")
	assert.Equal(t, time.Monday, peaks[0].Day)
	assert.Equal(t, 10, peaks[0].Hour)
	assert.InDelta(t, 15, peaks[0].MeanBusy, 1e-9)
	for _, p := range peaks[1:40] {
		assert.True(t, p.Day >= time.Monday && p.Day <= time.Friday && p.Hour >= 9 && p.Hour < 17,
			"%v %02d:00 is not a weekday working hour", p.Day, p.Hour)
		assert.InDelta(t, 4, p.MeanBusy, 1e-9)
	}
	for _, p := range peaks[40:] {
		assert.InDelta(t, 0.05, p.MeanBusy, 1e-9, "%v %02d:00", p.Day, p.Hour)
	}
	// Ties stay in week order.
	assert.Equal(t, HourOfWeek{Day: time.Monday, Hour: 9, MeanBusy: 4, MeanRate: peaks[1].MeanRate}, peaks[1])

	top := w.PeakHours(3)
	require.Len(t, top, 3)
	assert.Equal(t, peaks[:3], top)
}

func TestWorkloadForecastRecommendsTheBusyConnectionsOfTheHoursCoveredPlusHeadroom(t *testing.T) {
	w := syntheticWorkload(t, 3)
	// Week 3 is the week after the history.
	tests := []struct {
		name     string
		at       time.Time
		horizon  time.Duration
		headroom float64
		busy     float64
		size     int
	}{
		{"Monday 10:00 for an hour", workloadAt(3, time.Monday, 10, 0), time.Hour, 0.2, 15, 18},
		{"Monday 10:00 without headroom", workloadAt(3, time.Monday, 10, 0), time.Hour, 0, 15, 15},
		{"a negative headroom is none", workloadAt(3, time.Monday, 10, 0), time.Hour, -0.5, 15, 15},
		{"a zero horizon is the hour of at", workloadAt(3, time.Monday, 10, 30), 0, 0.2, 15, 18},
		{"Monday 09:45 for 15 minutes", workloadAt(3, time.Monday, 9, 45), 15 * time.Minute, 0.2, 4, 5},
		{"Monday 09:30 for an hour is half 09:00 and half 10:00", workloadAt(3, time.Monday, 9, 30), time.Hour, 0.2, 9.5, 12},
		{"Monday 09:40 for 30 minutes is two thirds 09:00", workloadAt(3, time.Monday, 9, 40), 30 * time.Minute, 0.2, (20*4 + 10*15) / 30.0, 10},
		{"Friday 16:00 for two hours is a working hour and a night hour", workloadAt(3, time.Friday, 16, 0), 2 * time.Hour, 0.2, (4 + 0.05) / 2, 3},
		{"a night hour recommends one connection", workloadAt(3, time.Tuesday, 3, 0), time.Hour, 0.2, 0.05, 1},
		{"a whole week is the weekly mean", workloadAt(3, time.Wednesday, 13, 17), 7 * 24 * time.Hour, 0.2, (39*4 + 15 + 128*0.05) / 168, 2},
		{"two weeks and an hour weigh that hour once more", workloadAt(3, time.Monday, 10, 0), 14*24*time.Hour + time.Hour, 0,
			(2*(39*4+15+128*0.05) + 15) / (2*168 + 1), 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := w.Forecast(tt.at, tt.horizon, tt.headroom)
			assert.Equal(t, tt.at, f.At)
			assert.Equal(t, tt.horizon, f.Horizon)
			assert.InDelta(t, tt.busy, f.ExpectedBusy, 1e-9)
			assert.Equal(t, tt.size, f.RecommendedPoolSize)
			assert.InDelta(t, 0.75, f.Confidence, 1e-9, "three weeks of four")
		})
	}
}

func TestWorkloadForecastWithoutHistoryIsZero(t *testing.T) {
	at := workloadAt(0, time.Monday, 10, 0)
	f := NewWorkload(10).Forecast(at, time.Hour, 0.2)
	assert.Equal(t, Forecast{At: at, Horizon: time.Hour}, f)

	// History, but not of the hours asked about.
	w := NewWorkload(10)
	w.Record(1, "SELECT 1", at, time.Hour)
	f = w.Forecast(workloadAt(0, time.Tuesday, 10, 0), time.Hour, 0.2)
	assert.Equal(t, Forecast{At: workloadAt(0, time.Tuesday, 10, 0), Horizon: time.Hour}, f)
}

func TestWorkloadConfidenceGrowsWithWeeksAndStopsAtFour(t *testing.T) {
	for weeks, want := range map[int]float64{1: 0.25, 2: 0.5, 4: 1, 5: 1} {
		w := NewWorkload(10)
		w.Record(1, "SELECT 1", workloadT0, time.Duration(weeks)*7*24*time.Hour)
		f := w.Forecast(workloadAt(weeks, time.Monday, 10, 0), time.Hour, 0)
		assert.InDelta(t, want, f.Confidence, 1e-9, "%d weeks", weeks)
		assert.InDelta(t, 1, f.ExpectedBusy, 1e-9, "%d weeks", weeks)
	}
}

func TestWorkloadSplitsBusyTimeAcrossHourBoundaries(t *testing.T) {
	w := NewWorkload(10)
	w.Record(1, "SELECT 1", workloadAt(0, time.Monday, 9, 30), time.Hour)

	assert.Equal(t, []HourOfWeek{
		{Day: time.Monday, Hour: 9, MeanBusy: 0.5, MeanRate: 1.0 / 3600},
		{Day: time.Monday, Hour: 10, MeanBusy: 0.5},
	}, w.PeakHours(0))
}

func TestWorkloadCountsAConnectionHeldForTwoWeeksAsOneBusyConnectionInEveryHour(t *testing.T) {
	w := NewWorkload(10)
	// Sunday 00:00 occurs three times in the span, every other hour twice.
	w.Record(1, "SELECT 1", workloadT0, 14*24*time.Hour+time.Hour)

	peaks := w.PeakHours(0)
	require.Len(t, peaks, 168)
	for _, p := range peaks {
		assert.InDelta(t, 1, p.MeanBusy, 1e-9, "%v %02d:00", p.Day, p.Hour)
	}
}

func TestWorkloadWeeksObservedCountsEachHourOfWeekInTheSpanOfHistory(t *testing.T) {
	t.Run("a quiet week averages an hour down", func(t *testing.T) {
		w := NewWorkload(10)
		w.Record(1, "BEGIN", workloadT0, time.Millisecond)
		for range 8 {
			w.Record(2, "SELECT 2", workloadAt(0, time.Monday, 10, 0), time.Hour)
		}
		// Nothing on Monday of week 1, but the history goes on to its
		// Saturday: two Mondays 10:00 were observed.
		w.Record(1, "BEGIN", workloadAt(1, time.Saturday, 23, 30), time.Millisecond)

		top := w.PeakHours(1)
		require.Len(t, top, 1)
		assert.Equal(t, HourOfWeek{Day: time.Monday, Hour: 10, MeanBusy: 4, MeanRate: 8.0 / 3600 / 2}, top[0])
		f := w.Forecast(workloadAt(2, time.Monday, 10, 0), time.Hour, 0)
		assert.Equal(t, 4, f.RecommendedPoolSize)
		assert.InDelta(t, 0.5, f.Confidence, 1e-9)
	})
	t.Run("hours at the edges of the span occur fewer times", func(t *testing.T) {
		w := NewWorkload(10)
		w.Record(1, "SELECT 1", workloadAt(0, time.Monday, 10, 0), time.Hour)
		w.Record(1, "SELECT 1", workloadAt(1, time.Tuesday, 10, 0), time.Hour)

		// The span is Monday 10:00 of week 0 to Tuesday 10:00 of week 1.
		for _, tt := range []struct {
			day        time.Weekday
			hour       int
			busy, conf float64
		}{
			{time.Monday, 10, 0.5, 0.5},
			{time.Tuesday, 10, 0.5, 0.5},
			{time.Monday, 9, 0, 0.25},
			{time.Tuesday, 11, 0, 0.25},
			{time.Sunday, 12, 0, 0.25},
		} {
			f := w.Forecast(workloadAt(5, tt.day, tt.hour, 0), time.Hour, 0)
			assert.InDelta(t, tt.busy, f.ExpectedBusy, 1e-9, "%v %02d:00", tt.day, tt.hour)
			assert.InDelta(t, tt.conf, f.Confidence, 1e-9, "%v %02d:00", tt.day, tt.hour)
		}
	})
}

func TestWorkloadMeanRateCountsStatementsStartedPerSecond(t *testing.T) {
	w := NewWorkload(10)
	// Two weeks of history; 7200 statements in Monday 09:00 of week 0.
	w.Record(1, "BEGIN", workloadT0, 0)
	w.Record(1, "BEGIN", workloadAt(1, time.Saturday, 23, 59), 0)
	for i := range 7200 {
		w.Record(2, "SELECT 2", workloadAt(0, time.Monday, 9, 0).Add(time.Duration(i)*500*time.Millisecond), time.Millisecond)
	}

	top := w.PeakHours(1)
	require.Len(t, top, 1)
	assert.InDelta(t, 1, top[0].MeanRate, 1e-9)
	f := w.Forecast(workloadAt(2, time.Monday, 9, 0), time.Hour, 0)
	assert.InDelta(t, 1, f.ExpectedRate, 1e-9)
	assert.InDelta(t, 7200*0.001/3600/2, f.ExpectedBusy, 1e-12)
	assert.Equal(t, 1, f.RecommendedPoolSize)
}

func TestWorkloadFrequentPatternsAreByCountWithMeanAndP99(t *testing.T) {
	w := NewWorkload(10)
	at := workloadT0
	record := func(fp uint64, d time.Duration) {
		w.Record(fp, "SELECT "+string(rune('A'+fp)), at, d)
		at = at.Add(time.Second)
	}
	for i := 1; i <= 1000; i++ { // uniform 1..1000 ms: p99 is 990 ms
		record(1, time.Duration(i)*time.Millisecond)
	}
	for range 500 { // constant 20 ms
		record(2, 20*time.Millisecond)
	}
	for i := range 100 { // 98 of 1 ms, 2 of 500 ms: p99 is 500 ms
		d := time.Millisecond
		if i%50 == 0 {
			d = 500 * time.Millisecond
		}
		record(4, d)
	}
	for i := 1; i <= 100; i++ { // 10 µs steps: p99 is 990 µs
		record(3, time.Duration(i)*10*time.Microsecond)
	}

	got := w.FrequentPatterns(0)
	require.Len(t, got, 4)
	for i, want := range []struct {
		fp          uint64
		count       int64
		mean, p99   float64
		exampleTail string
	}{
		{1, 1000, 500.5, 990, "B"},
		{2, 500, 20, 20, "C"},
		{3, 100, 0.505, 0.990, "D"}, // ties by fingerprint
		{4, 100, (98*1 + 2*500) / 100.0, 500, "E"},
	} {
		p := got[i]
		assert.Equal(t, want.fp, p.Fingerprint)
		assert.Equal(t, want.count, p.Count)
		assert.Equal(t, "SELECT "+want.exampleTail, p.Example)
		assert.InDelta(t, want.mean, p.MeanMillis, 1e-9)
		assert.InEpsilon(t, want.p99, p.P99Millis, 1.0/16, "fingerprint %d", want.fp)
	}
	assert.Equal(t, got[:2], w.FrequentPatterns(2))
}

func TestWorkloadDurationBucketsAreWithinASixteenthOfTheirMiddle(t *testing.T) {
	prev := 0
	for d := time.Duration(1 << durationMinExp); d < 1<<durationMaxExp; d += d/97 + 1 {
		b := durationBucket(d)
		require.GreaterOrEqual(t, b, prev, "buckets grow with the duration")
		prev = b
		mid := durationBucketMiddle(b)
		assert.LessOrEqual(t, math.Abs(float64(mid-d))/float64(d), 1.0/16, "%v in bucket %d (middle %v)", d, b, mid)
	}
	assert.Equal(t, durationBuckets-1, prev)
	assert.Equal(t, 0, durationBucket(0))
	assert.Equal(t, 0, durationBucket(-time.Second))
	assert.Equal(t, durationBuckets-1, durationBucket(time.Hour))
}

func TestWorkloadEvictsTheLeastRecentlySeenPattern(t *testing.T) {
	w := NewWorkload(2)
	w.Record(1, "SELECT 1", workloadT0, time.Millisecond)
	w.Record(2, "SELECT 2", workloadT0, time.Millisecond)
	w.Record(1, "SELECT 1", workloadT0, time.Millisecond)
	w.Record(3, "SELECT 3", workloadT0, time.Millisecond) // evicts 2

	fps := func() []uint64 {
		var out []uint64
		for _, p := range w.FrequentPatterns(0) {
			out = append(out, p.Fingerprint)
		}
		return out
	}
	assert.Equal(t, []uint64{1, 3}, fps())

	w.Record(2, "SELECT two", workloadT0, time.Millisecond) // evicts 1, starts 2 afresh
	got := w.FrequentPatterns(0)
	assert.Equal(t, []uint64{2, 3}, fps())
	assert.Equal(t, Pattern{Fingerprint: 2, Example: "SELECT two", Count: 1, MeanMillis: 1, P99Millis: got[0].P99Millis}, got[0])
}

func TestWorkloadKeepsTheFirstExampleCutTo200BytesAtACharacterBoundary(t *testing.T) {
	w := NewWorkload(10)
	// Byte 200 falls inside an é.
	long := "SELECT 'x" + strings.Repeat("é", 200) + "'"
	w.Record(1, long, workloadT0, time.Millisecond)
	w.Record(1, "SELECT 'later'", workloadT0, time.Millisecond)

	ex := w.FrequentPatterns(1)[0].Example
	assert.Len(t, ex, 199)
	assert.True(t, utf8.ValidString(ex))
	assert.True(t, strings.HasPrefix(long, ex))
}

func TestWorkloadCountsUnknownStatementsAsLoadButNotAsPatterns(t *testing.T) {
	w := NewWorkload(10)
	w.Record(0, "", workloadAt(0, time.Monday, 10, 0), time.Hour)

	assert.Empty(t, w.FrequentPatterns(0))
	assert.Equal(t, 1, w.Forecast(workloadAt(1, time.Monday, 10, 0), time.Hour, 0).RecommendedPoolSize)
}

func TestWorkloadPatternJSONHasAHexFingerprint(t *testing.T) {
	p := Pattern{Fingerprint: 0xfedcba9876543210, Example: "SELECT 1", Count: 3, MeanMillis: 1.5, P99Millis: 2}
	b, err := json.Marshal(p)
	require.NoError(t, err)
	assert.JSONEq(t, `{"fingerprint":"fedcba9876543210","example":"SELECT 1","count":3,"mean_ms":1.5,"p99_ms":2}`, string(b))

	var back Pattern
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Equal(t, p, back)

	assert.Error(t, json.Unmarshal([]byte(`{"fingerprint":"not hex"}`), &back))
}

// workloadForecastTimes are the times the round-trip tests compare
// forecasts at.
var workloadForecastTimes = []time.Time{
	workloadAt(3, time.Monday, 10, 0),
	workloadAt(3, time.Monday, 9, 40),
	workloadAt(3, time.Tuesday, 3, 0),
	workloadAt(3, time.Saturday, 12, 0),
}

func TestWorkloadSnapshotThroughJSONRestoresTheSameForecast(t *testing.T) {
	w := syntheticWorkload(t, 3)
	w.Record(0xabcdef0123456789, "SELECT 'slow'", workloadAt(2, time.Friday, 12, 0), 3*time.Second)

	b, err := json.Marshal(w.Snapshot())
	require.NoError(t, err)
	assert.Contains(t, string(b), `"fingerprint":"abcdef0123456789"`)
	var snap WorkloadSnapshot
	require.NoError(t, json.Unmarshal(b, &snap))
	restored := NewWorkload(100)
	restored.Restore(snap)

	for _, at := range workloadForecastTimes {
		assert.Equal(t, w.Forecast(at, 30*time.Minute, 0.2), restored.Forecast(at, 30*time.Minute, 0.2), "at %v", at)
	}
	assert.Equal(t, w.PeakHours(0), restored.PeakHours(0))
	assert.Equal(t, w.FrequentPatterns(0), restored.FrequentPatterns(0))
	assert.Equal(t, w.Snapshot(), restored.Snapshot())
}

func TestWorkloadRestoreMergesIntoWhatWasLearned(t *testing.T) {
	before := NewWorkload(10)
	before.Record(1, "SELECT 1", workloadAt(0, time.Monday, 10, 0), time.Hour)
	before.Record(1, "SELECT 1", workloadAt(0, time.Monday, 10, 0), time.Hour)

	w := NewWorkload(10)
	w.Record(1, "SELECT 1", workloadAt(1, time.Monday, 10, 0), time.Hour)
	w.Record(2, "SELECT 2", workloadAt(1, time.Monday, 10, 0), time.Hour)
	w.Restore(before.Snapshot())

	got := w.FrequentPatterns(0)
	require.Len(t, got, 2)
	assert.Equal(t, int64(3), got[0].Count)
	assert.Equal(t, int64(1), got[1].Count)
	// Four busy hours over the two Mondays of the merged span.
	top := w.PeakHours(1)
	require.Len(t, top, 1)
	assert.InDelta(t, 2, top[0].MeanBusy, 1e-9)
}

func TestWorkloadRestoreKeepsTheMostRecentlySeenPatternsThatFit(t *testing.T) {
	big := NewWorkload(10)
	for fp := uint64(1); fp <= 5; fp++ {
		big.Record(fp, "SELECT", workloadT0.Add(time.Duration(fp)*time.Minute), time.Millisecond)
	}
	small := NewWorkload(2)
	small.Restore(big.Snapshot())

	var fps []uint64
	for _, p := range small.FrequentPatterns(0) {
		fps = append(fps, p.Fingerprint)
	}
	assert.Equal(t, []uint64{4, 5}, fps)
}

func TestWorkloadRestoreIgnoresAnUnknownVersion(t *testing.T) {
	snap := syntheticWorkload(t, 1).Snapshot()
	snap.Version = 99
	w := NewWorkload(10)
	w.Restore(snap)
	assert.Equal(t, NewWorkload(10).Snapshot(), w.Snapshot())
}

func TestWorkloadIsSafeForConcurrentUse(t *testing.T) {
	w := NewWorkload(16)
	const writers, each = 8, 2000
	var wg sync.WaitGroup
	done := make(chan struct{})
	var readers sync.WaitGroup
	for range 2 {
		readers.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				w.FrequentPatterns(5)
				w.PeakHours(5)
				w.Forecast(workloadAt(1, time.Monday, 10, 0), 15*time.Minute, 0.2)
				w.Snapshot()
			}
		})
	}
	for g := range writers {
		wg.Go(func() {
			for i := range each {
				at := workloadT0.Add(time.Duration(g*each+i) * time.Second)
				w.Record(uint64(i%20+1), "SELECT", at, time.Duration(i%7)*time.Millisecond)
			}
		})
	}
	wg.Wait()
	close(done)
	readers.Wait()

	var statements int64
	for _, h := range w.Snapshot().Hours {
		statements += h.Statements
	}
	assert.Equal(t, int64(writers*each), statements)
	assert.Len(t, w.FrequentPatterns(0), 16)
}

func BenchmarkWorkloadRecord(b *testing.B) {
	b.Run("known", func(b *testing.B) {
		w := NewWorkload(1000)
		w.Record(42, "SELECT 1", workloadT0, time.Millisecond)
		b.ReportAllocs()
		for i := range b.N {
			w.Record(42, "SELECT 1", workloadT0.Add(time.Duration(i)*time.Millisecond), 3*time.Millisecond)
		}
	})
	b.Run("known-parallel", func(b *testing.B) {
		w := NewWorkload(1000)
		for fp := uint64(1); fp <= 100; fp++ {
			w.Record(fp, "SELECT 1", workloadT0, time.Millisecond)
		}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				i++
				w.Record(uint64(i%100+1), "SELECT 1", workloadT0.Add(time.Duration(i)*time.Millisecond), 3*time.Millisecond)
			}
		})
	})
	b.Run("new-evicting", func(b *testing.B) {
		w := NewWorkload(1000)
		b.ReportAllocs()
		for i := range b.N {
			w.Record(uint64(i+1), "SELECT 1", workloadT0.Add(time.Duration(i)*time.Millisecond), 3*time.Millisecond)
		}
	})
}
