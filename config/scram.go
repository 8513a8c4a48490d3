package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ErrMalformedSCRAMSecret is wrapped by every error ParseSCRAMSecret returns.
var ErrMalformedSCRAMSecret = errors.New("malformed SCRAM secret")

// scramKeyLen is the length of SHA-256 StoredKey and ServerKey.
const scramKeyLen = 32

// SCRAMSecret is a parsed SCRAM-SHA-256 secret as Postgres stores it in
// pg_authid.rolpassword. It lets the SCRAM server check a client's proof
// without knowing the password.
type SCRAMSecret struct {
	// Iterations is the PBKDF2 iteration count, at least 1.
	Iterations int
	// Salt is the PBKDF2 salt, not empty.
	Salt []byte
	// StoredKey is H(HMAC(SaltedPassword, "Client Key")), 32 bytes.
	StoredKey []byte
	// ServerKey is HMAC(SaltedPassword, "Server Key"), 32 bytes.
	ServerKey []byte
}

// ParseSCRAMSecret parses
// "SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>",
// with standard padded base64 as Postgres writes it. Errors wrap
// ErrMalformedSCRAMSecret and never quote the secret.
func ParseSCRAMSecret(s string) (SCRAMSecret, error) {
	bad := func(format string, args ...any) (SCRAMSecret, error) {
		return SCRAMSecret{}, fmt.Errorf("%w: %s", ErrMalformedSCRAMSecret, fmt.Sprintf(format, args...))
	}
	rest, ok := strings.CutPrefix(s, "SCRAM-SHA-256$")
	if !ok {
		return bad(`must start with "SCRAM-SHA-256$"`)
	}
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return bad("want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")
	}
	iterText, saltText, ok := strings.Cut(params, ":")
	if !ok {
		return bad("want <iterations>:<salt> after SCRAM-SHA-256$")
	}
	iter, err := strconv.ParseUint(iterText, 10, 31)
	if err != nil || iter < 1 || iter > math.MaxInt32 {
		return bad("iterations must be a number from 1 to %d", math.MaxInt32)
	}
	salt, err := base64.StdEncoding.Strict().DecodeString(saltText)
	if err != nil || len(salt) == 0 {
		return bad("salt must be non-empty base64")
	}
	storedText, serverText, ok := strings.Cut(keys, ":")
	if !ok {
		return bad("want <StoredKey>:<ServerKey> after the salt")
	}
	stored, err := base64.StdEncoding.Strict().DecodeString(storedText)
	if err != nil || len(stored) != scramKeyLen {
		return bad("StoredKey must be %d bytes of base64", scramKeyLen)
	}
	server, err := base64.StdEncoding.Strict().DecodeString(serverText)
	if err != nil || len(server) != scramKeyLen {
		return bad("ServerKey must be %d bytes of base64", scramKeyLen)
	}
	return SCRAMSecret{Iterations: int(iter), Salt: salt, StoredKey: stored, ServerKey: server}, nil
}
