package proxy_test

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/internal/pgtest"
)

// A wire script is a conversation at the protocol level. Each step sends
// frontend messages and reads the answer up to a given backend message.
// Every script runs against Postgres directly and through kproxy in both
// pool modes; the answers, with what varies between connections left out,
// must be identical.

type wireScript struct {
	name  string
	shows string // the start of a line Postgres' own answer must have, so the script tests what it says
	// startup overrides or adds startup parameters (user and database are
	// postgres) and protocol the protocol version (default 3.0).
	startup  map[string]string
	protocol uint32
	steps    []wireStep
	// detachBug describes a kproxy bug the script shows in transaction
	// mode: the client keeps its server connection although it is idle and
	// not pinned. The check asserts the bug is still there; delete the
	// field when it is fixed.
	detachBug string
	// proxyBug describes a kproxy bug that makes the script fail through
	// kproxy; only the direct run is done until it is fixed.
	proxyBug string
}

type wireStep struct {
	send []pgproto3.FrontendMessage
	raw  []byte // written after send, as is
	// closeWrite closes the client's write side after sending, as a client
	// does that has nothing more to say but waits for the answers.
	closeWrite bool
	// until is the start of the last answer line to read. Empty means as
	// many ReadyForQuery as the step sends Query, Sync and FunctionCall
	// messages, and at least one.
	until string
}

func wireSend(msgs ...pgproto3.FrontendMessage) wireStep { return wireStep{send: msgs} }

// bigBatch is n statements of about 4 KB, each answered with a 30,000-byte
// row and its length, then one Sync.
func bigBatch(n int) []pgproto3.FrontendMessage {
	var msgs []pgproto3.FrontendMessage
	pad := strings.Repeat("p", 4000)
	for i := range n {
		sql := fmt.Sprintf("SELECT %d AS i, length(repeat('x', 30000)), repeat('x', 30000) /* %s */", i, pad)
		msgs = append(msgs, msgParse("", sql), msgBind("", ""), msgExecute("", 0))
	}
	return append(msgs, msgSync)
}

func wireSendUntil(until string, msgs ...pgproto3.FrontendMessage) wireStep {
	return wireStep{send: msgs, until: until}
}

func msgQuery(sql string) *pgproto3.Query { return &pgproto3.Query{String: sql} }

func msgParse(name, sql string) *pgproto3.Parse { return &pgproto3.Parse{Name: name, Query: sql} }

// msgBind binds text parameters.
func msgBind(portal, stmt string, args ...string) *pgproto3.Bind {
	b := &pgproto3.Bind{DestinationPortal: portal, PreparedStatement: stmt}
	for _, a := range args {
		b.Parameters = append(b.Parameters, []byte(a))
	}
	return b
}

func msgExecute(portal string, maxRows uint32) *pgproto3.Execute {
	return &pgproto3.Execute{Portal: portal, MaxRows: maxRows}
}

func msgDescribeStatement(name string) *pgproto3.Describe {
	return &pgproto3.Describe{ObjectType: 'S', Name: name}
}

func msgDescribePortal(name string) *pgproto3.Describe {
	return &pgproto3.Describe{ObjectType: 'P', Name: name}
}

func msgCloseStatement(name string) *pgproto3.Close {
	return &pgproto3.Close{ObjectType: 'S', Name: name}
}

func msgClosePortal(name string) *pgproto3.Close { return &pgproto3.Close{ObjectType: 'P', Name: name} }

func msgCopyData(s string) *pgproto3.CopyData { return &pgproto3.CopyData{Data: []byte(s)} }

var (
	msgSync     = &pgproto3.Sync{}
	msgFlush    = &pgproto3.Flush{}
	msgCopyDone = &pgproto3.CopyDone{}
)

// int4plOID is the pg_proc OID of int4pl, fixed since Postgres 7.
const int4plOID = 177

