package brokerapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/atelier-run/atelier/pkg/wire"
)

// NATSTransport carries requests as NATS requests on api.broker.<op>.
type NATSTransport struct {
	// Conn is the connection to the broker's NATS; the transport neither
	// drains nor closes it.
	Conn *nats.Conn
}

// RoundTrip implements Transport.
func (t NATSTransport) RoundTrip(ctx context.Context, op string, request []byte) ([]byte, error) {
	msg, err := t.Conn.RequestWithContext(ctx, wire.BrokerAPISubject(op), request)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) ||
			errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrDisconnected) {
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return nil, err
	}
	return msg.Data, nil
}

// maxHTTPReply bounds the answer read from the HTTP admin API (a queues
// listing of a large workshop is a few MiB).
const maxHTTPReply = 16 << 20

// HTTPTransport carries requests to the broker's HTTP admin API: POST
// <URL>/api/admin/<op> with Authorization: Bearer <Token>. The broker
// answers as the workshop's admin, whatever caller the request names.
type HTTPTransport struct {
	// URL is the broker's HTTP address, e.g. http://127.0.0.1:8191.
	URL string
	// Token is the admin token (the broker's --admin-token, or the one it
	// generated into <data>/meta/admin-token).
	Token string
	// Client sends the requests; nil is http.DefaultClient.
	Client *http.Client
}

// RoundTrip implements Transport. An answer with a broker API reply is
// returned as it is, whatever its status; an error status without one (a
// wrong token) is an *APIError; a broker that cannot be reached, or a
// gateway in front of it that says so, is ErrUnavailable.
func (t HTTPTransport) RoundTrip(ctx context.Context, op string, request []byte) ([]byte, error) {
	url := strings.TrimRight(t.URL, "/") + "/api/admin/" + op
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(request))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+t.Token)
	req.Header.Set("Content-Type", "application/json")
	client := t.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxHTTPReply))
	if err != nil {
		return nil, fmt.Errorf("%w: read the answer: %w", ErrUnavailable, err)
	}
	if resp.StatusCode == http.StatusOK {
		return body, nil
	}
	var reply wire.APIReply
	if json.Unmarshal(body, &reply) == nil && reply.Error != "" {
		return body, nil
	}
	text := fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	switch resp.StatusCode {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return nil, fmt.Errorf("%w: %s", ErrUnavailable, text)
	}
	return nil, &APIError{Code: codeOfStatus(resp.StatusCode), Description: text}
}
