package proxy_test

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/config"
)

// TestThousandsOfPipeliningClientsGetTheirOwnAnswersInOrder runs 2,000
// clients (200 with -short) over 20 server connections in transaction
// mode, each pipelining batches of simple and extended queries whose
// answers name the client and the batch, while a few clients ask for
// large results and never read them. Every answer must reach the client
// it belongs to, in order; the clients that do not read may be held or
// disconnected, but nobody else may notice them, and kproxy must not
// buffer their results.
func TestThousandsOfPipeliningClientsGetTheirOwnAnswersInOrder(t *testing.T) {
	clients, rounds := 2000, 4
	if testing.Short() {
		clients = 200
	}
	p := startProxy(t, func(c *config.Config) {
		transactionMode(20)(c)
		c.Pool.AcquireTimeout = 2 * time.Minute
	})
	deadline := time.Now().Add(4 * time.Minute)

	// Clients that ask for about 200 MB each and read nothing.
	const nonReaders = 5
	for i := range nonReaders {
		nc, fe, err := stressConnect(p.Addr, deadline)
		require.NoError(t, err)
		defer nc.Close()
		fe.Send(&pgproto3.Query{String: fmt.Sprintf("SELECT %d, repeat('x', 1000) FROM generate_series(1, 200000)", i)})
		require.NoError(t, fe.Flush())
	}
	time.Sleep(500 * time.Millisecond) // their results start to flow
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	var (
		wg       sync.WaitGroup
		answered atomic.Int64
		mu       sync.Mutex
		problems []string
		sem      = make(chan struct{}, 256) // connections being made at once
	)
	report := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(problems) < 20 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			nc, fe, err := stressConnect(p.Addr, deadline)
			<-sem
			if err != nil {
				report("client %d: connect: %v", c, err)
				return
			}
			defer nc.Close()
			for r := range rounds {
				// Four batches in one write: simple and extended alternate,
				// starting with either.
				var want []string
				for b := range 4 {
					seq := r*4 + b
					want = append(want, fmt.Sprintf("%d/%d", c, seq))
					if (b+c)%2 == 0 {
						fe.Send(&pgproto3.Query{String: fmt.Sprintf("SELECT '%d/%d'", c, seq)})
					} else {
						fe.Send(&pgproto3.Parse{Query: "SELECT $1::text || '/' || $2::text"})
						fe.Send(&pgproto3.Bind{Parameters: [][]byte{[]byte(strconv.Itoa(c)), []byte(strconv.Itoa(seq))}})
						fe.Send(&pgproto3.Execute{})
						fe.Send(&pgproto3.Sync{})
					}
				}
				if err := fe.Flush(); err != nil {
					report("client %d: send: %v", c, err)
					return
				}
				for _, w := range want {
					got, err := stressAnswer(fe)
					if err != nil {
						report("client %d: batch %s: %v", c, w, err)
						return
					}
					if got != w {
						report("client %d: got %q where %q was due", c, got, w)
						return
					}
					answered.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	t.Logf("%d clients got %d answers; heap in use %d MB before them, %d MB after",
		clients, answered.Load(), before.HeapInuse>>20, after.HeapInuse>>20)
	require.Empty(t, problems)
	require.Equal(t, int64(clients*rounds*4), answered.Load())
	// The readers' own buffers come and go; what must not be here is a
	// non-reader's result (200 MB each).
	require.Less(t, int64(after.HeapInuse)-int64(before.HeapInuse), int64(150<<20),
		"kproxy buffered what clients do not read")
}

// stressConnect logs in to kproxy at addr as postgres, without the
// testing helpers (it runs on goroutines of its own).
func stressConnect(addr string, deadline time.Time) (net.Conn, *pgproto3.Frontend, error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	_ = nc.SetDeadline(deadline)
	fe := pgproto3.NewFrontend(nc, nc)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "postgres", "database": "postgres"}})
	if err := fe.Flush(); err != nil {
		nc.Close()
		return nil, nil, err
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			nc.Close()
			return nil, nil, err
		}
		switch m := msg.(type) {
		case *pgproto3.ReadyForQuery:
			return nc, fe, nil
		case *pgproto3.ErrorResponse:
			nc.Close()
			return nil, nil, errors.New(m.Code + " " + m.Message)
		}
	}
}

// stressAnswer reads one batch's answer, up to its ReadyForQuery, and
// returns its one value.
func stressAnswer(fe *pgproto3.Frontend) (string, error) {
	var got string
	rows := 0
	for {
		msg, err := fe.Receive()
		if err != nil {
			return "", err
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			rows++
			got = string(m.Values[0])
		case *pgproto3.ErrorResponse:
			return "", errors.New(m.Code + " " + m.Message)
		case *pgproto3.ReadyForQuery:
			if rows != 1 {
				return "", fmt.Errorf("%d rows", rows)
			}
			return got, nil
		}
	}
}
