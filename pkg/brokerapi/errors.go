package brokerapi

import (
	"errors"
	"net/http"

	"github.com/atelier-run/atelier/pkg/wire"
)

// APIError is the broker's refusal of a request: it answered, with an
// error. Code is one of wire's Code constants; errors.Is matches an
// APIError against the sentinel of its code, so callers write
// errors.Is(err, brokerapi.ErrNotFound).
type APIError struct {
	Code        string
	Description string
}

func (e *APIError) Error() string { return e.Description }

// Is reports whether target is an APIError of the same code.
func (e *APIError) Is(target error) bool {
	t, ok := target.(*APIError)
	return ok && t.Code == e.Code
}

// Sentinels, one per code. The broker wraps them into the errors it
// answers (fmt.Errorf("%w: …", brokerapi.ErrNotFound)); the client gives
// back an APIError that errors.Is matches to them.
var (
	ErrForbidden = &APIError{Code: wire.CodeForbidden, Description: "forbidden"}
	ErrNotFound  = &APIError{Code: wire.CodeNotFound, Description: "not_found"}
	ErrInvalid   = &APIError{Code: wire.CodeInvalid, Description: "invalid"}
	ErrInternal  = &APIError{Code: wire.CodeInternal, Description: "internal"}
)

// ErrUnavailable is a request no broker answered: none subscribed (the
// broker is down or restarting), none answered in time, or the HTTP API
// could not be reached. It is not an APIError: nothing refused.
var ErrUnavailable = errors.New("no broker answers")

// Reply is err as the broker answers it: the message and the code of the
// sentinel it wraps (CodeInternal for any other error). A nil err is the
// empty reply.
func Reply(err error) wire.APIReply {
	if err == nil {
		return wire.APIReply{}
	}
	code := wire.CodeInternal
	var ae *APIError
	if errors.As(err, &ae) {
		code = ae.Code
	}
	return wire.APIReply{Error: err.Error(), Code: code}
}

// ErrorOf is the error a reply carries, nil for none: an APIError (an
// unknown or missing code reads as CodeInternal).
func ErrorOf(r wire.APIReply) error {
	if r.Error == "" && r.Code == "" {
		return nil
	}
	code := r.Code
	switch code {
	case wire.CodeForbidden, wire.CodeNotFound, wire.CodeInvalid:
	default:
		code = wire.CodeInternal
	}
	desc := r.Error
	if desc == "" {
		desc = code
	}
	return &APIError{Code: code, Description: desc}
}

// HTTPStatus is the status of the HTTP admin API's answer with code ("":
// 200).
func HTTPStatus(code string) int {
	switch code {
	case "":
		return http.StatusOK
	case wire.CodeForbidden:
		return http.StatusForbidden
	case wire.CodeNotFound:
		return http.StatusNotFound
	case wire.CodeInvalid:
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// codeOfStatus reads an HTTP error status the admin API answered without
// a reply body: a wrong token, a body it could not read. (A 404 without
// a body is a URL that is not the broker's, not a missing job.)
func codeOfStatus(status int) string {
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden:
		return wire.CodeForbidden
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		return wire.CodeInvalid
	}
	return wire.CodeInternal
}
