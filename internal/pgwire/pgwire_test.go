package pgwire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/internal/pgwire"
)

// frame returns a typed frame with the given body.
func frame(t byte, body string) []byte {
	b := []byte{t, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

// startupFrame returns an untyped startup-phase frame: length, code, body.
func startupFrame(code uint32, body string) []byte {
	b := make([]byte, 8, 8+len(body))
	binary.BigEndian.PutUint32(b, uint32(8+len(body)))
	binary.BigEndian.PutUint32(b[4:], code)
	return append(b, body...)
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestReaderNextReturnsEachWholeFrameInTurn(t *testing.T) {
	in := concat(frame('Q', "SELECT 1\x00"), frame('S', ""), frame('d', string(bytes.Repeat([]byte("x"), 5000))), frame('X', ""))
	for name, src := range map[string]io.Reader{
		"all at once":      bytes.NewReader(in),
		"a byte at a time": iotest.OneByteReader(bytes.NewReader(in)),
	} {
		t.Run(name, func(t *testing.T) {
			r := pgwire.NewReader(src, 16, 1<<20)
			var got []byte
			var types []byte
			for {
				typ, msg, err := r.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				require.NoError(t, err)
				require.Equal(t, typ, msg[0])
				types = append(types, typ)
				got = append(got, msg...)
			}
			assert.Equal(t, "QSdX", string(types))
			assert.Equal(t, in, got, "frames laid end to end are the input")
		})
	}
}

func TestReaderNextAcceptsAFrameExactlyAtTheLimit(t *testing.T) {
	body := string(bytes.Repeat([]byte("y"), 100))
	r := pgwire.NewReader(bytes.NewReader(frame('d', body)), 64, 100)
	_, msg, err := r.Next()
	require.NoError(t, err)
	assert.Len(t, msg, 105)
}

func TestReaderNextRejectsBadFrames(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"length below four", []byte{'Q', 0, 0, 0, 3}, pgwire.ErrMalformed},
		{"length zero", []byte{'Q', 0, 0, 0, 0}, pgwire.ErrMalformed},
		{"body one byte over the limit", frame('Q', string(make([]byte, 101))), pgwire.ErrTooLarge},
		{"huge declared length", []byte{'Q', 0xff, 0xff, 0xff, 0xff}, pgwire.ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := pgwire.NewReader(bytes.NewReader(tt.in), 64, 100)
			_, msg, err := r.Next()
			assert.ErrorIs(t, err, tt.want)
			assert.Nil(t, msg)
		})
	}
}

func TestReaderNextDoesNotAllocateTheDeclaredSizeOfAnOversizedFrame(t *testing.T) {
	in := []byte{'d', 0x40, 0, 0, 0} // declares 1 GiB
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	r := pgwire.NewReader(bytes.NewReader(in), 64, 1<<20)
	_, _, err := r.Next()
	runtime.ReadMemStats(&after)
	require.ErrorIs(t, err, pgwire.ErrTooLarge)
	assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(1<<20), "bytes allocated")
}

func TestReaderNextReportsATruncatedFrameAsPartial(t *testing.T) {
	full := frame('Q', "SELECT 1\x00")
	for _, n := range []int{1, 4, 5, len(full) - 1} {
		r := pgwire.NewReader(bytes.NewReader(full[:n]), 64, 100)
		_, _, err := r.Next()
		var pe *pgwire.PartialError
		require.ErrorAs(t, err, &pe, "after %d of %d bytes", n, len(full))
		assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
	}
}

func TestReaderNextReportsAPlainEOFAtAFrameBoundary(t *testing.T) {
	r := pgwire.NewReader(bytes.NewReader(frame('S', "")), 64, 100)
	_, _, err := r.Next()
	require.NoError(t, err)
	_, _, err = r.Next()
	assert.Equal(t, io.EOF, err)
}

