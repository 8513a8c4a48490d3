package classify

import "strings"

// Effect is a kind of session state that cannot follow a client to another
// server connection, and so pins the client to its server connection.
type Effect uint8

// Pin reasons, in order of precedence: when a string has several, the first
// one found is reported.
const (
	EffectNone         Effect = iota
	EffectSetting             // historic: settings are now replayed, never pinned
	EffectPrepare             // SQL PREPARE name AS …
	EffectListen              // LISTEN channel
	EffectAdvisoryLock        // pg_advisory_lock and friends (session level)
	EffectTempTable           // CREATE TEMP …, SELECT … INTO TEMP …
	EffectHoldCursor          // DECLARE … WITH HOLD
	EffectLoad                // LOAD 'library'
	effectCount
)

// NumEffects is the number of Effect values, for arrays indexed by Effect.
const NumEffects = int(effectCount)

var effectNames = [...]string{
	EffectNone:         "none",
	EffectSetting:      "setting",
	EffectPrepare:      "prepared_statement",
	EffectListen:       "listen",
	EffectAdvisoryLock: "advisory_lock",
	EffectTempTable:    "temp_table",
	EffectHoldCursor:   "cursor_with_hold",
	EffectLoad:         "load",
}

// String returns the effect's name as it appears in stats.
func (e Effect) String() string {
	if int(e) < len(effectNames) {
		return effectNames[e]
	}
	return "unknown"
}

// Session is what a SQL string does to the server session, as far as
// pooling is concerned.
type Session struct {
	// Pin is the first state found that may pin the client. It is a
	// candidate: kproxy checks on the server whether the state really
	// exists once the transaction is over.
	Pin Effect
	// Settings is set for statements that change session settings (SET,
	// RESET, set_config, DISCARD ALL, SET SESSION AUTHORIZATION…); kproxy
	// reads the settings back afterwards and replays them on other server
	// connections.
	Settings bool
	// MayRelease is set for statements that may remove pinning state:
	// UNLISTEN, advisory unlocks, DROP, DISCARD, CLOSE, DEALLOCATE and the
	// end of a transaction (ON COMMIT DROP temporary tables).
	MayRelease bool
	// DropsAllStatements is set for DEALLOCATE ALL and DISCARD ALL, which
	// remove every prepared statement of the session.
	DropsAllStatements bool
	// Deallocate is the statement name when sql is exactly one
	// "DEALLOCATE [PREPARE] name".
	Deallocate string
	// DeallocateAll is set when sql is exactly one "DEALLOCATE [PREPARE]
	// ALL".
	DeallocateAll bool
	// RunsCode is set for DO, CALL and calls of the user functions given
	// to ScanSessionCalls: code that may change any session state (a
	// setting, the role) without the text saying so.
	RunsCode bool
	// FunctionDDL is set for CREATE, ALTER and DROP of a function, a
	// procedure or an extension, after which the user functions are
	// loaded again.
	FunctionDDL bool
	// Schema is set for CREATE, ALTER and DROP of anything: statements
	// that may change whether a text that parsed before parses still.
	Schema bool
	// PreparedStatementsView is set when a SELECT (or WITH) reads the
	// pg_prepared_statements view in its FROM clause (PreparedStatementsRefs
	// says where). Through a transaction pooler the view would list the
	// server connection's statements, not the client's.
	PreparedStatementsView bool
}

// PreparedStatementsRefs returns where the statements of sql read the
// pg_prepared_statements view, in order (see Session).
func PreparedStatementsRefs(sql string) []ViewRef {
	var refs []ViewRef
	scanSession(sql, nil, &refs)
	return refs
}

// ViewRef is a reference to a relation in a FROM clause: sql[Start:End] is
// its name, schema included, and Aliased tells whether an alias follows.
type ViewRef struct {
	Start, End int
	Aliased    bool
}

// SessionEffect returns the pin candidate of sql, or EffectNone.
func SessionEffect(sql string) Effect { return ScanSession(sql).Pin }

// ScanSession scans every statement of sql.
func ScanSession(sql string) Session { return ScanSessionCalls(sql, nil) }

// ScanSessionCalls is ScanSession that also sets RunsCode when sql calls
// one of userFuncs (names lower-cased, as an unquoted identifier is).
func ScanSessionCalls(sql string, userFuncs map[string]bool) Session {
	return scanSession(sql, userFuncs, nil)
}

