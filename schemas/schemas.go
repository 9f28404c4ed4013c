// Package schemas embeds the project's contracts so binaries carry them:
// the ClickHouse DDL, the OpenAPI document and the events' JSON Schemas.
package schemas

import "embed"

// ClickHouse holds the numbered DDL files, applied in name order.
//
//go:embed clickhouse/*.sql
var ClickHouse embed.FS

// Queries holds the analysts' queries, one .sql file each, with their
// positional parameters described in a comment at the top.
//
//go:embed clickhouse/queries/*.sql
var Queries embed.FS

// OpenAPI is the HTTP API's specification, served at /openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPI []byte

// Events holds one JSON Schema per emitted event type.
//
//go:embed events/*.json
var Events embed.FS
