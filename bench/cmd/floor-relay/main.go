// Command floor-relay is the least a transaction pooler written in Go can
// do, built twice: once with a goroutine per client, the way kproxy is
// built, and once with one epoll loop that owns every socket, the way
// PgBouncer is built. pgbench-matrix runs it as the targets floor-goroutine
// and floor-epoll, so that kproxy's cost per transaction can be compared
// with the cost of the architecture it sits on, on the same machine in the
// same run.
//
// It is a measuring device, not a proxy. It answers the client's startup
// itself (no authentication, the parameters of its first server
// connection), holds -pool server connections opened as -user to
// -database, lends one to a client from its first message until the
// server says ReadyForQuery with the status idle, and forwards bytes
// unchanged. It does not parse statements, route, track prepared
// statements, cancel, use TLS or report anything: all of that is what
// kproxy adds on top. It serves pgbench's simple and extended protocols;
// -M prepared needs kproxy's statement tracking and fails here as it does
// on PgBouncer 1.18.
//
// Usage:
//
//	floor-relay -mode goroutine|epoll -listen 127.0.0.1:7000 -backend 127.0.0.1:5432 -database db [-user postgres] [-pool 20]
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
)

// Protocol codes of the first message a client sends.
const (
	protocolVersion3 = 196608
	sslRequestCode   = 80877103
	gssRequestCode   = 80877104
	cancelCode       = 80877102
)

const bufSize = 64 << 10

func main() {
	log.SetFlags(0)
	log.SetPrefix("floor-relay: ")
	var (
		mode     = flag.String("mode", "goroutine", "goroutine (one per client) or epoll (one loop owns every socket)")
		listen   = flag.String("listen", "127.0.0.1:7000", "`address` clients connect to")
		backend  = flag.String("backend", "127.0.0.1:5432", "Postgres `address`; it must trust -user")
		database = flag.String("database", "postgres", "database of the server connections")
		user     = flag.String("user", "postgres", "user of the server connections")
		poolSize = flag.Int("pool", 20, "server connections")
	)
	flag.Parse()
	if *poolSize < 1 {
		log.Fatal("-pool must be at least 1")
	}
	servers := make([]net.Conn, *poolSize)
	var params []byte
	for i := range servers {
		c, p, err := dialServer(*backend, *user, *database)
		if err != nil {
			log.Fatal(err)
		}
		servers[i], params = c, p
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
		<-sig
		os.Exit(0)
	}()
	switch *mode {
	case "goroutine":
		err = serveGoroutines(ln, servers, params)
	case "epoll":
		err = serveEpoll(ln, servers, params)
	default:
		err = fmt.Errorf("unknown -mode %q", *mode)
	}
	log.Fatal(err)
}

// dialServer opens a server connection and returns it once Postgres has
// said ReadyForQuery, with the ParameterStatus messages it sent, whole.
func dialServer(addr, user, database string) (net.Conn, []byte, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	body := binary.BigEndian.AppendUint32(nil, protocolVersion3)
	for _, s := range []string{"user", user, "database", database, "application_name", "floor-relay"} {
		body = append(append(body, s...), 0)
	}
	body = append(body, 0)
	msg := binary.BigEndian.AppendUint32(nil, uint32(4+len(body)))
	if _, err := c.Write(append(msg, body...)); err != nil {
		c.Close()
		return nil, nil, err
	}
	var params []byte
	for {
		t, m, err := readMessage(c)
		if err != nil {
			c.Close()
			return nil, nil, fmt.Errorf("server startup: %w", err)
		}
		switch t {
		case 'R':
			if binary.BigEndian.Uint32(m) != 0 {
				c.Close()
				return nil, nil, errors.New("the server asks for a password: floor-relay needs trust authentication")
			}
		case 'S':
			params = append(params, 'S')
			params = binary.BigEndian.AppendUint32(params, uint32(4+len(m)))
			params = append(params, m...)
		case 'E':
			c.Close()
			return nil, nil, fmt.Errorf("server startup: %q", m)
		case 'Z':
			return c, params, nil
		}
	}
}

