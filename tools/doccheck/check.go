package main

import (
	"bytes"
	"fmt"
	"go/scanner"
	"go/token"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// Problem is one dangling reference.
type Problem struct {
	File string
	Line int
	Ref  string
	Why  string
}

func (p Problem) String() string { return fmt.Sprintf("%s:%d: %s: %s", p.File, p.Line, p.Ref, p.Why) }

var (
	// A Markdown document named in text, with the sections cited after it:
	// "comfyui-api.md §2.1, §3.4" or `DESIGN.md "Data layout"`.
	docRef  = regexp.MustCompile("([A-Za-z0-9_./-]*[A-Za-z0-9_-]+\\.md)`?((?:\\s*(?:,|and)?\\s*§\\s*[0-9]+(?:\\.[0-9]+)*)*)(?:\\s+\"([^\"]+)\")?")
	section = regexp.MustCompile(`§\s*([0-9]+(?:\.[0-9]+)*)`)
	// A path inside the repository: a top-level folder, then more.
	// The folders named like a binary (agent/, broker/ …) are words in
	// prose too ("agent/slot"), so there only a file name counts.
	repoPath   = regexp.MustCompile(`(?:^|[\s("'\x60\[])(\./)?((?:pkg|internal|test|tools|deploy|docs|examples)/[A-Za-z0-9_./-]*[A-Za-z0-9_/-])`)
	binaryFile = regexp.MustCompile(`(?:^|[\s("'\x60\[])(\./)?((?:agent|broker|frontend-proxy|comfysim)/[A-Za-z0-9_/-]*\.[a-z]+)\b`)
	// A Go file named on its own: "orphans.go".
	goFile = regexp.MustCompile(`(?:^|[\s("'\x60])([a-z0-9_]+\.go)\b`)
	// A Markdown link target.
	mdLink = regexp.MustCompile(`\]\(([^)\s#]+)(#[^)\s]*)?\)`)
)

// externalMarker, near the top of a file, marks the files it names as
// other projects'.
const externalMarker = "doccheck: names files of other projects"

// notFiles are words that look like a Go file name and are not one of
// ours: the NATS Go client is called nats.go.
var notFiles = map[string]bool{"nats.go": true}

// Check scans the repository's files under root and returns every
// dangling reference.
func Check(root string) ([]Problem, error) {
	files, err := listFiles(root)
	if err != nil {
		return nil, err
	}
	exists := map[string]bool{}
	byBase := map[string][]string{}
	for _, f := range files {
		exists[f] = true
		byBase[path.Base(f)] = append(byBase[path.Base(f)], f)
		for d := path.Dir(f); d != "."; d = path.Dir(d) {
			exists[d] = true
		}
	}
	c := &checker{root: root, exists: exists, byBase: byBase, headings: map[string][]string{}}
	var problems []Problem
	for _, f := range files {
		if !scanned(f) {
			continue
		}
		ps, err := c.file(f)
		if err != nil {
			return nil, err
		}
		problems = append(problems, ps...)
	}
	sort.Slice(problems, func(i, j int) bool {
		if problems[i].File != problems[j].File {
			return problems[i].File < problems[j].File
		}
		return problems[i].Line < problems[j].Line
	})
	return problems, nil
}

// listFiles lists the files git knows or would add, relative to root.
func listFiles(root string) ([]string, error) {
	cmd := exec.Command("git", "ls-files", "--cached", "--others", "--exclude-standard")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("git ls-files: %w", err)
	}
	var files []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(root, l)); err == nil { // deleted, not yet committed
			files = append(files, l)
		}
	}
	return files, nil
}

// scanned reports whether f is a file whose text may cite others: Go
// sources and tests, documents, build and deploy files. Test data and the
// user's seed documents (kept as written) are not.
func scanned(f string) bool {
	if strings.Contains(f, "/testdata/") || strings.HasPrefix(f, "docs/seeds/") {
		return false
	}
	switch path.Ext(f) {
	case ".go", ".md", ".yml", ".yaml", ".sh", ".service":
		return true
	}
	b := path.Base(f)
	return b == "Makefile" || strings.HasSuffix(b, "Dockerfile") || strings.HasPrefix(f, ".ci/")
}

type checker struct {
	root     string
	exists   map[string]bool
	byBase   map[string][]string
	headings map[string][]string // document → its headings
}

func (c *checker) file(f string) ([]Problem, error) {
	data, err := os.ReadFile(filepath.Join(c.root, f))
	if err != nil {
		return nil, err
	}
	lines := textLines(data)
	if strings.HasSuffix(f, ".go") {
		lines = commentLines(data) // only comments cite documents
	}
	// A document about other projects' code (docs/STYLE.md) says so, and
	// its file names are not looked for here; its documents still are.
	external := bytes.Contains(data[:min(len(data), 2048)], []byte(externalMarker))
	var problems []Problem
	seen := map[string]bool{}
	inFence := false
	for _, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l.text), "```") {
			inFence = !inFence
		}
		report := func(ref, why string) {
			if k := fmt.Sprint(l.n, ref); !seen[k] {
				seen[k] = true
				problems = append(problems, Problem{f, l.n, ref, why})
			}
		}
		c.docRefs(f, l.text, report)
		if strings.HasSuffix(f, ".md") {
			c.links(f, l.text, report)
		}
		if !external {
			c.repoPaths(l.text, report)
			if !inFence {
				c.goFiles(l.text, report)
			}
		}
	}
	return problems, nil
}