func TestReadStartupReadsOneFrameAndNoFurther(t *testing.T) {
	startup := startupFrame(pgwire.ProtocolVersion30, "user\x00postgres\x00\x00")
	hello := []byte("\x16\x03\x01 TLS hello")
	src := bytes.NewReader(concat(startupFrame(pgwire.SSLRequestCode, ""), startup, hello))
	msg, err := pgwire.ReadStartup(src)
	require.NoError(t, err)
	assert.Equal(t, startupFrame(pgwire.SSLRequestCode, ""), msg)
	assert.Equal(t, len(startup)+len(hello), src.Len(), "bytes left unread")
	msg, err = pgwire.ReadStartup(src)
	require.NoError(t, err)
	assert.Equal(t, startup, msg)
	assert.Equal(t, len(hello), src.Len(), "bytes left unread")
}

func TestReadStartupRejectsBadFrames(t *testing.T) {
	oversized := make([]byte, 8)
	binary.BigEndian.PutUint32(oversized, pgwire.MaxStartupBytes+1)
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty input", nil, io.EOF},
		{"truncated length", []byte{0, 0}, io.ErrUnexpectedEOF},
		{"length below eight", []byte{0, 0, 0, 7, 0, 0, 0}, pgwire.ErrMalformed},
		{"length below four", []byte{0, 0, 0, 3}, pgwire.ErrMalformed},
		{"one byte over the limit", oversized, pgwire.ErrTooLarge},
		{"huge declared length", []byte{0xff, 0xff, 0xff, 0xff}, pgwire.ErrTooLarge},
		{"truncated body", startupFrame(pgwire.ProtocolVersion30, "user\x00")[:10], io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, err := pgwire.ReadStartup(bytes.NewReader(tt.in))
			assert.ErrorIs(t, err, tt.want)
			assert.Nil(t, msg)
		})
	}
}

func FuzzReaderNext(f *testing.F) {
	f.Add(concat(frame('Q', "SELECT 1\x00"), frame('S', "")), uint16(64))
	f.Add(frame('d', string(make([]byte, 300))), uint16(300))
	f.Add(frame('d', string(make([]byte, 301))), uint16(300))
	f.Add([]byte{'Q', 0, 0, 0, 3}, uint16(64))
	f.Add([]byte{'Q', 0xff, 0xff, 0xff, 0xff}, uint16(64))
	f.Add(frame('P', "\x00SELECT $1\x00\x00\x00")[:7], uint16(64))
	f.Add([]byte{}, uint16(0))
	f.Fuzz(func(t *testing.T, in []byte, limit uint16) {
		maxBytes := int(limit)
		for name, src := range map[string]io.Reader{
			"all at once":      bytes.NewReader(in),
			"a byte at a time": iotest.OneByteReader(bytes.NewReader(in)),
		} {
			r := pgwire.NewReader(src, 16, maxBytes)
			var got []byte
			for {
				typ, msg, err := r.Next()
				if err != nil {
					var pe *pgwire.PartialError
					switch {
					case err == io.EOF:
						require.True(t, bytes.Equal(in, got), "%s: frames laid end to end are the input", name)
					case errors.Is(err, pgwire.ErrMalformed), errors.Is(err, pgwire.ErrTooLarge), errors.As(err, &pe):
						require.True(t, bytes.HasPrefix(in, got), "%s: frames are a prefix of the input", name)
					default:
						t.Fatalf("%s: unexpected error %v", name, err)
					}
					break
				}
				require.LessOrEqual(t, len(msg), 5+maxBytes, "%s: frame over the limit", name)
				require.GreaterOrEqual(t, len(msg), 5)
				require.Equal(t, typ, msg[0])
				require.EqualValues(t, len(msg)-1, binary.BigEndian.Uint32(msg[1:5]), "%s: declared length", name)
				got = append(got, msg...)
			}
		}
	})
}

