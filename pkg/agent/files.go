package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/filetransfer"
	"github.com/atelier-run/atelier/pkg/wire"
)

// fileKey names a file as ComfyUI on this box knows it.
type fileKey struct{ kind, subfolder, name string }

// outputFile is where a shipped file landed in the participant's store.
type outputFile struct{ subfolder, name string }

// shipOutput ships every file a node's UI output names ("images", "gifs",
// "video", "audio" … any list of {filename, subfolder, type}) and returns
// the output with the names the participant sees.
func (r *run) shipOutput(ctx context.Context, output json.RawMessage) (json.RawMessage, error) {
	var lists map[string]json.RawMessage
	if err := json.Unmarshal(output, &lists); err != nil || lists == nil {
		return output, nil // null or not an object: nothing to ship
	}
	for key, raw := range lists {
		var items []map[string]json.RawMessage
		if json.Unmarshal(raw, &items) != nil {
			continue // text, animated flags …
		}
		changed := false
		for _, item := range items {
			var name, sub, kind string
			if json.Unmarshal(item["filename"], &name) != nil || name == "" {
				continue
			}
			_ = json.Unmarshal(item["subfolder"], &sub)
			_ = json.Unmarshal(item["type"], &kind)
			if kind == "" {
				kind = "output"
			}
			stored, err := r.shipFile(ctx, fileKey{kind: kind, subfolder: sub, name: name})
			if err != nil {
				return nil, err
			}
			item["filename"], _ = json.Marshal(stored.name)
			item["subfolder"], _ = json.Marshal(stored.subfolder)
			changed = true
		}
		if changed {
			lists[key], _ = json.Marshal(items)
		}
	}
	return json.Marshal(lists)
}

// shipFile sends one output file to mello's file store. A file is shipped
// once per run. When the agent can read ComfyUI's folders (the process and
// simulated runtimes), it reads the file where ComfyUI wrote it; otherwise
// it copies it through ComfyUI's /view into a spool file first.
func (r *run) shipFile(ctx context.Context, k fileKey) (outputFile, error) {
	if done, ok := r.shipped[k]; ok {
		return done, nil
	}
	// The prompt was rewritten into the participant's folder, but a
	// custom node may write where it likes: only what is under <user>/
	// ships, into <user>'s store.
	if err := ownOutput(r.job.User, k); err != nil {
		return outputFile{}, err
	}
	kind, err := filestore.ParseKind(k.kind)
	if err != nil {
		return outputFile{}, fmt.Errorf("output %s: %w", k.name, err)
	}
	src, size, sum, cleanup, err := r.localOutput(k)
	if err != nil {
		r.log.Debug().Err(err).Str("file", k.name).Msg("output not readable in place; copying it through /view")
		src, size, sum, cleanup, err = r.spoolOutput(ctx, k)
		if err != nil {
			return outputFile{}, err
		}
	}
	defer cleanup()
	ref := filestore.Ref{User: r.job.User, Kind: kind, Subfolder: stripUser(r.job.User, k.subfolder), Name: k.name}
	// The transfer id is stable across retries and agent restarts, so an
	// interrupted upload resumes where it stopped. It names the content for
	// this job (job, folder, sha256), not the attempt nor the file name: an
	// agent restarted while shipping re-runs the job, and ComfyUI saves the
	// same output under its next counter (…_00002_.mp4); the receiver then
	// carries the staged part over to the new name instead of starting over.
	tid := sha256.Sum256(fmt.Appendf(nil, "%s/%s/%s/%s", r.job.ID, k.kind, k.subfolder, sum))
	stored, err := filetransfer.Send(ctx, r.s.a.nc, wire.FilePutPrefix, r.s.a.cfg.ID,
		filetransfer.Meta{TransferID: hex.EncodeToString(tid[:16]), Ref: ref, Size: size, SHA256: sum}, src)
	if err != nil {
		return outputFile{}, fmt.Errorf("send %s to mello: %w", k.name, err)
	}
	out := outputFile{subfolder: stored.Subfolder, name: stored.Name}
	r.shipped[k] = out
	return out, nil
}