func readMessage(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < 4 || n > 1<<20 {
		return 0, nil, fmt.Errorf("bad message length %d", n)
	}
	m := make([]byte, n-4)
	_, err := io.ReadFull(r, m)
	return hdr[0], m, err
}

// greet answers a client's startup: no to TLS and GSS encryption, then
// AuthenticationOk, the server's parameters, a key and ReadyForQuery. It
// returns false for a cancel request or a client that went away.
func greet(c net.Conn, params []byte) bool {
	for {
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return false
		}
		n := int(binary.BigEndian.Uint32(hdr[:4]))
		if n < 8 || n > 10000 {
			return false
		}
		if _, err := io.CopyN(io.Discard, c, int64(n-8)); err != nil {
			return false
		}
		switch binary.BigEndian.Uint32(hdr[4:]) {
		case sslRequestCode, gssRequestCode:
			if _, err := c.Write([]byte{'N'}); err != nil {
				return false
			}
			continue
		case protocolVersion3:
		default:
			return false
		}
		out := []byte{'R', 0, 0, 0, 8, 0, 0, 0, 0}
		out = append(out, params...)
		out = append(out, 'K', 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 1)
		out = append(out, 'Z', 0, 0, 0, 5, 'I')
		_, err := c.Write(out)
		return err == nil
	}
}

// scanner follows the message framing of one direction of a connection,
// however the bytes are split across reads.
type scanner struct {
	server bool // bytes from the server, not from the client
	hdr    [5]byte
	nhdr   int  // header bytes seen of the current message
	left   int  // body bytes still to come of the current message
	rfq    bool // the current message is ReadyForQuery and its status is next
}

// feed scans b. It counts the messages that end a round trip: a client's
// Query and Sync, a server's ReadyForQuery, whose last status it returns
// (0 when there was none). terminate reports a client's Terminate.
func (s *scanner) feed(b []byte) (ends int, status byte, terminate bool) {
	for len(b) > 0 {
		if s.left > 0 {
			if s.rfq {
				status, s.rfq = b[0], false
			}
			n := min(s.left, len(b))
			s.left -= n
			b = b[n:]
			continue
		}
		n := copy(s.hdr[s.nhdr:], b)
		s.nhdr += n
		b = b[n:]
		if s.nhdr < 5 {
			return
		}
		s.nhdr = 0
		s.left = max(0, int(binary.BigEndian.Uint32(s.hdr[1:]))-4)
		switch t := s.hdr[0]; {
		case s.server && t == 'Z':
			ends++
			s.rfq = s.left > 0
		case !s.server && (t == 'Q' || t == 'S'):
			ends++
		case !s.server && t == 'X':
			terminate = true
		}
	}
	return
}

// serveGoroutines serves each client from a goroutine of its own, which
// takes a server connection from a channel for each transaction, writes
// what the client sent and relays the answers until the round trips it
// started are over.
func serveGoroutines(ln net.Listener, servers []net.Conn, params []byte) error {
	idle := make(chan net.Conn, len(servers))
	for _, s := range servers {
		idle <- s
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			if greet(c, params) {
				relayGoroutine(c, idle)
			}
		}()
	}
}

func relayGoroutine(c net.Conn, idle chan net.Conn) {
	in, out := make([]byte, bufSize), make([]byte, bufSize)
	cs, ss := scanner{}, scanner{server: true}
	var srv net.Conn
	defer func() {
		if srv != nil {
			srv.Close() // mid-transaction: its state is unknown
		}
	}()
	pending := 0
	for {
		n, err := c.Read(in)
		if err != nil {
			return
		}
		ends, _, terminate := cs.feed(in[:n])
		if terminate {
			return // pgbench sends Terminate last, alone
		}
		if srv == nil {
			srv = <-idle
		}
		if _, err := srv.Write(in[:n]); err != nil {
			return
		}
		pending += ends
		status := byte(0)
		for pending > 0 {
			m, err := srv.Read(out)
			if err != nil {
				return
			}
			z, st, _ := ss.feed(out[:m])
			if z > 0 {
				pending -= z
				status = st
			}
			if _, err := c.Write(out[:m]); err != nil {
				return
			}
		}
		if status == 'I' {
			idle <- srv
			srv = nil
		}
	}
}
