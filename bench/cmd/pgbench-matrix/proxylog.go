package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
)

// logEvent is one kind of message a proxy logged during the matrix.
type logEvent struct {
	Target  target
	Level   string
	Message string // with numbers and addresses replaced, so alike lines group
	Count   int
	Example string // the first line seen, as logged
}

// logEvents groups the noteworthy lines of the proxies' logs. The zero
// value is ready to use.
type logEvents struct {
	byKey map[string]*logEvent
	order []*logEvent
}

// kproxyRoutine are kproxy's messages about starting and stopping, which
// every run logs.
var kproxyRoutine = map[string]bool{
	"kproxy is ready":                         true,
	"draining: waiting for open transactions": true,
	"stopped": true,
}

var (
	reHex    = regexp.MustCompile(`0x[0-9a-fA-F]+`)
	reNumber = regexp.MustCompile(`\d+`)
	// PgBouncer's lines start "2025-01-02 15:04:05.000 UTC [pid] LEVEL ".
	rePgBouncerLine = regexp.MustCompile(`^\S+ \S+ \S+ \[\d+\] (WARNING|ERROR|FATAL) (.*)$`)
)

// addKproxy adds every line of a kproxy log except the routine ones.
// kproxy writes one JSON object per line.
func (l *logEvents) addKproxy(t target, log string) {
	for line := range strings.SplitSeq(log, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			l.add(t, "output", line, line)
			continue
		}
		msg, _ := e["msg"].(string)
		if kproxyRoutine[msg] {
			continue
		}
		level, _ := e["level"].(string)
		// Group by what happened, not by when or to whom.
		for _, k := range []string{"alert", "error"} {
			if v, ok := e[k].(string); ok {
				msg += ": " + v
			}
		}
		l.add(t, level, msg, line)
	}
}

// addPgBouncer adds the WARNING, ERROR and FATAL lines of a PgBouncer log.
func (l *logEvents) addPgBouncer(t target, log string) {
	for line := range strings.SplitSeq(log, "\n") {
		if m := rePgBouncerLine.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
			l.add(t, strings.ToLower(m[1]), m[2], line)
		}
	}
}

// addLines adds every line of a log that has no format of its own.
func (l *logEvents) addLines(t target, log string) {
	for line := range strings.SplitSeq(log, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			l.add(t, "output", line, line)
		}
	}
}

func (l *logEvents) add(t target, level, msg, example string) {
	msg = reNumber.ReplaceAllString(reHex.ReplaceAllString(msg, "0x…"), "N")
	key := fmt.Sprintf("%s\x00%s\x00%s", t, level, msg)
	if l.byKey == nil {
		l.byKey = map[string]*logEvent{}
	}
	if e, ok := l.byKey[key]; ok {
		e.Count++
		return
	}
	e := &logEvent{Target: t, Level: level, Message: msg, Count: 1, Example: example}
	l.byKey[key] = e
	l.order = append(l.order, e)
}

// all returns the events in the order they were first seen.
func (l *logEvents) all() []*logEvent { return l.order }
