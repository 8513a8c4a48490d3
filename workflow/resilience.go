package workflow

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/sony/gobreaker/v2"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// NodeOption adds behaviour around a node: retries, a circuit breaker, a
// rate limit, a timeout, a fallback, a cache. Whatever the order the options
// are given in, a call goes through them in this order, outermost first:
//
//	cache-aside → timeout (and its fallback) → fallback → retry → rate limit → breaker → node
//
// so a cache hit costs no token and no attempt, the timeout bounds all
// attempts and the waits between them, and every attempt takes a token and
// asks the breaker.
type NodeOption func(*policy)

// policy is a node's options, fixed at Build time.
type policy struct {
	retry           *Retry
	breaker         *Breaker
	limiter         *RateLimiter
	timeout         time.Duration
	timeoutFallback Fallback
	fallback        Fallback
	cache           Cache
	cacheKey        KeyFunc
	cacheTTL        time.Duration
	errs            []error // bad options, reported by Build
}

// WithRetry retries the node's failed attempts as r says.
func WithRetry(r *Retry) NodeOption {
	return func(p *policy) {
		if r == nil {
			p.errs = append(p.errs, errors.New("WithRetry: nil Retry"))
		}
		p.retry = r
	}
}

// WithBreaker sends every attempt through the circuit breaker b. While b is
// open, attempts fail at once with ErrBreakerOpen.
func WithBreaker(b *Breaker) NodeOption {
	return func(p *policy) {
		if b == nil {
			p.errs = append(p.errs, errors.New("WithBreaker: nil Breaker"))
		}
		p.breaker = b
	}
}

// WithRateLimit makes every attempt wait for a token from l.
func WithRateLimit(l *RateLimiter) NodeOption {
	return func(p *policy) {
		if l == nil {
			p.errs = append(p.errs, errors.New("WithRateLimit: nil RateLimiter"))
		}
		p.limiter = l
	}
}

// WithTimeout bounds the node's call, all attempts included, to d: the
// node's context is cancelled at d. A node that has not succeeded by then
// fails with ErrTimeout, unless fallback is set (FallbackValue,
// FallbackNode), in which case its output is the fallback's and its outcome
// is "fallback". Pass Fallback{} for none.
func WithTimeout(d time.Duration, fallback Fallback) NodeOption {
	return func(p *policy) {
		if d <= 0 {
			p.errs = append(p.errs, fmt.Errorf("WithTimeout: duration %v is not positive", d))
		}
		p.timeout = d
		p.timeoutFallback = fallback
	}
}

// WithFallback replaces any failure of the node (after retries, an open
// breaker, a timeout without its own fallback) with the fallback's output;
// the node's outcome is then "fallback". A cancelled run is not replaced.
func WithFallback(fallback Fallback) NodeOption {
	return func(p *policy) {
		if !fallback.set {
			p.errs = append(p.errs, errors.New("WithFallback: empty Fallback"))
		}
		p.fallback = fallback
	}
}

// WithCache is cache-aside: the node first looks its output up in c under
// key(in); a hit is its output (outcome "cached") and the node is not
// called; after a miss, a successful output is stored for ttl (0: no
// expiry). Cache errors do not fail the node: they are logged and the node
// runs as if it had no cache.
func WithCache(c Cache, key KeyFunc, ttl time.Duration) NodeOption {
	return func(p *policy) {
		if c == nil || key == nil {
			p.errs = append(p.errs, errors.New("WithCache: nil cache or key function"))
		}
		if ttl < 0 {
			p.errs = append(p.errs, fmt.Errorf("WithCache: negative TTL %v", ttl))
		}
		p.cache, p.cacheKey, p.cacheTTL = c, key, ttl
	}
}

// Fallback is what replaces a node's output when it times out or fails:
// a fixed value or another node's output. The zero Fallback is none.
type Fallback struct {
	value any
	node  Node
	set   bool
}

// FallbackValue is a Fallback to the value v.
func FallbackValue(v any) Fallback { return Fallback{value: v, set: true} }

// FallbackNode is a Fallback to the output of n, called with the failed
// node's inputs and the run's context. If n fails too, the node fails with
// both errors.
func FallbackNode(n Node) Fallback { return Fallback{node: n, set: n != nil} }