type line struct {
	n    int
	text string
}

func textLines(data []byte) []line {
	var out []line
	for i, t := range strings.Split(string(data), "\n") {
		out = append(out, line{i + 1, t})
	}
	return out
}

// commentLines returns the lines of a Go file's comments.
func commentLines(data []byte) []line {
	fset := token.NewFileSet()
	file := fset.AddFile("", fset.Base(), len(data))
	var s scanner.Scanner
	s.Init(file, data, nil, scanner.ScanComments)
	var out []line
	for {
		pos, tok, lit := s.Scan()
		if tok == token.EOF {
			return out
		}
		if tok != token.COMMENT {
			continue
		}
		first := fset.Position(pos).Line
		for i, t := range strings.Split(lit, "\n") {
			out = append(out, line{first + i, t})
		}
	}
}

func (c *checker) docRefs(f, line string, report func(ref, why string)) {
	for _, m := range docRef.FindAllStringSubmatch(line, -1) {
		name, sections, quoted := m[1], m[2], m[3]
		if strings.Contains(name, "://") || strings.HasPrefix(name, "http") {
			continue
		}
		doc, ok := c.resolveDoc(f, name)
		if !ok {
			report(name, "no such document in the repository")
			continue
		}
		for _, s := range section.FindAllStringSubmatch(sections, -1) {
			if !c.hasHeading(doc, func(h string) bool {
				return h == s[1] || strings.HasPrefix(h, s[1]+" ") || strings.HasPrefix(h, s[1]+". ")
			}) {
				report(name+" §"+s[1], "no such section in "+doc)
			}
		}
		if quoted != "" && !c.hasHeading(doc, func(h string) bool { return strings.Contains(strings.ToLower(h), strings.ToLower(quoted)) }) {
			report(fmt.Sprintf("%s %q", name, quoted), "no such section in "+doc)
		}
	}
}

// resolveDoc finds the document a name cites: a path from the repository
// root or from the citing file, or a bare name found in docs/ or at the
// root. A name pointing outside the repository ("shared/…", "../…") is
// dangling: the repository carries its own copies.
func (c *checker) resolveDoc(from, name string) (string, bool) {
	name = strings.TrimPrefix(name, "./")
	for _, cand := range []string{name, path.Join(path.Dir(from), name), path.Join("docs", name)} {
		if c.exists[cand] && !strings.HasPrefix(cand, "..") {
			return cand, true
		}
	}
	if !strings.Contains(name, "/") {
		if ds := c.byBase[name]; len(ds) == 1 {
			return ds[0], true
		}
	}
	return "", false
}

var heading = regexp.MustCompile(`^#+\s+(.*)$`)

func (c *checker) hasHeading(doc string, match func(string) bool) bool {
	hs, ok := c.headings[doc]
	if !ok {
		data, _ := os.ReadFile(filepath.Join(c.root, doc))
		for _, l := range strings.Split(string(data), "\n") {
			if m := heading.FindStringSubmatch(l); m != nil {
				hs = append(hs, strings.TrimSpace(m[1]))
			}
		}
		c.headings[doc] = hs
	}
	for _, h := range hs {
		if match(h) {
			return true
		}
	}
	return false
}

func (c *checker) repoPaths(line string, report func(ref, why string)) {
	for _, m := range append(repoPath.FindAllStringSubmatch(line, -1), binaryFile.FindAllStringSubmatch(line, -1)...) {
		p := strings.TrimSuffix(strings.TrimSuffix(m[2], "/..."), "/")
		p = strings.TrimRight(p, ".")
		if strings.ContainsAny(p, "*<{$") || p == "" {
			continue
		}
		if !c.exists[p] {
			report(p, "no such file or folder in the repository")
		}
	}
}

func (c *checker) goFiles(line string, report func(ref, why string)) {
	for _, m := range goFile.FindAllStringSubmatch(line, -1) {
		name := m[1]
		if notFiles[name] || len(c.byBase[name]) > 0 {
			continue
		}
		report(name, "no Go file of that name in the repository")
	}
}

func (c *checker) links(f, line string, report func(ref, why string)) {
	for _, m := range mdLink.FindAllStringSubmatch(line, -1) {
		target := m[1]
		if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
			continue
		}
		p := path.Clean(path.Join(path.Dir(f), target))
		if !c.exists[p] {
			report(target, "link to a missing file")
		}
	}
}
