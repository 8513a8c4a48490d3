package pool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/kproxy/kproxy/internal/evloop"
	"github.com/kproxy/kproxy/internal/pgwire"
)

const (
	serverReadBufBytes  = 16 << 10
	serverWriteBufBytes = 16 << 10
	maxServerMsgBytes   = 1 << 30
)

// Conn is one server connection. It is handed to exactly one user at a time by
// its Pool; while held, the holder may read and write it from one reading and
// one writing goroutine. Conn is not safe for other concurrent use.
type Conn struct {
	pool   *Pool
	nc     net.Conn
	rd     *pgwire.Reader
	wr     *pgwire.Writer
	pid    uint32
	secret []byte

	// params holds the server's last reported ParameterStatus values.
	params map[string]string
	// settings holds what kproxy applied with Sync beyond the connection's
	// start-up defaults; settingsKey is SettingsKey(settings).
	settings    map[string]string
	settingsKey string
	// stateOwner, when set, is the holder whose session may have left
	// state on the connection that settings does not describe (code it
	// ran, a DO block or a function, may have set anything): before the
	// connection serves anyone else it must be reset (ResetSession).
	stateOwner any

	// prepared holds the statements kproxy prepared on this connection by
	// name, least recently used first out; byID indexes those of network
	// clients by what they do (see stmt.go), stmtSeq numbers their names.
	// stale holds names whose plan the server refused to reuse, to be
	// prepared afresh.
	prepared      *simplelru.LRU[string, *stmtEntry]
	byID          map[StmtID]string
	stmtSeq       uint64
	pending       int    // entries of prepared whose ParseComplete is still to come
	gcSeen        uint64 // the pool's garbage sequence this connection has seen
	stale         map[string]struct{}
	closeLater    []string     // prepared on the server but no longer tracked; closed at the next AddPrepared or NewStmt
	preparedCount atomic.Int64 // len(prepared), for stats read by others

	// unnamedOwner identifies whose unnamed statement the server holds,
	// as set by the holder; internal queries destroy it.
	unnamedOwner any

	createdAt time.Time
	expiresAt time.Time
	idleSince time.Time
	broken    bool

	// acquiredAt is when the holder took it; fingerprint and example name
	// the first statement of what it ran, for workload learning.
	acquiredAt  time.Time
	fingerprint uint64
	example     string
	// health is the connection's score, 0 to 100 (see NoteFailure).
	health atomic.Int32

	// For event loops (loop.go): sock reads and writes the socket (nil
	// until Sock, and for TLS, then notPlain), home is the loop that served
	// on it last, loopState what that loop keeps here, and onClose what
	// close calls.
	sock      *evloop.Sock
	notPlain  bool
	home      int
	loopState any
	onClose   func()
}

// Health scores: a connection starts at 100, loses 10 per
// connection-level failure and 20 per failed liveness check, and gains 5
// per passed check. Below the pool's health_threshold it is recycled when
// released; below closeHealth it is closed even while idle.
const (
	fullHealth      = 100
	failurePenalty  = 10
	failedCheckCost = 20
	passedCheckGain = 5
	closeHealth     = 20
)

// Health returns the connection's health score.
func (c *Conn) Health() int { return int(c.health.Load()) }

// NoteFailure lowers the health score after a connection-level failure
// (an I/O error, a timeout, a protocol error; not an SQL error).
func (c *Conn) NoteFailure() { c.addHealth(-failurePenalty) }

// noteCheck scores a liveness check.
func (c *Conn) noteCheck(passed bool) {
	if passed {
		c.addHealth(passedCheckGain)
	} else {
		c.addHealth(-failedCheckCost)
	}
}

func (c *Conn) addHealth(d int32) {
	for {
		old := c.health.Load()
		n := min(max(old+d, 0), fullHealth)
		if c.health.CompareAndSwap(old, n) {
			return
		}
	}
}

// Learning reports whether the connection's pool learns its workload
// (pattern_learning), so that NoteStatement is worth calling.
func (c *Conn) Learning() bool { return c.pool != nil && c.pool.workload.Load() != nil }

// NoteStatement records the fingerprint and text of the first statement the
// holder runs, for workload learning. Later calls until Release are ignored.
func (c *Conn) NoteStatement(fingerprint uint64, sql string) {
	if c.fingerprint != 0 || c.pool == nil || c.pool.workload.Load() == nil {
		return
	}
	c.fingerprint = fingerprint
	c.example = strings.Clone(sql[:min(len(sql), maxExample)])
}

// maxExample bounds the statement text kept as a pattern's example.
const maxExample = 200