// RetryOptions configures a Retry. Zero fields take the defaults.
type RetryOptions struct {
	// MaxAttempts is the number of attempts, the first included; default 3.
	MaxAttempts int
	// InitialDelay is the wait after the first failed attempt; default 100ms.
	InitialDelay time.Duration
	// MaxDelay caps the wait between attempts (before jitter); default 5s.
	MaxDelay time.Duration
	// Multiplier grows the wait after each failed attempt; default 2.
	Multiplier float64
	// Jitter randomises each wait by up to this fraction either way, so that
	// callers that failed together do not retry together; default 0.5, a
	// negative value for none.
	Jitter float64
	// Retryable reports whether an error is worth another attempt; default
	// DefaultRetryable. Errors wrapped with Permanent never are.
	Retryable func(error) bool
}

// Retry retries failed attempts with exponential backoff and jitter. It holds
// no state between calls, so one Retry can serve any number of nodes,
// workflows and runs at once.
type Retry struct {
	o RetryOptions
}

// NewRetry returns a Retry with o's settings.
func NewRetry(o RetryOptions) *Retry {
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 3
	}
	if o.InitialDelay <= 0 {
		o.InitialDelay = 100 * time.Millisecond
	}
	if o.MaxDelay <= 0 {
		o.MaxDelay = 5 * time.Second
	}
	if o.MaxDelay < o.InitialDelay {
		o.MaxDelay = o.InitialDelay
	}
	if o.Multiplier < 1 {
		o.Multiplier = 2
	}
	switch {
	case o.Jitter == 0:
		o.Jitter = 0.5
	case o.Jitter < 0:
		o.Jitter = 0
	case o.Jitter > 1:
		o.Jitter = 1
	}
	if o.Retryable == nil {
		o.Retryable = DefaultRetryable
	}
	return &Retry{o: o}
}

// DefaultRetryable retries every error except cancellation, an open breaker,
// a panic, input and path errors, errors wrapped with Permanent, and HTTP
// statuses other than 408, 429 and 5xx.
func DefaultRetryable(err error) bool {
	var status *HTTPStatusError
	switch {
	case errors.Is(err, context.Canceled),
		errors.Is(err, ErrBreakerOpen),
		errors.Is(err, ErrPanic),
		errors.Is(err, ErrMissingInput),
		errors.Is(err, ErrInputType),
		errors.Is(err, ErrPath):
		return false
	case errors.As(err, &status):
		return status.Status == 408 || status.Status == 429 || status.Status >= 500
	}
	return true
}

// do calls op until it succeeds, fails with an error not worth retrying,
// has been called MaxAttempts times, or ctx is done; it returns the last
// result, or ctx's cause when ctx ended a wait.
func (r *Retry) do(ctx context.Context, op func() (any, error)) (any, error) {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     r.o.InitialDelay,
		RandomizationFactor: r.o.Jitter,
		Multiplier:          r.o.Multiplier,
		MaxInterval:         r.o.MaxDelay,
	}
	return backoff.Retry(ctx, func() (any, error) {
		v, err := op()
		var perm *permanentError
		if err != nil && (errors.As(err, &perm) || !r.o.Retryable(err)) {
			return v, backoff.Permanent(err)
		}
		return v, err
	}, backoff.WithBackOff(b), backoff.WithMaxTries(uint(r.o.MaxAttempts)), backoff.WithMaxElapsedTime(0))
}

// BreakerState is the state of a circuit breaker.
type BreakerState string

// Breaker states.
const (
	BreakerClosed   BreakerState = "closed"    // calls go through; failures are counted
	BreakerOpen     BreakerState = "open"      // calls fail at once until RecoveryTimeout has passed
	BreakerHalfOpen BreakerState = "half-open" // HalfOpenProbes calls go through to test recovery
)

func breakerState(s gobreaker.State) BreakerState {
	switch s {
	case gobreaker.StateOpen:
		return BreakerOpen
	case gobreaker.StateHalfOpen:
		return BreakerHalfOpen
	}
	return BreakerClosed
}

// BreakerOptions configures a Breaker. Zero fields take the defaults.
type BreakerOptions struct {
	// Name names the breaker in errors and logs.
	Name string
	// FailureThreshold is the number of consecutive failures that opens the
	// breaker; default 5.
	FailureThreshold int
	// RecoveryTimeout is how long the breaker stays open before it lets
	// probes through; default 30s.
	RecoveryTimeout time.Duration
	// HalfOpenProbes is the number of calls let through while half-open;
	// that many successes in a row close the breaker, one failure opens it
	// again. Default 1.
	HalfOpenProbes int
	// IsFailure reports whether an error counts against the dependency;
	// default every error except cancellation, input and path errors.
	IsFailure func(error) bool
	// OnStateChange is called, with the breaker's lock held, on every
	// change of state; it must not call the breaker.
	OnStateChange func(name string, from, to BreakerState)
	// Logger logs state changes at warn level; default none.
	Logger *zap.Logger
}

