package proxy

import (
	"context"
	"errors"
	"path"
	"strings"

	"github.com/atelier-run/atelier/pkg/comfyvalidate"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/pyjson"
	"github.com/atelier-run/atelier/pkg/wire"
)

// inputStat looks up one of the participant's stored files for validation
// and the job's input manifest.
type inputStat func(kind filestore.Kind, subfolder, name string) (filestore.Info, error)

// storeInputs is inputStat over the participant's files in the store,
// with the sha256 filled in (the agent stages inputs by content).
func (p *Proxy) storeInputs(ctx context.Context, user string) inputStat {
	return func(kind filestore.Kind, subfolder, name string) (filestore.Info, error) {
		ref := filestore.Ref{User: user, Kind: kind, Subfolder: subfolder, Name: name}
		info, err := p.cfg.Store.Stat(ctx, ref)
		if err != nil {
			return info, err
		}
		if info.SHA256 == "" {
			sum, err := filestore.SHA256Of(ctx, p.cfg.Store, ref)
			if err != nil {
				return info, err
			}
			info.SHA256 = sum
		}
		return info, nil
	}
}

// uploadRef splits a widget value naming an uploaded file, as LoadImage
// reads it: an optional " [input]" / " [output]" / " [temp]" annotation
// selects the folder (default input), and "sub/dir/name.png" a subfolder.
func uploadRef(value string) (kind filestore.Kind, subfolder, name string) {
	kind = filestore.KindInput
	for _, k := range []filestore.Kind{filestore.KindInput, filestore.KindOutput, filestore.KindTemp} {
		if n, ok := strings.CutSuffix(value, " ["+string(k)+"]"); ok {
			value, kind = n, k
			break
		}
	}
	value = strings.ReplaceAll(value, "\\", "/")
	dir, name := path.Split(value)
	return kind, strings.TrimSuffix(dir, "/"), name
}

// uploadCatalog adds, to every input that object_info flags as an upload
// widget (image_upload, video_upload, audio_upload, upload), the check that
// LoadImage's VALIDATE_INPUTS makes in ComfyUI: the file must exist, here
// in the participant's own files on mello. Like VALIDATE_INPUTS, it
// replaces the combo check (the option list is the GPU box's input folder,
// which is not the participant's).
type uploadCatalog struct {
	base  comfyvalidate.Catalog
	stat  inputStat
	cache map[string]*comfyvalidate.NodeDef
}

func (c *uploadCatalog) Lookup(class string) (*comfyvalidate.NodeDef, bool) {
	if d, ok := c.cache[class]; ok {
		return d, true
	}
	d, ok := c.base.Lookup(class)
	if !ok {
		return nil, false
	}
	var uploads []string
	kinds := map[string]string{}
	for _, in := range append(append([]comfyvalidate.Input(nil), d.Required...), d.Optional...) {
		if k := in.UploadKind(); k != "" && in.IsCombo() {
			uploads = append(uploads, in.Name)
			kinds[in.Name] = k
		}
	}
	if len(uploads) > 0 {
		cp := *d
		cp.ValidateInputs = append(append([]string(nil), d.ValidateInputs...), uploads...)
		cp.Validate = func(args pyjson.Object) (bool, string) {
			for _, m := range args {
				k, ok := kinds[m.Key]
				if !ok {
					continue
				}
				v := pyjson.Str(m.Value)
				if !c.exists(v) {
					return false, "Invalid " + k + " file: " + v
				}
			}
			return true, ""
		}
		d = &cp
	}
	if c.cache == nil {
		c.cache = map[string]*comfyvalidate.NodeDef{}
	}
	c.cache[class] = d
	return d, true
}

func (c *uploadCatalog) exists(value string) bool {
	if c.stat == nil {
		return false
	}
	kind, sub, name := uploadRef(value)
	if name == "" {
		return false
	}
	_, err := c.stat(kind, sub, name)
	return err == nil
}

// inputManifest lists the participant's input files that prompt's upload
// widgets reference, so the agent can stage them (wire.Job.Inputs). Only
// validated prompts get here: every referenced file exists.
func inputManifest(cat comfyvalidate.Catalog, prompt pyjson.Object, stat inputStat) ([]wire.InputFile, error) {
	var out []wire.InputFile
	seen := map[string]bool{}
	for _, m := range prompt {
		node, _ := m.Value.(pyjson.Object)
		class, _ := node.Str("class_type")
		def, ok := cat.Lookup(class)
		if !ok {
			continue
		}
		inputs, _ := node.Get("inputs")
		io, _ := inputs.(pyjson.Object)
		for _, in := range append(append([]comfyvalidate.Input(nil), def.Required...), def.Optional...) {
			if in.UploadKind() == "" {
				continue
			}
			v, ok := io.Get(in.Name)
			s, isStr := v.(string)
			if !ok || !isStr {
				continue // a link: the file comes from another node
			}
			kind, sub, name := uploadRef(s)
			if kind != filestore.KindInput || name == "" {
				// The agent stages input files only; outputs and temp
				// files referenced by annotation are the GPU box's own.
				continue
			}
			key := sub + "/" + name
			if seen[key] {
				continue
			}
			seen[key] = true
			info, err := stat(kind, sub, name)
			if err != nil {
				if errors.Is(err, filestore.ErrNotFound) || errors.Is(err, filestore.ErrInvalidName) {
					continue // no catalog flagged it as required; ComfyUI will say
				}
				return nil, err
			}
			out = append(out, wire.InputFile{Subfolder: sub, Name: name, SHA256: info.SHA256, Size: info.Size})
		}
	}
	return out, nil
}
