package proxy

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/kproxy/kproxy/internal/pgwire"
)

// loginTimeout bounds the startup phase, so a client that connects and says
// nothing does not hold a goroutine forever.
const loginTimeout = time.Minute

// startup is what a client asked for in its StartupMessage.
type startup struct {
	nc       net.Conn // the client connection, TLS-wrapped if negotiated
	user     string
	database string
	// settings are run-time parameters to apply on the server (startup
	// parameters and those from "options").
	settings map[string]string
	minor    uint32   // requested protocol minor version
	unknown  []string // _pq_.* options kproxy does not support
}

func (s *Server) handle(nc net.Conn) {
	defer func() {
		if nc != nil {
			nc.Close()
		}
	}()
	_ = nc.SetDeadline(time.Now().Add(loginTimeout))
	st, err := s.readStartup(nc)
	if err != nil {
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			s.stats.loginsFailed.Add(1)
			s.log.Debug("startup failed", zap.Stringer("client", nc.RemoteAddr()), zap.Error(err))
			writeError(st.conn(nc), err)
		}
		return
	}
	if st == nil {
		return // a CancelRequest, already handled
	}
	cfg := s.cfg.Load()
	ss := newSession(s, cfg, st)
	if st.database == consoleDatabase {
		if err := ss.consoleLogin(); err != nil {
			s.stats.loginsFailed.Add(1)
			s.log.Info("admin console login failed", zap.String("user", st.user), zap.Error(err))
			_ = ss.writeClient(encodeFatal(nil, err), true)
			ss.closeConn()
			return
		}
		_ = st.nc.SetDeadline(time.Time{})
		ss.runConsole()
		return
	}
	if err := ss.login(); err != nil {
		s.stats.loginsFailed.Add(1)
		s.log.Debug("login failed", zap.String("user", st.user), zap.String("database", st.database), zap.Error(err))
		// Whatever went wrong, the login is over: say so with FATAL.
		_ = ss.writeClient(encodeFatal(nil, err), true)
		ss.close()
		return
	}
	_ = st.nc.SetDeadline(time.Time{})
	// The session runs on a goroutine of its own, so that the stack the
	// login grew is not kept for the client's whole life: an idle client
	// should cost little memory.
	s.wg.Add(1)
	nc = nil // closed by the session now
	go func() {
		defer s.wg.Done()
		ss.serve()
	}()
}

func (st *startup) conn(fallback net.Conn) net.Conn {
	if st != nil && st.nc != nil {
		return st.nc
	}
	return fallback
}

// writeError sends err to a client that has no session yet.
func writeError(nc net.Conn, err error) {
	_, _ = nc.Write(encodeFatal(nil, err))
}

// readStartup handles the untyped first messages: SSLRequest (TLS or 'N'),
// GSSENCRequest ('N'), CancelRequest (forwarded; returns nil, nil) and the
// StartupMessage. On error the returned startup, if not nil, holds the
// connection to report the error on.
func (s *Server) readStartup(nc net.Conn) (*startup, error) {
	st := &startup{nc: nc}
	tlsDone := false
	for {
		msg, err := pgwire.ReadStartup(st.nc)
		if err != nil {
			return st, err
		}
		code := binary.BigEndian.Uint32(msg[4:8])
		switch code {
		case pgwire.SSLRequestCode:
			tc := s.tls.Load()
			if tlsDone || tc == nil {
				if tlsDone {
					return st, fatalf(codeProtocolViolation, "SSLRequest received on an encrypted connection")
				}
				if _, err := st.nc.Write([]byte{'N'}); err != nil {
					return nil, err
				}
				continue
			}
			if _, err := st.nc.Write([]byte{'S'}); err != nil {
				return nil, err
			}
			tc2 := tls.Server(st.nc, tc)
			if err := tc2.Handshake(); err != nil {
				return nil, fmt.Errorf("TLS handshake: %w", io.EOF)
			}
			st.nc = tc2
			tlsDone = true
		case pgwire.GSSENCRequestCode:
			if _, err := st.nc.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case pgwire.CancelRequestCode:
			if len(msg) >= 16 {
				s.cancel(cancelKey{pid: binary.BigEndian.Uint32(msg[8:12]), secret: binary.BigEndian.Uint32(msg[12:16])})
			}
			return nil, nil
		default:
			if code>>16 != 3 {
				return st, fatalf(codeProtocolViolation, "unsupported frontend protocol %d.%d: kproxy supports protocol 3.0", code>>16, code&0xffff)
			}
			st.minor = code & 0xffff
			return st, st.parseParams(msg[8:])
		}
	}
}

func (st *startup) parseParams(b []byte) error {
	st.settings = map[string]string{}
	for len(b) > 0 && b[0] != 0 {
		k, rest, ok := cutNul(b)
		if !ok {
			return fatalf(codeProtocolViolation, "invalid startup packet layout: expected terminator as last byte")
		}
		v, rest, ok := cutNul(rest)
		if !ok {
			return fatalf(codeProtocolViolation, "invalid startup packet layout: expected terminator as last byte")
		}
		b = rest
		switch {
		case k == "user":
			st.user = v
		case k == "database":
			st.database = v
		case k == "replication":
			switch strings.ToLower(v) {
			case "false", "off", "no", "0":
			default:
				return fatalf(codeFeatureUnsupported, "kproxy does not proxy replication connections")
			}
		case k == "options":
			opts, err := parseOptions(v)
			if err != nil {
				return err
			}
			for ok, ov := range opts {
				st.settings[strings.ToLower(ok)] = ov
			}
		case strings.HasPrefix(k, "_pq_."):
			st.unknown = append(st.unknown, k)
		default:
			// Setting names are case-insensitive; one spelling keeps the
			// maps kproxy compares consistent.
			st.settings[strings.ToLower(k)] = v
		}
	}
	if st.user == "" {
		return fatalf(codeInvalidAuthSpec, "no PostgreSQL user name specified in startup packet")
	}
	if st.database == "" {
		st.database = st.user
	}
	sort.Strings(st.unknown)
	return nil
}

func cutNul(b []byte) (string, []byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}

// parseOptions reads the "options" startup parameter the way Postgres does:
// space-separated words, backslash escapes the next character, and each
// setting is "-c name=value" or "--name=value".
func parseOptions(s string) (map[string]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	out := map[string]string{}
	for i := 0; i < len(words); i++ {
		w := words[i]
		var kv string
		switch {
		case w == "-c" && i+1 < len(words):
			i++
			kv = words[i]
		case strings.HasPrefix(w, "-c"):
			kv = w[2:]
		case strings.HasPrefix(w, "--"):
			kv = w[2:]
		default:
			return nil, fatalf(codeProtocolViolation, "invalid command-line argument for server process: %s", w).withHint("kproxy accepts only -c name=value and --name=value in options.")
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fatalf(codeProtocolViolation, "-c %s requires a value", kv)
		}
		out[strings.ReplaceAll(k, "-", "_")] = v
	}
	return out, nil
}

func (e *Error) withHint(h string) *Error {
	e.Hint = h
	return e
}

// negotiate tells a client that asked for a newer protocol minor version or
// for protocol options that kproxy speaks 3.0 without them.
func (st *startup) negotiateMessage() []byte {
	if st.minor == 0 && len(st.unknown) == 0 {
		return nil
	}
	// Postgres sends the whole version number here (3.0 is 196608), not
	// the minor part alone, and clients read it as a protocol version.
	b, _ := (&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: pgwire.ProtocolVersion30, UnrecognizedOptions: st.unknown}).Encode(nil)
	return b
}
