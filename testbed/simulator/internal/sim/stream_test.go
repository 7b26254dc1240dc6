package sim

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

var (
	newShape    = regexp.MustCompile(`^\{"e":"trade","E":\d+,"s":"BTCUSDT","t":\d+,"p":"\d+\.\d{8}","q":"\d+\.\d{8}","T":\d+,"m":(true|false),"M":(true|false)\}$`)
	legacyShape = regexp.MustCompile(`^\{"e":"trade","E":\d+,"s":"[A-Z]+","t":\d+,"p":"\d+\.\d{8}","q":"\d+\.\d{8}","b":\d+,"a":\d+,"T":\d+,"m":(true|false),"M":(true|false)\}$`)
)

func TestRawStreamShape(t *testing.T) {
	s := startSim(t, func(c *Config) { c.Count = 200 })
	ws := s.dial("/ws/btcusdt@trade")
	for want := int64(1); want <= 200; want++ {
		b := mustRead(t, ws)
		if !newShape.Match(b) {
			t.Fatalf("trade %d has the wrong shape: %s", want, b)
		}
		if tm := decodeTrade(t, b); tm.ID != want || tm.E < tm.T {
			t.Fatalf("trade %d: %s", want, b)
		}
	}
	if m, err := readMsg(t, ws, 200*time.Millisecond); err == nil {
		t.Fatalf("more than --count trades: %s", m.data)
	}
	st := s.state()
	if ms := st.Markets["BTCUSDT"]; !ms.Done || ms.Produced != 200 || *ms.FirstID != 1 || *ms.LastID != 200 {
		t.Fatalf("state %+v", ms)
	}
}

