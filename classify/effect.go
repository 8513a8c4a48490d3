package classify

import "strings"

// Effect is the kind of session state a statement leaves behind.
type Effect uint8

// Effects in order of precedence: when a string has several, the first one
// found is reported.
const (
	EffectNone         Effect = iota
	EffectSetting             // SET, RESET, set_config(…), SET SESSION AUTHORIZATION…
	EffectPrepare             // PREPARE name AS …
	EffectListen              // LISTEN channel
	EffectAdvisoryLock        // pg_advisory_lock and friends (session level)
	EffectTempTable           // CREATE TEMP …, SELECT … INTO TEMP …
	EffectHoldCursor          // DECLARE … WITH HOLD
	EffectLoad                // LOAD 'library'
)

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

// SessionEffect returns the first session effect found among the statements
// of sql, or EffectNone.
func SessionEffect(sql string) Effect {
	lx := lexer{src: sql}
	var words []string // lower-cased words of the current statement
	flush := func() Effect {
		e := statementEffect(words)
		words = words[:0]
		return e
	}
	for {
		tok, ok := lx.next()
		if !ok {
			return flush()
		}
		switch tok.kind {
		case tokSemicolon:
			if e := flush(); e != EffectNone {
				return e
			}
		case tokWord:
			w := strings.ToLower(tok.text)
			if lx.peekByte() == '(' && isSessionFunc(w) {
				if w == "set_config" {
					return EffectSetting
				}
				return EffectAdvisoryLock
			}
			words = append(words, w)
		}
	}
}

func isSessionFunc(w string) bool {
	switch w {
	case "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
		"pg_try_advisory_lock_shared", "set_config":
		return true
	}
	return false
}

func statementEffect(w []string) Effect {
	if len(w) == 0 {
		return EffectNone
	}
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
			return EffectNone
		}
		return EffectSetting
	case "reset":
		return EffectSetting
	case "prepare":
		if at(1) == "transaction" {
			return EffectNone
		}
		return EffectPrepare
	case "listen":
		return EffectListen
	case "load":
		return EffectLoad
	case "declare":
		for i := 1; i+1 < len(w) && w[i] != "for"; i++ {
			if w[i] == "with" && w[i+1] == "hold" {
				return EffectHoldCursor
			}
		}
		return EffectNone
	case "create":
		for i := 1; i < len(w) && i <= 4; i++ {
			switch w[i] {
			case "temp", "temporary":
				return EffectTempTable
			case "table", "view", "sequence", "function", "index":
				return EffectNone
			}
		}
		return EffectNone
	}
	// SELECT … INTO TEMP t, possibly inside WITH or EXPLAIN.
	for i := 0; i+1 < len(w); i++ {
		if w[i] == "into" && (w[i+1] == "temp" || w[i+1] == "temporary") {
			return EffectTempTable
		}
	}
	return EffectNone
}
