package proxy

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/filestore/diskstore"
	"github.com/atelier-run/atelier/pkg/wire"
)

// fuzzCatalog is testObjectInfo plus an upload widget, decoded once.
func fuzzCatalog(t testing.TB) *poolCatalog {
	oi := strings.Replace(testObjectInfo, `"SaveImage":`,
		`"LoadImage": {"input": {"required": {"image": [["a.png"], {"image_upload": true}]}}, "output": ["IMAGE", "MASK"], "name": "LoadImage", "output_node": false},
 "SaveImage":`, 1)
	var raw json.RawMessage = []byte(oi)
	pc := &poolCatalog{}
	pc.ObjectInfo = raw
	b, err := encodeTestCatalog(pc)
	require.NoError(t, err)
	cat, err := decodePoolCatalog(b)
	require.NoError(t, err)
	return cat
}

// FuzzParsePromptRequest: no body makes the parser panic, every refusal
// has a status, and every accepted prompt names outputs and only accepts
// canonical ids.
func FuzzParsePromptRequest(f *testing.F) {
	for _, s := range []string{
		`{"prompt": ` + testPrompt + `}`,
		`{"prompt": ` + testPrompt + `, "client_id": "x", "number": "5", "front": true, "prompt_id": "0b0d1a3c-9c1e-4a57-8f3e-2a1b3c4d5e6f"}`,
		`{"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "sub/a.png [input]"}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}}`,
		`{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": "1e3"}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 7]}}}, "partial_execution_targets": ["2"]}`,
		`{"prompt": {"1": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}}`,
		`{"prompt": {"1": 5}}`, `{"prompt": []}`, `{}`, `null`, `{"prompt": {"1": {"class_type": ["x"]}}}`,
	} {
		f.Add([]byte(s))
	}
	cat := fuzzCatalog(f)
	stat := func(kind filestore.Kind, sub, name string) (filestore.Info, error) {
		if kind == filestore.KindInput && name == "a.png" {
			return filestore.Info{Size: 1, SHA256: strings.Repeat("0", 64)}, nil
		}
		return filestore.Info{}, filestore.ErrNotFound
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, c := range []*poolCatalog{cat, nil} {
			req, rerr := parsePromptRequest(body, c, parseOptions{stat: stat})
			if rerr != nil {
				require.Nil(t, req)
				require.GreaterOrEqual(t, rerr.Status, 400)
				if rerr.Body != nil {
					require.True(t, json.Valid(rerr.Body))
				}
				continue
			}
			require.NotEmpty(t, req.Outputs)
			require.True(t, json.Valid(req.Prompt))
			require.True(t, json.Valid(req.ExtraData))
			if req.PromptID != "" {
				require.True(t, canonicalUUID(req.PromptID))
			}
			for _, in := range req.Inputs {
				require.NoError(t, filestore.ValidateName(in.Name))
			}
		}
	})
}

// FuzzUploadNames: whatever a browser or a workflow sends as a file name,
// what reaches the store is a single valid name component.
func FuzzUploadNames(f *testing.F) {
	for _, s := range []string{"a.png", "sub/a.png [input]", `C:\x\y.png`, "../../etc/passwd", "a.png [output]",
		"/abs.png", "..", " [temp]", "x/../../y.png", "name\x00.png", "a (1).png"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := baseName(s)
		require.NotContains(t, b, "/")
		require.NotContains(t, b, "\\")
		kind, sub, name := uploadRef(s)
		require.NoError(t, kind.Validate())
		require.NotContains(t, name, "/")
		if clean, err := filestore.CleanSubfolder(sub); err == nil {
			require.NotContains(t, "/"+clean+"/", "/../")
		}
		n, k := annotatedName(s)
		require.True(t, k == "" || k == "input" || k == "output" || k == "temp")
		require.LessOrEqual(t, len(n), len(s))
	})
}

// FuzzView: /view never serves a file outside the participant's folders
// and never fails with a 5xx on a hostile name.
func FuzzView(f *testing.F) {
	for _, q := range []string{"filename=a.png", "filename=a.png&subfolder=s", "filename=a.png%20%5Binput%5D",
		"filename=../x", "filename=a.png&subfolder=../user002", "filename=a.png&type=models", "filename=",
		"filename=%2Fetc%2Fpasswd", "filename=s%2Fa.png", "filename=a.png&subfolder=%2Ftmp"} {
		f.Add(q)
	}
	dir := f.TempDir()
	store := diskstore.New(datalayout.Layout{Root: dir})
	ctx := context.Background()
	put := func(user string, kind filestore.Kind, sub, name, content string) {
		w, err := store.Create(ctx, filestore.Ref{User: user, Kind: kind, Subfolder: sub, Name: name})
		require.NoError(f, err)
		_, _ = w.Write([]byte(content))
		_, err = w.Commit(ctx, "")
		require.NoError(f, err)
	}
	put(alice, filestore.KindOutput, "", "a.png", "alice-out")
	put(alice, filestore.KindInput, "s", "a.png", "alice-in")
	put(bob, filestore.KindOutput, "", "b.png", "BOB-SECRET")
	p := &Proxy{cfg: Config{Store: store}}
	f.Fuzz(func(t *testing.T, q string) {
		if _, err := url.ParseQuery(q); err != nil {
			return
		}
		req := httptest.NewRequest(http.MethodGet, "/"+alice+"/view?"+q, nil)
		req = req.WithContext(context.WithValue(req.Context(), sessionKey{}, session{User: alice}))
		rec := httptest.NewRecorder()
		p.handleView(rec, req)
		require.Less(t, rec.Code, 500, "query %q: %s", q, rec.Body)
		require.NotContains(t, rec.Body.String(), "BOB-SECRET")
	})
}

func encodeTestCatalog(pc *poolCatalog) ([]byte, error) {
	return wire.EncodeCatalog(pc.Catalog)
}