var wireScripts = []wireScript{
	{
		name:  "a simple query returns its rows",
		shows: "CommandComplete SELECT 1",
		steps: []wireStep{wireSend(msgQuery("SELECT 1 AS one, 'two'::text AS two, NULL::int AS three"))},
	},
	{
		name:  "a multi-statement query answers every statement",
		shows: "CommandComplete SELECT 2",
		steps: []wireStep{wireSend(msgQuery("SELECT 1 AS a; SELECT 2 AS b; VALUES (3), (4)"))},
	},
	{
		name:  "an error in the middle of a multi-statement query skips the rest",
		shows: "ErrorResponse ERROR 22012",
		steps: []wireStep{
			wireSend(msgQuery("SELECT 1; SELECT 1/0; SELECT 3")),
			wireSend(msgQuery("SELECT 4")),
		},
	},
	{
		name:  "BEGIN and COMMIT inside a multi-statement query",
		shows: "ReadyForQuery T",
		steps: []wireStep{
			wireSend(msgQuery("BEGIN; SELECT 1; COMMIT; SELECT 2")),
			wireSend(msgQuery("SELECT 3; BEGIN; SELECT 4")),
			wireSend(msgQuery("COMMIT")),
		},
	},
	{
		name:  "an empty query string gets EmptyQueryResponse",
		shows: "EmptyQueryResponse",
		steps: []wireStep{
			wireSend(msgQuery("")),
			wireSend(msgQuery(";")),
			wireSend(msgParse("", ""), msgBind("", ""), msgExecute("", 0), msgSync),
		},
	},
	{
		name:  "an error carries its position",
		shows: "ErrorResponse ERROR 42P01 \"relation \\\"wire_no_such_table\\\" does not exist\" position=15",
		steps: []wireStep{wireSend(msgQuery("SELECT * FROM wire_no_such_table"))},
	},
	{
		name:  "the extended protocol parses, describes, binds and executes",
		shows: "ParameterDescription [23 25]",
		steps: []wireStep{
			wireSend(msgParse("", "SELECT $1::int + 1 AS n, $2::text AS t"), msgDescribeStatement(""),
				msgBind("", "", "41", "x"), msgDescribePortal(""), msgExecute("", 0), msgSync),
			wireSend(msgParse("", "SELECT 1 WHERE false"), msgBind("", ""), msgDescribePortal(""), msgExecute("", 0), msgSync),
			wireSend(msgParse("", "BEGIN"), msgBind("", ""), msgDescribePortal(""), msgExecute("", 0), msgSync),
			wireSend(msgParse("", "COMMIT"), msgBind("", ""), msgExecute("", 0), msgSync),
		},
	},
	{
		name:  "a failed Parse makes the server skip the batch up to Sync",
		shows: "ErrorResponse ERROR 42601",
		steps: []wireStep{
			wireSend(msgParse("", "SELEC 1"), msgBind("", ""), msgDescribePortal(""), msgExecute("", 0), msgSync),
			wireSend(msgParse("", "SELECT 2"), msgBind("", ""), msgExecute("", 0), msgSync),
		},
	},
	{
		name:  "an error in Execute makes the server skip the batch up to Sync",
		shows: "ErrorResponse ERROR 22012",
		steps: []wireStep{
			wireSend(msgParse("", "SELECT 10/g FROM generate_series(-1, 1) g"), msgBind("", ""), msgExecute("", 0),
				msgParse("", "SELECT 2"), msgBind("", ""), msgExecute("", 0), msgSync),
			wireSend(msgParse("", "SELECT 1/$1::int"), msgBind("", "", "1"), msgExecute("", 0), msgSync),
		},
	},
	{
		name:  "a Bind with the wrong number of parameters is an error",
		shows: "ErrorResponse ERROR 08P01",
		steps: []wireStep{
			wireSend(msgParse("", "SELECT $1::int"), msgBind("", ""), msgExecute("", 0), msgSync),
			wireSend(msgQuery("SELECT 1")),
		},
	},
	{
		name:  "a portal with a row limit is suspended and resumed in a transaction",
		shows: "PortalSuspended",
		steps: []wireStep{
			wireSend(msgQuery("BEGIN")),
			wireSend(msgParse("", "SELECT g FROM generate_series(1, 5) g"), msgBind("wire_portal", ""),
				msgExecute("wire_portal", 2), msgSync),
			wireSend(msgExecute("wire_portal", 2), msgSync),
			wireSend(msgExecute("wire_portal", 0), msgSync),
			wireSend(msgQuery("COMMIT")),
			wireSend(msgParse("", "SELECT g FROM generate_series(1, 3) g"), msgBind("", ""),
				msgExecute("", 2), msgExecute("", 2), msgSync),
		},
	},
	{
		name:  "Close of a statement and a portal",
		shows: "ErrorResponse ERROR 34000",
		steps: []wireStep{
			wireSend(msgQuery("BEGIN")),
			wireSend(msgParse("wire_close", "SELECT 1"), msgBind("wire_close_portal", "wire_close"),
				msgClosePortal("wire_close_portal"), msgCloseStatement("wire_close"),
				msgCloseStatement("wire_never_prepared"), msgSync),
			wireSend(msgDescribePortal("wire_close_portal"), msgSync),
			wireSend(msgQuery("ROLLBACK")),
			wireSend(msgBind("", "wire_close"), msgSync),
		},
	},
	{
		name:  "Flush without Sync sends the answer so far",
		shows: "CommandComplete SELECT 1",
		steps: []wireStep{
			wireSendUntil("CommandComplete", msgParse("", "SELECT 42"), msgBind("", ""), msgExecute("", 0), msgFlush),
			wireSendUntil("RowDescription", msgParse("", "SELECT 43 AS x"), msgBind("", ""), msgDescribePortal(""), msgFlush),
			wireSend(msgExecute("", 0), msgSync),
		},
	},
	{
		name:  "several batches and queries pipelined in one write",
		shows: "CommandComplete SELECT 1",
		steps: []wireStep{
			wireSend(msgParse("", "SELECT 1"), msgBind("", ""), msgExecute("", 0), msgSync,
				msgQuery("BEGIN"),
				msgParse("", "SELECT 2"), msgBind("", ""), msgExecute("", 0), msgSync,
				msgQuery("SELECT 3; COMMIT"),
				msgSync),
		},
	},
	{
		name:  "COPY TO STDOUT through a simple query",
		shows: "CopyOutResponse",
		steps: []wireStep{
			wireSend(msgQuery("COPY (SELECT g, 'row ' || g FROM generate_series(1, 3) g) TO STDOUT")),
			wireSend(msgQuery("COPY (SELECT 1 AS a) TO STDOUT (FORMAT csv, HEADER)")),
		},
	},
	{
		name:  "COPY FROM STDIN with CopyData and CopyDone",
		shows: "CommandComplete COPY 3",
		steps: []wireStep{
			wireSend(msgQuery("BEGIN; CREATE TABLE wire_copy_in (a int, b text)")),
			wireSendUntil("CopyInResponse", msgQuery("COPY wire_copy_in FROM STDIN")),
			wireSend(msgCopyData("1\tone\n2\t"), msgCopyData("two\n"), msgCopyData("3\t\\N\n"), msgCopyDone),
			wireSend(msgQuery("SELECT * FROM wire_copy_in ORDER BY a; ROLLBACK")),
		},
	},
	{
		name:  "COPY FROM STDIN ended by CopyFail",
		shows: "ErrorResponse ERROR 57014",
		steps: []wireStep{
			wireSend(msgQuery("BEGIN; CREATE TABLE wire_copy_fail (a int)")),
			wireSendUntil("CopyInResponse", msgQuery("COPY wire_copy_fail FROM STDIN")),
			wireSend(msgCopyData("1\n"), &pgproto3.CopyFail{Message: "client gave up"}),
			wireSend(msgQuery("ROLLBACK")),
		},
	},
	{
		name:  "bad data in COPY FROM STDIN is an error and the rest is dropped",
		shows: "ErrorResponse ERROR 22P02",
		steps: []wireStep{
			wireSend(msgQuery("BEGIN; CREATE TABLE wire_copy_bad (a int)")),
			wireSendUntil("CopyInResponse", msgQuery("COPY wire_copy_bad FROM STDIN")),
			wireSend(msgCopyData("1\nnot a number\n")),
			wireSend(msgCopyData("3\n"), msgCopyDone, msgQuery("ROLLBACK")),
		},
	},
	{
		// libpq's PQexecParams sends Sync right after Execute; the server
		// ignores it during COPY and the client sends another after CopyDone.
		name:  "COPY FROM STDIN through the extended protocol ignores Sync until CopyDone",
		shows: "CommandComplete COPY 2",
		steps: []wireStep{
			wireSend(msgQuery("BEGIN; CREATE TABLE wire_copy_ext (a int)")),
			wireSendUntil("CopyInResponse", msgParse("", "COPY wire_copy_ext FROM STDIN"), msgBind("", ""), msgExecute("", 0), msgSync),
			wireSendUntil("ReadyForQuery", msgCopyData("1\n2\n"), msgSync, msgCopyDone, msgSync),
			wireSend(msgQuery("ROLLBACK")),
		},
	},
	{
		name:  "a Sync during COPY FROM STDIN through a simple query is ignored",
		shows: "CommandComplete COPY 1",
		steps: []wireStep{
			wireSend(msgQuery("BEGIN; CREATE TABLE wire_copy_sync (a int)")),
			wireSendUntil("CopyInResponse", msgQuery("COPY wire_copy_sync FROM STDIN")),
			wireSend(msgCopyData("1\n"), msgSync, msgFlush, msgCopyDone),
			wireSend(msgQuery("ROLLBACK")),
		},
	},
	{
		name:  "a Query inside a failed extended batch is skipped with the batch",
		shows: "ErrorResponse ERROR 42601",
		steps: []wireStep{
			wireSendUntil("ReadyForQuery", msgParse("", "SELEC 1"), msgQuery("SELECT 1"), msgSync),
			wireSend(msgQuery("SELECT 2")),
		},
	},
	{
		name:  "stray copy messages outside COPY are ignored",
		shows: "ReadyForQuery I",
		steps: []wireStep{
			wireSend(msgCopyData("1\n"), msgCopyDone, &pgproto3.CopyFail{Message: "x"}, msgSync),
			wireSend(msgQuery("SELECT 1")),
		},
	},
	{
		name:  "a NOTICE is relayed",
		shows: "NoticeResponse NOTICE 00000 \"hi\"",
		steps: []wireStep{
			wireSend(msgQuery("DO $$BEGIN RAISE NOTICE 'hi'; END$$")),
			wireSend(msgParse("", "DO $$BEGIN RAISE WARNING 'careful'; END$$"), msgBind("", ""), msgExecute("", 0), msgSync),
		},
	},
	{
		name:  "an error inside a transaction leaves it failed until ROLLBACK",
		shows: "ReadyForQuery E",
		steps: []wireStep{
			wireSend(msgQuery("BEGIN")),
			wireSend(msgQuery("SELECT 1/0")),
			wireSend(msgQuery("SELECT 1")),
			wireSend(msgParse("", "SELECT 1"), msgBind("", ""), msgExecute("", 0), msgSync),
			wireSend(msgQuery("ROLLBACK")),
			wireSend(msgQuery("SELECT 2")),
		},
	},
	{
		name:  "a named prepared statement is reused across Syncs",
		shows: "CommandComplete SELECT 1",
		steps: []wireStep{
			wireSend(msgParse("wire_double", "SELECT $1::int * 2 AS doubled"), msgSync),
			wireSend(msgBind("", "wire_double", "21"), msgExecute("", 0), msgSync),
			wireSend(msgBind("", "wire_double", "5"), msgDescribeStatement("wire_double"), msgDescribePortal(""), msgExecute("", 0), msgSync),
			wireSend(msgCloseStatement("wire_double"), msgSync),
			wireSend(msgBind("", "wire_double", "1"), msgExecute("", 0), msgSync),
		},
	},
	{
		name:  "PREPARE and EXECUTE in SQL are reused across queries",
		shows: "CommandComplete PREPARE",
		steps: []wireStep{
			wireSend(msgQuery("PREPARE wire_sql_stmt(int) AS SELECT $1 + 1")),
			wireSend(msgQuery("EXECUTE wire_sql_stmt(1)")),
			wireSend(msgQuery("EXECUTE wire_sql_stmt(2); DEALLOCATE wire_sql_stmt")),
		},
	},
	{
		name:  "SET LOCAL lasts until the end of the transaction",
		shows: "DataRow [\"5s\"]",
		steps: []wireStep{
			wireSend(msgQuery("BEGIN; SET LOCAL statement_timeout = '5s'; SHOW statement_timeout")),
			wireSend(msgQuery("COMMIT; SHOW statement_timeout")),
		},
	},
	{
		name:  "a FunctionCall gets a FunctionCallResponse",
		shows: "FunctionCallResponse \"\\x00\\x00\\x00\\x05\"",
		steps: []wireStep{
			wireSend(&pgproto3.FunctionCall{Function: int4plOID, ArgFormatCodes: []uint16{1},
				Arguments: [][]byte{{0, 0, 0, 2}, {0, 0, 0, 3}}, ResultFormatCode: 1}),
		},
	},
	{
		name:  "large messages pass both ways",
		shows: "DataRow [\"100000\"]",
		steps: []wireStep{
			wireSend(msgQuery("SELECT length('" + strings.Repeat("x", 100000) + "')")),
			wireSend(msgQuery("SELECT g, repeat('y', 300) FROM generate_series(1, 300) g")),
		},
	},
	{
		// More than kproxy writes to a server connection before it starts
		// reading the answers (maxPendingRelayBytes), with answers bigger
		// still.
		name:  "a pipelined batch of 200 KB, with 1.5 MB of answers, in one write",
		shows: "DataRow [\"49\" \"30000\"",
		steps: []wireStep{wireSend(bigBatch(50)...)},
	},
	{
		name:  "LISTEN and NOTIFY to oneself delivers the notification",
		shows: "NotificationResponse wire_channel \"hello\"",
		steps: []wireStep{
			wireSend(msgQuery("LISTEN wire_channel; NOTIFY wire_channel, 'hello'")),
			wireSend(msgQuery("UNLISTEN *")),
		},
	},
	{
		name:  "a query is answered before the next message has fully arrived",
		shows: "DataRow [\"1\"]",
		steps: []wireStep{
			{send: []pgproto3.FrontendMessage{msgQuery("SELECT 1")}, raw: []byte{'Q', 0, 0}},
			{raw: []byte{0, 13, 'S', 'E', 'L', 'E', 'C', 'T', ' ', '2', 0}},
		},
	},
	{
		name:  "answers to messages sent before the client half-closes its connection still arrive",
		shows: "CommandComplete SELECT 1",
		steps: []wireStep{{send: []pgproto3.FrontendMessage{msgQuery("SELECT 1"),
			msgParse("", "SELECT 2"), msgBind("", ""), msgExecute("", 0), msgSync}, closeWrite: true, until: "connection closed"}},
	},
	{
		name:     "a newer protocol minor version and unknown protocol options are negotiated down",
		shows:    "NegotiateProtocolVersion 196608 [_pq_.wire_option]",
		protocol: pgproto3.ProtocolVersion30 + 1,
		startup:  map[string]string{"_pq_.wire_option": "on"},
		steps:    []wireStep{wireSend(msgQuery("SELECT 1"))},
	},
	{
		name:    "startup parameters and options apply to the session",
		shows:   "DataRow [\"7s\" \"wire_app\" \"ISO, YMD\"]",
		startup: map[string]string{"application_name": "wire_app", "DateStyle": "ISO, YMD", "options": "-c statement_timeout=7s"},
		steps: []wireStep{
			wireSend(msgQuery("SELECT current_setting('statement_timeout'), current_setting('application_name'), current_setting('DateStyle')")),
			wireSend(msgQuery("BEGIN; SELECT current_setting('statement_timeout'); COMMIT")),
		},
	},
	{
		name:    "an unknown database is a fatal error at login",
		shows:   "ErrorResponse FATAL 3D000",
		startup: map[string]string{"database": "wire_no_such_database"},
	},
	{
		name:    "an unknown role is a fatal error at login",
		shows:   "ErrorResponse FATAL 28000",
		startup: map[string]string{"user": "wire_no_such_role"},
	},
	{
		name:  "an unknown message type is a fatal protocol violation",
		shows: "ErrorResponse FATAL 08P01",
		steps: []wireStep{{raw: []byte{'y', 0, 0, 0, 4}}},
	},
}

