package pool

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sizerT0 is the fake clock's start; the reasons print times of day from it.
var sizerT0 = time.Date(2026, 1, 2, 12, 0, 0, 0, time.UTC)

// sizerStep is one sample of a script: the load the pool measured at a time
// since sizerT0, and what the sizer must answer. The sample's Size is the
// size the previous step decided, as the pool would have applied it.
type sizerStep struct {
	at       time.Duration
	busy     float64
	waiting  int
	arrivals int64
	service  time.Duration
	p99      time.Duration
	forecast int
	budget   int

	want      int
	emergency bool
	reason    string // a substring one of the reasons must contain; "" skips the check
}

// runSizerScript feeds steps to s, starting from a pool of size start, and
// checks every decision.
func runSizerScript(t *testing.T, s *Sizer, start int, steps []sizerStep) {
	t.Helper()
	size := start
	for _, st := range steps {
		d := s.Next(SizerSample{
			Now:         sizerT0.Add(st.at),
			Interval:    time.Second,
			Size:        size,
			Busy:        st.busy,
			Waiting:     st.waiting,
			Arrivals:    st.arrivals,
			ServiceTime: st.service,
			AcquireP99:  st.p99,
			Forecast:    st.forecast,
			Budget:      st.budget,
		})
		require.NotEmpty(t, d.Reasons, "at %v", st.at)
		assert.Equal(t, st.want, d.Size, "size at %v; reasons %q", st.at, d.Reasons)
		assert.Equal(t, st.want != size, d.Changed, "changed at %v", st.at)
		assert.Equal(t, st.emergency, d.Emergency, "emergency at %v", st.at)
		if st.reason != "" {
			assert.True(t, hasReason(d, st.reason), "at %v: no reason contains %q in %q", st.at, st.reason, d.Reasons)
		}
		size = d.Size
	}
}

func hasReason(d SizerDecision, sub string) bool {
	for _, r := range d.Reasons {
		if strings.Contains(r, sub) {
			return true
		}
	}
	return false
}

func TestNewSizerFillsInDefaultsAndRepairsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  SizerConfig
		want SizerConfig
	}{
		{
			name: "zero fields take the defaults",
			cfg:  SizerConfig{Min: 2, Max: 50},
			want: SizerConfig{Min: 2, Max: 50, TargetUtilization: 0.75, Headroom: 1.2, GrowCooldown: time.Second,
				ShrinkCooldown: 10 * time.Second, ShrinkStep: 0.25, EmergencyWait: 100 * time.Millisecond},
		},
		{
			name: "negative, NaN and out-of-range fields are repaired",
			cfg: SizerConfig{Min: -4, Max: -2, TargetUtilization: math.NaN(), Headroom: -1, GrowCooldown: -time.Second,
				ShrinkCooldown: -time.Second, ShrinkStep: 7, EmergencyWait: -time.Millisecond},
			want: SizerConfig{Min: 0, Max: 0, TargetUtilization: 0.75, Headroom: 1.2, GrowCooldown: time.Second,
				ShrinkCooldown: 10 * time.Second, ShrinkStep: 1, EmergencyWait: 100 * time.Millisecond},
		},
		{
			name: "max below min is raised and utilization above 1 is 1",
			cfg:  SizerConfig{Min: 8, Max: 3, TargetUtilization: 3, Headroom: math.Inf(1), ShrinkStep: math.NaN()},
			want: SizerConfig{Min: 8, Max: 8, TargetUtilization: 1, Headroom: 1.2, GrowCooldown: time.Second,
				ShrinkCooldown: 10 * time.Second, ShrinkStep: 0.25, EmergencyWait: 100 * time.Millisecond},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, NewSizer(tt.cfg).cfg)
		})
	}
}