func TestCombinedStreamEnvelope(t *testing.T) {
	s := startSim(t, func(c *Config) {
		c.Count = 100
		c.Markets = []MarketSpec{
			{Symbol: "BTCUSDT", Source: "synthetic:seed=1"},
			{Symbol: "ETHUSDT", Source: "synthetic:seed=2,start_id=1000,legacy=1"},
		}
	})
	ws := s.dial("/stream?streams=btcusdt@trade/ethusdt@trade")
	next := map[string]int64{"BTCUSDT": 1, "ETHUSDT": 1000}
	for i := 0; i < 200; i++ {
		b := mustRead(t, ws)
		var env struct {
			Stream string          `json:"stream"`
			Data   json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(b, &env); err != nil {
			t.Fatal(err)
		}
		if want := `{"stream":"` + env.Stream + `","data":` + string(env.Data) + `}`; string(b) != want {
			t.Fatalf("envelope layout: %s", b)
		}
		tm := decodeTrade(t, env.Data)
		if env.Stream != strings.ToLower(tm.S)+"@trade" {
			t.Fatalf("stream %s carries %s", env.Stream, tm.S)
		}
		if tm.S == "ETHUSDT" && !legacyShape.Match(env.Data) {
			t.Fatalf("legacy=1 shape: %s", env.Data)
		}
		if tm.ID != next[tm.S] {
			t.Fatalf("%s: id %d, want %d", tm.S, tm.ID, next[tm.S])
		}
		next[tm.S]++
	}
}

func TestSubscribeMethod(t *testing.T) {
	s := startSim(t, func(c *Config) { c.Count = 5 })
	ws := s.dial("/ws")
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}`)); err != nil {
		t.Fatal(err)
	}
	if b := mustRead(t, ws); string(b) != `{"result":null,"id":1}` {
		t.Fatalf("reply %s", b)
	}
	for i := int64(1); i <= 5; i++ {
		b := mustRead(t, ws)
		if !newShape.Match(b) || decodeTrade(t, b).ID != i {
			t.Fatalf("trade %d: %s", i, b)
		}
	}
	_ = ws.WriteMessage(websocket.TextMessage, []byte(`{"method":"LIST_SUBSCRIPTIONS","id":"x"}`))
	if b := mustRead(t, ws); string(b) != `{"result":["btcusdt@trade"],"id":"x"}` {
		t.Fatalf("list reply %s", b)
	}
	_ = ws.WriteMessage(websocket.TextMessage, []byte(`{"method":"NOPE","id":3}`))
	if b := mustRead(t, ws); !strings.Contains(string(b), `"error"`) || !strings.HasSuffix(string(b), `"id":3}`) {
		t.Fatalf("error reply %s", b)
	}
}

func TestUnknownSymbolStreamIsSilent(t *testing.T) {
	s := startSim(t, func(c *Config) { c.Rate = 1000; c.Start = StartImmediate })
	ws := s.dial("/ws/foousdt@trade")
	if m, err := readMsg(t, ws, 300*time.Millisecond); err == nil {
		t.Fatalf("unknown stream sent %s", m.data)
	} else if closeCode(err) != 0 {
		t.Fatalf("connection closed: %v", err)
	}
	if s.state().Connections.Open != 1 {
		t.Fatal("connection not open")
	}
}

// recordedData returns the raw "data" objects of a recorded file, in order.
func recordedData(t *testing.T, name string) [][]byte {
	t.Helper()
	f, err := os.Open(filepath.Join(dataDir(t), name))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	sc := bufio.NewScanner(gz)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		var env envelope
		if err := json.Unmarshal(sc.Bytes(), &env); err != nil {
			t.Fatal(err)
		}
		out = append(out, append([]byte(nil), env.Data...))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

var recordedFiles = []string{"btcusdt-trades-20240808.jsonl.gz", "btcusdt-trades-20230405-legacy-ba.jsonl.gz"}

// With --keep-times a replayed trade is byte for byte the recorded one.
func TestReplayIsByteExact(t *testing.T) {
	for _, name := range recordedFiles {
		t.Run(name, func(t *testing.T) {
			want := recordedData(t, name)
			path := filepath.Join(dataDir(t), name)
			s := startSim(t, func(c *Config) {
				c.KeepTimes = true
				c.Markets = []MarketSpec{{Symbol: "BTCUSDT", Source: "replay:" + path}}
			})
			ws := s.dial("/ws/btcusdt@trade")
			for i, w := range want {
				if b := mustRead(t, ws); !bytes.Equal(b, w) {
					t.Fatalf("trade %d:\n got %s\nwant %s", i, b, w)
				}
			}
			waitFor(t, 2*time.Second, "done", func() bool { return s.state().Markets["BTCUSDT"].Done })
			// REST history carries the same decimal strings.
			first := decodeTrade(t, want[0]).ID
			var got []restTrade
			for from := first; ; {
				page := s.historical(t, "BTCUSDT", from, 1000)
				if len(page) == 0 {
					break
				}
				got = append(got, page...)
				from = page[len(page)-1].ID + 1
			}
			if len(got) != len(want) {
				t.Fatalf("history has %d trades, want %d", len(got), len(want))
			}
			for i, w := range want {
				tm := decodeTrade(t, w)
				g := got[i]
				if g.ID != tm.ID || `"`+g.Price+`"` != string(tm.P) || `"`+g.Qty+`"` != string(tm.Q) || g.Time != tm.T || g.IsBuyerMaker != tm.M {
					t.Fatalf("history %d: %+v vs %s", i, g, w)
				}
			}
		})
	}
}

// Replaying under another symbol rewrites only "s".
func TestReplaySymbolRewrite(t *testing.T) {
	name := recordedFiles[1]
	want := recordedData(t, name)[:50]
	s := startSim(t, func(c *Config) {
		c.KeepTimes = true
		c.Count = 50
		c.Markets = []MarketSpec{{Symbol: "ethbtc", Source: "replay:" + filepath.Join(dataDir(t), name)}}
	})
	ws := s.dial("/stream?streams=ethbtc@trade")
	for i, w := range want {
		b := mustRead(t, ws)
		exp := `{"stream":"ethbtc@trade","data":` + strings.Replace(string(w), `"s":"BTCUSDT"`, `"s":"ETHBTC"`, 1) + `}`
		if string(b) != exp {
			t.Fatalf("trade %d:\n got %s\nwant %s", i, b, exp)
		}
	}
}

// Default re-timing at the recorded pace shifts E and T by one offset.
func TestRecordedPaceRetimes(t *testing.T) {
	name := recordedFiles[0]
	want := recordedData(t, name)[:30]
	before := time.Now().UnixMilli()
	s := startSim(t, func(c *Config) {
		c.Pace = PaceRecorded
		c.Count = 30
		c.Start = StartImmediate
		c.Markets = []MarketSpec{{Symbol: "BTCUSDT", Source: "replay:" + filepath.Join(dataDir(t), name)}}
	})
	waitFor(t, 3*time.Second, "30 trades", func() bool { return s.state().Markets["BTCUSDT"].Done })
	got := s.historical(t, "BTCUSDT", 0, 100)
	if len(got) != 30 {
		t.Fatalf("%d trades", len(got))
	}
	off := got[0].Time - decodeTrade(t, want[0]).T
	if got[0].Time < before-5 || got[0].Time > time.Now().UnixMilli() {
		t.Fatalf("first trade time %d not now (%d)", got[0].Time, before)
	}
	for i, w := range want {
		if d := got[i].Time - decodeTrade(t, w).T; d != off {
			t.Fatalf("trade %d shifted by %d, first by %d", i, d, off)
		}
	}
}

func TestRateClock(t *testing.T) {
	s := startSim(t, func(c *Config) { c.Rate = 200; c.Start = StartImmediate })
	time.Sleep(time.Second)
	n := s.state().Markets["BTCUSDT"].Produced
	if n < 170 || n > 230 {
		t.Fatalf("--rate 200 produced %d trades in 1 s", n)
	}
	// rate-driven times are the wall clock
	tr := s.historical(t, "BTCUSDT", -1, 1)[0]
	if d := time.Now().UnixMilli() - tr.Time; d < 0 || d > 100 {
		t.Fatalf("trade time %d is %d ms from now", tr.Time, d)
	}
}

func TestStartAdminPauseResume(t *testing.T) {
	s := startSim(t, func(c *Config) { c.Rate = 500; c.Start = StartAdmin })
	ws := s.dial("/ws/btcusdt@trade")
	time.Sleep(100 * time.Millisecond)
	if ms := s.state().Markets["BTCUSDT"]; ms.Started || ms.Produced != 0 || ms.FirstID != nil {
		t.Fatalf("started before /admin/start: %+v", ms)
	}
	s.post("/admin/start", "")
	if decodeTrade(t, mustRead(t, ws)).ID != 1 {
		t.Fatal("first trade is not id 1")
	}
	s.post("/admin/pause", "")
	time.Sleep(50 * time.Millisecond)
	n1 := s.state().Markets["BTCUSDT"].Produced
	time.Sleep(time.Second)
	if n2 := s.state().Markets["BTCUSDT"].Produced; n2 != n1 {
		t.Fatalf("paused market produced %d -> %d", n1, n2)
	}
	s.post("/admin/resume", "")
	waitFor(t, 2*time.Second, "trades after resume", func() bool { return s.state().Markets["BTCUSDT"].Produced > n1+10 })
	// A pause does not let the clock catch up afterwards (that would be a burst of ~500).
	if n := s.state().Markets["BTCUSDT"].Produced; n > n1+200 {
		t.Fatalf("burst after resume: %d -> %d", n1, n)
	}
}

func TestSyntheticDeterministicAndProfiles(t *testing.T) {
	a, _ := parseSynthetic("seed=7,profile=meme,start_id=100")
	b, _ := parseSynthetic("seed=7,profile=meme,start_id=100")
	meme := regexp.MustCompile(`^0\.\d{8}$`)
	qty := regexp.MustCompile(`^\d{1,12}\.00000000$`)
	for i := 0; i < 1000; i++ {
		ra, _ := a.next()
		rb, _ := b.next()
		if ra != rb {
			t.Fatalf("seed 7 differs at %d: %+v %+v", i, ra, rb)
		}
		if ra.id != int64(100+i) || !meme.MatchString(ra.price) || !qty.MatchString(ra.qty) || ra.t > ra.e {
			t.Fatalf("meme record %+v", ra)
		}
	}
	c, _ := parseSynthetic("seed=8")
	r, _ := c.next()
	if r.price != "61837.63000000" && !regexp.MustCompile(`^\d{5}\.\d{2}000000$`).MatchString(r.price) {
		t.Fatalf("btc price %s", r.price)
	}
	for _, bad := range []string{"", "seed=x", "profile=btc", "seed=1,profile=doge", "seed=1,foo=2"} {
		if _, err := parseSynthetic(bad); err == nil {
			t.Errorf("synthetic:%s accepted", bad)
		}
	}
}

func TestQuoteQty(t *testing.T) {
	for _, c := range [][3]string{
		{"61837.63000000", "0.02000000", "1236.75260000"},
		{"0.00001234", "12345678901.00000000", "152345.67763834"},
		{"28165.47000000", "0.00056000", "15.77266320"},
		{"0.00000001", "0.00000001", "0.00000000"},
		{"1.5", "0.000000003", "0.00000000"},
		{"1.5", "0.000000005", "0.00000001"},
	} {
		if got := quoteQty([]byte(c[0]), []byte(c[1])); got != c[2] {
			t.Errorf("%s*%s = %s, want %s", c[0], c[1], got, c[2])
		}
	}
}

func TestConfigErrors(t *testing.T) {
	for i, edit := range []func(*Config){
		func(c *Config) { c.Markets = []MarketSpec{{Symbol: "BTCUSDT", Source: "bogus:1"}} },
		func(c *Config) { c.Markets = []MarketSpec{{Symbol: "BTCUSDT", Source: "replay:/nonexistent.gz"}} },
		func(c *Config) {
			c.Markets = append(c.Markets, MarketSpec{Symbol: "btcusdt", Source: "synthetic:seed=2"})
		},
		func(c *Config) { c.Halted = []string{"BTCUSDT"} },
		func(c *Config) { c.Start = "later" },
		func(c *Config) { c.Rate = -1 },
	} {
		cfg := DefaultConfig()
		cfg.Markets = []MarketSpec{{Symbol: "BTCUSDT", Source: "synthetic:seed=1"}}
		edit(&cfg)
		if _, err := New(cfg); err == nil {
			t.Errorf("config %d accepted", i)
		}
	}
}

// sanity check of the helper used by the REST tests
func (s *testSim) historical(t *testing.T, sym string, from int64, limit int) []restTrade {
	t.Helper()
	q := fmt.Sprintf("/api/v3/historicalTrades?symbol=%s&limit=%d", sym, limit)
	if from >= 0 {
		q += fmt.Sprintf("&fromId=%d", from)
	}
	resp, body := s.get(q)
	if resp.StatusCode != 200 {
		t.Fatalf("%s: %d %s", q, resp.StatusCode, body)
	}
	var out []restTrade
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	return out
}

type restTrade struct {
	ID           int64  `json:"id"`
	Price        string `json:"price"`
	Qty          string `json:"qty"`
	QuoteQty     string `json:"quoteQty"`
	Time         int64  `json:"time"`
	IsBuyerMaker bool   `json:"isBuyerMaker"`
	IsBestMatch  bool   `json:"isBestMatch"`
}
