package sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// lines returns the logged JSON objects with the given msg.
func (s *syncBuffer) lines(msg string) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(s.b.String(), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

type testSim struct {
	t    *testing.T
	srv  *Server
	http string // http://127.0.0.1:N
	ws   string // ws://127.0.0.1:N
	log  *syncBuffer
}

func startSim(t *testing.T, edit func(*Config)) *testSim {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Markets = []MarketSpec{{Symbol: "BTCUSDT", Source: "synthetic:seed=1"}}
	cfg.Rate = 0
	if edit != nil {
		edit(&cfg)
	}
	logs := &syncBuffer{}
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Close)
	addr := ln.Addr().String()
	return &testSim{t: t, srv: srv, http: "http://" + addr, ws: "ws://" + addr, log: logs}
}

func (s *testSim) dial(path string) *websocket.Conn {
	s.t.Helper()
	c, _, err := websocket.DefaultDialer.Dial(s.ws+path, nil)
	if err != nil {
		s.t.Fatalf("dial %s: %v", path, err)
	}
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

func (s *testSim) get(path string) (*http.Response, []byte) {
	s.t.Helper()
	resp, err := http.Get(s.http + path)
	if err != nil {
		s.t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp, body
}

func (s *testSim) post(path, body string) []byte {
	s.t.Helper()
	resp, err := http.Post(s.http+path, "application/json", strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		s.t.Fatalf("POST %s: %d %s", path, resp.StatusCode, b)
	}
	return b
}

func (s *testSim) state() State {
	s.t.Helper()
	_, b := s.get("/admin/state")
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		s.t.Fatalf("state %s: %v", b, err)
	}
	return st
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type wireMsg struct {
	op   int
	data []byte
}

func readMsg(t *testing.T, c *websocket.Conn, timeout time.Duration) (wireMsg, error) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	op, data, err := c.ReadMessage()
	return wireMsg{op, data}, err
}

func mustRead(t *testing.T, c *websocket.Conn) []byte {
	t.Helper()
	m, err := readMsg(t, c, 5*time.Second)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return m.data
}

// tradeMsg has every key of a trade: encoding/json would otherwise match
// "e" to E and "M" to m case-insensitively.
type tradeMsg struct {
	Ev string          `json:"e"`
	BM bool            `json:"M"`
	E  int64           `json:"E"`
	S  string          `json:"s"`
	T  int64           `json:"T"`
	ID int64           `json:"t"`
	P  json.RawMessage `json:"p"`
	Q  json.RawMessage `json:"q"`
	M  bool            `json:"m"`
}

func decodeTrade(t *testing.T, b []byte) tradeMsg {
	t.Helper()
	var tm tradeMsg
	if err := json.Unmarshal(b, &tm); err != nil {
		t.Fatalf("not a trade: %s: %v", b, err)
	}
	return tm
}

// closeCode returns the close code of a read error (1006 for a connection
// closed without a close frame), or 0.
func closeCode(err error) int {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return 0
}

// dataDir finds shared/data/binance beside the repository checkout.
func dataDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("BINANCE_DATA_DIR"); d != "" {
		return d
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		cand := filepath.Join(dir, "shared", "data", "binance")
		if st, err := os.Stat(cand); err == nil && st.IsDir() {
			return cand
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("shared/data/binance not found beside the checkout (set BINANCE_DATA_DIR)")
		}
		dir = parent
	}
}