func TestSizerGrowsAtOnceWhenClientsWait(t *testing.T) {
	s := NewSizer(SizerConfig{Min: 2, Max: 100})
	// Busy 4 alone asks for 6 (4 / 0.75, rounded up); 6 waiting on a pool
	// of 4 ask for 10.
	runSizerScript(t, s, 4, []sizerStep{
		{at: 0, busy: 4, waiting: 6, want: 10, reason: "6 waiting"},
	})
	d := NewSizer(SizerConfig{Min: 2, Max: 100}).Next(SizerSample{Now: sizerT0, Interval: time.Second, Size: 4, Busy: 4, Waiting: 6})
	assert.Equal(t, []string{"utilization: 5.3 conns (busy 4 / 0.75)", "6 waiting", "grow: 4 → 10"}, d.Reasons)
}

func TestSizerEstimatesLittlesLawToTheUnit(t *testing.T) {
	tests := []struct {
		name     string
		headroom float64
		arrivals int64
		interval time.Duration
		service  time.Duration
		want     int
		reason   string
	}{
		{
			name: "400/s for 25ms with 1.2 headroom is exactly 12", arrivals: 400, interval: time.Second,
			service: 25 * time.Millisecond, want: 12, reason: "little's law: 12.0 conns (λ=400/s × W=25ms × 1.2)",
		},
		{
			name: "the rate is per second of the interval", arrivals: 800, interval: 2 * time.Second,
			service: 25 * time.Millisecond, want: 12, reason: "little's law: 12.0 conns (λ=400/s × W=25ms × 1.2)",
		},
		{
			name: "a fraction rounds up", arrivals: 410, interval: time.Second,
			service: 25 * time.Millisecond, want: 13, reason: "little's law: 12.3 conns (λ=410/s × W=25ms × 1.2)",
		},
		{
			name: "headroom multiplies", headroom: 1, arrivals: 400, interval: time.Second,
			service: 25 * time.Millisecond, want: 10, reason: "little's law: 10.0 conns (λ=400/s × W=25ms × 1)",
		},
		{
			name: "short queries need few connections", arrivals: 1000, interval: time.Second,
			service: 3 * time.Millisecond, want: 4, reason: "little's law: 3.6 conns (λ=1000/s × W=3ms × 1.2)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewSizer(SizerConfig{Min: 1, Max: 1000, Headroom: tt.headroom})
			d := s.Next(SizerSample{Now: sizerT0, Interval: tt.interval, Size: 1, Arrivals: tt.arrivals, ServiceTime: tt.service})
			assert.Equal(t, tt.want, d.Size)
			assert.True(t, d.Changed)
			require.NotEmpty(t, d.Reasons)
			assert.Equal(t, tt.reason, d.Reasons[0])
		})
	}
}

func TestSizerTargetsTheLargestEstimate(t *testing.T) {
	tests := []struct {
		name     string
		busy     float64
		forecast int
		want     int
		reason   string
	}{
		{name: "utilization beats little's law", busy: 9, want: 12, reason: "utilization: 12.0 conns (busy 9 / 0.75)"},
		{name: "the forecast beats both", busy: 9, forecast: 30, want: 30, reason: "forecast: 30 conns"},
		{name: "little's law wins when largest", busy: 3, forecast: 5, want: 6, reason: "little's law: 6.0 conns"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewSizer(SizerConfig{Min: 1, Max: 100})
			// Little's law: 200/s × 25ms × 1.2 = 6.
			d := s.Next(SizerSample{Now: sizerT0, Interval: time.Second, Size: 1, Busy: tt.busy, Arrivals: 200,
				ServiceTime: 25 * time.Millisecond, Forecast: tt.forecast})
			assert.Equal(t, tt.want, d.Size)
			require.NotEmpty(t, d.Reasons)
			assert.Contains(t, d.Reasons[0], tt.reason)
		})
	}
}

