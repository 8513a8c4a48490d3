package proxy

import "sync"

// maxIdleWorkers bounds the goroutines kept waiting for work. A transaction
// in flight needs one, so more than the server connections kproxy holds at
// once are never useful.
const maxIdleWorkers = 256

// workers runs functions on goroutines kept from one use to the next.
//
// Every transaction in transaction mode starts a goroutine to relay the
// server's answers. A fresh goroutine starts with a small stack, and the
// relay's first read grows it, which means copying the stack and walking
// every frame of the read's call chain: about a tenth of kproxy's CPU time
// under pgbench -S. A kept goroutine already has the stack it needs.
//
// The zero value is ready to use. It is safe for concurrent use.
type workers struct {
	mu     sync.Mutex
	idle   []chan func() // guarded by mu; most recently used last
	closed bool          // guarded by mu
}

// Go runs f on an idle worker, or on a new goroutine if none is idle.
func (w *workers) Go(f func()) {
	w.mu.Lock()
	if n := len(w.idle); n > 0 {
		ch := w.idle[n-1]
		w.idle = w.idle[:n-1]
		w.mu.Unlock()
		ch <- f // buffered: never blocks
		return
	}
	w.mu.Unlock()
	go w.work(f)
}

func (w *workers) work(f func()) {
	var ch chan func()
	for {
		f()
		w.mu.Lock()
		if w.closed || len(w.idle) >= maxIdleWorkers {
			w.mu.Unlock()
			return
		}
		if ch == nil {
			ch = make(chan func(), 1)
		}
		w.idle = append(w.idle, ch)
		w.mu.Unlock()
		if f = <-ch; f == nil {
			return // Close
		}
	}
}

// Close ends the idle workers; workers still running end when their
// function returns. Go still works after Close, on new goroutines.
func (w *workers) Close() {
	w.mu.Lock()
	w.closed = true
	idle := w.idle
	w.idle = nil
	w.mu.Unlock()
	for _, ch := range idle {
		ch <- nil
	}
}
