// Command binance-sim is a Binance-compatible spot exchange simulator for
// tests and demos: trade streams over WebSocket, the REST endpoints a trade
// loader uses, fault injection and an admin API, all on one HTTP port.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"binancesim/internal/sim"
)

const usageText = `binance-sim: a Binance-compatible spot exchange simulator (trade streams,
REST history, fault injection, admin API) on one HTTP port.

Usage:
  binance-sim [flags]

When ready it prints one JSON line to stdout:
  {"event":"listening","port":N,"ws_url":"ws://127.0.0.1:N/ws","rest_url":"http://127.0.0.1:N"}
and writes nothing else there; logs (JSON lines) go to stderr or --log FILE.

Markets:
  --market SYMBOL=replay:PATH
        replay a recorded trade file (JSON lines, gzip or plain; combined-stream
        envelopes or raw trade events; old shape with b/a or new without). Trade
        ids, prices, quantities, m, M, b, a are kept byte for byte; s becomes SYMBOL.
  --market SYMBOL=synthetic:seed=N[,start_id=N][,profile=btc|meme][,legacy=1]
        deterministic endless trades: ids contiguous from start_id (default 1),
        prices as a random walk with 8 decimals; profile meme gives prices like
        0.00001234 and quantities up to 1e11; legacy=1 adds b and a.
  Symbols not given by --market or --halted are unknown to the exchange.

Flags (write them -flag or --flag):
`

// repeated collects a repeatable string flag.
type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ",") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg, listen, logPath, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "binance-sim:", err)
		return 2
	}
	logOut := stderr
	if logPath != "" {
		f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintln(stderr, "binance-sim:", err)
			return 2
		}
		defer func() { _ = f.Close() }()
		logOut = f
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(logOut, nil))
	srv, err := sim.New(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "binance-sim:", err)
		return 2
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		fmt.Fprintln(stderr, "binance-sim:", err)
		return 1
	}
	addr := ln.Addr().(*net.TCPAddr)
	host := addr.IP.String()
	if addr.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	hostPort := net.JoinHostPort(host, fmt.Sprint(addr.Port))
	ready, _ := json.Marshal(struct {
		Event   string `json:"event"`
		Port    int    `json:"port"`
		WSURL   string `json:"ws_url"`
		RESTURL string `json:"rest_url"`
	}{"listening", addr.Port, "ws://" + hostPort + "/ws", "http://" + hostPort})
	cfg.Logger.Info("listening", "addr", hostPort, "markets", cfg.Markets, "halted", cfg.Halted,
		"rate", cfg.Rate, "pace", cfg.Pace, "count", cfg.Count, "start", cfg.Start, "faults", cfg.Faults,
		"connection_limit", cfg.ConnectionLimit, "connection_window", cfg.ConnectionWindow.String(), "ban_seconds", cfg.Ban.Seconds())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	errCh := make(chan error, 1)
	go func() { errCh <- srv.Serve(ln) }()
	// Serve has the listener; the ready line may go out.
	if _, err := fmt.Fprintf(stdout, "%s\n", ready); err != nil {
		fmt.Fprintln(stderr, "binance-sim:", err)
	}
	if f, ok := stdout.(*os.File); ok {
		_ = f.Sync()
	}

	select {
	case s := <-sig:
		cfg.Logger.Info("exiting", "signal", s.String())
		srv.Close()
		return 0
	case err := <-errCh:
		srv.Close()
		if err != nil {
			fmt.Fprintln(stderr, "binance-sim:", err)
			return 1
		}
		return 0
	}
}

