//go:build race

package canary

const raceEnabled = true