// localOutput opens an output where ComfyUI wrote it, through an os.Root of
// the slot's output (or temp) folder so that no name leads outside it, and
// hashes it.
func (r *run) localOutput(k fileKey) (io.ReaderAt, int64, string, func(), error) {
	dir := r.s.ep.OutputDir
	if k.kind == string(filestore.KindTemp) {
		dir = r.s.ep.TempDir
	}
	if dir == "" || k.kind == string(filestore.KindInput) {
		return nil, 0, "", nil, errors.New("the runtime does not expose this folder")
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, 0, "", nil, err
	}
	defer root.Close()
	f, err := root.Open(filepath.Join(filepath.FromSlash(k.subfolder), k.name))
	if err != nil {
		return nil, 0, "", nil, err
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, "", nil, fmt.Errorf("%s is not a regular file", k.name)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, st.Size())); err != nil {
		f.Close()
		return nil, 0, "", nil, err
	}
	return f, st.Size(), hex.EncodeToString(h.Sum(nil)), func() { f.Close() }, nil
}

// spoolOutput copies an output from ComfyUI's /view into a spool file,
// hashing it on the way.
func (r *run) spoolOutput(ctx context.Context, k fileKey) (io.ReaderAt, int64, string, func(), error) {
	body, _, err := r.s.comfy.View(ctx, k.name, k.subfolder, k.kind)
	if err != nil {
		return nil, 0, "", nil, fmt.Errorf("read %s/%s from ComfyUI: %w", k.subfolder, k.name, err)
	}
	defer body.Close()
	spool, err := os.CreateTemp(r.s.a.spoolDir, "out-*")
	if err != nil {
		return nil, 0, "", nil, fmt.Errorf("spool: %w", err)
	}
	cleanup := func() { spool.Close(); os.Remove(spool.Name()) }
	h := sha256.New()
	size, err := io.Copy(io.MultiWriter(spool, h), body)
	if err != nil {
		cleanup()
		return nil, 0, "", nil, fmt.Errorf("spool %s: %w", k.name, err)
	}
	return spool, size, hex.EncodeToString(h.Sum(nil)), cleanup, nil
}

// stageInputs makes the job's uploaded inputs available to ComfyUI under
// inputs/<user>/, fetching from mello only what ComfyUI lacks.
func (r *run) stageInputs(ctx context.Context) error {
	for _, in := range r.job.Inputs {
		if err := r.s.stageInput(ctx, r.job.User, in); err != nil {
			return fmt.Errorf("input %s: %w", in.Name, err)
		}
	}
	return nil
}

// stageInput puts one input file into ComfyUI's input folder under
// <user>/[subfolder/], through ComfyUI's own upload route (so the external
// runtime needs no shared disk). The file comes from the agent's
// content-addressed cache, so it crosses the network once per box however
// many slots use it; a slot remembers what its ComfyUI already has.
func (s *slot) stageInput(ctx context.Context, user string, in wire.InputFile) error {
	subfolder := user
	if in.Subfolder != "" {
		sub, err := underUser(user, in.Subfolder)
		if err != nil {
			return err
		}
		subfolder = sub
	}
	key := subfolder + "/" + in.Name + "@" + in.SHA256
	s.mu.Lock()
	done := s.staged[key]
	s.mu.Unlock()
	if done {
		return nil
	}
	path, err := s.a.cachedInput(ctx, user, in)
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := s.comfy.UploadImage(ctx, in.Name, subfolder, f, true); err != nil {
		return fmt.Errorf("upload to ComfyUI: %w", err)
	}
	s.mu.Lock()
	s.staged[key] = true
	s.mu.Unlock()
	return nil
}

// cachedInput returns the path of an input in the agent's
// content-addressed cache (<spool>/inputs/<sha256>), fetching it from
// mello when the box does not have it yet. Concurrent requests for the
// same content fetch once.
func (a *Agent) cachedInput(ctx context.Context, user string, in wire.InputFile) (string, error) {
	if len(in.SHA256) != 64 || strings.Trim(in.SHA256, "0123456789abcdef") != "" {
		return "", fmt.Errorf("input %s: bad sha256 %q in the manifest", in.Name, in.SHA256)
	}
	dir := filepath.Join(a.spoolDir, "inputs")
	path := filepath.Join(dir, in.SHA256)
	mu, _ := a.inputLocks.LoadOrStore(in.SHA256, &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	if st, err := os.Stat(path); err == nil && st.Size() == in.Size {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", fmt.Errorf("input cache: %w", err)
	}
	tmp := path + ".part"
	ref := filestore.Ref{User: user, Kind: filestore.KindInput, Subfolder: in.Subfolder, Name: in.Name}
	if _, err := filetransfer.FetchFile(ctx, a.nc, wire.FileGetPrefix, a.cfg.ID, ref, tmp, in.SHA256); err != nil {
		return "", fmt.Errorf("fetch %s from mello: %w", in.Name, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("input cache: %w", err)
	}
	return path, nil
}
