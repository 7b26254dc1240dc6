package sim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"
)

// Start modes.
const (
	StartOnConnect = "on-connect"
	StartImmediate = "immediate"
	StartAdmin     = "admin"
)

// Pace modes.
const (
	PaceRate     = "rate"
	PaceRecorded = "recorded"
)

// MarketSpec is one --market SYMBOL=SOURCE.
type MarketSpec struct {
	Symbol string
	Source string
}

// Config is everything the simulator is started with.
type Config struct {
	Markets       []MarketSpec
	Halted        []string
	Rate          float64 // trades per second per symbol; 0 = as fast as subscribers take them
	Pace          string  // PaceRate or PaceRecorded
	Speed         float64 // multiplier for PaceRecorded
	Count         int64   // at most this many trades per symbol; 0 = until the source ends
	Start         string  // StartOnConnect, StartImmediate or StartAdmin
	KeepTimes     bool    // keep the recorded E and T
	PingInterval  time.Duration
	PongTimeout   time.Duration
	ShutdownDelay time.Duration // between serverShutdown and the close frame
	Window        int64         // --rate 0: how far the market may run ahead of the slowest subscriber
	// ConnectionLimit is how many WebSocket connection attempts one client IP
	// may make per ConnectionWindow (Binance: 300 per 5 minutes); 0 = no limit.
	ConnectionLimit  int64
	ConnectionWindow time.Duration
	// Ban is the first 418 ban of a REST client that did not wait out a 429's
	// Retry-After; each further ban lasts twice as long. 0 = never ban.
	Ban    time.Duration
	Faults Faults
	Logger *slog.Logger
}

// DefaultConfig returns the defaults of the command line.
func DefaultConfig() Config {
	return Config{
		Rate:          100,
		Pace:          PaceRate,
		Speed:         1,
		Start:         StartOnConnect,
		PingInterval:  20 * time.Second,
		PongTimeout:   60 * time.Second,
		ShutdownDelay: time.Second,
		Window:        4096,
		// Binance's limits
		ConnectionLimit:  300,
		ConnectionWindow: 5 * time.Minute,
		Ban:              120 * time.Second,
		Faults:           Faults{RetryAfter: 1, MaxIncomingPerSec: 5},
	}
}

func (c *Config) validate() error {
	if c.Rate < 0 {
		return fmt.Errorf("--rate must be >= 0")
	}
	if c.Pace != PaceRate && c.Pace != PaceRecorded {
		return fmt.Errorf("--pace must be rate or recorded, not %q", c.Pace)
	}
	if c.Speed <= 0 {
		return fmt.Errorf("--speed must be > 0")
	}
	if c.Count < 0 {
		return fmt.Errorf("--count must be >= 0")
	}
	switch c.Start {
	case StartOnConnect, StartImmediate, StartAdmin:
	default:
		return fmt.Errorf("--start must be on-connect, immediate or admin, not %q", c.Start)
	}
	if c.PingInterval < 0 || c.PongTimeout < 0 || c.ShutdownDelay < 0 {
		return fmt.Errorf("durations must not be negative")
	}
	if c.Window <= 0 {
		c.Window = 4096
	}
	if c.ConnectionLimit < 0 || c.ConnectionLimit > maxRingLimit || c.Ban < 0 {
		return fmt.Errorf("--connection-limit must be 0..%d and --ban-seconds >= 0", maxRingLimit)
	}
	if c.ConnectionLimit > 0 && c.ConnectionWindow <= 0 {
		return fmt.Errorf("--connection-window must be > 0 with a --connection-limit")
	}
	return c.Faults.validate()
}

// Faults are the fault knobs; all of them can be changed at runtime through
// POST /admin/faults with the JSON names below.
type Faults struct {
	DropEvery      int64    `json:"drop_every"`
	ShutdownAfter  int64    `json:"shutdown_after"`
	Lifetime       Duration `json:"lifetime"`
	MalformedEvery int64    `json:"malformed_every"`
	Rest429Every   int64    `json:"rest_429_every"`
	RetryAfter     int64    `json:"retry_after"`
	Flap           int64    `json:"flap"`
	Silent         []string `json:"silent"`
	// MaxIncomingPerSec is Binance's limit of client messages (pings, pongs,
	// text and binary messages) per rolling second on one connection; 0 = none.
	MaxIncomingPerSec int64 `json:"max_incoming_per_sec"`
}

func (f *Faults) validate() error {
	if f.DropEvery < 0 || f.ShutdownAfter < 0 || f.Lifetime < 0 || f.MalformedEvery < 0 ||
		f.Rest429Every < 0 || f.RetryAfter < 0 || f.Flap < 0 || f.MaxIncomingPerSec < 0 {
		return fmt.Errorf("fault knobs must not be negative")
	}
	if f.MaxIncomingPerSec > maxRingLimit {
		return fmt.Errorf("max_incoming_per_sec must be at most %d", maxRingLimit)
	}
	for i, s := range f.Silent {
		f.Silent[i] = strings.ToUpper(strings.TrimSpace(s))
	}
	sort.Strings(f.Silent)
	if f.Silent == nil {
		f.Silent = []string{}
	}
	return nil
}

// applyJSON changes the knobs named in a JSON object and leaves the others.
func (f *Faults) applyJSON(body []byte) error {
	var m map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return fmt.Errorf("want a JSON object of fault knobs: %w", err)
	}
	next := *f
	next.Silent = append([]string(nil), f.Silent...)
	for k, raw := range m {
		var err error
		switch k {
		case "drop_every":
			err = json.Unmarshal(raw, &next.DropEvery)
		case "shutdown_after":
			err = json.Unmarshal(raw, &next.ShutdownAfter)
		case "lifetime":
			err = json.Unmarshal(raw, &next.Lifetime)
		case "malformed_every":
			err = json.Unmarshal(raw, &next.MalformedEvery)
		case "rest_429_every":
			err = json.Unmarshal(raw, &next.Rest429Every)
		case "retry_after":
			err = json.Unmarshal(raw, &next.RetryAfter)
		case "flap":
			err = json.Unmarshal(raw, &next.Flap)
		case "silent":
			next.Silent = nil
			err = json.Unmarshal(raw, &next.Silent)
		case "max_incoming_per_sec":
			err = json.Unmarshal(raw, &next.MaxIncomingPerSec)
		default:
			err = fmt.Errorf("unknown knob")
		}
		if err != nil {
			return fmt.Errorf("%s: %w", k, err)
		}
	}
	if err := next.validate(); err != nil {
		return err
	}
	*f = next
	return nil
}

// Duration is a time.Duration that is written to JSON as a Go duration
// string ("1m30s") and read from either such a string or a number of seconds.
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		*d = Duration(v)
		return nil
	}
	var secs float64
	if err := json.Unmarshal(b, &secs); err != nil {
		return fmt.Errorf("want a duration like \"30s\" or a number of seconds")
	}
	*d = Duration(secs * float64(time.Second))
	return nil
}