// NoteResult counts a statement's outcome for the pool's stats.
func (c *Conn) NoteResult(failed bool) {
	if c.pool == nil {
		return
	}
	c.pool.queries.Add(1)
	if failed {
		c.pool.queryErrors.Add(1)
	}
}

// Next reads the next message from the server. The frame is valid until the
// following call. ParameterStatus messages also update the connection's view
// of its parameters.
func (c *Conn) Next() (byte, []byte, error) {
	t, msg, err := c.rd.Next()
	if err != nil {
		// A deadline that fires between messages (how a holder stops a
		// reading goroutine) leaves the connection usable.
		var partial *pgwire.PartialError
		if !errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &partial) {
			c.broken = true
		}
		return 0, nil, err
	}
	if t == 'S' {
		var ps pgproto3.ParameterStatus
		if ps.Decode(msg[5:]) == nil {
			c.params[ps.Name] = ps.Value
		}
	}
	return t, msg, nil
}

// Buffered reports how many bytes from the server are already read but not
// yet returned by Next.
func (c *Conn) Buffered() int { return c.rd.Buffered() }

// Write buffers raw protocol bytes for the server; Flush sends them.
func (c *Conn) Write(b []byte) error {
	_, err := c.wr.Write(b)
	if err != nil {
		c.broken = true
	}
	return err
}

// Flush sends buffered bytes to the server.
func (c *Conn) Flush() error {
	err := c.wr.Flush()
	if err != nil {
		c.broken = true
	}
	return err
}

// Release hands the connection back to its pool; see Pool.Release.
func (c *Conn) Release() { c.pool.Release(c) }

// MarkBroken records that the connection is in an unknown state; the pool
// closes it instead of reusing it.
func (c *Conn) MarkBroken() {
	c.broken = true
	c.NoteFailure()
}

// SetReadDeadline sets the deadline of the underlying network connection's
// reads; a past deadline unblocks a pending Next.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }

// Params returns the server's last reported ParameterStatus values. The map
// is owned by the connection; copy it to keep it.
func (c *Conn) Params() map[string]string { return c.params }

// PID is the backend process ID of the connection.
func (c *Conn) PID() uint32 { return c.pid }

// Cancel asks the server to cancel whatever this connection is running. It
// opens a separate connection, as the protocol requires; the server may
// ignore it.
func (c *Conn) Cancel(ctx context.Context) error {
	return sendCancel(ctx, c.pool.cfg.Network, c.pool.cfg.Addr, c.pid, c.secret)
}

func sendCancel(ctx context.Context, network, addr string, pid uint32, secret []byte) error {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return err
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	buf := make([]byte, 12, 12+len(secret))
	binary.BigEndian.PutUint32(buf[0:], uint32(12+len(secret)))
	binary.BigEndian.PutUint32(buf[4:], pgwire.CancelRequestCode)
	binary.BigEndian.PutUint32(buf[8:], pid)
	buf = append(buf, secret...)
	if _, err := nc.Write(buf); err != nil {
		return err
	}
	// The server closes the connection once it has read the request; waiting
	// for that makes the cancel take effect before we return.
	_, _ = nc.Read(buf[:1])
	return nil
}

// Exec runs sql with the simple protocol and waits for ReadyForQuery. It
// returns the first error the server reports; the connection is still usable
// after a server error, not after a network error.
func (c *Conn) Exec(ctx context.Context, sql string) error {
	_, err := c.Query(ctx, sql)
	return err
}

// Ping checks that the server answers, with a Sync round trip.
func (c *Conn) Ping(ctx context.Context) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.nc.SetDeadline(dl)
		defer c.nc.SetDeadline(time.Time{})
	}
	if err := c.Write([]byte{'S', 0, 0, 0, 4}); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return err
	}
	return c.waitReady()
}

func (c *Conn) waitReady() error {
	var first error
	for {
		t, msg, err := c.Next()
		if err != nil {
			c.broken = true // the answer is unread: the stream is out of step
			return err
		}
		switch t {
		case 'E':
			var e pgproto3.ErrorResponse
			if first == nil && e.Decode(msg[5:]) == nil {
				first = pgconn.ErrorResponseToPgError(&e)
			}
		case 'Z':
			if len(msg) != 6 {
				c.broken = true
				return errors.New("malformed ReadyForQuery")
			}
			if msg[5] != pgwire.TxIdle && first == nil {
				first = fmt.Errorf("server connection left in transaction state %q", msg[5])
				c.broken = true
			}
			return first
		case 'G', 'H', 'W':
			// COPY cannot start from statements kproxy sends itself.
			c.broken = true
			return errors.New("unexpected COPY from an internal statement")
		}
	}
}

