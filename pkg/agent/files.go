package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/filetransfer"
	"github.com/atelier-run/atelier/pkg/wire"
)

// fileKey names a file as ComfyUI on this box knows it.
type fileKey struct{ kind, subfolder, name string }

// outputFile is where a shipped file landed in the participant's store.
type outputFile struct{ subfolder, name string }

// outputPlace is where a file appears in its job's outputs: the output
// node, the list of the node's UI output ("images", "gifs", "video" …) and
// the position in it. A re-run of the job (after an agent restart) names
// the same place for the same output, under ComfyUI's next counter.
type outputPlace struct {
	node, list string
	index      int
}

// shipOutput ships every file a node's UI output names ("images", "gifs",
// "video", "audio" … any list of {filename, subfolder, type}) and returns
// the output with the names the participant sees.
func (r *run) shipOutput(ctx context.Context, node string, output json.RawMessage) (json.RawMessage, error) {
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
		for i, item := range items {
			var name, sub, kind string
			if json.Unmarshal(item["filename"], &name) != nil || name == "" {
				continue
			}
			_ = json.Unmarshal(item["subfolder"], &sub)
			_ = json.Unmarshal(item["type"], &kind)
			if kind == "" {
				kind = "output"
			}
			stored, err := r.shipFile(ctx, fileKey{kind: kind, subfolder: sub, name: name}, outputPlace{node: node, list: key, index: i})
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

// shipFile sends one output file, found at place in the job's outputs, to
// mello's file store. A file is shipped once per run. When the agent can
// read ComfyUI's folders (the process and simulated runtimes), it reads
// the file where ComfyUI wrote it; otherwise it copies it through
// ComfyUI's /view into a spool file first.
func (r *run) shipFile(ctx context.Context, k fileKey, place outputPlace) (outputFile, error) {
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
	lf := localFile{dir: r.outputDir(k), rel: filepath.Join(filepath.FromSlash(k.subfolder), k.name)}
	if done, ok := r.s.a.emptiedOutput(lf); ok {
		// ComfyUI names a file this agent shipped and emptied: a cached
		// node sends its old "executed" again. It is in the
		// participant's store already.
		r.shipped[k] = done
		return done, nil
	}
	src, size, cleanup, err := r.localOutput(k)
	local := err == nil
	if err != nil {
		r.log.Debug().Err(err).Str("file", k.name).Msg("output not readable in place; copying it through /view")
		src, size, cleanup, err = r.spoolOutput(ctx, k)
		if err != nil {
			return outputFile{}, err
		}
	}
	defer cleanup()
	// A PNG carries the participant's own prompt, not the rewritten one
	// ComfyUI ran (pngmeta.go).
	src, size, err = r.ownMetadata(src, size, k)
	if err != nil {
		return outputFile{}, fmt.Errorf("read %s: %w", k.name, err)
	}
	ref := filestore.Ref{User: r.job.User, Kind: kind, Subfolder: stripUser(r.job.User, k.subfolder), Name: k.name}
	// The sha256 is computed while the file is sent (Meta.SHA256 ""): the
	// file is read once, and its first chunk leaves at once instead of after
	// a hashing pass over a multi-GB video. The receiver checks the sum the
	// commit brings against what it received.
	stored, err := filetransfer.Send(ctx, r.s.a.nc, wire.FilePutPrefix, r.s.a.cfg.ID,
		filetransfer.Meta{TransferID: outputTransferID(r.job.ID, k, place), Ref: ref, Size: size}, src)
	if err != nil {
		return outputFile{}, fmt.Errorf("send %s to mello: %w", k.name, err)
	}
	out := outputFile{subfolder: stored.Subfolder, name: stored.Name}
	r.shipped[k] = out
	if local {
		lf.stored = out
		r.mu.Lock()
		r.localOutputs = append(r.localOutputs, lf)
		r.mu.Unlock()
	}
	return out, nil
}

// localFile is a file in one of ComfyUI's folders, and where it was
// stored once shipped.
type localFile struct {
	dir, rel string
	stored   outputFile
}

func (f localFile) path() string { return filepath.Join(f.dir, f.rel) }

// emptyShipped truncates a shipped output where ComfyUI wrote it: the
// space is freed, and the name stays, so ComfyUI goes on numbering new
// files after it (it counts the names in the folder). ComfyUI may name
// the file again (a cached output node re-sends its "executed"): the
// agent remembers where it stored it (emptiedOutput). Through an os.Root,
// like the read. A file that is gone is no error.
func (a *Agent) emptyShipped(f localFile) error {
	root, err := os.OpenRoot(f.dir)
	if err != nil {
		return err
	}
	defer root.Close()
	h, err := root.OpenFile(f.rel, os.O_WRONLY|os.O_TRUNC, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	h.Close()
	a.emptiedMu.Lock()
	defer a.emptiedMu.Unlock()
	if a.emptied == nil {
		a.emptied = map[string]outputFile{}
	}
	a.emptied[f.path()] = f.stored
	return nil
}

// cannotEmpty reports, once per slot, that the outputs its ComfyUI writes
// cannot be emptied, and what to do: every output then stays on the box's
// scratch disk, which fills. The usual cause is a ComfyUI running as
// another user than the agent (root in a container, the agent not).
func (s *slot) cannotEmpty(f localFile, err error) {
	if !s.emptyWarned.CompareAndSwap(false, true) {
		return
	}
	ev := s.log.Error().Err(err).Str("file", f.path()).Int("agent_uid", os.Geteuid())
	if st, serr := os.Stat(f.path()); serr == nil {
		if uid, ok := fileOwner(st); ok {
			ev = ev.Int("owner_uid", uid)
		}
	}
	ev.Msg("cannot empty the outputs ComfyUI writes once they are shipped: they stay on the box and fill its scratch disk. " +
		"Run ComfyUI as the agent's user (docker runtime: --docker-user, by default the agent's uid:gid; not \"image\" with a root image) " +
		"or run the agent as root; --keep-outputs keeps outputs on purpose. Logged once per slot")
}

// emptiedOutput returns where an output this agent emptied was stored,
// if the file is still the empty one.
func (a *Agent) emptiedOutput(f localFile) (outputFile, bool) {
	if f.dir == "" {
		return outputFile{}, false
	}
	a.emptiedMu.Lock()
	stored, ok := a.emptied[f.path()]
	a.emptiedMu.Unlock()
	if !ok {
		return outputFile{}, false
	}
	root, err := os.OpenRoot(f.dir)
	if err != nil {
		return outputFile{}, false
	}
	defer root.Close()
	if st, err := root.Stat(f.rel); err != nil || st.Size() != 0 {
		// Written again since (or gone): not the file we shipped.
		a.emptiedMu.Lock()
		delete(a.emptied, f.path())
		a.emptiedMu.Unlock()
		return outputFile{}, false
	}
	return stored, true
}

// outputDir is the folder of ComfyUI's that holds k ("": not exposed).
func (r *run) outputDir(k fileKey) string {
	switch k.kind {
	case string(filestore.KindTemp):
		return r.s.ep.TempDir
	case string(filestore.KindInput):
		return ""
	}
	return r.s.ep.OutputDir
}

// localOutput opens an output where ComfyUI wrote it, through an os.Root of
// the slot's output (or temp) folder so that no name leads outside it.
func (r *run) localOutput(k fileKey) (io.ReaderAt, int64, func(), error) {
	dir := r.outputDir(k)
	if dir == "" {
		return nil, 0, nil, errors.New("the runtime does not expose this folder")
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, 0, nil, err
	}
	defer root.Close()
	f, err := root.Open(filepath.Join(filepath.FromSlash(k.subfolder), k.name))
	if err != nil {
		return nil, 0, nil, err
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, nil, fmt.Errorf("%s is not a regular file", k.name)
	}
	return f, st.Size(), func() { f.Close() }, nil
}

// spoolOutput copies an output from ComfyUI's /view into a spool file.
func (r *run) spoolOutput(ctx context.Context, k fileKey) (io.ReaderAt, int64, func(), error) {
	body, _, err := r.s.comfy.View(ctx, k.name, k.subfolder, k.kind)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("read %s/%s from ComfyUI: %w", k.subfolder, k.name, err)
	}
	defer body.Close()
	spool, err := os.CreateTemp(r.s.a.spoolDir, "out-*")
	if err != nil {
		return nil, 0, nil, fmt.Errorf("spool: %w", err)
	}
	cleanup := func() { spool.Close(); os.Remove(spool.Name()) }
	size, err := io.Copy(spool, body)
	if err != nil {
		cleanup()
		return nil, 0, nil, fmt.Errorf("spool %s: %w", k.name, err)
	}
	return spool, size, cleanup, nil
}

// outputTransferID is the transfer id of an output upload. It is stable
// across retries and agent restarts, so an interrupted upload resumes where
// it stopped, and it names where the file is in the job's outputs (job,
// place, folder), not the attempt nor the file name: an agent restarted
// while shipping re-runs the job, and ComfyUI saves the same output under
// its next counter (…_00002_.mp4); the receiver then carries the staged
// part over to the new name (same id, same size) instead of starting over.
// A re-run whose bytes differ from what was staged (a sampler that is not
// deterministic) fails the commit's sha256 check, and the upload starts
// over from the first byte: stitched halves of two runs are never stored.
func outputTransferID(job string, k fileKey, place outputPlace) string {
	id := sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%s\x00%d\x00%s\x00%s", job, place.node, place.list, place.index, k.kind, k.subfolder))
	return hex.EncodeToString(id[:16])
}

// stageInputs makes the job's uploaded inputs available to ComfyUI under
// inputs/<user>/, fetching from mello only what the box lacks. The run
// holds each input in the box's cache until it ends.
func (r *run) stageInputs(ctx context.Context) error {
	for _, in := range r.job.Inputs {
		release, err := r.s.stageInput(ctx, r.job.User, in)
		if err != nil {
			return fmt.Errorf("input %s: %w", in.Name, err)
		}
		r.mu.Lock()
		r.holds = append(r.holds, release)
		r.mu.Unlock()
	}
	return nil
}

// stageInput puts one input file into ComfyUI's input folder under
// <user>/[subfolder/]. The file comes from the agent's content-addressed
// cache, so it crosses the network once per box however many slots use
// it; a slot remembers what its ComfyUI already has. Where the runtime
// exposes ComfyUI's input folder (process, docker, simulated) the file is
// linked there from the cache: ComfyUI's upload route reads a whole body
// into memory and refuses one over --max-upload-size (100 MB by
// default), which a video input easily is. An external ComfyUI, whose
// folders the agent cannot see, gets the file through that route.
func (s *slot) stageInput(ctx context.Context, user string, in wire.InputFile) (release func(), err error) {
	subfolder := user
	if in.Subfolder != "" {
		sub, err := underUser(user, in.Subfolder)
		if err != nil {
			return nil, err
		}
		subfolder = sub
	}
	if strings.ContainsAny(in.Name, "/\\\x00") || in.Name == "" || in.Name == "." || in.Name == ".." {
		return nil, fmt.Errorf("%w: input name %q", ErrPathEscapes, in.Name)
	}
	path, release, err := s.a.inputs.acquire(ctx, in.SHA256, in.Size, func(ctx context.Context, dst string) error {
		ref := filestore.Ref{User: user, Kind: filestore.KindInput, Subfolder: in.Subfolder, Name: in.Name}
		// The fetch waits out a NATS reconnect and goes on from what the
		// part file holds; its logger says so.
		if _, err := filetransfer.FetchFile(ctx, s.a.nc, wire.FileGetPrefix, s.a.cfg.ID, ref, dst, in.SHA256, filetransfer.WithLogger(s.log)); err != nil {
			return fmt.Errorf("fetch %s from mello: %w", in.Name, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	key := subfolder + "/" + in.Name + "@" + in.SHA256
	s.mu.Lock()
	done := s.staged[key]
	s.mu.Unlock()
	if done {
		return release, nil
	}
	if s.ep.InputDir != "" {
		dst := filepath.Join(s.ep.InputDir, filepath.FromSlash(subfolder), in.Name)
		if err := s.a.inputs.place(in.SHA256, dst); err != nil {
			release()
			return nil, fmt.Errorf("place in ComfyUI's input folder: %w", err)
		}
	} else {
		f, err := os.Open(path)
		if err != nil {
			release()
			return nil, err
		}
		_, err = s.comfy.UploadImage(ctx, in.Name, subfolder, f, true)
		f.Close()
		if err != nil {
			release()
			return nil, fmt.Errorf("upload to ComfyUI: %w", err)
		}
	}
	s.mu.Lock()
	s.staged[key] = true
	s.mu.Unlock()
	return release, nil
}

// forgetStaged drops what the slot remembers having staged of a content
// (the cache evicted it, and the links it had placed).
func (s *slot) forgetStaged(sha string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.staged {
		if strings.HasSuffix(k, "@"+sha) {
			delete(s.staged, k)
		}
	}
}
