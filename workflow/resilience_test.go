package workflow_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/workflow"
)

// flaky fails its first n calls with err, then outputs "ok".
type flaky struct {
	n     int32
	err   error
	calls atomic.Int32
}

func (f *flaky) Run(context.Context, workflow.Inputs) (any, error) {
	if f.calls.Add(1) <= f.n {
		return nil, f.err
	}
	return "ok", nil
}

func TestRetryRetriesWithBackoffAndTheTraceCountsAttempts(t *testing.T) {
	t.Parallel()
	retry := workflow.NewRetry(workflow.RetryOptions{MaxAttempts: 4, InitialDelay: 10 * time.Millisecond, Multiplier: 2, Jitter: -1})
	tests := []struct {
		name     string
		node     *flaky
		attempts int
		outcome  workflow.Outcome
		minWait  time.Duration
	}{
		{"a node that recovers succeeds on a later attempt", &flaky{n: 2, err: errors.New("flap")}, 3, "ok", 30 * time.Millisecond},
		{"a node that keeps failing stops at MaxAttempts", &flaky{n: 100, err: errors.New("down")}, 4, "failed", 70 * time.Millisecond},
		{"a permanent error is not retried", &flaky{n: 100, err: workflow.Permanent(errors.New("invalid"))}, 1, "failed", 0},
		{"an open breaker is not retried", &flaky{n: 100, err: workflow.ErrBreakerOpen}, 1, "failed", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wf := build(t, workflow.New("retry").Add("a", tt.node, workflow.WithRetry(retry)))
			start := time.Now()
			run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, nil)
			elapsed := time.Since(start)
			tr := nodeTrace(t, run, "a")
			assert.Equal(t, tt.outcome, tr.Outcome)
			assert.Equal(t, tt.attempts, tr.Attempts)
			assert.Equal(t, int32(tt.attempts), tt.node.calls.Load())
			assert.Equal(t, tt.outcome == "ok", err == nil)
			// The waits are 10ms, then 20ms, then 40ms.
			assert.GreaterOrEqual(t, elapsed, tt.minWait)
		})
	}
}

func TestRetryWithJitterStillRetries(t *testing.T) {
	t.Parallel()
	retry := workflow.NewRetry(workflow.RetryOptions{MaxAttempts: 3, InitialDelay: time.Millisecond})
	node := &flaky{n: 2, err: errors.New("flap")}
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), build(t, workflow.New("r").Add("a", node, workflow.WithRetry(retry))), nil)
	require.NoError(t, err)
	assert.Equal(t, 3, nodeTrace(t, run, "a").Attempts)
}

func TestBreakerOpensAfterItsThresholdAcrossRunsAndClosesAfterRecovery(t *testing.T) {
	t.Parallel()
	var (
		mu      sync.Mutex
		changes []string
	)
	breaker := workflow.NewBreaker(workflow.BreakerOptions{
		Name:             "payments",
		FailureThreshold: 3,
		RecoveryTimeout:  150 * time.Millisecond,
		OnStateChange: func(_ string, from, to workflow.BreakerState) {
			mu.Lock()
			defer mu.Unlock()
			changes = append(changes, string(from)+"→"+string(to))
		},
	})
	var healthy atomic.Bool
	var calls atomic.Int32
	down := errors.New("payments down")
	charge := workflow.Func(func(context.Context, workflow.Inputs) (any, error) {
		calls.Add(1)
		if healthy.Load() {
			return "charged", nil
		}
		return nil, down
	})
	// Each run is a separate Execute: the breaker's state outlives them.
	wf := build(t, workflow.New("pay").Add("charge", charge, workflow.WithBreaker(breaker)))
	rt := newRuntime(t, workflow.RuntimeOptions{})

	for i := range 3 {
		_, err := execute(t, rt, wf, nil)
		require.ErrorIs(t, err, down, "run %d reaches the service", i)
	}
	assert.Equal(t, workflow.BreakerOpen, breaker.State())
	_, err := execute(t, rt, wf, nil)
	require.ErrorIs(t, err, workflow.ErrBreakerOpen)
	assert.Contains(t, err.Error(), "payments")
	assert.Equal(t, int32(3), calls.Load(), "an open breaker does not call the node")

	healthy.Store(true)
	require.Eventually(t, func() bool { return breaker.State() == workflow.BreakerHalfOpen }, 5*time.Second, 10*time.Millisecond)
	run, err := execute(t, rt, wf, nil)
	require.NoError(t, err, "the half-open probe goes through")
	v, _ := run.Result("charge")
	assert.Equal(t, "charged", v)
	assert.Equal(t, workflow.BreakerClosed, breaker.State())
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"closed→open", "open→half-open", "half-open→closed"}, changes)
}

