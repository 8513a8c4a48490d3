// Package examples holds what kproxy's example programs share: the shop
// database they run on (schema.sql and seed.sql, embedded) and the flags
// that open a library-mode pool.DB on it from a kproxy configuration,
// with no proxy process.
//
// The programs themselves live in the subdirectories: orders (parallel
// order processing with one transaction per order) and analytics (reads
// routed to replicas, with cache-aside).
package examples

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/pool"
)

//go:embed schema.sql
var schemaSQL string

//go:embed seed.sql
var seedSQL string

// SchemaSQL returns the text of schema.sql.
func SchemaSQL() string { return schemaSQL }

// SeedSQL returns the text of seed.sql.
func SeedSQL() string { return seedSQL }

// CreateSchema creates the shop's tables that do not exist yet.
func CreateSchema(ctx context.Context, db *pool.DB) error {
	if _, err := db.Exec(ctx, schemaSQL); err != nil {
		return fmt.Errorf("create the shop schema: %w", err)
	}
	return nil
}

// Seed replaces the contents of the shop's tables with the example data
// of seed.sql.
func Seed(ctx context.Context, db *pool.DB) error {
	if _, err := db.Exec(ctx, seedSQL); err != nil {
		return fmt.Errorf("seed the shop: %w", err)
	}
	return nil
}

// Setup creates the schema, seeds it and waits until the replicas have
// replayed the seed (see WaitForReplicas), so that the reads of the next
// run, which go to replicas, see it.
func Setup(ctx context.Context, db *pool.DB) error {
	if err := CreateSchema(ctx, db); err != nil {
		return err
	}
	if err := Seed(ctx, db); err != nil {
		return err
	}
	return WaitForReplicas(ctx, db)
}

// WaitForReplicas returns once every healthy replica of db's cluster has
// replayed the primary's WAL as far as it went when WaitForReplicas was
// called, as the cluster's health checks see it. It returns ctx's error
// when ctx ends first.
func WaitForReplicas(ctx context.Context, db *pool.DB) error {
	res, err := db.Query(ctx, "/* kproxy:primary */ SELECT pg_current_wal_insert_lsn()::text")
	if err != nil {
		return fmt.Errorf("read the primary's WAL position: %w", err)
	}
	if len(res.Rows) != 1 || len(res.Rows[0]) != 1 {
		return errors.New("read the primary's WAL position: no answer")
	}
	s, _ := res.Rows[0][0].(string)
	target, err := pool.ParseLSN(s)
	if err != nil {
		return err
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		behind := false
		for _, r := range db.Cluster().RoutingStats().Replicas {
			if l, err := pool.ParseLSN(r.ReplayLSN); r.Healthy && (err != nil || l < target) {
				behind = true
			}
		}
		if !behind {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the replicas to replay %s: %w", target, ctx.Err())
		case <-tick.C:
		}
	}
}

// Flags are the command-line flags every example takes: where the
// configuration comes from, whom to connect as, and whether to set the
// database up first.
type Flags struct {
	// ConfigPath is a kproxy YAML configuration file; "" for the defaults.
	// KPROXY_* environment variables apply on top of it, as for kproxy.
	ConfigPath string
	// Primary and Replicas (comma-separated host:port) override the
	// configuration's backends when not empty.
	Primary, Replicas string
	// SSLMode overrides backend_tls.sslmode when not empty.
	SSLMode string
	// MaxConnections overrides pool.max_connections when positive.
	MaxConnections int
	// Database and User are what the examples connect as.
	Database, User string
	// Setup creates and seeds the shop's tables before the example runs.
	Setup bool
	// Verbose logs at debug level instead of warn.
	Verbose bool
}

