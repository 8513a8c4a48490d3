package classify

type tokKind uint8

const (
	tokWord tokKind = iota
	tokSemicolon
	tokOther
)

type token struct {
	kind tokKind
	text string
}

// lexer splits SQL into words, semicolons and everything else, skipping
// whitespace, comments, string and identifier literals and dollar-quoted
// bodies. It never fails: unterminated constructs run to the end of input.
type lexer struct {
	src string
	pos int
}

func (l *lexer) peekByte() byte {
	i := l.pos
	for i < len(l.src) && isSpace(l.src[i]) {
		i++
	}
	if i < len(l.src) {
		return l.src[i]
	}
	return 0
}

func (l *lexer) next() (token, bool) {
	s := l.src
	for l.pos < len(s) {
		c := s[l.pos]
		switch {
		case isSpace(c):
			l.pos++
		case c == '-' && l.pos+1 < len(s) && s[l.pos+1] == '-':
			for l.pos < len(s) && s[l.pos] != '\n' {
				l.pos++
			}
		case c == '/' && l.pos+1 < len(s) && s[l.pos+1] == '*':
			l.skipBlockComment()
		case c == '\'':
			l.skipQuoted('\'', false)
			return token{kind: tokOther}, true
		case c == '"':
			l.skipQuoted('"', false)
			return token{kind: tokOther}, true
		case (c == 'e' || c == 'E') && l.pos+1 < len(s) && s[l.pos+1] == '\'':
			l.pos++
			l.skipQuoted('\'', true)
			return token{kind: tokOther}, true
		case c == '$':
			if l.skipDollar() {
				return token{kind: tokOther}, true
			}
			l.pos++
			for l.pos < len(s) && isDigit(s[l.pos]) {
				l.pos++
			}
			return token{kind: tokOther}, true
		case c == ';':
			l.pos++
			return token{kind: tokSemicolon}, true
		case isIdentStart(c):
			start := l.pos
			for l.pos < len(s) && isIdentPart(s[l.pos]) {
				l.pos++
			}
			return token{kind: tokWord, text: s[start:l.pos]}, true
		default:
			l.pos++
			return token{kind: tokOther}, true
		}
	}
	return token{}, false
}

func (l *lexer) skipBlockComment() {
	depth := 0
	s := l.src
	for l.pos < len(s) {
		switch {
		case s[l.pos] == '/' && l.pos+1 < len(s) && s[l.pos+1] == '*':
			depth++
			l.pos += 2
		case s[l.pos] == '*' && l.pos+1 < len(s) && s[l.pos+1] == '/':
			depth--
			l.pos += 2
			if depth == 0 {
				return
			}
		default:
			l.pos++
		}
	}
}

// skipQuoted skips a literal starting at l.pos (the opening quote); a doubled
// quote is an escaped quote, and with backslash a backslash escapes too.
func (l *lexer) skipQuoted(q byte, backslash bool) {
	s := l.src
	l.pos++
	for l.pos < len(s) {
		c := s[l.pos]
		switch {
		case backslash && c == '\\':
			l.pos += 2
		case c == q && l.pos+1 < len(s) && s[l.pos+1] == q:
			l.pos += 2
		case c == q:
			l.pos++
			return
		default:
			l.pos++
		}
	}
	l.pos = len(s)
}

// skipDollar skips a dollar-quoted string ($tag$ … $tag$) starting at l.pos
// and reports whether there was one.
func (l *lexer) skipDollar() bool {
	s := l.src
	i := l.pos + 1
	for i < len(s) && s[i] != '$' {
		if !isIdentPart(s[i]) || isDigit(s[i]) && i == l.pos+1 {
			return false
		}
		i++
	}
	if i >= len(s) {
		return false
	}
	tag := s[l.pos : i+1]
	body := i + 1
	for j := body; j+len(tag) <= len(s); j++ {
		if s[j] == '$' && s[j:j+len(tag)] == tag {
			l.pos = j + len(tag)
			return true
		}
	}
	l.pos = len(s)
	return true
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}
func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}
func isIdentPart(c byte) bool { return isIdentStart(c) || isDigit(c) || c == '$' }