// UnnamedOwner returns what the last SetUnnamedOwner recorded, or nil after
// a simple query destroyed the unnamed statement.
func (c *Conn) UnnamedOwner() any { return c.unnamedOwner }

// SetUnnamedOwner records whose unnamed statement the server now holds.
func (c *Conn) SetUnnamedOwner(owner any) { c.unnamedOwner = owner }

// HasSettings reports whether the connection's settings have SettingsKey
// key, so that Sync would do nothing.
func (c *Conn) HasSettings(key string) bool { return c.settingsKey == key }

// Settings returns what kproxy applied to this connection with Sync.
func (c *Conn) Settings() map[string]string { return c.settings }

// SetSettings records the session settings the connection has now, as read
// back from the server after a client changed them.
func (c *Conn) SetSettings(m map[string]string) {
	clear(c.settings)
	for k, v := range m {
		c.settings[k] = v
	}
	c.settingsKey = SettingsKey(c.settings)
}

// Settings that Sync orders itself: the session user and the role change
// who may set what, so they are undone first and applied last (the session
// user before the role, which changing it resets).
const (
	settingSessionAuth = "session_authorization"
	settingRole        = "role"
)

// Sync brings the connection's session settings in line with want (name →
// value): settings that differ are set, settings kproxy applied earlier that
// want lacks are reset. It sends one statement at most.
func (c *Conn) Sync(ctx context.Context, want map[string]string) error {
	var b strings.Builder
	identity := c.settings[settingSessionAuth] != want[settingSessionAuth] || c.settings[settingRole] != want[settingRole]
	if identity && (c.settings[settingSessionAuth] != "" || c.settings[settingRole] != "") {
		b.WriteString("RESET SESSION AUTHORIZATION;RESET ROLE;")
	}
	names := make([]string, 0, len(want))
	for k := range want {
		if k != settingSessionAuth && k != settingRole {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	for _, k := range names {
		v := want[k]
		if cur, ok := c.settings[k]; ok && cur == v {
			continue
		}
		fmt.Fprintf(&b, "SELECT pg_catalog.set_config(%s, %s, false);", quoteLiteral(k), quoteLiteral(v))
	}
	var resets []string
	for k := range c.settings {
		if _, ok := want[k]; !ok && k != settingSessionAuth && k != settingRole {
			resets = append(resets, k)
		}
	}
	sort.Strings(resets)
	for _, k := range resets {
		fmt.Fprintf(&b, "RESET %s;", quoteIdent(k))
	}
	if identity {
		for _, k := range [...]string{settingSessionAuth, settingRole} {
			if v := want[k]; v != "" {
				fmt.Fprintf(&b, "SELECT pg_catalog.set_config(%s, %s, false);", quoteLiteral(k), quoteLiteral(v))
			}
		}
	}
	if b.Len() == 0 {
		return nil
	}
	if err := c.Exec(ctx, b.String()); err != nil {
		// Which statements took effect is unknown: do not reuse.
		c.broken = true
		return err
	}
	c.SetSettings(want)
	c.pool.validSettings.Add(c.settingsKey, struct{}{})
	return nil
}

// SetStateOwner records that holder's session may have left state on the
// connection beyond its settings (see ResetSession).
func (c *Conn) SetStateOwner(holder any) { c.stateOwner = holder }

// NeedsReset reports whether the connection may hold session state of
// someone other than holder that its settings do not describe.
func (c *Conn) NeedsReset(holder any) bool { return c.stateOwner != nil && c.stateOwner != holder }

// ResetSession returns every setting of the session to its start-up value,
// the session user and the role included, keeping prepared statements:
// for a connection whose state is not fully known (NeedsReset).
func (c *Conn) ResetSession(ctx context.Context) error {
	if err := c.Exec(ctx, "RESET SESSION AUTHORIZATION;RESET ROLE;RESET ALL"); err != nil {
		c.broken = true
		return err
	}
	c.SetSettings(nil)
	c.stateOwner = nil
	return nil
}

// SettingsKey is a canonical form of a settings map: two maps have the same
// key exactly when they are equal.
func SettingsKey(m map[string]string) string {
	if len(m) == 0 {
		return ""
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(m[k])
		b.WriteByte(0)
	}
	return b.String()
}

// HasPrepared reports whether the statement name is prepared on the
// connection, marking it recently used, and counts a hit or a miss.
func (c *Conn) HasPrepared(name string) bool {
	if _, stale := c.stale[name]; stale {
		c.pool.preparedMisses.Add(1)
		return false
	}
	_, ok := c.prepared.Get(name)
	if ok {
		c.pool.preparedHits.Add(1)
	} else {
		c.pool.preparedMisses.Add(1)
	}
	return ok
}

// IsStale reports whether name was prepared but must be prepared afresh;
// the caller closes it on the server first and then calls AddPrepared.
func (c *Conn) IsStale(name string) bool {
	_, ok := c.stale[name]
	return ok
}

// AddPrepared records that name is being prepared on the connection and
// returns the least recently used names it pushed out, which the caller must
// close on the server.
func (c *Conn) AddPrepared(name string) (evicted []string) {
	delete(c.stale, name)
	evicted = c.makeRoom()
	c.prepared.Add(name, &stmtEntry{ready: true})
	c.preparedCount.Store(int64(c.prepared.Len()))
	return evicted
}

// CloseLater records that name is still prepared on the server although it
// is no longer tracked (its Close was skipped after an error); AddPrepared
// returns it to be closed.
func (c *Conn) CloseLater(name string) {
	c.StmtFailed(name)
	c.closeLater = append(c.closeLater, name)
}

// ForgetPrepared records that name is no longer prepared (its Parse failed).
func (c *Conn) ForgetPrepared(name string) {
	c.StmtFailed(name)
	delete(c.stale, name)
}

// MarkStale records that the server refused to reuse name's plan ("cached
// plan must not change result type"): the next use prepares it afresh.
func (c *Conn) MarkStale(name string) {
	if c.stale == nil {
		c.stale = map[string]struct{}{}
	}
	c.stale[name] = struct{}{}
}

// ForgetAllPrepared records that the server dropped every prepared
// statement (DEALLOCATE ALL, DISCARD ALL).
func (c *Conn) ForgetAllPrepared() {
	c.prepared.Purge()
	clear(c.byID)
	clear(c.stale)
	c.closeLater = nil
	c.pending = 0
	c.preparedCount.Store(0)
}

// Query runs sql with the simple protocol and returns the rows of each
// result set in text form (NULL as ""). Like Exec, a server error leaves
// the connection usable.
func (c *Conn) Query(ctx context.Context, sql string) ([][][]string, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.nc.SetDeadline(dl)
		defer c.nc.SetDeadline(time.Time{})
	}
	c.unnamedOwner = nil
	q := pgproto3.Query{String: sql}
	buf, err := q.Encode(nil)
	if err != nil {
		return nil, err
	}
	if err := c.Write(buf); err != nil {
		return nil, err
	}
	if err := c.Flush(); err != nil {
		return nil, err
	}
	var sets [][][]string
	var first error
	for {
		t, msg, err := c.Next()
		if err != nil {
			c.broken = true // the answer is unread: the stream is out of step
			return nil, err
		}
		switch t {
		case 'T':
			sets = append(sets, nil)
		case 'D':
			var row pgproto3.DataRow
			if err := row.Decode(msg[5:]); err != nil || len(sets) == 0 {
				c.broken = true
				return nil, errors.New("malformed DataRow")
			}
			vals := make([]string, len(row.Values))
			for i, v := range row.Values {
				vals[i] = string(v)
			}
			sets[len(sets)-1] = append(sets[len(sets)-1], vals)
		case 'E':
			var e pgproto3.ErrorResponse
			if first == nil && e.Decode(msg[5:]) == nil {
				first = pgconn.ErrorResponseToPgError(&e)
			}
		case 'Z':
			if len(msg) != 6 || msg[5] != pgwire.TxIdle {
				c.broken = true
				if first == nil {
					first = errors.New("server connection left in a transaction")
				}
			}
			return sets, first
		case 'G', 'H', 'W':
			c.broken = true
			return nil, errors.New("unexpected COPY from an internal statement")
		}
	}
}

// Reset returns the connection to a clean session with DISCARD ALL.
func (c *Conn) Reset(ctx context.Context) error {
	if err := c.Exec(ctx, "DISCARD ALL"); err != nil {
		return err
	}
	c.SetSettings(nil)
	c.stateOwner = nil
	c.ForgetAllPrepared()
	return nil
}

func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

func (c *Conn) close() {
	if c.nc == nil {
		return
	}
	// A polite Terminate lets the server end the session cleanly.
	_ = c.nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = c.nc.Write([]byte{'X', 0, 0, 0, 4})
	_ = c.nc.Close()
	c.nc = nil
	if f := c.onClose; f != nil {
		c.onClose = nil
		f()
	}
}