func TestWireScriptsGetTheSameAnswersThroughKproxyAsFromPostgres(t *testing.T) {
	txn := startProxy(t, transactionMode(2))
	ses := startProxy(t, sessionMode(2))
	for _, sc := range wireScripts {
		t.Run(sc.name, func(t *testing.T) {
			want := sc.run(t, pgtest.Get().PrimaryAddr, nil)
			require.True(t, hasLineStarting(want, sc.shows), "Postgres' own answer has no line %q:\n%s", sc.shows, strings.Join(want, "\n"))
			if sc.proxyBug != "" {
				t.Skip("kproxy bug: " + sc.proxyBug)
			}
			assert.Equal(t, want, sc.run(t, txn.Addr, txn), "through kproxy in transaction mode")
			assert.Equal(t, want, sc.run(t, ses.Addr, nil), "through kproxy in session mode")
		})
	}
}

// run plays the script on a new connection to addr and returns the answer,
// one normalised message a line, with a header line for the login and each
// step. When txn is the transaction-mode kproxy at addr, run also checks
// that the client ends the script without a server connection.
func (sc wireScript) run(t *testing.T, addr string, txn *testProxy) []string {
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer nc.Close()
	require.NoError(t, nc.SetDeadline(time.Now().Add(10*time.Second)))
	fe := pgproto3.NewFrontend(nc, nc)
	startup := &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "postgres", "database": "postgres"}}
	if sc.protocol != 0 {
		startup.ProtocolVersion = sc.protocol
	}
	maps.Copy(startup.Parameters, sc.startup)
	steps := append([]wireStep{{send: []pgproto3.FrontendMessage{startup}, until: "ReadyForQuery"}}, sc.steps...)

	var got []string
	closed := false
	for i, st := range steps {
		got = append(got, fmt.Sprintf("-- step %d", i))
		var answer []string
		answer, closed = st.play(t, nc, fe)
		got = append(got, answer...)
		if closed {
			break
		}
	}
	if txn != nil && !closed {
		st := txn.Server.Stats()
		pinned := 0
		for _, n := range st.PinnedClients {
			pinned += n
		}
		if sc.detachBug == "" {
			assert.Equal(t, pinned, st.ClientsAttached,
				"in transaction mode an idle client that is not pinned holds no server connection")
		} else {
			assert.Equal(t, pinned+1, st.ClientsAttached, "fixed? delete detachBug: %s", sc.detachBug)
		}
	}
	fe.Send(&pgproto3.Terminate{})
	_ = fe.Flush()
	if txn != nil {
		// Let the session end, so the next script starts with no clients.
		require.Eventually(t, func() bool { return txn.Server.Stats().Clients == 0 }, 5*time.Second, 5*time.Millisecond)
	}
	return got
}