func TestAFailedHalfOpenProbeOpensTheBreakerAgain(t *testing.T) {
	t.Parallel()
	breaker := workflow.NewBreaker(workflow.BreakerOptions{Name: "b", FailureThreshold: 1, RecoveryTimeout: 50 * time.Millisecond})
	wf := build(t, workflow.New("b").Add("a", failing(errors.New("down")), workflow.WithBreaker(breaker)))
	rt := newRuntime(t, workflow.RuntimeOptions{})
	_, err := execute(t, rt, wf, nil)
	require.Error(t, err)
	require.Equal(t, workflow.BreakerOpen, breaker.State())
	require.Eventually(t, func() bool { return breaker.State() == workflow.BreakerHalfOpen }, 5*time.Second, 5*time.Millisecond)
	_, err = execute(t, rt, wf, nil)
	require.Error(t, err)
	assert.NotErrorIs(t, err, workflow.ErrBreakerOpen, "the probe reached the node")
	assert.Equal(t, workflow.BreakerOpen, breaker.State())
}

func TestFallbackReplacesTheErrorOfAnOpenBreaker(t *testing.T) {
	t.Parallel()
	breaker := workflow.NewBreaker(workflow.BreakerOptions{FailureThreshold: 1, RecoveryTimeout: time.Hour})
	wf := build(t, workflow.New("fb").
		Add("a", failing(errors.New("down")), workflow.WithBreaker(breaker), workflow.WithFallback(workflow.FallbackValue("stale"))).
		Add("b", echo).Connect("a", "", "b", "x"))
	rt := newRuntime(t, workflow.RuntimeOptions{})
	for range 2 {
		run, err := execute(t, rt, wf, nil)
		require.NoError(t, err)
		assert.Equal(t, workflow.OutcomeFallback, nodeTrace(t, run, "a").Outcome)
		v, _ := run.Lookup("b", "x")
		assert.Equal(t, "stale", v)
	}
	assert.Equal(t, workflow.BreakerOpen, breaker.State())
}

// The one long test: it runs in parallel with the others.
func TestRateLimitHoldsItsRateOverTenSeconds(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("takes 10 seconds")
	}
	const perSecond, window = 50, 10 * time.Second
	limiter := workflow.NewRateLimiter(perSecond, 1)
	var done atomic.Int64
	wf := build(t, workflow.New("limited").Add("call", workflow.Func(func(context.Context, workflow.Inputs) (any, error) {
		done.Add(1)
		return nil, nil
	}), workflow.WithRateLimit(limiter)))
	rt := newRuntime(t, workflow.RuntimeOptions{TraceHistory: -1})

	ctx, cancel := context.WithTimeout(context.Background(), window)
	defer cancel()
	var wg sync.WaitGroup
	for range 8 { // more callers than the rate needs
		wg.Go(func() {
			for ctx.Err() == nil {
				_, _ = rt.Execute(ctx, wf, nil)
			}
		})
	}
	wg.Wait()
	want := float64(perSecond) * window.Seconds()
	t.Logf("%d completions in %v at %d/s", done.Load(), window, perSecond)
	assert.InEpsilon(t, want, float64(done.Load()), 0.10, "completions in %v at %d/s", window, perSecond)
}

func TestTimeoutFallsBackOrFails(t *testing.T) {
	t.Parallel()
	hang := workflow.Func(func(ctx context.Context, _ workflow.Inputs) (any, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	tests := []struct {
		name     string
		fallback workflow.Fallback
		outcome  workflow.Outcome
		want     any
	}{
		{"to a value", workflow.FallbackValue("default"), "fallback", "default"},
		{"to a node", workflow.FallbackNode(echo), "fallback", map[string]any{"id": 4}},
		{"without a fallback it fails with ErrTimeout", workflow.Fallback{}, "failed", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wf := build(t, workflow.New("timeout").
				Add("slow", hang, workflow.WithTimeout(20*time.Millisecond, tt.fallback)).
				Add("next", echo).
				BindParam("slow", "id", "id").
				Connect("slow", "", "next", "x"))
			run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, map[string]any{"id": 4})
			tr := nodeTrace(t, run, "slow")
			assert.Equal(t, tt.outcome, tr.Outcome)
			assert.Contains(t, tr.Error, "node timed out after 20ms")
			if tt.outcome == "failed" {
				assert.ErrorIs(t, err, workflow.ErrTimeout)
				assert.ErrorIs(t, err, context.DeadlineExceeded)
				assert.Equal(t, workflow.OutcomeUpstreamFailed, nodeTrace(t, run, "next").Outcome)
				return
			}
			require.NoError(t, err)
			v, _ := run.Lookup("next", "x")
			assert.Equal(t, tt.want, v)
		})
	}
}

func TestTimeoutBoundsAllRetriesTogether(t *testing.T) {
	t.Parallel()
	retry := workflow.NewRetry(workflow.RetryOptions{MaxAttempts: 100, InitialDelay: 10 * time.Millisecond, MaxDelay: 10 * time.Millisecond, Jitter: -1})
	node := &flaky{n: 1000, err: errors.New("flap")}
	wf := build(t, workflow.New("t").Add("a", node, workflow.WithRetry(retry), workflow.WithTimeout(55*time.Millisecond, workflow.FallbackValue(0))))
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, nil)
	require.NoError(t, err)
	tr := nodeTrace(t, run, "a")
	assert.Equal(t, workflow.OutcomeFallback, tr.Outcome)
	assert.Less(t, tr.Attempts, 10)
	assert.Greater(t, tr.Attempts, 1)
}