func scanSession(sql string, userFuncs map[string]bool, refs *[]ViewRef) Session {
	var s Session
	lx := lexer{src: sql}
	var kw [16]string
	words := kw[:0]   // the current statement's words: keywords lower-cased, any other word ""
	var raw [3]string // its first words as written, for DEALLOCATE's name
	statements := 0
	var prev [3]token // the tokens before tok, latest first
	for {
		tok, ok := lx.next()
		if ok {
			prev[2], prev[1], prev[0] = prev[1], prev[0], token{kind: tok.kind, text: tok.text}
		}
		if !ok || tok.kind == tokSemicolon {
			if len(words) > 0 {
				statements++
				s.addStatement(words, &raw, statements)
			}
			words, raw = words[:0], [3]string{}
			if ok {
				continue
			}
			if statements != 1 {
				s.Deallocate, s.DeallocateAll = "", false
			}
			return s
		}
		if tok.kind == tokWord {
			w := keyword(tok.text)
			if w == "pg_prepared_statements" && len(words) > 0 && (words[0] == "select" || words[0] == "with") {
				if ref, ok := viewRef(&lx, prev); ok {
					s.PreparedStatementsView = true
					if refs != nil {
						*refs = append(*refs, ref)
					}
				}
			}
			if lx.peekByte() == '(' {
				if w != "" {
					s.addFunction(w)
				} else if len(userFuncs) > 0 && userFuncs[lowerName(tok.text)] {
					s.RunsCode = true
				}
			}
			if len(words) < len(raw) {
				raw[len(words)] = tok.text
			}
			words = append(words, w)
		}
	}
}

// sessionKeywords are the words ScanSession acts on.
var sessionKeywords = map[string]string{}

func init() {
	for _, w := range []string{
		"set", "local", "transaction", "constraints", "reset", "discard", "all", "prepare", "deallocate",
		"listen", "unlisten", "drop", "close", "commit", "end", "rollback", "abort", "load",
		"declare", "for", "with", "hold", "create", "temp", "temporary", "table", "view", "sequence",
		"function", "index", "into", "set_config", "do", "call", "alter", "procedure", "extension",
		"pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
		"pg_advisory_unlock", "pg_advisory_unlock_shared", "pg_advisory_unlock_all",
		"select", "from", "join", "pg_catalog", "pg_prepared_statements",
	} {
		sessionKeywords[w] = w
	}
}

// maxKeywordLen is the length of the longest of sessionKeywords.
const maxKeywordLen = len("pg_try_advisory_lock_shared")