// play sends the step's messages on nc and returns the normalised answer,
// and whether the server closed the connection.
func (st wireStep) play(t *testing.T, nc net.Conn, fe *pgproto3.Frontend) (answer []string, closed bool) {
	t.Helper()
	for _, m := range st.send {
		fe.Send(m)
	}
	require.NoError(t, fe.Flush())
	if st.raw != nil {
		_, err := nc.Write(st.raw)
		require.NoError(t, err)
	}
	if st.closeWrite {
		require.NoError(t, nc.(*net.TCPConn).CloseWrite())
	}
	rfqs := 0
	for _, m := range st.send {
		switch m.(type) {
		case *pgproto3.Query, *pgproto3.Sync, *pgproto3.FunctionCall:
			rfqs++
		}
	}
	rfqs = max(rfqs, 1)
	for {
		msg, err := fe.Receive()
		if isConnClosed(err) {
			return append(answer, "connection closed"), true
		}
		require.NoError(t, err, "answer so far:\n%s", strings.Join(answer, "\n"))
		line, keep := normalizeBackend(msg)
		if !keep {
			continue
		}
		answer = append(answer, line)
		if st.until != "" && strings.HasPrefix(line, st.until) {
			return answer, false
		}
		if st.until == "" && strings.HasPrefix(line, "ReadyForQuery") {
			if rfqs--; rfqs == 0 {
				return answer, false
			}
		}
	}
}

