package proxy

import (
	"sync"

	"github.com/kproxy/kproxy/pool"
)

// maxIdleWorkers bounds the goroutines kept waiting for work. A transaction
// in flight needs one, so more than the server connections kproxy holds at
// once are never useful.
const maxIdleWorkers = 256

// relayJob is a server goroutine's work: relayServer(sc, done) of ss.
type relayJob struct {
	ss   *session
	sc   *pool.Conn
	done chan struct{}
}

// workers runs server goroutines (relayServer) on goroutines kept from one
// transaction to the next.
//
// A fresh goroutine starts with a small stack, and the relay's first read
// grows it, which means copying the stack and walking every frame of the
// read's call chain: about a tenth of kproxy's CPU time under pgbench -S,
// when every transaction started one. A kept goroutine already has the
// stack it needs. Jobs are passed by value, so handing one over allocates
// nothing.
//
// The zero value is ready to use. It is safe for concurrent use.
type workers struct {
	mu     sync.Mutex
	idle   []chan relayJob // guarded by mu; most recently used last
	closed bool            // guarded by mu
}

// Go runs j on an idle worker, or on a new goroutine if none is idle.
func (w *workers) Go(j relayJob) {
	w.mu.Lock()
	if n := len(w.idle); n > 0 {
		ch := w.idle[n-1]
		w.idle = w.idle[:n-1]
		w.mu.Unlock()
		ch <- j // buffered: never blocks
		return
	}
	w.mu.Unlock()
	go w.work(j)
}

func (w *workers) work(j relayJob) {
	var ch chan relayJob
	for {
		j.ss.relayServer(j.sc, j.done)
		w.mu.Lock()
		if w.closed || len(w.idle) >= maxIdleWorkers {
			w.mu.Unlock()
			return
		}
		if ch == nil {
			ch = make(chan relayJob, 1)
		}
		w.idle = append(w.idle, ch)
		w.mu.Unlock()
		if j = <-ch; j.ss == nil {
			return // Close
		}
	}
}

// Close ends the idle workers; workers still running end when their job
// is done. Go still works after Close, on new goroutines.
func (w *workers) Close() {
	w.mu.Lock()
	w.closed = true
	idle := w.idle
	w.idle = nil
	w.mu.Unlock()
	for _, ch := range idle {
		ch <- relayJob{}
	}
}
