// Command funclen lists the longest functions of the Go files under the
// given folders (default "."), tests excluded: name, lines, place.
//
//	go run ./tools/funclen [-n 10] [-tests] [-over 80] ./pkg/agent ./pkg/broker
//
// With -over N it lists only functions longer than N lines and exits 1
// when there is one.
package main

import (
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

type fn struct {
	name  string
	lines int
	pos   string
}

func main() {
	n := flag.Int("n", 10, "how many to list (0: all)")
	tests := flag.Bool("tests", false, "include _test.go files")
	over := flag.Int("over", 0, "list only functions longer than this, exit 1 if any")
	flag.Parse()
	roots := flag.Args()
	if len(roots) == 0 {
		roots = []string{"."}
	}
	var all []fn
	fset := token.NewFileSet()
	for _, root := range roots {
		err := filepath.WalkDir(strings.TrimSuffix(root, "/..."), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && (d.Name() == "testdata" || d.Name() == "node_modules" || strings.HasPrefix(d.Name(), ".") && path != ".") {
				return filepath.SkipDir
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") || (!*tests && strings.HasSuffix(path, "_test.go")) {
				return nil
			}
			f, err := parser.ParseFile(fset, path, nil, 0)
			if err != nil {
				return err
			}
			for _, decl := range f.Decls {
				d, ok := decl.(*ast.FuncDecl)
				if !ok || d.Body == nil {
					continue
				}
				name := d.Name.Name
				if d.Recv != nil && len(d.Recv.List) > 0 {
					name = recvName(d.Recv.List[0].Type) + "." + name
				}
				start, end := fset.Position(d.Pos()), fset.Position(d.End())
				all = append(all, fn{name: f.Name.Name + "." + name, lines: end.Line - start.Line + 1, pos: fmt.Sprintf("%s:%d", path, start.Line)})
			}
			return nil
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "funclen:", err)
			os.Exit(2)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].lines > all[j].lines })
	shown := 0
	for _, f := range all {
		if *over > 0 && f.lines <= *over {
			break
		}
		if *n > 0 && shown == *n {
			break
		}
		fmt.Printf("%5d  %-50s %s\n", f.lines, f.name, f.pos)
		shown++
	}
	if *over > 0 && shown > 0 {
		os.Exit(1)
	}
}

func recvName(e ast.Expr) string {
	switch t := e.(type) {
	case *ast.StarExpr:
		return recvName(t.X)
	case *ast.IndexExpr:
		return recvName(t.X)
	case *ast.IndexListExpr:
		return recvName(t.X)
	case *ast.Ident:
		return t.Name
	}
	return "?"
}