func TestAnUnnamedStatementIsNeverRunForAnotherClientInTransactionMode(t *testing.T) {
	// pgx's QueryExecModeDescribeExec does Parse+Describe+Sync, then
	// Bind+Execute+Sync: the unnamed statement must follow the client.
	p := startProxy(t, transactionMode(2))
	ncA, a := rawStartup(t, p)
	ncB, b := rawStartup(t, p)
	wireSend(msgParse("", "SELECT 'for A'"), msgDescribeStatement(""), msgSync).play(t, ncA, a)
	wireSend(msgParse("", "SELECT 'for B'"), msgDescribeStatement(""), msgSync).play(t, ncB, b)
	answer, _ := wireSend(msgBind("", ""), msgExecute("", 0), msgSync).play(t, ncA, a)
	assert.NotContains(t, answer, `DataRow ["for B"]`)
}

func hasLineStarting(lines []string, prefix string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}

func isConnClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

// normalize turns a backend message into a line without what varies between
// connections (process IDs, parameter values, table OIDs, error details
// that name source files). It reports false for messages to leave out.
func normalizeBackend(msg pgproto3.BackendMessage) (string, bool) {
	switch m := msg.(type) {
	case *pgproto3.ParameterStatus, *pgproto3.BackendKeyData:
		return "", false
	case *pgproto3.ErrorResponse:
		return fmt.Sprintf("ErrorResponse %s %s %q position=%d", m.Severity, m.Code, m.Message, m.Position), true
	case *pgproto3.NoticeResponse:
		return fmt.Sprintf("NoticeResponse %s %s %q", m.Severity, m.Code, m.Message), true
	case *pgproto3.ReadyForQuery:
		return fmt.Sprintf("ReadyForQuery %c", m.TxStatus), true
	case *pgproto3.CommandComplete:
		return fmt.Sprintf("CommandComplete %s", m.CommandTag), true
	case *pgproto3.RowDescription:
		fields := make([]string, len(m.Fields))
		for i, f := range m.Fields {
			fields[i] = fmt.Sprintf("%s:%d/%d", f.Name, f.DataTypeOID, f.Format)
		}
		return fmt.Sprintf("RowDescription %v", fields), true
	case *pgproto3.DataRow:
		values := make([]string, len(m.Values))
		for i, v := range m.Values {
			values[i] = "NULL"
			if v != nil {
				values[i] = fmt.Sprintf("%q", v)
			}
		}
		return fmt.Sprintf("DataRow [%s]", strings.Join(values, " ")), true
	case *pgproto3.ParameterDescription:
		return fmt.Sprintf("ParameterDescription %v", m.ParameterOIDs), true
	case *pgproto3.CopyInResponse:
		return fmt.Sprintf("CopyInResponse %d %v", m.OverallFormat, m.ColumnFormatCodes), true
	case *pgproto3.CopyOutResponse:
		return fmt.Sprintf("CopyOutResponse %d %v", m.OverallFormat, m.ColumnFormatCodes), true
	case *pgproto3.CopyData:
		return fmt.Sprintf("CopyData %q", m.Data), true
	case *pgproto3.FunctionCallResponse:
		return fmt.Sprintf("FunctionCallResponse %q", m.Result), true
	case *pgproto3.NegotiateProtocolVersion:
		return fmt.Sprintf("NegotiateProtocolVersion %d %v", m.NewestMinorProtocol, m.UnrecognizedOptions), true
	case *pgproto3.NotificationResponse:
		return fmt.Sprintf("NotificationResponse %s %q", m.Channel, m.Payload), true
	default: // messages without content, such as ParseComplete and PortalSuspended
		return strings.TrimPrefix(fmt.Sprintf("%T", msg), "*pgproto3."), true
	}
}

