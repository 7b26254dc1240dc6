package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"binancesim/internal/sim"
)

func TestParseFlags(t *testing.T) {
	cfg, listen, logPath, err := parseFlags([]string{
		"--listen", "127.0.0.1:0",
		"--market", "BTCUSDT=synthetic:seed=1",
		"--market", "ethusdt=replay:/x.jsonl.gz",
		"--halted", "XRPUSDT", "--silent", "BTCUSDT", "--silent", "ETHUSDT",
		"--rate", "2.5", "--count", "10", "--start", "admin", "--keep-times",
		"--drop-every", "300", "--shutdown-after", "7", "--lifetime", "24h", "--malformed-every", "9",
		"--rest-429-every", "4", "--retry-after", "3", "--flap", "2", "--ping-interval", "1s",
		"--pong-timeout", "2s", "--log", "/tmp/x.log", "--max-incoming-per-sec", "7",
		"--connection-limit", "10", "--connection-window", "1m", "--ban-seconds", "0.5",
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := sim.Faults{DropEvery: 300, ShutdownAfter: 7, Lifetime: sim.Duration(24 * time.Hour), MalformedEvery: 9,
		Rest429Every: 4, RetryAfter: 3, Flap: 2, Silent: []string{"BTCUSDT", "ETHUSDT"}, MaxIncomingPerSec: 7}
	got, _ := json.Marshal(cfg.Faults)
	exp, _ := json.Marshal(want)
	if !bytes.Equal(got, exp) {
		t.Fatalf("faults %s, want %s", got, exp)
	}
	if listen != "127.0.0.1:0" || logPath != "/tmp/x.log" || len(cfg.Markets) != 2 || cfg.Markets[1].Symbol != "ethusdt" ||
		cfg.Rate != 2.5 || cfg.Count != 10 || cfg.Start != "admin" || !cfg.KeepTimes || cfg.PingInterval != time.Second ||
		cfg.PongTimeout != 2*time.Second || len(cfg.Halted) != 1 ||
		cfg.ConnectionLimit != 10 || cfg.ConnectionWindow != time.Minute || cfg.Ban != 500*time.Millisecond {
		t.Fatalf("config %+v", cfg)
	}
	def, _, _, err := parseFlags([]string{"--market", "BTCUSDT=synthetic:seed=1"}, io.Discard)
	if err != nil || def.Faults.MaxIncomingPerSec != 5 || def.ConnectionLimit != 300 ||
		def.ConnectionWindow != 5*time.Minute || def.Ban != 120*time.Second {
		t.Fatalf("Binance limits by default: %+v %v", def, err)
	}
	for _, bad := range [][]string{{}, {"--market", "BTCUSDT"}, {"--market", "X=synthetic:seed=1", "extra"}} {
		if _, _, _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"--help"}, io.Discard, &out); code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	for _, flag := range []string{"-listen", "-market", "-halted", "-rate", "-pace", "-speed", "-count", "-start",
		"-keep-times", "-ping-interval", "-pong-timeout", "-drop-every", "-shutdown-after", "-lifetime",
		"-malformed-every", "-rest-429-every", "-retry-after", "-flap", "-silent", "-log",
		"-max-incoming-per-sec", "-connection-limit", "-connection-window", "-ban-seconds"} {
		if !strings.Contains(out.String(), flag) {
			t.Errorf("--help does not mention %s", flag)
		}
	}
}

func TestRunPrintsReadyLineAndStopsOnSignal(t *testing.T) {
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"--market", "BTCUSDT=synthetic:seed=1", "--log", t.TempDir() + "/sim.log"}, pw, io.Discard)
		_ = pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	var ready struct {
		Event   string `json:"event"`
		Port    int    `json:"port"`
		WSURL   string `json:"ws_url"`
		RESTURL string `json:"rest_url"`
	}
	if err := json.Unmarshal([]byte(line), &ready); err != nil || ready.Event != "listening" || ready.Port == 0 {
		t.Fatalf("ready line %q", line)
	}
	if !strings.HasPrefix(line, `{"event":"listening","port":`) || !strings.HasSuffix(ready.WSURL, "/ws") ||
		!strings.HasPrefix(ready.RESTURL, "http://127.0.0.1:") {
		t.Fatalf("ready line %q", line)
	}
	resp, err := http.Get(ready.RESTURL + "/api/v3/ping")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("did not stop on SIGTERM")
	}
}
