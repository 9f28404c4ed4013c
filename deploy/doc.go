// Package deploy holds the configuration of a production stack (compose
// file support, NATS and ClickHouse configs); it has no code of its own.
package deploy
