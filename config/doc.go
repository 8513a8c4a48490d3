// Package config holds kproxy's settings: the structs operators fill in, their
// defaults, loading from a YAML file and KPROXY_* environment variables, and
// strict validation that reports every problem at once.
//
// # Precedence
//
// Lowest first:
//
//  1. built-in defaults ([Default], [DefaultPool]);
//  2. the YAML file given to [Load];
//  3. KPROXY_* environment variables given to [Load];
//  4. command-line flags, which cmd/kproxy applies to the exported fields of
//     the Config that Load returned before calling [Config.Validate] again.
//
// # The file
//
// Keys are the yaml tags of [Config] and the structs it holds. An unknown key
// anywhere is an error naming its full path, such as
// "databases.app.pool.max_conections: unknown key"; so are duplicate keys and
// values of the wrong type. Durations use Go syntax ("5s", "1m30s"), ports
// are numbers, and primary and each replicas item may be written either as a
// {host, port} mapping or as a "host:port" string. A key with a null value
// (written "key:" or "key: ~") keeps the value below it; write "" to clear a
// string, for example admin_listen: "" to disable the admin listener.
// Anchors, aliases and "<<" merge keys work as in YAML.
//
// # The environment
//
// Every scalar field outside databases and users can be set as KPROXY_ plus
// its yaml path upper-cased with "." replaced by "_": KPROXY_LISTEN,
// KPROXY_POOL_MAX_CONNECTIONS, KPROXY_POOL_ACQUIRE_TIMEOUT,
// KPROXY_BACKEND_TLS_SSLMODE, KPROXY_PRIMARY_HOST and so on. Besides those:
//
//   - KPROXY_PRIMARY="host:port" sets primary;
//   - KPROXY_REPLICAS="host:port,host:port" replaces replicas (empty: none);
//   - KPROXY_POOL_MODE names both pool_mode and pool.mode; it sets pool_mode
//     and clears pool.mode, so the environment wins over either in the file.
//
// Databases, users, workflows and workflow_resilience are file-only;
// workflow_cache's settings have variables (KPROXY_WORKFLOW_CACHE_REDIS_ADDR
// and so on). An unknown KPROXY_* variable is an error, except those
// starting with KPROXY_TEST_, which belong to the test harness.
//
// # Workflows
//
// The workflows section declares hosted workflows ([Workflow]): nodes of
// kinds sql, http, cache, map, switch and merge, wired by references
// ("params.status", "fetch.rows.0.id"). Validate checks each node's keys
// against its kind, the references' form, and the names of breakers, rate
// limits and stores, with paths such as "workflows.orders.nodes[2].url";
// it also fills in the defaults (database and user postgres, sql mode
// query, merge mode first, store local). What needs the whole graph —
// references to nodes that do not exist, loops not declared under cycles,
// switch branches — is checked when package workflow builds the workflows.
// [ReadWorkflow] reads one workflow from a file of its own.
//
// # Errors
//
// Load and Validate return a [*ValidationError] listing every [Problem], each
// with the key path (or the variable name) it is about. Load returns other
// errors only when the file cannot be read or is not YAML at all.
//
// # Concurrency
//
// A Config is a plain value. Its read-only methods are safe for concurrent
// use; Validate fills in default ports and must not run concurrently with
// readers. The package does not watch files: reloading is calling Load again.
package config
