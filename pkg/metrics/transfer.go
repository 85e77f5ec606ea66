package metrics

import (
	"context"
	"errors"
	"fmt"

	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/prometheus/client_golang/prometheus"
)

// Transfer bytes: what moves into and out of the broker's file store.
// Agents ship outputs (and previews) in through the file receiver and fetch
// inputs out through the file server; the dashboard reads thumbnails. All
// of it goes through the store, so wrapping the store counts it without
// hooks in the transfer code: bytes in when a file is committed (or
// imported whole), bytes out as they are read.

// CountTransfers returns st wrapped so that the bytes stored into it and
// read from it are counted as atelier_transfer_bytes_total{direction, kind}
// and atelier_transfer_files_total{direction, kind}. The wrapper keeps st's
// Importer (a staged file renamed in, not copied) and Walker.
func (m *Metrics) CountTransfers(st filestore.Store) filestore.Store {
	c := countingStore{Store: st, m: m}
	if imp, ok := st.(filestore.Importer); ok {
		return countingImporter{countingStore: c, imp: imp}
	}
	return c
}

func newTransferCounters() (*prometheus.CounterVec, *prometheus.CounterVec) {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atelier_transfer_bytes_total",
			Help: "Bytes into the broker's file store (direction in: outputs and previews from agents) and out of it (direction out: inputs to agents, thumbnails), by file kind.",
		}, []string{"direction", "kind"}),
		prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atelier_transfer_files_total",
			Help: "Files stored into the broker's file store (in) and opened for reading (out), by file kind.",
		}, []string{"direction", "kind"})
}

func (m *Metrics) transferred(direction string, kind filestore.Kind, n int64) {
	if n > 0 {
		m.transferBytes.WithLabelValues(direction, string(kind)).Add(float64(n))
	}
}

type countingStore struct {
	filestore.Store
	m *Metrics
}

func (s countingStore) Open(ctx context.Context, ref filestore.Ref) (filestore.File, error) {
	f, err := s.Store.Open(ctx, ref)
	if err != nil {
		return nil, err
	}
	s.m.transferFiles.WithLabelValues("out", string(ref.Kind)).Inc()
	return countingFile{File: f, m: s.m, kind: ref.Kind}, nil
}

func (s countingStore) Create(ctx context.Context, ref filestore.Ref, opts ...filestore.CreateOption) (filestore.Writer, error) {
	w, err := s.Store.Create(ctx, ref, opts...)
	if err != nil {
		return nil, err
	}
	return countingWriter{Writer: w, m: s.m, kind: ref.Kind}, nil
}

// Users and Walk pass the Walker through (retention and usage need it).
func (s countingStore) Users(ctx context.Context) ([]string, error) {
	w, ok := s.Store.(filestore.Walker)
	if !ok {
		return nil, errNoWalker(s.Store)
	}
	return w.Users(ctx)
}

func (s countingStore) Walk(ctx context.Context, user string, kind filestore.Kind, fn func(filestore.Info) error) error {
	w, ok := s.Store.(filestore.Walker)
	if !ok {
		return errNoWalker(s.Store)
	}
	return w.Walk(ctx, user, kind, fn)
}

var errWalker = errors.New("store cannot list its files")

func errNoWalker(st filestore.Store) error { return fmt.Errorf("metrics: %w (%T)", errWalker, st) }

type countingImporter struct {
	countingStore
	imp filestore.Importer
}

func (s countingImporter) Import(ctx context.Context, ref filestore.Ref, path, sha256 string, opts ...filestore.CreateOption) (filestore.Info, error) {
	info, err := s.imp.Import(ctx, ref, path, sha256, opts...)
	if err == nil {
		s.m.transferred("in", ref.Kind, info.Size)
		s.m.transferFiles.WithLabelValues("in", string(ref.Kind)).Inc()
	}
	return info, err
}

// countingWriter counts a file's bytes when it is committed: an aborted
// write stored nothing.
type countingWriter struct {
	filestore.Writer
	m    *Metrics
	kind filestore.Kind
}

func (w countingWriter) Commit(ctx context.Context, sha string) (filestore.Info, error) {
	info, err := w.Writer.Commit(ctx, sha)
	if err == nil {
		w.m.transferred("in", w.kind, info.Size)
		w.m.transferFiles.WithLabelValues("in", string(w.kind)).Inc()
	}
	return info, err
}

type countingFile struct {
	filestore.File
	m    *Metrics
	kind filestore.Kind
}

func (f countingFile) Read(p []byte) (int, error) {
	n, err := f.File.Read(p)
	f.m.transferred("out", f.kind, int64(n))
	return n, err
}

func (f countingFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.File.ReadAt(p, off)
	f.m.transferred("out", f.kind, int64(n))
	return n, err
}

var (
	_ filestore.Walker   = countingStore{}
	_ filestore.Importer = countingImporter{}
)
