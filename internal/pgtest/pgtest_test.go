package pgtest_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

func TestClusterServersHaveTheirRoles(t *testing.T) {
	c := pgtest.Get()
	for _, tt := range []struct {
		name         string
		conn         func(testing.TB) *pgx.Conn
		wantRecovery bool
	}{
		{"primary is not in recovery", c.PrimaryConn, false},
		{"replica is in recovery", c.ReplicaConn, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var inRecovery bool
			require.NoError(t, tt.conn(t).QueryRow(t.Context(), "SELECT pg_is_in_recovery()").Scan(&inRecovery))
			require.Equal(t, tt.wantRecovery, inRecovery)
		})
	}
}

func TestClusterReplicaSeesRowsCommittedOnThePrimary(t *testing.T) {
	c := pgtest.Get()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	table := fmt.Sprintf("pgtest_%d", time.Now().UnixNano())

	primary := c.PrimaryConn(t)
	_, err := primary.Exec(ctx, "CREATE TABLE "+table+" (v text)")
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = primary.Exec(context.Background(), "DROP TABLE "+table) })
	_, err = primary.Exec(ctx, "INSERT INTO "+table+" VALUES ('written on primary')")
	require.NoError(t, err)

	require.NoError(t, c.WaitReplicaCaughtUp(ctx))
	var v string
	require.NoError(t, c.ReplicaConn(t).QueryRow(ctx, "SELECT v FROM "+table).Scan(&v))
	require.Equal(t, "written on primary", v)
}

func TestClusterPasswordRolesLogInOnBothServers(t *testing.T) {
	c := pgtest.Get()
	for _, addr := range []struct{ name, addr string }{{"primary", c.PrimaryAddr}, {"replica", c.ReplicaAddr}} {
		for _, user := range []string{pgtest.ScramUser, pgtest.MD5User} {
			t.Run(user+" on "+addr.name, func(t *testing.T) {
				conn, err := pgx.Connect(t.Context(), c.DSN(addr.addr, "postgres", user))
				require.NoError(t, err)
				defer conn.Close(context.Background())
				var got string
				require.NoError(t, conn.QueryRow(t.Context(), "SELECT current_user").Scan(&got))
				require.Equal(t, user, got)
			})
		}
	}
}

func TestClusterPasswordRolesRejectAWrongPassword(t *testing.T) {
	c := pgtest.Get()
	for _, user := range []string{pgtest.ScramUser, pgtest.MD5User} {
		t.Run(user, func(t *testing.T) {
			conn, err := pgx.Connect(t.Context(), fmt.Sprintf(
				"host=127.0.0.1 port=%s user=%s password=wrong dbname=postgres sslmode=disable",
				port(t, c.PrimaryAddr), user))
			if err == nil {
				conn.Close(context.Background())
			}
			require.ErrorContains(t, err, "password authentication failed")
		})
	}
}

func TestClusterRedisAnswersPing(t *testing.T) {
	conn, err := net.DialTimeout("tcp", pgtest.Get().RedisAddr, 10*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = conn.Write([]byte("*1\r\n$4\r\nPING\r\n"))
	require.NoError(t, err)
	reply, err := bufio.NewReader(conn).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "+PONG\r\n", reply)
}

func TestDSNCarriesThePasswordOfPasswordRoles(t *testing.T) {
	c := pgtest.Get()
	for _, tt := range []struct{ user, want string }{
		{pgtest.Superuser, "postgres://postgres@127.0.0.1:5432/app?sslmode=disable"},
		{pgtest.ScramUser, "postgres://kproxy_scram:scram-pass@127.0.0.1:5432/app?sslmode=disable"},
		{pgtest.MD5User, "postgres://kproxy_md5:md5-pass@127.0.0.1:5432/app?sslmode=disable"},
	} {
		t.Run(tt.user, func(t *testing.T) {
			require.Equal(t, tt.want, c.DSN("127.0.0.1:5432", "app", tt.user))
		})
	}
}

func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	return p
}
