package pool_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/config"
)

// BenchmarkAcquireRelease measures one Acquire and Release of a warm
// connection, over a matrix of pool size × goroutines contending for it.
// With more goroutines than connections, part of the time is waiting.
func BenchmarkAcquireRelease(b *testing.B) {
	for _, size := range []int{4, 20} {
		for _, workers := range []int{2, 16, 64} {
			par := max(1, workers/runtime.GOMAXPROCS(0))
			workers := par * runtime.GOMAXPROCS(0)
			b.Run(fmt.Sprintf("pool=%d/goroutines=%d", size, workers), func(b *testing.B) {
				p := newPool(b, func(l *config.Pool) { l.MaxConnections = size })
				ctx := context.Background()
				// Open every connection before timing.
				held := make([]interface{ Release() }, 0, size)
				for range size {
					c, err := p.Acquire(ctx)
					require.NoError(b, err)
					held = append(held, c)
				}
				for _, c := range held {
					c.Release()
				}
				b.ReportAllocs()
				b.SetParallelism(par)
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						c, err := p.Acquire(ctx)
						if err != nil {
							b.Error(err)
							return
						}
						c.Release()
					}
				})
			})
		}
	}
}

// BenchmarkHasPrepared measures the lookup of a server statement in a
// connection's prepared set, the check kproxy makes before each Bind of a
// named statement in transaction mode.
func BenchmarkHasPrepared(b *testing.B) {
	p := newPool(b, func(l *config.Pool) { l.MaxConnections = 1 })
	c, err := p.Acquire(context.Background())
	require.NoError(b, err)
	defer c.Release()
	names := make([]string, 100)
	for i := range names {
		names[i] = fmt.Sprintf("kp_%032x", i)
		c.AddPrepared(names[i])
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if !c.HasPrepared(names[i%len(names)]) {
			b.Fatal("statement missing")
		}
	}
}
