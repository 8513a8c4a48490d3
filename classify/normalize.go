package classify

import "strings"

// normalize appends to dst the cache key of sql: literals (strings and
// numbers) become '?', white space runs become one space, comments are
// dropped unless they hold a kproxy hint, and everything else (keywords,
// identifiers, quoted identifiers, $n parameters, dollar-quoted bodies) is
// kept as written. Statements that differ only in literal values get the
// same key.
func normalize(dst []byte, sql string) []byte {
	s := sql
	space := false
	emit := func(b string) {
		if space && len(dst) > 0 {
			dst = append(dst, ' ')
		}
		space = false
		dst = append(dst, b...)
	}
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case isSpace(c):
			space = true
			i++
		case c == '-' && i+1 < len(s) && s[i+1] == '-':
			j := i
			for j < len(s) && s[j] != '\n' {
				j++
			}
			if strings.Contains(s[i:j], "kproxy:") {
				emit(s[i:j])
			}
			space = true
			i = j
		case c == '/' && i+1 < len(s) && s[i+1] == '*':
			lx := lexer{src: s, pos: i}
			lx.skipBlockComment()
			if strings.Contains(s[i:lx.pos], "kproxy:") {
				emit(s[i:lx.pos])
			}
			space = true
			i = lx.pos
		case c == '\'' || ((c == 'e' || c == 'E') && i+1 < len(s) && s[i+1] == '\'' && (i == 0 || !isIdentPart(s[i-1]))):
			lx := lexer{src: s, pos: i}
			if c != '\'' {
				lx.pos++
			}
			lx.skipQuoted('\'', c != '\'')
			emit("?")
			i = lx.pos
		case c == '"':
			lx := lexer{src: s, pos: i}
			lx.skipQuoted('"', false)
			emit(s[i:lx.pos])
			i = lx.pos
		case c == '$':
			lx := lexer{src: s, pos: i}
			if lx.skipDollar() {
				emit(s[i:lx.pos])
				i = lx.pos
				continue
			}
			j := i + 1
			for j < len(s) && isDigit(s[j]) {
				j++
			}
			emit(s[i:j])
			i = j
		case isDigit(c) || (c == '.' && i+1 < len(s) && isDigit(s[i+1])):
			j := i
			for j < len(s) && (isDigit(s[j]) || s[j] == '.') {
				j++
			}
			if j < len(s) && (s[j] == 'e' || s[j] == 'E') {
				k := j + 1
				if k < len(s) && (s[k] == '+' || s[k] == '-') {
					k++
				}
				if k < len(s) && isDigit(s[k]) {
					for k < len(s) && isDigit(s[k]) {
						k++
					}
					j = k
				}
			}
			emit("?")
			i = j
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdentPart(s[j]) {
				j++
			}
			emit(s[i:j])
			i = j
		default:
			emit(s[i : i+1])
			i++
		}
	}
	return dst
}