func TestSizerShrinksOnlyAfterTheCooldownAndOneStepAtATime(t *testing.T) {
	s := NewSizer(SizerConfig{Min: 2, Max: 100})
	// An idle pool of 40 walks down to Min by at most a quarter per shrink,
	// one shrink per 10s cooldown.
	walk := []int{30, 23, 18, 14, 11, 9, 7, 6, 5, 4, 3, 2}
	var steps []sizerStep
	size := 40
	for sec := 0; sec <= 130; sec++ {
		st := sizerStep{at: time.Duration(sec) * time.Second, want: size, reason: "cooldown: shrink to 2 held until"}
		switch {
		case sec > 0 && sec%10 == 0 && sec/10 <= len(walk):
			st.want = walk[sec/10-1]
			st.reason = "shrink: "
		case size == 2:
			st.reason = "steady: target 2 = size 2"
		}
		steps = append(steps, st)
		size = st.want
	}
	runSizerScript(t, s, 40, steps)
}

func TestSizerReportsWhenAHeldShrinkMayHappen(t *testing.T) {
	s := NewSizer(SizerConfig{Min: 2, Max: 100})
	runSizerScript(t, s, 40, []sizerStep{
		{at: 0, want: 40, reason: "cooldown: shrink to 2 held until 12:00:10.000"},
		{at: 4 * time.Second, want: 40, reason: "cooldown: shrink to 2 held until 12:00:10.000"},
		{at: 10 * time.Second, want: 30, reason: "shrink: 40 → 30 (target 2, step 10)"},
		{at: 11 * time.Second, want: 30, reason: "cooldown: shrink to 2 held until 12:00:20.000"},
	})
}

func TestSizerRestartsTheShrinkCooldownWhenTheTargetRisesAgain(t *testing.T) {
	s := NewSizer(SizerConfig{Min: 2, Max: 100})
	runSizerScript(t, s, 20, []sizerStep{
		{at: 0, want: 20},
		{at: 8 * time.Second, want: 20},
		{at: 9 * time.Second, busy: 15, want: 20, reason: "steady: target 20 = size 20"},
		{at: 10 * time.Second, want: 20, reason: "held until 12:00:20.000"},
		{at: 19 * time.Second, want: 20},
		{at: 20 * time.Second, want: 15, reason: "shrink: 20 → 15"},
	})
}

func TestSizerShrinksNoFurtherThanTheTarget(t *testing.T) {
	s := NewSizer(SizerConfig{Min: 2, Max: 100})
	// Busy 13.5 / 0.75 = 18: the step would allow 15.
	runSizerScript(t, s, 20, []sizerStep{
		{at: 0, busy: 13.5, want: 20},
		{at: 10 * time.Second, busy: 13.5, want: 18, reason: "shrink: 20 → 18 (target 18, step 5)"},
		{at: 30 * time.Second, busy: 13.5, want: 18, reason: "steady: target 18 = size 18"},
	})
}

func TestSizerWaitsTheGrowCooldownBetweenGrows(t *testing.T) {
	s := NewSizer(SizerConfig{Min: 2, Max: 100})
	runSizerScript(t, s, 4, []sizerStep{
		{at: 0, busy: 4, waiting: 4, want: 8, reason: "grow: 4 → 8"},
		{at: 500 * time.Millisecond, busy: 8, waiting: 2, want: 8, reason: "cooldown: grow to 11 held until 12:00:01.000"},
		{at: 999 * time.Millisecond, busy: 8, waiting: 2, want: 8, reason: "cooldown: grow"},
		{at: time.Second, busy: 8, waiting: 2, want: 11, reason: "grow: 8 → 11"},
		{at: 1500 * time.Millisecond, busy: 12, want: 11, reason: "cooldown: grow to 16"},
		{at: 2 * time.Second, busy: 12, want: 16},
	})
}

func TestSizerEmergencyGrowIgnoresTheGrowCooldown(t *testing.T) {
	s := NewSizer(SizerConfig{Min: 2, Max: 13})
	runSizerScript(t, s, 4, []sizerStep{
		{at: 0, busy: 4, waiting: 4, want: 8},
		// 100ms later: a long p99 wait with clients waiting grows at once.
		{at: 100 * time.Millisecond, busy: 8, waiting: 3, p99: 150 * time.Millisecond, want: 11, emergency: true,
			reason: "emergency: p99 wait 150ms >= 100ms: grow 8 → 11"},
		// A p99 at the threshold adds a connection even when the averages
		// ask for none.
		{at: 200 * time.Millisecond, busy: 1, p99: 100 * time.Millisecond, want: 12, emergency: true},
		// Just below the threshold the cooldown applies again.
		{at: 300 * time.Millisecond, busy: 12, p99: 99 * time.Millisecond, want: 12, reason: "cooldown: grow to 13"},
		{at: 400 * time.Millisecond, busy: 12, p99: time.Second, want: 13, emergency: true},
		// At Max there is nothing to grow.
		{at: 500 * time.Millisecond, busy: 12, waiting: 5, p99: time.Second, want: 13, reason: "capped: target 18 > max 13"},
	})
}

