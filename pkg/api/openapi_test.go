package api

import (
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"

	"github.com/cardmeter/cardmeter/schemas"
)

// Every route the server serves is documented in schemas/openapi.yaml with
// its method, and the document documents nothing the server lacks.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(schemas.OpenAPI, &doc); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	s := New(Config{Partitions: 1}, nil, nil, nil, nil, prometheus.NewRegistry(), nil, zap.NewNop())
	documented := 0
	for path, ops := range doc.Paths {
		for method := range ops {
			if method == "parameters" {
				continue
			}
			documented++
			req, _ := http.NewRequest(strings.ToUpper(method), "http://x"+fill(path), nil)
			if _, pattern := s.mux.Handler(req); pattern == "" {
				t.Errorf("documented %s %s is not served", strings.ToUpper(method), path)
			}
		}
	}
	if documented != len(s.routes) {
		t.Errorf("openapi.yaml documents %d operations, the server has %d routes: %v", documented, len(s.routes), s.routes)
	}
}

func fill(path string) string {
	r := strings.NewReplacer("{plan_id}", "p1", "{iccid}", "89860000000000000019")
	return r.Replace(path)
}