// keyword returns word lower-cased if it is one of sessionKeywords, and ""
// otherwise, without allocating. Only ASCII letters are lower-cased, as
// Postgres does for unquoted identifiers in a multibyte encoding.
func keyword(word string) string {
	if len(word) > maxKeywordLen {
		return ""
	}
	var b [maxKeywordLen]byte
	for i := range len(word) {
		c := word[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
	}
	return sessionKeywords[string(b[:len(word)])]
}

// viewRef returns the reference to a relation whose name is the word lx
// just read, prev[0], when it is one: it comes right after FROM or JOIN,
// unqualified or in pg_catalog, and is neither a function nor a column's
// qualifier.
func viewRef(lx *lexer, prev [3]token) (ViewRef, bool) {
	end := lx.pos
	ref := ViewRef{Start: end - len(prev[0].text), End: end}
	if b := lx.peekByte(); b == '(' || b == '.' {
		return ref, false
	}
	before := prev[1]
	if before.kind == tokOther && ref.Start > 0 && dotBefore(lx.src, ref.Start) {
		if prev[2].kind != tokWord || keyword(prev[2].text) != "pg_catalog" {
			return ref, false
		}
		// The word before pg_catalog is not kept: find it in the text.
		ref.Start = strings.LastIndex(strings.ToLower(lx.src[:ref.Start]), "pg_catalog")
		w := lastWord(lx.src[:ref.Start])
		if w != "from" && w != "join" {
			return ref, false
		}
	} else if before.kind != tokWord || (keyword(before.text) != "from" && keyword(before.text) != "join") {
		return ref, false
	}
	next := *lx
	if tok, ok := next.next(); ok && tok.kind == tokWord {
		switch strings.ToLower(tok.text) {
		case "where", "join", "inner", "left", "right", "full", "cross", "natural", "on", "using", "group",
			"order", "limit", "offset", "union", "intersect", "except", "window", "having", "fetch", "for",
			"returning", "tablesample":
		default:
			ref.Aliased = true
		}
	}
	return ref, true
}

// dotBefore reports whether the last byte of sql[:i] that is not a space
// is a dot.
func dotBefore(sql string, i int) bool {
	for i > 0 && isSpace(sql[i-1]) {
		i--
	}
	return i > 0 && sql[i-1] == '.'
}

// lastWord returns the last word of sql, lower-cased, skipping spaces
// and a trailing dot.
func lastWord(sql string) string {
	end := len(sql)
	for end > 0 && isSpace(sql[end-1]) {
		end--
	}
	start := end
	for start > 0 && isIdentPart(sql[start-1]) {
		start--
	}
	return strings.ToLower(sql[start:end])
}

func (s *Session) pin(e Effect) {
	if s.Pin == EffectNone {
		s.Pin = e
	}
}

func (s *Session) addFunction(w string) {
	switch w {
	case "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared":
		s.pin(EffectAdvisoryLock)
	case "pg_advisory_unlock", "pg_advisory_unlock_shared", "pg_advisory_unlock_all":
		s.MayRelease = true
	case "set_config":
		s.Settings = true
	}
}

// addStatement adds one statement's words (see ScanSession); raw holds its
// first words as written.
func (s *Session) addStatement(w []string, raw *[3]string, n int) {
	at := func(i int) string {
		if i < len(w) {
			return w[i]
		}
		return ""
	}
	switch w[0] {
	case "set":
		switch at(1) {
		case "local", "transaction", "constraints":
		default:
			s.Settings = true
		}
	case "reset":
		s.Settings = true
	case "discard":
		s.MayRelease = true
		if at(1) == "all" {
			s.Settings = true
			s.DropsAllStatements = true
		}
	case "prepare":
		if at(1) != "transaction" {
			s.pin(EffectPrepare)
		}
	case "deallocate":
		s.MayRelease = true
		i := 1
		if at(1) == "prepare" {
			i = 2
		}
		if at(i) == "all" {
			s.DropsAllStatements = true
			s.DeallocateAll = n == 1 && len(w) == i+1
		} else if n == 1 && len(w) <= 3 {
			s.Deallocate = lowerASCII(raw[i])
		}
	case "do", "call":
		s.RunsCode = true
	case "listen":
		s.pin(EffectListen)
	case "unlisten", "drop", "close", "commit", "end", "rollback", "abort":
		s.MayRelease = true
	case "load":
		s.pin(EffectLoad)
	case "declare":
		for i := 1; i+1 < len(w) && w[i] != "for"; i++ {
			if w[i] == "with" && w[i+1] == "hold" {
				s.pin(EffectHoldCursor)
			}
		}
	case "create":
		for i := 1; i < len(w) && i <= 4; i++ {
			if w[i] == "temp" || w[i] == "temporary" {
				s.pin(EffectTempTable)
				break
			}
			if w[i] == "table" || w[i] == "view" || w[i] == "sequence" || w[i] == "function" || w[i] == "index" {
				break
			}
		}
	}
	switch w[0] {
	case "create", "alter", "drop":
		s.Schema = true
		for i := 1; i < len(w) && i <= 4; i++ {
			if w[i] == "function" || w[i] == "procedure" || w[i] == "extension" {
				s.FunctionDDL = true
				break
			}
		}
	}
	// SELECT … INTO TEMP t, possibly inside WITH or EXPLAIN.
	for i := 0; i+1 < len(w); i++ {
		if w[i] == "into" && (w[i+1] == "temp" || w[i+1] == "temporary") {
			s.pin(EffectTempTable)
		}
	}
}

// maxNameLen is the longest identifier Postgres keeps (NAMEDATALEN-1).
const maxNameLen = 63

// lowerName returns word lower-cased for a map lookup, without allocating
// when the caller only indexes a map with it; words longer than any
// identifier give "".
func lowerName(word string) string {
	if len(word) > maxNameLen {
		return ""
	}
	var b [maxNameLen]byte
	for i := range len(word) {
		c := word[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
	}
	return string(b[:len(word)])
}

// lowerASCII lower-cases the ASCII letters of s.
func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