func TestSizerDampsFlapping(t *testing.T) {
	s := NewSizer(SizerConfig{Min: 2, Max: 100, ShrinkCooldown: 5 * time.Second})
	sec := func(n int) time.Duration { return time.Duration(n) * time.Second }
	runSizerScript(t, s, 10, []sizerStep{
		{at: 0, waiting: 10, want: 20},
		{at: sec(5), want: 20},
		{at: sec(10), want: 15, reason: "shrink: 20 → 15"},    // reversal 1
		{at: sec(11), waiting: 5, want: 20},                   // reversal 2
		{at: sec(12), want: 20},                               //
		{at: sec(17), want: 15, reason: "flapping damped: 3"}, // reversal 3: shrinks held until 27s
		{at: sec(22), want: 15, reason: "flapping damped: shrink to 2 held until 12:00:27.000"},
		{at: sec(26), want: 15, reason: "flapping damped"},
		{at: sec(27), want: 12, reason: "shrink: 15 → 12"},
	})
}

func TestSizerDoesNotDampReversalsSpreadOverMoreThanAMinute(t *testing.T) {
	s := NewSizer(SizerConfig{Min: 2, Max: 100, ShrinkCooldown: 30 * time.Second})
	sec := func(n int) time.Duration { return time.Duration(n) * time.Second }
	// Each shrink needs the target below the size for 30s, so the three
	// reversals (31s, 62s, 93s) span 62s.
	steps := []sizerStep{
		{at: 0, waiting: 10, want: 20},
		{at: sec(1), want: 20},
		{at: sec(31), want: 15},             // reversal 1
		{at: sec(62), waiting: 5, want: 20}, // reversal 2
		{at: sec(63), want: 20},
		{at: sec(93), want: 15},  // reversal 3
		{at: sec(123), want: 12}, // not damped
		{at: sec(153), want: 9},
	}
	size := 10
	for _, st := range steps {
		d := s.Next(SizerSample{Now: sizerT0.Add(st.at), Interval: time.Second, Size: size, Waiting: st.waiting})
		assert.Equal(t, st.want, d.Size, "at %v: %q", st.at, d.Reasons)
		assert.False(t, hasReason(d, "flapping"), "at %v: %q", st.at, d.Reasons)
		size = d.Size
	}
}

func TestSizerCapsTheTargetAtTheBudget(t *testing.T) {
	s := NewSizer(SizerConfig{Min: 2, Max: 50})
	runSizerScript(t, s, 4, []sizerStep{
		{at: 0, waiting: 15, budget: 10, want: 10, reason: "capped: target 19 > budget 10"},
		// A budget above Max leaves Max in charge.
		{at: time.Second, waiting: 100, budget: 80, want: 50, reason: "capped: target 110 > max 50"},
	})
}

func TestSizerShrinksAtOnceWhenOverBudget(t *testing.T) {
	s := NewSizer(SizerConfig{Min: 2, Max: 50})
	runSizerScript(t, s, 4, []sizerStep{
		{at: 0, waiting: 16, want: 20},
		// Within both cooldowns, the budget drops below the size.
		{at: time.Millisecond, busy: 20, budget: 8, want: 8, reason: "over budget: size 20 > budget 8"},
		// The cut counts as a change: an idle pool waits a full cooldown.
		{at: 2 * time.Millisecond, budget: 8, want: 8, reason: "cooldown: shrink to 2 held until 12:00:10.002"},
		{at: 10*time.Second + 2*time.Millisecond, budget: 8, want: 6, reason: "shrink: 8 → 6"},
	})
}

