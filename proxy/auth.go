package proxy

import (
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/kproxy/kproxy/config"
)

const scramMechanism = "SCRAM-SHA-256"

// scramIterations is used for credentials derived from plain passwords, as
// Postgres does by default.
const scramIterations = 4096

// authenticator checks client credentials. It caches SCRAM keys derived
// from plain passwords, as deriving them costs thousands of hash rounds. It
// is safe for concurrent use.
type authenticator struct {
	mu      sync.Mutex
	derived map[string]scram.StoredCredentials // guarded by mu; key: user NUL password
}

func newAuthenticator() *authenticator {
	return &authenticator{derived: map[string]scram.StoredCredentials{}}
}

// authFailed is what every failed check reports, whatever the cause, so a
// client cannot tell an unknown user from a wrong password.
func authFailed(user string) *Error {
	return fatalf(codeInvalidPassword, "password authentication failed for user %q", user)
}

// authenticate runs the configured method's exchange with the client and
// returns nil once the client has proved its identity. It does not send
// AuthenticationOk.
func (a *authenticator) authenticate(ss *session, cfg *config.Config) error {
	user := ss.user
	u, known := cfg.Users[user]
	switch cfg.EffectiveAuthMethod() {
	case config.AuthTrust:
		return nil
	case config.AuthMD5:
		return a.md5(ss, user, u.Password, known)
	default:
		creds, err := a.scramCredentials(user, u)
		if !known || err != nil {
			creds = scram.StoredCredentials{} // run the exchange; it will fail
		}
		return a.scram(ss, user, creds, known && err == nil)
	}
}

func (a *authenticator) md5(ss *session, user, password string, known bool) error {
	var salt [4]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return err
	}
	if err := ss.writeNow(&pgproto3.AuthenticationMD5Password{Salt: salt}); err != nil {
		return err
	}
	got, err := readPassword(ss)
	if err != nil {
		return err
	}
	inner := md5.Sum([]byte(password + user))
	outer := md5.Sum(append([]byte(hex.EncodeToString(inner[:])), salt[:]...))
	want := "md5" + hex.EncodeToString(outer[:])
	if !known || password == "" || subtle.ConstantTimeCompare(got, []byte(want)) != 1 {
		return authFailed(user)
	}
	return nil
}

func readPassword(ss *session) ([]byte, error) {
	t, msg, err := ss.rd.Next()
	if err != nil {
		return nil, err
	}
	if t != 'p' {
		return nil, fatalf(codeProtocolViolation, "expected password response, got message type %q", t)
	}
	body := msg[5:]
	if i := bytes.IndexByte(body, 0); i >= 0 {
		body = body[:i]
	}
	return body, nil
}

func (a *authenticator) scramCredentials(user string, u config.User) (scram.StoredCredentials, error) {
	if u.SCRAMSecret != "" {
		sec, err := config.ParseSCRAMSecret(u.SCRAMSecret)
		if err != nil {
			return scram.StoredCredentials{}, err
		}
		return scram.StoredCredentials{
			KeyFactors: scram.KeyFactors{Salt: string(sec.Salt), Iters: sec.Iterations},
			StoredKey:  sec.StoredKey,
			ServerKey:  sec.ServerKey,
		}, nil
	}
	if u.Password == "" {
		return scram.StoredCredentials{}, fmt.Errorf("user %q has no password", user)
	}
	key := user + "\x00" + u.Password
	a.mu.Lock()
	c, ok := a.derived[key]
	a.mu.Unlock()
	if ok {
		return c, nil
	}
	var salt [16]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return scram.StoredCredentials{}, err
	}
	client, err := scram.SHA256.NewClient(user, u.Password, "")
	if err != nil {
		return scram.StoredCredentials{}, err
	}
	c = client.GetStoredCredentials(scram.KeyFactors{Salt: string(salt[:]), Iters: scramIterations})
	a.mu.Lock()
	a.derived[key] = c
	a.mu.Unlock()
	return c, nil
}

func (a *authenticator) scram(ss *session, user string, creds scram.StoredCredentials, known bool) error {
	if err := ss.writeNow(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{scramMechanism}}); err != nil {
		return err
	}
	t, msg, err := ss.rd.Next()
	if err != nil {
		return err
	}
	if t != 'p' {
		return fatalf(codeProtocolViolation, "expected SASL response, got message type %q", t)
	}
	var init pgproto3.SASLInitialResponse
	if err := init.Decode(msg[5:]); err != nil {
		return fatalf(codeProtocolViolation, "malformed SASLInitialResponse")
	}
	if init.AuthMechanism != scramMechanism {
		return fatalf(codeProtocolViolation, "client selected an invalid SASL authentication mechanism")
	}
	if !known {
		// Make up a salt so an unknown user looks like a wrong password.
		creds = scram.StoredCredentials{KeyFactors: scram.KeyFactors{Salt: "kproxy-unknown-user", Iters: scramIterations},
			StoredKey: make([]byte, 32), ServerKey: make([]byte, 32)}
	}
	srv, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return creds, nil })
	if err != nil {
		return err
	}
	conv := srv.NewConversation()
	first, err := conv.Step(string(init.Data))
	if err != nil {
		return fatalf(codeProtocolViolation, "malformed SCRAM message")
	}
	if err := ss.writeNow(&pgproto3.AuthenticationSASLContinue{Data: []byte(first)}); err != nil {
		return err
	}
	t, msg, err = ss.rd.Next()
	if err != nil {
		return err
	}
	if t != 'p' {
		return fatalf(codeProtocolViolation, "expected SASL response, got message type %q", t)
	}
	final, err := conv.Step(string(msg[5:]))
	if err != nil || !conv.Valid() || !known {
		return authFailed(user)
	}
	return ss.writeNow(&pgproto3.AuthenticationSASLFinal{Data: []byte(final)})
}