func FuzzReadStartup(f *testing.F) {
	f.Add(startupFrame(pgwire.ProtocolVersion30, "user\x00postgres\x00database\x00postgres\x00\x00"))
	f.Add(startupFrame(pgwire.SSLRequestCode, ""))
	f.Add(startupFrame(pgwire.GSSENCRequestCode, ""))
	f.Add(startupFrame(pgwire.CancelRequestCode, "\x00\x00\x00\x01\x00\x00\x00\x02"))
	f.Add(startupFrame(2<<16, "user\x00postgres\x00\x00"))
	f.Add([]byte{0, 0, 0, 7})
	f.Add([]byte{0x7f, 0xff, 0xff, 0xff})
	f.Add(startupFrame(pgwire.ProtocolVersion30, "user\x00postgres\x00\x00")[:12])
	f.Fuzz(func(t *testing.T, in []byte) {
		src := bytes.NewReader(in)
		msg, err := pgwire.ReadStartup(src)
		if err != nil {
			require.Nil(t, msg)
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) &&
				!errors.Is(err, pgwire.ErrMalformed) && !errors.Is(err, pgwire.ErrTooLarge) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		require.GreaterOrEqual(t, len(msg), 8)
		require.LessOrEqual(t, len(msg), pgwire.MaxStartupBytes)
		require.EqualValues(t, len(msg), binary.BigEndian.Uint32(msg))
		require.Equal(t, in[:len(msg)], msg)
		require.Equal(t, len(in)-len(msg), src.Len(), "read past the frame")
	})
}

func TestAnIdleReaderReadsFramesFromASocketAndReleasesItsBufferBetweenThem(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer client.Close()
	server, err := ln.Accept()
	require.NoError(t, err)
	defer server.Close()
	raw, err := server.(*net.TCPConn).SyscallConn()
	require.NoError(t, err)
	r := pgwire.NewIdleReader(server, raw, 64, 1<<20)

	big := frame('Q', strings.Repeat("x", 1000)+"\x00") // larger than the buffer
	go func() {
		_, _ = client.Write(concat(frame('Q', "SELECT 1\x00"), frame('S', "")))
		time.Sleep(20 * time.Millisecond)
		_, _ = client.Write(big[:10])
		time.Sleep(20 * time.Millisecond)
		_, _ = client.Write(big[10:])
		_ = client.(*net.TCPConn).CloseWrite()
	}()
	typ, f, err := r.Next()
	require.NoError(t, err)
	assert.Equal(t, byte('Q'), typ)
	assert.Equal(t, frame('Q', "SELECT 1\x00"), f)
	assert.True(t, r.HasFrame())
	assert.False(t, r.Release(), "released with a frame buffered")
	typ, _, err = r.Next()
	require.NoError(t, err)
	assert.Equal(t, byte('S'), typ)
	assert.Zero(t, r.Buffered())
	assert.True(t, r.Release(), "an idle reader with nothing buffered gives its buffer back")
	assert.False(t, pgwire.NewReader(server, 64, 1<<20).Release(), "a plain reader keeps its buffer")
	typ, f, err = r.Next()
	require.NoError(t, err)
	assert.Equal(t, byte('Q'), typ)
	assert.Equal(t, big, f)
	_, _, err = r.Next()
	assert.ErrorIs(t, err, io.EOF)
}

func TestReaderGoesOnWithAFrameAfterAReadDeadlineInterruptedIt(t *testing.T) {
	for _, size := range []int{100, 20000} { // fits the buffer; does not
		t.Run(fmt.Sprintf("%d bytes", size), func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			defer ln.Close()
			c, err := net.Dial("tcp", ln.Addr().String())
			require.NoError(t, err)
			defer c.Close()
			s, err := ln.Accept()
			require.NoError(t, err)
			defer s.Close()
			raw, err := s.(*net.TCPConn).SyscallConn()
			require.NoError(t, err)
			rd := pgwire.NewIdleReader(s, raw, 8192, 1<<20)

			frame := make([]byte, size)
			frame[0] = 'Q'
			binary.BigEndian.PutUint32(frame[1:], uint32(size-1))
			for i := 5; i < size; i++ {
				frame[i] = byte('a' + i%26)
			}
			cut := size / 2
			_, err = c.Write(frame[:cut])
			require.NoError(t, err)
			require.NoError(t, s.SetReadDeadline(time.Now().Add(50*time.Millisecond)))
			_, _, err = rd.Next()
			require.ErrorIs(t, err, os.ErrDeadlineExceeded)
			require.NoError(t, s.SetReadDeadline(time.Time{}))
			_, err = c.Write(frame[cut:])
			require.NoError(t, err)
			typ, got, err := rd.Next()
			require.NoError(t, err)
			require.Equal(t, byte('Q'), typ)
			require.Equal(t, frame, got)
		})
	}
}