func TestSizerLetsTheBudgetWinOverMin(t *testing.T) {
	s := NewSizer(SizerConfig{Min: 5, Max: 20})
	runSizerScript(t, s, 5, []sizerStep{
		{at: 0, budget: 3, want: 3, reason: "budget 3 below min 5: budget wins"},
		{at: time.Second, budget: 3, waiting: 4, want: 3, reason: "capped: target 7 > budget 3"},
		// Once the budget allows it, the pool is back to Min at once.
		{at: 2 * time.Second, want: 5, reason: "below min: size 3 < min 5"},
	})
}

func TestSizerKeepsTheSizeWithinMinAndMax(t *testing.T) {
	tests := []struct {
		name   string
		sample SizerSample
		want   int
		reason string
	}{
		{name: "an empty pool is raised to Min", sample: SizerSample{Size: 0}, want: 3, reason: "below min: size 0 < min 3"},
		{name: "an idle pool at Min stays", sample: SizerSample{Size: 3}, want: 3, reason: "steady: target 3 = size 3"},
		{name: "a low target is raised to Min", sample: SizerSample{Size: 3, Forecast: 1}, want: 3, reason: "raised: target 1 < min 3"},
		{name: "a huge target is capped at Max", sample: SizerSample{Size: 3, Waiting: 1000}, want: 20, reason: "capped: target 1003 > max 20"},
		{name: "a pool above Max is cut at once", sample: SizerSample{Size: 50}, want: 20, reason: "over max: size 50 > max 20"},
		{name: "a pool below Min that needs more grows past Min", sample: SizerSample{Size: 1, Busy: 6}, want: 8, reason: "grow: 3 → 8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewSizer(SizerConfig{Min: 3, Max: 20})
			tt.sample.Now, tt.sample.Interval = sizerT0, time.Second
			d := s.Next(tt.sample)
			assert.Equal(t, tt.want, d.Size)
			assert.Equal(t, tt.want != tt.sample.Size, d.Changed)
			assert.True(t, hasReason(d, tt.reason), "no reason contains %q in %q", tt.reason, d.Reasons)
		})
	}
}

func TestSizerSaysWhyItKeepsTheSize(t *testing.T) {
	s := NewSizer(SizerConfig{Min: 2, Max: 100})
	d := s.Next(SizerSample{Now: sizerT0, Interval: time.Second, Size: 8, Busy: 6})
	assert.Equal(t, SizerDecision{Size: 8, Reasons: []string{"utilization: 8.0 conns (busy 6 / 0.75)", "steady: target 8 = size 8"}}, d)
}

