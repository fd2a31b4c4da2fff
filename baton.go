// Package baton holds what the baton binary embeds: the example
// configuration that `baton demo` runs.
package baton

import _ "embed"

// ExampleConfig is config.example.yaml, the configuration `baton demo` runs
// with its built-in demo backends.
//
//go:embed config.example.yaml
var ExampleConfig []byte