// A Bind into a portal that is still open fails with 42P03, and one whose
// parameter values do not decode with their error, before Postgres looks
// at the statement; kproxy, which prepares an evicted statement again and
// checks its shape first, must give the same errors after the statement's
// table changed, and 0A000 only after them.
func TestBindChecksComeBeforeTheSchemaCheckOfAStatementPreparedAgain(t *testing.T) {
	// At most 2 statements: the Parses in the transaction evict s and s2.
	runOnSmallPool(t, 2, wireScript{steps: []wireStep{
		wireSend(msgQuery("DROP TABLE IF EXISTS wire_portal_t; CREATE TABLE wire_portal_t (a int); INSERT INTO wire_portal_t VALUES (1), (2)")),
		wireSend(msgParse("s", "SELECT * FROM wire_portal_t"), msgParse("s2", "SELECT * FROM wire_portal_t WHERE a = $1"), msgSync),
		wireSend(msgQuery("ALTER TABLE wire_portal_t ADD COLUMN b int")),
		wireSend(msgQuery("BEGIN")),
		wireSend(msgParse("e1", "SELECT 1"), msgBind("q0", "e1"), msgExecute("q0", 0),
			msgParse("e2", "SELECT 2"), msgBind("", "e2"), msgExecute("", 0), msgSync),
		wireSend(msgBind("q0", "s"), msgSync),
		wireSend(msgQuery("ROLLBACK")),
		wireSend(msgQuery("BEGIN")),
		wireSend(msgBind("q1", "s2", "not a number"), msgSync),
		wireSend(msgQuery("ROLLBACK")),
		wireSend(msgBind("", "s2", "1"), msgExecute("", 0), msgSync),
		wireSend(msgQuery("BEGIN")),
		wireSend(msgBind("q2", "s"), msgSync),
		// The failed Bind created its portal, which has no query.
		wireSend(msgDescribePortal("q2"), msgSync),
		wireSend(msgQuery("ROLLBACK")),
		wireSend(msgQuery("BEGIN")),
		wireSend(msgBind("", "s"), msgSync),
		wireSend(msgDescribePortal(""), msgSync),
		wireSend(msgQuery("ROLLBACK; DROP TABLE wire_portal_t")),
	}}, "ErrorResponse ERROR 42P03", "ErrorResponse ERROR 22P02", "ErrorResponse ERROR 0A000")
}

