package rig

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// Cluster is the Postgres that benchmarks run against: either a private
// one that [StartCluster] created, or an existing one that [UseCluster]
// names.
type Cluster struct {
	// PrimaryPort is the primary's port on 127.0.0.1.
	PrimaryPort int
	// Private reports whether Stop stops the cluster and removes its files.
	Private bool

	root string // repository root, for scripts/pgcluster
	dir  string // the private cluster's directory
}

// UseCluster names an existing primary on 127.0.0.1:port that trusts the
// user "postgres". Stop leaves it running.
func UseCluster(port int) *Cluster {
	return &Cluster{PrimaryPort: port}
}

// StartCluster creates and starts a private cluster (primary, streaming
// replica and Redis) with scripts/pgcluster in a new temporary directory,
// on free ports. It returns once the primary accepts connections. Stop
// stops it and removes the directory.
func StartCluster(ctx context.Context, root string) (*Cluster, error) {
	dir, err := os.MkdirTemp("", "kproxy-bench-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Private: true, root: root, dir: dir}
	var ports [3]int
	for i := range ports {
		for {
			p, err := FreePort()
			if err != nil {
				c.Stop()
				return nil, err
			}
			if i == 0 || (p != ports[0] && p != ports[1]) {
				ports[i] = p
				break
			}
		}
	}
	c.PrimaryPort = ports[0]
	args := []string{"start", dir}
	for _, p := range ports {
		args = append(args, strconv.Itoa(p))
	}
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts/pgcluster"), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		c.Stop()
		return nil, fmt.Errorf("scripts/pgcluster start: %w\n%s", err, out.Bytes())
	}
	return c, nil
}

// Addr is the primary's host:port.
func (c *Cluster) Addr() string {
	return "127.0.0.1:" + strconv.Itoa(c.PrimaryPort)
}

// Stop stops a private cluster and removes its directory; it does nothing
// for a cluster from UseCluster. It is safe to call more than once.
func (c *Cluster) Stop() error {
	if !c.Private || c.dir == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(c.root, "scripts/pgcluster"), "stop", c.dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("scripts/pgcluster stop %s: %w\n%s", c.dir, err, out)
	}
	err = os.RemoveAll(c.dir)
	c.dir = ""
	return err
}
