package rig

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"
)

// ConnString is the libpq connection string for user "postgres", database
// db at addr (host:port), without TLS.
func ConnString(addr, db string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable", host, port, User, db)
}

// Connect opens one client connection to db at addr.
func Connect(ctx context.Context, addr, db string) (*pgconn.PgConn, error) {
	return pgconn.Connect(ctx, ConnString(addr, db))
}

// Ping connects to db at addr, runs SELECT 1 and disconnects.
func Ping(ctx context.Context, addr, db string) error {
	c, err := Connect(ctx, addr, db)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	_, err = c.Exec(ctx, "SELECT 1").ReadAll()
	return err
}

// Exec runs each statement in its own simple-protocol query on db at addr,
// in order, over one connection, and stops at the first error.
func Exec(ctx context.Context, addr, db string, stmts ...string) error {
	c, err := Connect(ctx, addr, db)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	for _, s := range stmts {
		if _, err := c.Exec(ctx, s).ReadAll(); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

// QueryValue runs query on db at addr and returns the first column of its
// first row as text.
func QueryValue(ctx context.Context, addr, db, query string) (string, error) {
	c, err := Connect(ctx, addr, db)
	if err != nil {
		return "", err
	}
	defer c.Close(context.WithoutCancel(ctx))
	res, err := c.Exec(ctx, query).ReadAll()
	if err != nil {
		return "", err
	}
	if len(res) == 0 || len(res[0].Rows) == 0 || len(res[0].Rows[0]) == 0 {
		return "", fmt.Errorf("%s: no rows", query)
	}
	return string(res[0].Rows[0][0]), nil
}

// Warm makes a proxy open n server connections for db: n clients each open
// a transaction through addr and hold it until all n have one, then commit
// and disconnect. A pool that opens connections one at a time (as PgBouncer
// does) still ends up with n of them, so that a measured run starts with a
// warm pool whichever proxy it goes through.
func Warm(ctx context.Context, addr, db string, n int) error {
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		errs    []error
		inTx    sync.WaitGroup
		release = make(chan struct{})
	)
	inTx.Add(n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			held := false
			defer func() {
				if !held {
					inTx.Done()
				}
			}()
			c, err := Connect(ctx, addr, db)
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("client %d: %w", i, err))
				mu.Unlock()
				return
			}
			defer c.Close(context.WithoutCancel(ctx))
			if _, err := c.Exec(ctx, "BEGIN; SELECT 1").ReadAll(); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("client %d: %w", i, err))
				mu.Unlock()
				return
			}
			held = true
			inTx.Done()
			<-release
			if _, err := c.Exec(ctx, "COMMIT").ReadAll(); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("client %d: %w", i, err))
				mu.Unlock()
			}
		}()
	}
	inTx.Wait()
	close(release)
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("warming %d connections: %d failed, first: %w", n, len(errs), errs[0])
	}
	return nil
}

func splitHostPort(addr string) (host, port string, err error) {
	host, port, err = net.SplitHostPort(addr)
	if err != nil {
		return "", "", err
	}
	if _, err := strconv.Atoi(port); err != nil {
		return "", "", fmt.Errorf("%s: bad port", addr)
	}
	return host, port, nil
}
