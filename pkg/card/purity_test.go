package card

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The fold must read no clock and do no I/O (ARCHITECTURE.md principle 2).
// This test reads the package's own non-test sources and fails on imports
// and calls that would break that.
func TestFoldIsPure(t *testing.T) {
	bannedImports := map[string]bool{
		"os": true, "net": true, "net/http": true, "io/ioutil": true, "math/rand": true,
		"math/rand/v2": true, "crypto/rand": true, "syscall": true, "os/exec": true,
		"go.uber.org/zap": true, "github.com/nats-io/nats.go": true,
	}
	bannedCalls := map[string]bool{"time.Now": true, "time.Since": true, "time.Until": true,
		"time.Sleep": true, "time.After": true, "time.NewTimer": true, "time.Tick": true, "time.NewTicker": true}
	files, _ := filepath.Glob("*.go")
	fset := token.NewFileSet()
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if bannedImports[p] {
				t.Errorf("%s imports %s", name, p)
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.SelectorExpr:
				if id, ok := n.X.(*ast.Ident); ok && bannedCalls[id.Name+"."+n.Sel.Name] {
					t.Errorf("%s: %s uses %s.%s", name, fset.Position(n.Pos()), id.Name, n.Sel.Name)
				}
			case *ast.GoStmt:
				t.Errorf("%s: %s starts a goroutine", name, fset.Position(n.Pos()))
			}
			return true
		})
	}
	if checked < 5 {
		t.Fatalf("checked only %d files", checked)
	}
}