// Postgres decodes a Bind's values, and creates its portal, before it
// plans the statement and finds its table gone. kproxy, which prepares an
// evicted statement again, must give those errors first too, not its
// Parse's 42P01.
func TestBindChecksComeBeforeTheParseOfAStatementWhoseTableWent(t *testing.T) {
	binary := func(value ...byte) *pgproto3.Bind {
		return &pgproto3.Bind{PreparedStatement: "s", ParameterFormatCodes: []int16{1}, Parameters: [][]byte{value}}
	}
	// At most 1 statement: the Parse of c evicts s's server statement.
	runOnSmallPool(t, 1, wireScript{steps: []wireStep{
		wireSend(msgQuery("DROP TABLE IF EXISTS wire_went_t; CREATE TABLE wire_went_t (a int)")),
		wireSend(msgParse("s", "SELECT * FROM wire_went_t WHERE a = $1"), msgDescribeStatement("s"), msgSync),
		wireSend(msgParse("c", "SELECT 1"), msgSync),
		wireSend(msgQuery("DROP TABLE wire_went_t")),
		wireSend(msgBind("", "s", "p5"), msgExecute("", 0), msgSync),
		wireSend(msgBind("", "s", "99999999999"), msgExecute("", 0), msgSync),
		wireSend(binary(0, 0, 0, 0, 0, 0, 0, 1), msgExecute("", 0), msgSync),
		wireSend(binary(0, 1), msgExecute("", 0), msgSync),
		wireSend(msgQuery("BEGIN")),
		wireSend(msgBind("q0", "c"), msgSync),
		wireSend(msgBind("q0", "s", "1"), msgSync),
		wireSend(msgQuery("ROLLBACK")),
		wireSend(msgQuery("BEGIN")),
		wireSend(msgBind("q1", "s", "1"), msgSync),
		// The failed Bind created its portal, which has no query.
		wireSend(msgDescribePortal("q1"), msgSync),
		wireSend(msgQuery("ROLLBACK")),
		wireSend(msgBind("q2", "s", "1"), msgExecute("q2", 0), msgSync),
		wireSend(msgBind("", "s", "1"), msgExecute("", 0), msgSync),
	}}, "ErrorResponse ERROR 22P02", "ErrorResponse ERROR 22003", "ErrorResponse ERROR 22P03", "ErrorResponse ERROR 08P01",
		"ErrorResponse ERROR 42P03", "ErrorResponse ERROR 42P01", "NoData")
}

