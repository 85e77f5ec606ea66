package proxy

import (
	"context"
	"encoding/json"
	"mime"
	"path"
	"strings"

	"github.com/atelier-run/atelier/pkg/comfyvalidate"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/pyjson"
)

// uploadInput is a combo input that object_info flags as an upload widget
// (LoadImage's image, LoadVideo's file …). In ComfyUI its options are the
// server's input folder; in Atelier that folder is the participant's own
// on mello, so the proxy fills those lists per participant.
type uploadInput struct {
	section string // "required" or "optional"
	name    string
	kind    string // "image", "video" or "audio"
}

// uploadInputsOf finds the upload combos of every class of the catalog.
func uploadInputsOf(oi *comfyvalidate.ObjectInfo) map[string][]uploadInput {
	out := map[string][]uploadInput{}
	for _, class := range oi.Classes() {
		d, _ := oi.Lookup(class)
		for _, sec := range []struct {
			name   string
			inputs []comfyvalidate.Input
		}{{"required", d.Required}, {"optional", d.Optional}} {
			for _, in := range sec.inputs {
				if !in.IsCombo() {
					continue
				}
				switch k := in.UploadKind(); k {
				case "image", "video", "audio":
					if folder, ok := in.Opts.Str("image_folder"); ok && folder != "input" {
						// LoadImageOutput lists the output folder from the
						// browser (a remote combo): nothing to fill in.
						continue
					}
					out[class] = append(out[class], uploadInput{section: sec.name, name: in.Name, kind: k})
				}
			}
		}
	}
	return out
}

// mediaOf is the media class ("image", "video", "audio" …) of a file name,
// as ComfyUI's filter_files_content_types guesses it from the extension.
func mediaOf(name string) string {
	ext := strings.ToLower(path.Ext(name))
	switch ext {
	case ".webp", ".png", ".jpg", ".jpeg", ".jpe", ".gif", ".bmp", ".tif", ".tiff", ".svg", ".avif", ".heic":
		return "image"
	case ".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v":
		return "video"
	case ".mp3", ".wav", ".flac", ".ogg", ".opus", ".m4a", ".aac":
		return "audio"
	}
	base, _, _ := mime.ParseMediaType(mime.TypeByExtension(ext))
	media, _, _ := strings.Cut(base, "/")
	return media
}

// participantInputs lists the participant's top-level input files by
// media class, sorted by name: LoadImage's option list in ComfyUI.
func (p *Proxy) participantInputs(ctx context.Context, user string) (map[string][]string, error) {
	infos, err := p.cfg.Store.List(ctx, user, filestore.KindInput, "")
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, info := range infos {
		m := mediaOf(info.Ref.Name)
		out[m] = append(out[m], info.Ref.Name)
	}
	return out, nil
}

// withUploadLists returns a class's object_info entry with its upload
// combos listing files (by media class) instead of the GPU box's.
func withUploadLists(raw json.RawMessage, ups []uploadInput, files map[string][]string) json.RawMessage {
	v, err := pyjson.Decode(raw)
	if err != nil {
		return raw
	}
	entry, ok := v.(pyjson.Object)
	if !ok {
		return raw
	}
	inV, _ := entry.Get("input")
	sections, _ := inV.(pyjson.Object)
	for _, up := range ups {
		secV, _ := sections.Get(up.section)
		sec, _ := secV.(pyjson.Object)
		cfgV, _ := sec.Get(up.name)
		cfg, _ := cfgV.([]any)
		if len(cfg) == 0 {
			continue
		}
		list := make([]any, 0, len(files[up.kind]))
		for _, f := range files[up.kind] {
			list = append(list, f)
		}
		switch first := cfg[0].(type) {
		case []any:
			cfg[0] = list
		case string:
			// v3: ["COMBO", {"options": [...]}]
			if first != "COMBO" || len(cfg) < 2 {
				continue
			}
			opts, ok := cfg[1].(pyjson.Object)
			if !ok {
				continue
			}
			opts.Set("options", list)
			cfg[1] = opts
		}
	}
	return comfyvalidate.RawOf(entry)
}