func parseFlags(args []string, stderr io.Writer) (sim.Config, string, string, error) {
	cfg := sim.DefaultConfig()
	fs := flag.NewFlagSet("binance-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var markets, halted, silent repeated
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on (port 0 picks a free port)")
	fs.Var(&markets, "market", "SYMBOL=SOURCE, repeatable (see above)")
	fs.Var(&halted, "halted", "SYMBOL known to exchangeInfo with status BREAK that never trades, repeatable")
	fs.Float64Var(&cfg.Rate, "rate", cfg.Rate, "trades per second per symbol; 0 = as fast as the subscribed connections take them (the market runs at most --window trades ahead of its slowest subscriber and rests while nobody is subscribed)")
	fs.StringVar(&cfg.Pace, "pace", cfg.Pace, "rate (use --rate) or recorded (replay at the recorded pace: gaps between E values)")
	fs.Float64Var(&cfg.Speed, "speed", cfg.Speed, "with --pace recorded: speed multiplier (2 = twice as fast)")
	fs.Int64Var(&cfg.Count, "count", cfg.Count, "at most N trades per symbol; 0 = until the source ends (synthetic: never). After the last trade the market stays open but quiet")
	fs.StringVar(&cfg.Start, "start", cfg.Start, "when each market clock starts: on-connect (first WebSocket subscription to the symbol), immediate, or admin (POST /admin/start)")
	fs.BoolVar(&cfg.KeepTimes, "keep-times", false, "keep the recorded E and T; by default trades are re-timed to the simulator's clock (recorded pace: shifted so the first trade is now, gaps kept; rate-driven: E = T = wall-clock ms when the trade happens)")
	fs.DurationVar(&cfg.PingInterval, "ping-interval", cfg.PingInterval, "server ping interval; 0 = no pings")
	fs.DurationVar(&cfg.PongTimeout, "pong-timeout", cfg.PongTimeout, "drop a client that has not answered a ping for this long (also the limit for one blocked write); 0 = never")
	fs.DurationVar(&cfg.ShutdownDelay, "shutdown-delay", cfg.ShutdownDelay, "time between a serverShutdown event and the close frame")
	fs.Int64Var(&cfg.Window, "window", cfg.Window, "with --rate 0: how many trades a market may run ahead of its slowest subscriber")
	fs.Int64Var(&cfg.Faults.DropEvery, "drop-every", 0, "fault: abruptly close the TCP connection (no close frame) after every N trades sent on a connection")
	fs.Int64Var(&cfg.Faults.ShutdownAfter, "shutdown-after", 0, `fault: after N trades on a connection send {"e":"serverShutdown","E":ms} (on /stream wrapped as {"stream":"!serverShutdown","data":{...}}), stop sending trades on it, and close it normally after --shutdown-delay`)
	lifetime := fs.Duration("lifetime", 0, "fault: close each connection with a normal close frame after this long (Binance: 24h); 0 = never")
	fs.Int64Var(&cfg.Faults.MalformedEvery, "malformed-every", 0, "fault: after every N good trades inject one bad frame, cycling through: "+strings.Join(sim.MalformedKinds(), ", "))
	fs.Int64Var(&cfg.Faults.Rest429Every, "rest-429-every", 0, "fault: every Nth historicalTrades request answers 429 with Retry-After")
	fs.Int64Var(&cfg.Faults.RetryAfter, "retry-after", cfg.Faults.RetryAfter, "seconds in the Retry-After header of --rest-429-every answers")
	fs.Int64Var(&cfg.Faults.Flap, "flap", 0, "fault: the next N WebSocket connection attempts are accepted, then closed at once (no close frame)")
	fs.Int64Var(&cfg.Faults.MaxIncomingPerSec, "max-incoming-per-sec", cfg.Faults.MaxIncomingPerSec, "close a connection (1008) whose client sends more than N messages (pings, pongs, text, binary) within one second, like Binance (5); 0 = no limit")
	fs.Int64Var(&cfg.ConnectionLimit, "connection-limit", cfg.ConnectionLimit, "refuse (HTTP 429) WebSocket connection attempts of a client IP beyond N per --connection-window, like Binance (300 per 5m); 0 = no limit")
	fs.DurationVar(&cfg.ConnectionWindow, "connection-window", cfg.ConnectionWindow, "the rolling window of --connection-limit")
	banSecs := fs.Float64("ban-seconds", cfg.Ban.Seconds(), "REST: the first 418 ban of a client that asked again before a 429's Retry-After ran out; each further ban doubles (at most 3 days); 0 = no bans")
	fs.Var(&silent, "silent", "fault: SYMBOL whose subscriptions get no trades while its market keeps trading (REST history grows), repeatable")
	logPath := fs.String("log", "", "write the log (JSON lines) to FILE instead of stderr")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageText)
		fs.PrintDefaults()
		fmt.Fprint(fs.Output(), `
All fault knobs can be changed at runtime: POST /admin/faults with a JSON object
using the names with underscores (drop_every, shutdown_after, lifetime,
malformed_every, rest_429_every, retry_after, flap, silent, max_incoming_per_sec).
Binance limits: at most 1024 streams per connection (more: HTTP 400 before the
upgrade, or a SUBSCRIBE error), --max-incoming-per-sec, --connection-limit,
and 418 bans (--ban-seconds).
Admin API: GET /admin/state; POST /admin/faults, /admin/start, /admin/drop,
/admin/shutdown, /admin/pause, /admin/resume. See README.md.
`)
	}
	if err := fs.Parse(args); err != nil {
		return cfg, "", "", err
	}
	if fs.NArg() > 0 {
		return cfg, "", "", fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	for _, mk := range markets {
		sym, src, ok := strings.Cut(mk, "=")
		if !ok || sym == "" || src == "" {
			return cfg, "", "", fmt.Errorf("--market %q: want SYMBOL=SOURCE", mk)
		}
		cfg.Markets = append(cfg.Markets, sim.MarketSpec{Symbol: sym, Source: src})
	}
	cfg.Halted = halted
	cfg.Faults.Lifetime = sim.Duration(*lifetime)
	cfg.Ban = time.Duration(*banSecs * float64(time.Second))
	cfg.Faults.Silent = silent
	if cfg.Faults.Silent == nil {
		cfg.Faults.Silent = []string{}
	}
	if len(cfg.Markets) == 0 && len(cfg.Halted) == 0 {
		return cfg, "", "", fmt.Errorf("no markets: give at least one --market SYMBOL=SOURCE")
	}
	return cfg, *listen, *logPath, nil
}