// Postgres describes a statement that returns no rows from what it stored
// at its Parse, even after its table is gone. kproxy answers a Parse of a
// text the pool knows without a server; a Describe of that statement must
// not then ask a server, which no longer finds the table.
func TestDescribeOfAStatementAcknowledgedWithoutAServerAfterItsTableWent(t *testing.T) {
	const update = "UPDATE wire_gone_t SET a = $1"
	// At most 1 statement: the Parse of c evicts a's server statement.
	runOnSmallPool(t, 1, wireScript{steps: []wireStep{
		wireSend(msgQuery("DROP TABLE IF EXISTS wire_gone_t; CREATE TABLE wire_gone_t (a int)")),
		wireSend(msgParse("a", update), msgDescribeStatement("a"), msgSync),
		wireSend(msgParse("b", update), msgSync),
		wireSend(msgParse("c", "SELECT 1"), msgSync),
		wireSend(msgQuery("DROP TABLE wire_gone_t")),
		wireSend(msgDescribeStatement("b"), msgSync),
		wireSend(msgBind("", "b", "1"), msgExecute("", 0), msgSync),
	}}, "NoData", "ErrorResponse ERROR 42P01")
}

// Postgres analyses a prepared statement again when the search_path
// changed since its Parse, and refuses it (0A000) when it now means a table
// of other columns. kproxy checks a statement it acknowledged itself, with
// the shape the pool knew, on the server: under the new search_path that
// check must fail the same way, not take the new shape as the statement's.
func TestAStatementAcknowledgedWithoutAServerFailsUnderAnotherSearchPath(t *testing.T) {
	const sel = "SELECT * FROM wire_path_t"
	// At most 1 statement: the Parse of c evicts a's server statement.
	runOnSmallPool(t, 1, wireScript{steps: []wireStep{
		wireSend(msgQuery("DROP SCHEMA IF EXISTS wire_path_s CASCADE; DROP TABLE IF EXISTS wire_path_t; " +
			"CREATE SCHEMA wire_path_s; CREATE TABLE wire_path_s.wire_path_t (x text, y int); CREATE TABLE wire_path_t (a int)")),
		wireSend(msgParse("a", sel), msgDescribeStatement("a"), msgSync),
		wireSend(msgParse("b", sel), msgSync),
		wireSend(msgParse("c", "SELECT 1"), msgSync),
		wireSend(msgQuery("SET search_path = wire_path_s, public")),
		wireSend(msgBind("", "b"), msgExecute("", 0), msgSync),
		wireSend(msgQuery("RESET search_path; DROP SCHEMA wire_path_s CASCADE; DROP TABLE wire_path_t")),
	}}, "ErrorResponse ERROR 0A000")
}

// runOnSmallPool plays sc directly and through a transaction-mode kproxy
// with one server connection that keeps at most limit statements, after
// checking that Postgres' own answer has a line starting with each of
// shows, and requires the two answers to be the same.
func runOnSmallPool(t *testing.T, limit int, sc wireScript, shows ...string) {
	t.Helper()
	txn := startProxy(t, func(c *config.Config) {
		transactionMode(1)(c)
		c.Pool.MaxPreparedStatements = limit
	})
	want := sc.run(t, pgtest.Get().PrimaryAddr, nil)
	for _, line := range shows {
		require.True(t, hasLineStarting(want, line), "Postgres' own answer has no %s:\n%s", line, strings.Join(want, "\n"))
	}
	assert.Equal(t, want, sc.run(t, txn.Addr, txn))
}
