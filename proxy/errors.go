package proxy

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/kproxy/kproxy/internal/pgwire"
	"github.com/kproxy/kproxy/pool"
)

// SQLSTATE codes kproxy itself reports.
const (
	codeConnectionFailure            = "08006" // backend unreachable or lost
	codeProtocolViolation            = "08P01" // malformed or unexpected client input
	codeTooManyConnections           = "53300" // pool acquire timeout
	codeInvalidPassword              = "28P01" // authentication failed
	codeInvalidAuthSpec              = "28000" // no user name, unsupported auth
	codeFeatureUnsupported           = "0A000" // e.g. replication connections
	codeAdminShutdown                = "57P01" // kproxy is draining
	codeInternalError                = "XX000" // a kproxy bug
	codeInvalidCatalogName           = "3D000" // unknown database
	codeQueryCanceled                = "57014"
	codeReadOnlyTransaction          = "25006" // a replica refused a write
	codeCrashShutdown                = "57P02" // a server's postmaster died
	codeCannotConnectNow             = "57P03" // a server is starting or stopping
	codeObjectNotInPrerequisiteState = "55000" // e.g. RESUME of a database that is not paused
	severityError                    = "ERROR"
	severityFatal                    = "FATAL"
	messageConnectionFailed          = "could not connect to the server"
)

// Error is an error kproxy reports to a client as an ErrorResponse.
type Error struct {
	Severity string // ERROR or FATAL
	Code     string // SQLSTATE
	Message  string
	Detail   string
	Hint     string
	Err      error // the cause, for logs; never shown to the client
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s %s: %s: %v", e.Severity, e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s %s: %s", e.Severity, e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// errCancelledWaiting fails a statement whose client sent a cancel request
// while it waited for a server connection: the error Postgres gives a
// cancelled statement.
var errCancelledWaiting = &Error{Severity: severityError, Code: codeQueryCanceled, Message: "canceling statement due to user request"}

func fatalf(code, format string, args ...any) *Error {
	return &Error{Severity: severityFatal, Code: code, Message: fmt.Sprintf(format, args...)}
}

// errorResponse is the one place that turns an error into what a client
// sees. Server errors keep every field the server sent; kproxy's own errors
// carry their SQLSTATE; anything else is reported as an internal error.
func errorResponse(err error) *pgproto3.ErrorResponse {
	var pe *Error
	var pgErr *pgconn.PgError
	var ce *pool.ConnectError
	switch {
	case errors.As(err, &pe):
		return &pgproto3.ErrorResponse{
			Severity: pe.Severity, SeverityUnlocalized: pe.Severity,
			Code: pe.Code, Message: pe.Message, Detail: pe.Detail, Hint: pe.Hint,
		}
	case errors.As(err, &pgErr):
		return &pgproto3.ErrorResponse{
			Severity: pgErr.Severity, SeverityUnlocalized: pgErr.SeverityUnlocalized,
			Code: pgErr.Code, Message: pgErr.Message, Detail: pgErr.Detail, Hint: pgErr.Hint,
			Position: pgErr.Position, InternalPosition: pgErr.InternalPosition,
			InternalQuery: pgErr.InternalQuery, Where: pgErr.Where, SchemaName: pgErr.SchemaName,
			TableName: pgErr.TableName, ColumnName: pgErr.ColumnName, DataTypeName: pgErr.DataTypeName,
			ConstraintName: pgErr.ConstraintName, File: pgErr.File, Line: pgErr.Line, Routine: pgErr.Routine,
		}
	case errors.As(err, &ce):
		return &pgproto3.ErrorResponse{
			Severity: severityError, SeverityUnlocalized: severityError, Code: codeConnectionFailure,
			Message: fmt.Sprintf("%s at %s: %v", messageConnectionFailed, ce.Addr, ce.Err),
			Hint:    "Check that PostgreSQL is running and accepts connections from kproxy.",
		}
	case errors.Is(err, pool.ErrAcquireTimeout):
		return &pgproto3.ErrorResponse{
			Severity: severityError, SeverityUnlocalized: severityError, Code: codeTooManyConnections,
			Message: "no server connection became available in time",
			Hint:    "Every server connection of this pool is busy; raise max_connections or acquire_timeout, or shorten transactions.",
		}
	case errors.Is(err, pgwire.ErrTooLarge), errors.Is(err, pgwire.ErrMalformed):
		return &pgproto3.ErrorResponse{
			Severity: severityFatal, SeverityUnlocalized: severityFatal, Code: codeProtocolViolation,
			Message: "invalid message: " + err.Error(),
		}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return &pgproto3.ErrorResponse{
			Severity: severityError, SeverityUnlocalized: severityError, Code: codeConnectionFailure,
			Message: "the server did not answer in time",
		}
	case errors.Is(err, pool.ErrClosed):
		return &pgproto3.ErrorResponse{
			Severity: severityFatal, SeverityUnlocalized: severityFatal, Code: codeAdminShutdown,
			Message: "kproxy is shutting down",
		}
	default:
		return &pgproto3.ErrorResponse{
			Severity: severityError, SeverityUnlocalized: severityError, Code: codeInternalError,
			Message: "kproxy internal error",
		}
	}
}

// encodeError appends the ErrorResponse for err to dst.
func encodeError(dst []byte, err error) []byte {
	return encode(dst, errorResponse(err))
}

// encodeFatal is encodeError for an error that ends the connection, which
// Postgres reports with severity FATAL.
func encodeFatal(dst []byte, err error) []byte {
	e := errorResponse(err)
	e.Severity, e.SeverityUnlocalized = severityFatal, severityFatal
	return encode(dst, e)
}

func encode(dst []byte, e *pgproto3.ErrorResponse) []byte {
	out, encErr := e.Encode(dst)
	if encErr != nil {
		out, _ = (&pgproto3.ErrorResponse{Severity: severityError, SeverityUnlocalized: severityError,
			Code: codeInternalError, Message: "kproxy internal error"}).Encode(dst)
	}
	return out
}