func TestSizerSurvivesBadInput(t *testing.T) {
	tests := []struct {
		name   string
		sample SizerSample
		want   int
		reason string
	}{
		{
			name:   "zero interval skips little's law",
			sample: SizerSample{Size: 2, Busy: 3, Arrivals: 1000, ServiceTime: time.Second},
			want:   4, reason: "little's law skipped: interval 0s",
		},
		{
			name:   "negative interval skips little's law",
			sample: SizerSample{Interval: -time.Second, Size: 2, Busy: 3, Arrivals: 1000, ServiceTime: time.Second},
			want:   4, reason: "little's law skipped: interval -1s",
		},
		{
			name: "negative numbers count as zero",
			sample: SizerSample{Interval: time.Second, Size: -5, Busy: -3, Waiting: -2, Arrivals: -100,
				ServiceTime: -time.Second, AcquireP99: -time.Second, Forecast: -7, Budget: -1},
			want: 1, reason: "below min: size 0 < min 1",
		},
		{name: "NaN busy counts as zero", sample: SizerSample{Interval: time.Second, Size: 5, Busy: math.NaN()}, want: 5, reason: "cooldown: shrink"},
		{name: "infinite busy counts as zero", sample: SizerSample{Interval: time.Second, Size: 5, Busy: math.Inf(1)}, want: 5, reason: "cooldown: shrink"},
		{
			name: "absurd arrivals and service time are capped at Max",
			sample: SizerSample{Interval: time.Nanosecond, Size: 2, Arrivals: math.MaxInt64,
				ServiceTime: math.MaxInt64},
			want: 10, reason: "capped: target 1073741824 > max 10",
		},
		{name: "absurd size and waiting are capped at Max", sample: SizerSample{Interval: time.Second, Size: math.MaxInt, Waiting: math.MaxInt}, want: 10},
		{name: "absurd forecast is capped at Max", sample: SizerSample{Interval: time.Second, Size: 2, Forecast: math.MaxInt}, want: 10},
		{name: "absurd budget leaves Max in charge", sample: SizerSample{Interval: time.Second, Size: 2, Waiting: 50, Budget: math.MaxInt}, want: 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewSizer(SizerConfig{Min: 1, Max: 10})
			tt.sample.Now = sizerT0
			d := s.Next(tt.sample)
			assert.Equal(t, tt.want, d.Size, "reasons %q", d.Reasons)
			assert.Equal(t, tt.want != tt.sample.Size, d.Changed)
			require.NotEmpty(t, d.Reasons)
			for _, r := range d.Reasons {
				assert.NotContains(t, r, "NaN")
				assert.NotContains(t, r, "Inf")
			}
			if tt.reason != "" {
				assert.True(t, hasReason(d, tt.reason), "no reason contains %q in %q", tt.reason, d.Reasons)
			}
		})
	}
}

func TestSizerCopesWithAClockThatGoesBackwards(t *testing.T) {
	s := NewSizer(SizerConfig{Min: 2, Max: 100})
	runSizerScript(t, s, 4, []sizerStep{
		{at: time.Hour, waiting: 4, want: 8},
		// The clock jumps back an hour: the cooldown counts from the new
		// time instead of waiting an hour for the old one.
		{at: 0, waiting: 2, want: 8, reason: "cooldown: grow to 10 held until 12:00:01.000"},
		{at: time.Second, waiting: 2, want: 10},
	})
}

func FuzzSizerNextStaysWithinBounds(f *testing.F) {
	f.Add(2, 20, 10, 3.5, 4, int64(400), int64(25*time.Millisecond), int64(time.Second), 0, 0, int64(time.Second))
	f.Add(5, 3, -1, math.NaN(), -7, int64(-1), int64(math.MaxInt64), int64(0), math.MaxInt, 2, int64(-time.Hour))
	f.Fuzz(func(t *testing.T, lo, hi, size int, busy float64, waiting int, arrivals, service, p99 int64,
		forecast, budget int, step int64) {
		s := NewSizer(SizerConfig{Min: lo, Max: hi})
		now := sizerT0
		for range 5 {
			d := s.Next(SizerSample{Now: now, Interval: time.Second, Size: size, Busy: busy, Waiting: waiting,
				Arrivals: arrivals, ServiceTime: time.Duration(service), AcquireP99: time.Duration(p99),
				Forecast: forecast, Budget: budget})
			upper := s.cfg.Max
			if budget > 0 {
				upper = min(upper, budget)
			}
			require.LessOrEqual(t, d.Size, upper)
			require.GreaterOrEqual(t, d.Size, min(s.cfg.Min, upper))
			require.Equal(t, d.Size != size, d.Changed)
			require.NotEmpty(t, d.Reasons)
			size = d.Size
			now = now.Add(time.Duration(step))
		}
	})
}

func BenchmarkSizerNext(b *testing.B) {
	s := NewSizer(SizerConfig{Min: 2, Max: 200})
	now := sizerT0
	size := 10
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Second)
		waiting := 0
		if i%50 == 0 {
			waiting = 5
		}
		d := s.Next(SizerSample{
			Now: now, Interval: time.Second, Size: size, Busy: float64(i % 40), Waiting: waiting,
			Arrivals: int64(100 + i%400), ServiceTime: 20 * time.Millisecond,
		})
		size = d.Size
		i++
	}
}
