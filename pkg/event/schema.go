package event

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/cardmeter/cardmeter/schemas"
)

const schemaBase = "https://cardmeter.dev/schemas/events/"

var (
	compileOnce sync.Once
	compiled    map[string]*jsonschema.Schema // by CloudEvents type
	compileErr  error
)

func compileSchemas() {
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	names, err := fs.Glob(schemas.Events, "events/*.json")
	if err != nil {
		compileErr = err
		return
	}
	for _, n := range names {
		b, err := fs.ReadFile(schemas.Events, n)
		if err != nil {
			compileErr = err
			return
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			compileErr = fmt.Errorf("%s: %w", n, err)
			return
		}
		if err := c.AddResource(schemaBase+path.Base(n), doc); err != nil {
			compileErr = fmt.Errorf("%s: %w", n, err)
			return
		}
	}
	compiled = map[string]*jsonschema.Schema{}
	for _, n := range names {
		base := path.Base(n)
		if base == "envelope.json" {
			continue
		}
		s, err := c.Compile(schemaBase + base)
		if err != nil {
			compileErr = fmt.Errorf("%s: %w", n, err)
			return
		}
		compiled["cardmeter."+strings.TrimSuffix(base, ".json")] = s
	}
}

// Types lists the event types that have a schema.
func Types() ([]string, error) {
	compileOnce.Do(compileSchemas)
	if compileErr != nil {
		return nil, compileErr
	}
	out := make([]string, 0, len(compiled))
	for t := range compiled {
		out = append(out, t)
	}
	return out, nil
}

// Validate checks an encoded event against the JSON Schema of its type in
// schemas/events/. An event whose type has no schema is an error.
func Validate(raw []byte) error {
	compileOnce.Do(compileSchemas)
	if compileErr != nil {
		return compileErr
	}
	var head struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return err
	}
	s, ok := compiled[head.Type]
	if !ok {
		return fmt.Errorf("no schema for event type %q", head.Type)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return err
	}
	return s.Validate(doc)
}
