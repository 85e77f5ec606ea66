package wire

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// Catalog is what an agent's ComfyUI can run: its object_info, model lists
// and embeddings. The broker merges the catalogs of a pool's agents.
type Catalog struct {
	Agent       string              `json:"agent,omitempty"`
	Pool        string              `json:"pool"`
	At          time.Time           `json:"at"`
	ObjectInfo  json.RawMessage     `json:"object_info"`
	Models      map[string][]string `json:"models,omitempty"`
	Embeddings  []string            `json:"embeddings,omitempty"`
	SystemStats json.RawMessage     `json:"system_stats,omitempty"`
}

// CatalogAck is the broker's reply to a catalog request.
type CatalogAck struct {
	Error string `json:"error,omitempty"`
}

// A real ComfyUI's object_info runs to megabytes; gzip brings it well under
// NATS's payload limit, so catalogs travel and rest compressed.

// EncodeCatalog encodes a catalog as gzip-compressed JSON.
func EncodeCatalog(c Catalog) ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if err := json.NewEncoder(zw).Encode(c); err != nil {
		return nil, fmt.Errorf("encode catalog: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("compress catalog: %w", err)
	}
	return buf.Bytes(), nil
}

// maxCatalogBytes bounds a decompressed catalog (a gzip bomb guard).
const maxCatalogBytes = 256 << 20

// DecodeCatalog decodes what EncodeCatalog produced.
func DecodeCatalog(b []byte) (Catalog, error) {
	var c Catalog
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return c, fmt.Errorf("decompress catalog: %w", err)
	}
	if err := json.NewDecoder(io.LimitReader(zr, maxCatalogBytes)).Decode(&c); err != nil {
		return c, fmt.Errorf("decode catalog: %w", err)
	}
	return c, nil
}
