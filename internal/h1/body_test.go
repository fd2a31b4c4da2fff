package h1

import "testing"

func TestParseChunkSize(t *testing.T) {
	good := []struct {
		line string
		want int64
	}{
		{"0", 0},
		{"a", 10},
		{"A", 10},
		{"1f", 31},
		{"1F", 31},
		{"00ff", 255},
		{"ff;name=value", 255},
		{"ff ;ext", 255},
		{"ff\t; a=1; b=\"x y\"", 255},
		{"ff ", 255},
		{"fffffffffffffff", 1<<60 - 1},
	}
	for _, c := range good {
		got, ok := parseChunkSize([]byte(c.line))
		if !ok || got != c.want {
			t.Errorf("parseChunkSize(%q) = %d, %v; want %d, true", c.line, got, ok, c.want)
		}
	}
	bad := []string{
		"",
		" 1",
		";ext",
		"g",
		"-1",
		"+1",
		"0x10",
		"1 2",
		"ff x",
		"1000000000000000",   // 16 hex digits: 2^60, too large
		"ffffffffffffffffff", // overflows int64
		"1;ext\x00",
		"1;\x7f",
	}
	for _, line := range bad {
		if got, ok := parseChunkSize([]byte(line)); ok {
			t.Errorf("parseChunkSize(%q) = %d, true; want rejected", line, got)
		}
	}
}