// Register defines the flags on fs with their defaults.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.ConfigPath, "config", "", "kproxy YAML configuration `file` (KPROXY_* environment variables apply on top)")
	fs.StringVar(&f.Primary, "primary", "", "primary `host:port`, overriding the configuration")
	fs.StringVar(&f.Replicas, "replicas", "", "comma-separated replica `host:port` list, overriding the configuration")
	fs.StringVar(&f.SSLMode, "sslmode", "", "backend sslmode (disable, prefer, require, …), overriding the configuration")
	fs.IntVar(&f.MaxConnections, "max-connections", 0, "server connections per backend, overriding pool.max_connections")
	fs.StringVar(&f.Database, "database", "kproxy_examples", "database to run in")
	fs.StringVar(&f.User, "user", "postgres", "user to run as")
	fs.BoolVar(&f.Setup, "setup", false, "create the shop tables and replace their rows with the seed data first")
	fs.BoolVar(&f.Verbose, "v", false, "log at debug level")
}

// Config returns the kproxy configuration the flags describe, validated.
func (f *Flags) Config() (*config.Config, error) {
	cfg, err := config.Read(f.ConfigPath, os.Environ())
	var flagErrs []error
	if f.Primary != "" {
		b, perr := config.ParseBackend(f.Primary)
		flagErrs = append(flagErrs, perr)
		cfg.Primary = b
	}
	if f.Replicas != "" {
		cfg.Replicas = nil
		for addr := range strings.SplitSeq(f.Replicas, ",") {
			if addr = strings.TrimSpace(addr); addr == "" {
				continue
			}
			b, perr := config.ParseBackend(addr)
			flagErrs = append(flagErrs, perr)
			cfg.Replicas = append(cfg.Replicas, b)
		}
	}
	if f.SSLMode != "" {
		cfg.BackendTLS.SSLMode = f.SSLMode
	}
	if f.MaxConnections > 0 {
		cfg.Pool.MaxConnections = f.MaxConnections
	}
	if err := errors.Join(flagErrs...); err != nil {
		return nil, err
	}
	if err := config.Join(err, cfg.Validate()); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// Logger returns a JSON logger to standard error at warn level, or debug
// level with Verbose.
func (f *Flags) Logger() (*zap.Logger, error) {
	c := zap.NewProductionConfig()
	c.Level = zap.NewAtomicLevelAt(zapcore.WarnLevel)
	if f.Verbose {
		c.Level = zap.NewAtomicLevelAt(zapcore.DebugLevel)
	}
	return c.Build()
}

// Open opens a library-mode DB as the flags say, and sets the shop up
// when Setup is set. The caller closes the DB.
func (f *Flags) Open(ctx context.Context, log *zap.Logger) (*pool.DB, error) {
	cfg, err := f.Config()
	if err != nil {
		return nil, err
	}
	db, err := pool.OpenDB(ctx, cfg, log, f.Database, f.User)
	if err != nil {
		return nil, err
	}
	if f.Setup {
		if err := Setup(ctx, db); err != nil {
			db.Close()
			return nil, err
		}
	}
	return db, nil
}

// PoolReport is what the examples print about one of the cluster's pools,
// after the pool statistics of Kailash's order-processing example.
type PoolReport struct {
	Backend          string                `json:"backend"`
	Database         string                `json:"database"`
	Connections      pool.ConnectionCounts `json:"connections"`
	Queries          pool.QueryCounts      `json:"queries"`
	QueriesPerConn   float64               `json:"queries_per_connection"`
	AvgAcquisitionMs float64               `json:"avg_acquisition_time_ms"`
	PreparedHits     int64                 `json:"prepared_hits"`
	PreparedMisses   int64                 `json:"prepared_misses"`
}

// PoolReports returns a report of each of c's pools.
func PoolReports(c *pool.Cluster) []PoolReport {
	stats := c.Stats()
	out := make([]PoolReport, 0, len(stats))
	for _, s := range stats {
		out = append(out, PoolReport{
			Backend: s.Backend, Database: s.Database, Connections: s.Connections, Queries: s.Queries,
			QueriesPerConn: s.Performance.QueriesPerConn, AvgAcquisitionMs: s.Performance.AvgAcquisitionMs,
			PreparedHits: s.PreparedHits, PreparedMisses: s.PreparedMisses,
		})
	}
	return out
}