// Breaker is a circuit breaker (github.com/sony/gobreaker): after
// FailureThreshold consecutive failures it opens and refuses calls with
// ErrBreakerOpen for RecoveryTimeout, then lets HalfOpenProbes calls through
// to decide whether to close again. Create one per dependency (a service,
// a database) and share it between the nodes and workflows that call it: its
// state lives across runs. It keeps time with the system clock, not the
// runtime's. It is safe for concurrent use.
type Breaker struct {
	name string
	cb   *gobreaker.CircuitBreaker[any]
}

// NewBreaker returns a closed Breaker with o's settings.
func NewBreaker(o BreakerOptions) *Breaker {
	if o.FailureThreshold <= 0 {
		o.FailureThreshold = 5
	}
	if o.RecoveryTimeout <= 0 {
		o.RecoveryTimeout = 30 * time.Second
	}
	if o.HalfOpenProbes <= 0 {
		o.HalfOpenProbes = 1
	}
	isFailure := o.IsFailure
	if isFailure == nil {
		isFailure = func(err error) bool {
			return !errors.Is(err, ErrMissingInput) && !errors.Is(err, ErrInputType) && !errors.Is(err, ErrPath)
		}
	}
	threshold := uint32(o.FailureThreshold)
	log := o.Logger
	onChange := o.OnStateChange
	st := gobreaker.Settings{
		Name:        o.Name,
		MaxRequests: uint32(o.HalfOpenProbes),
		Timeout:     o.RecoveryTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= threshold },
		IsSuccessful: func(err error) bool {
			return err == nil || !isFailure(err)
		},
		// A cancelled run says nothing about the dependency.
		IsExcluded: func(err error) bool { return errors.Is(err, context.Canceled) },
		OnStateChange: func(name string, from, to gobreaker.State) {
			f, t := breakerState(from), breakerState(to)
			if log != nil {
				log.Warn("circuit breaker changed state", zap.String("breaker", name),
					zap.String("from", string(f)), zap.String("to", string(t)))
			}
			if onChange != nil {
				onChange(name, f, t)
			}
		},
	}
	return &Breaker{name: o.Name, cb: gobreaker.NewCircuitBreaker[any](st)}
}

// Name returns the breaker's name.
func (b *Breaker) Name() string { return b.name }

// State returns the breaker's current state.
func (b *Breaker) State() BreakerState { return breakerState(b.cb.State()) }

// do calls op if the breaker lets it, and counts its outcome.
func (b *Breaker) do(op func() (any, error)) (any, error) {
	v, err := b.cb.Execute(op)
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		return nil, fmt.Errorf("%w: %s: %w", ErrBreakerOpen, b.name, err)
	}
	return v, err
}

// RateLimiter is a token bucket (golang.org/x/time/rate) refilled at a fixed
// rate. Share one between the nodes and workflows that call the same
// dependency: its tokens are counted across them and across runs. It is
// safe for concurrent use.
type RateLimiter struct {
	l *rate.Limiter
}

// NewRateLimiter returns a limiter of perSecond calls a second on average,
// with bursts of up to burst calls (at least 1).
func NewRateLimiter(perSecond float64, burst int) *RateLimiter {
	return &RateLimiter{l: rate.NewLimiter(rate.Limit(perSecond), max(burst, 1))}
}

// errWaitPastDeadline is a rate-limit wait that would outlast the node's
// deadline, which counts as the node timing out.
var errWaitPastDeadline = fmt.Errorf("rate limit wait would pass the deadline: %w", context.DeadlineExceeded)

// wait blocks until a token is available or ctx is done. When the wait
// would outlast ctx's deadline it fails at once with errWaitPastDeadline.
func (r *RateLimiter) wait(ctx context.Context) error {
	if err := r.l.Wait(ctx); err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if _, ok := ctx.Deadline(); ok {
			return fmt.Errorf("%w: %w", errWaitPastDeadline, err)
		}
		return fmt.Errorf("rate limit: %w", err)
	}
	return nil
}
