package proxy

import (
	"errors"
	"os"
	"runtime"
	"time"
)

// Parking an idle client.
//
// A client that has sent nothing for a while costs its goroutine's stack
// (4 KiB or more) for nothing. The server's sweeper looks at every client
// each parkSweep; one whose client goroutine has been waiting for the
// client's next message through two sweeps is asked to park: the sweeper
// sets a read deadline in the past, which ends the goroutine's wait. The
// goroutine then hands the socket to the server's netpark.Parker and
// returns. When the client sends again (or hangs up), the Parker wakes the
// session on a fresh goroutine, which reads the message as usual.
//
// The client goroutine moves park between the states below with
// compare-and-swap; the sweeper only moves parkWaiting to parkAsked, under
// parkMu, and sets the deadline before unlocking. A goroutine that finds
// its wait ended by the sweeper takes parkMu (so the deadline is set by
// then) before it clears the deadline. A read the deadline cut short
// leaves what arrived in the reader, which goes on from there. Only a
// plain TCP or Unix socket parks: TLS keeps its goroutine.
const (
	parkBusy    int32 = iota // reading a message or handling one
	parkWaiting              // waiting for the client's next message
	parkAsked                // the sweeper set a read deadline to take the socket over
	parkParked               // no goroutine: the Parker holds the socket
	parkLoop                 // no goroutine: the session's event loop owns it (loop.go)
)

// parkSweep is how often the sweeper looks for clients to park. A client
// is parked after waiting through two sweeps, so between parkSweep and
// twice that.
const parkSweep = 500 * time.Millisecond

// Once parkGCMinParks clients have parked and a whole sweep parked no
// more, the sweeper runs a garbage collection, at most once per
// parkGCEvery: the memory of their stacks then goes back to the OS at once
// rather than after the runtime's next cycle, which an idle proxy may not
// run for two minutes.
const (
	parkGCMinParks = 1000
	parkGCEvery    = time.Minute
)

// aLongTimeAgo is a read deadline that has passed.
var aLongTimeAgo = time.Unix(1, 0)

// sweepIdle asks clients that have waited long enough to park, until
// stop is closed.
func (s *Server) sweepIdle(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(parkSweep)
	defer t.Stop()
	var parksAtGC, parksBefore int64
	var lastGC time.Time
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			parks := s.stats.parks.Load()
			if parks-parksAtGC >= parkGCMinParks && parks == parksBefore && now.Sub(lastGC) >= parkGCEvery {
				parksAtGC, lastGC = parks, now
				runtime.GC()
			}
			parksBefore = parks
		}
		tick := s.parkTick.Add(1)
		s.mu.Lock()
		for ss := range s.sessions {
			if ss.park.Load() == parkWaiting && tick-ss.waitTick.Load() >= 2 {
				ss.askToPark()
			}
		}
		s.mu.Unlock()
	}
}

// askToPark ends the client goroutine's wait if it is still waiting.
func (ss *session) askToPark() {
	ss.parkMu.Lock()
	if ss.park.CompareAndSwap(parkWaiting, parkAsked) {
		_ = ss.nc.SetReadDeadline(aLongTimeAgo)
	}
	ss.parkMu.Unlock()
}

// startWait marks the client goroutine as waiting for the client's next
// message, when it may park: nothing is buffered and the socket is plain.
// It reports whether it did.
func (ss *session) startWait() bool {
	if ss.raw == nil || ss.srv.parker == nil || !ss.rd.Idle() {
		return false
	}
	ss.waitTick.Store(ss.srv.parkTick.Load())
	ss.park.Store(parkWaiting)
	return true
}

// endWait ends a wait startWait began, once the read returned err. It
// reports whether the sweeper cut the wait short and the read has nothing
// to show for it (err is to be ignored; park if parkable).
func (ss *session) endWait(err error) (asked bool) {
	if ss.park.CompareAndSwap(parkWaiting, parkBusy) {
		return false
	}
	// The sweeper asked: its deadline is set once parkMu is ours.
	ss.parkMu.Lock()
	_ = ss.nc.SetReadDeadline(time.Time{})
	ss.park.Store(parkBusy)
	ss.parkMu.Unlock()
	return err != nil && errors.Is(err, os.ErrDeadlineExceeded)
}

// parkNow gives the reader's buffer back and hands the idle socket to the
// Parker. It reports whether it did; the client goroutine must then return
// without touching the session.
func (ss *session) parkNow() bool {
	if !ss.rd.Release() {
		return false // part of a message came: read the rest
	}
	ss.mu.Lock()
	if len(ss.replies) == 0 { // nothing owed: the queue's array goes too
		ss.replies, ss.replyBuf = nil, nil
	}
	ss.mu.Unlock()
	ss.srv.wg.Add(1) // for the goroutine resume starts
	ss.parkMu.Lock()
	ss.park.Store(parkParked)
	id, err := ss.srv.parker.Park(ss.raw, ss.resume)
	if err != nil {
		ss.park.Store(parkBusy)
		ss.parkMu.Unlock()
		ss.srv.wg.Done()
		return false
	}
	ss.parkID = id
	ss.parkMu.Unlock()
	ss.srv.stats.parks.Add(1)
	return true
}

// resume serves a parked session again, on a fresh goroutine. The Parker
// calls it when the socket is readable; unpark when the connection closes.
func (ss *session) resume() {
	go func() {
		defer ss.srv.wg.Done()
		ss.parkMu.Lock()
		ss.park.Store(parkBusy)
		ss.parkMu.Unlock()
		ss.serve()
	}()
}

// unpark takes a parked socket back from the Parker and resumes the
// session, before its connection closes: the resumed goroutine finds it
// closed and ends the session.
func (ss *session) unpark() {
	if ss.loop != nil && ss.park.Load() == parkLoop {
		ss.leaveLoop()
		return
	}
	ss.parkMu.Lock()
	parked := ss.park.Load() == parkParked && ss.srv.parker.Unpark(ss.parkID)
	ss.parkMu.Unlock()
	if parked {
		ss.resume()
	}
}
