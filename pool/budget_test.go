package pool

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"go.uber.org/zap"

	"github.com/kproxy/kproxy/config"
)

// budgetPool makes a pool that never connects: shares only reads its
// limits and demand.
func budgetPool(t *testing.T, adaptive bool, min, max, demand int) *Pool {
	l := config.DefaultPool()
	l.AdaptiveSizing = adaptive
	l.MinConnections, l.MaxConnections = min, max
	p, err := New(Config{Addr: "127.0.0.1:1", Host: "127.0.0.1", Port: 1, Database: "d", User: "u", SSLMode: "disable", Limits: l}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	p.sizing = &sizing{demand: demand}
	return p
}

func TestTheBackendBudgetIsSharedByDemand(t *testing.T) {
	c := &Cluster{}
	a, b := poolKey{"x", "a", "u"}, poolKey{"x", "b", "u"}
	keys := []poolKey{a, b}

	// Both demands fit: each gets its demand and half of what is left.
	pools := map[poolKey]*Pool{a: budgetPool(t, true, 2, 100, 10), b: budgetPool(t, true, 2, 100, 20)}
	s := c.shares(keys, pools, 50)
	assert.Equal(t, map[poolKey]int{a: 10 + 10, b: 20 + 10}, s)

	// They do not fit: minimums first, the rest by demand above them.
	pools = map[poolKey]*Pool{a: budgetPool(t, true, 2, 100, 32), b: budgetPool(t, true, 2, 100, 92)}
	s = c.shares(keys, pools, 64)
	assert.Equal(t, 2+60*30/120, s[a])
	assert.Equal(t, 2+60*90/120, s[b])
	assert.LessOrEqual(t, s[a]+s[b], 64, "never above the budget")

	// A fixed-size pool's open connections come off the budget first; a
	// budget below the minimums still gives each its minimum.
	pools = map[poolKey]*Pool{a: budgetPool(t, true, 3, 100, 50), b: budgetPool(t, false, 0, 10, 0)}
	s = c.shares(keys, pools, 2)
	assert.Equal(t, 3, s[a])
	_, hasFixed := s[b]
	assert.False(t, hasFixed, "a pool without adaptive sizing has no share")

	// Unknown budget: no limit.
	assert.Empty(t, c.shares(keys, pools, 0))
}
