package filestore_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/filestore"
)

func TestValidateName(t *testing.T) {
	t.Parallel()
	for _, n := range []string{"a.png", "ComfyUI_00001_.png", "cat (1).png", "naïve.jpg", "x", "a..b", "a b", strings.Repeat("a", 255)} {
		require.NoError(t, filestore.ValidateName(n), n)
	}
	for _, n := range []string{"", ".", "..", ".hidden", "a/b", `a\b`, "a\x00", "a\nb", "\x7f", "\xff", strings.Repeat("a", 256), "/abs"} {
		require.ErrorIs(t, filestore.ValidateName(n), filestore.ErrInvalidName, "%q", n)
	}
}

func TestCleanSubfolder(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"": "", "video": "video", "video/": "video", "a/b/c": "a/b/c"} {
		got, err := filestore.CleanSubfolder(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got)
	}
	for _, in := range []string{"/", "/a", "a//b", "a/./b", "a/../b", "..", "../x", "a/..", "a/b//", `a\b`, "a/\x00", "./a", strings.Repeat("a/", 17) + "a"} {
		_, err := filestore.CleanSubfolder(in)
		require.ErrorIs(t, err, filestore.ErrInvalidName, "%q", in)
	}
}

func TestParseKind(t *testing.T) {
	t.Parallel()
	for _, k := range []string{"input", "output", "temp"} {
		got, err := filestore.ParseKind(k)
		require.NoError(t, err)
		require.Equal(t, filestore.Kind(k), got)
	}
	_, err := filestore.ParseKind("models")
	require.ErrorIs(t, err, filestore.ErrInvalidName)
}

// FuzzRefValidate checks the invariant the store relies on: whatever passes
// validation joins into a path that stays below the kind folder, and is
// unchanged by cleaning.
func FuzzRefValidate(f *testing.F) {
	for _, s := range [][2]string{
		{"", "a.png"}, {"video/", "x.mp4"}, {"../..", "passwd"}, {"a//b", "c"}, {"a/./b", "c"},
		{"a", ".."}, {"a", "b/c"}, {"a\x00", "b"}, {`a\..`, "b"}, {"%2e%2e", "x"}, {"…", "…"}, {"a/", "."},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, subfolder, name string) {
		ref, err := filestore.Ref{User: "user007", Kind: filestore.KindOutput, Subfolder: subfolder, Name: name}.Validate()
		if err != nil {
			if !errors.Is(err, filestore.ErrInvalidName) {
				t.Fatalf("error %v does not wrap ErrInvalidName", err)
			}
			return
		}
		rel := ref.Name
		if ref.Subfolder != "" {
			rel = ref.Subfolder + "/" + ref.Name
		}
		if !filepath.IsLocal(rel) {
			t.Fatalf("%q is not local", rel)
		}
		if filepath.Clean(rel) != rel {
			t.Fatalf("%q is not clean", rel)
		}
		if strings.ContainsAny(rel, "\\\x00") || strings.Contains(ref.Name, "/") {
			t.Fatalf("%q contains a forbidden character", rel)
		}
		for _, seg := range strings.Split(rel, "/") {
			if seg == "" || seg == "." || seg == ".." || strings.HasPrefix(seg, ".") {
				t.Fatalf("%q has segment %q", rel, seg)
			}
		}
		// Validation is idempotent.
		again, err := ref.Validate()
		if err != nil || again != ref {
			t.Fatalf("not idempotent: %v %v", again, err)
		}
	})
}
