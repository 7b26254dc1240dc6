package sim

import (
	"encoding/json"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func TestHistoricalTradesPagingAndLimits(t *testing.T) {
	s := startSim(t, func(c *Config) {
		c.Rate = 20000
		c.Count = 2500
		c.Start = StartImmediate
		c.Markets = []MarketSpec{{Symbol: "BTCUSDT", Source: "synthetic:seed=3,start_id=5000"}}
		c.Halted = []string{"XRPUSDT"}
	})
	waitFor(t, 5*time.Second, "2500 trades", func() bool { return s.state().Markets["BTCUSDT"].Done })

	page := s.historical(t, "BTCUSDT", 5000, 1000)
	if len(page) != 1000 || page[0].ID != 5000 || page[999].ID != 5999 {
		t.Fatalf("first page: %d trades", len(page))
	}
	for i, tr := range page {
		if tr.ID != int64(5000+i) || !tr.IsBestMatch || tr.QuoteQty == "" || tr.Time == 0 {
			t.Fatalf("page entry %d: %+v", i, tr)
		}
	}
	if p := s.historical(t, "BTCUSDT", 7000, 1000); len(p) != 500 || p[499].ID != 7499 {
		t.Fatalf("last page: %d trades", len(p))
	}
	if p := s.historical(t, "BTCUSDT", 7500, 1000); len(p) != 0 {
		t.Fatalf("past the end: %d trades", len(p))
	}
	if p := s.historical(t, "BTCUSDT", 0, 3); len(p) != 3 || p[0].ID != 5000 {
		t.Fatalf("fromId before the first trade: %+v", p)
	}
	if p := s.historical(t, "BTCUSDT", -1, 10); len(p) != 10 || p[0].ID != 7490 || p[9].ID != 7499 {
		t.Fatalf("most recent: %+v", p)
	}
	resp, body := s.get("/api/v3/historicalTrades?symbol=BTCUSDT&fromId=5000")
	var def []restTrade
	_ = json.Unmarshal(body, &def)
	if resp.StatusCode != 200 || len(def) != 500 {
		t.Fatalf("default limit: %d trades", len(def))
	}
	if resp, body := s.get("/api/v3/trades?symbol=BTCUSDT&limit=5"); resp.StatusCode != 200 || !strings.Contains(string(body), `"id":7499,`) {
		t.Fatalf("recent trades: %s", body)
	}
	if p := s.historical(t, "XRPUSDT", 0, 10); len(p) != 0 {
		t.Fatal("halted symbol has trades")
	}
	// The admin history costs no weight and is not counted.
	reqs := s.state().REST.HistoricalRequests
	var all []restTrade
	_, body = s.get("/admin/history?symbol=BTCUSDT&limit=100000")
	if err := json.Unmarshal(body, &all); err != nil || len(all) != 2500 || all[0].ID != 5000 || all[2499].ID != 7499 {
		t.Fatalf("admin history: %d trades %v", len(all), err)
	}
	_, body = s.get("/admin/history?symbol=BTCUSDT&fromId=7498")
	if err := json.Unmarshal(body, &all); err != nil || len(all) != 2 || all[0].ID != 7498 {
		t.Fatalf("admin history from 7498: %s", body)
	}
	if st := s.state(); st.REST.HistoricalRequests != reqs {
		t.Fatalf("admin history counted as a REST request")
	}

	for q, want := range map[string]string{
		"/api/v3/historicalTrades?symbol=BTCUSDT&limit=1001":          `"code":-1130`,
		"/api/v3/historicalTrades?symbol=BTCUSDT&limit=0":             `"code":-1130`,
		"/api/v3/historicalTrades?symbol=BTCUSDT&fromId=x":            `"code":-1100`,
		"/api/v3/historicalTrades?symbol=DOGEUSDT&fromId=1":           `{"code":-1121,"msg":"Invalid symbol."}`,
		"/api/v3/historicalTrades?symbol=btcusdt":                     `"code":-1100`,
		"/api/v3/historicalTrades":                                    `"code":-1102`,
		"/api/v3/trades?symbol=DOGEUSDT":                              `{"code":-1121,"msg":"Invalid symbol."}`,
		"/api/v3/exchangeInfo?symbol=DOGEUSDT":                        `{"code":-1121,"msg":"Invalid symbol."}`,
		`/api/v3/exchangeInfo?symbols=%5B%22BTCUSDT%22,%22DOGE%22%5D`: `{"code":-1121,"msg":"Invalid symbol."}`,
	} {
		resp, body := s.get(q)
		if resp.StatusCode != 400 || !strings.Contains(string(body), want) {
			t.Errorf("%s: %d %s, want 400 %s", q, resp.StatusCode, body, want)
		}
	}
}

func TestExchangeInfoPingTime(t *testing.T) {
	s := startSim(t, func(c *Config) { c.Halted = []string{"XRPUSDT"} })
	type info struct {
		Timezone   string       `json:"timezone"`
		ServerTime int64        `json:"serverTime"`
		Symbols    []symbolInfo `json:"symbols"`
	}
	for q, want := range map[string]string{
		"/api/v3/exchangeInfo":                                           "BTCUSDT:TRADING,XRPUSDT:BREAK",
		"/api/v3/exchangeInfo?symbol=BTCUSDT":                            "BTCUSDT:TRADING",
		`/api/v3/exchangeInfo?symbols=%5B%22XRPUSDT%22%5D`:               "XRPUSDT:BREAK",
		`/api/v3/exchangeInfo?symbols=%5B%22XRPUSDT%22,%22BTCUSDT%22%5D`: "XRPUSDT:BREAK,BTCUSDT:TRADING",
	} {
		resp, body := s.get(q)
		var in info
		if err := json.Unmarshal(body, &in); err != nil || resp.StatusCode != 200 || in.Timezone != "UTC" || in.ServerTime == 0 {
			t.Fatalf("%s: %d %s", q, resp.StatusCode, body)
		}
		var got []string
		for _, si := range in.Symbols {
			got = append(got, si.Symbol+":"+si.Status)
			if si.BaseAsset+si.QuoteAsset != si.Symbol || si.QuoteAsset != "USDT" {
				t.Fatalf("assets of %+v", si)
			}
		}
		if strings.Join(got, ",") != want {
			t.Fatalf("%s: %v, want %s", q, got, want)
		}
	}
	if _, body := s.get("/api/v3/ping"); string(body) != "{}" {
		t.Fatalf("ping %s", body)
	}
	resp, body := s.get("/api/v3/time")
	if !strings.HasPrefix(string(body), `{"serverTime":`) || resp.Header.Get("X-MBX-USED-WEIGHT-1M") == "" {
		t.Fatalf("time %s %v", body, resp.Header)
	}
}

func TestRest429EveryAndWeight(t *testing.T) {
	s := startSim(t, func(c *Config) {
		c.Faults.Rest429Every = 3
		c.Faults.RetryAfter = 7
		// This test asks again at once after each 429; the 418 ban that
		// earns is TestRest418Ban's subject.
		c.Ban = 0
	})
	var weights []int
	for i := 1; i <= 6; i++ {
		resp, body := s.get("/api/v3/historicalTrades?symbol=BTCUSDT&fromId=1")
		w, err := strconv.Atoi(resp.Header.Get("X-MBX-USED-WEIGHT-1M"))
		if err != nil {
			t.Fatalf("weight header: %v", resp.Header)
		}
		if i%3 == 0 {
			if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "7" || !strings.Contains(string(body), "-1003") {
				t.Fatalf("request %d: %d %v %s", i, resp.StatusCode, resp.Header, body)
			}
			continue
		}
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
		weights = append(weights, w)
	}
	if weights[0] != 25 || weights[3] != 100 {
		t.Fatalf("weights %v", weights)
	}
	st := s.state()
	if st.REST.HistoricalRequests != 6 || st.REST.RateLimited != 2 {
		t.Fatalf("rest state %+v", st.REST)
	}

	// Turn injected 429s off, then exhaust 6000 weight a minute.
	s.post("/admin/faults", `{"rest_429_every":0}`)
	ok := 4
	for ; ok < 1000; ok++ {
		resp, _ := s.get("/api/v3/historicalTrades?symbol=BTCUSDT&fromId=1")
		if resp.StatusCode == http.StatusTooManyRequests {
			ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
			if err != nil || ra < 1 || ra > 60 {
				t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
			}
			break
		}
	}
	if ok != 6000/25 {
		t.Fatalf("weight limit hit after %d requests, want %d", ok, 6000/25)
	}
}

func TestDropEveryClosesWithoutCloseFrame(t *testing.T) {
	s := startSim(t, func(c *Config) { c.Faults.DropEvery = 50 })
	for round := 0; round < 2; round++ {
		ws := s.dial("/ws/btcusdt@trade")
		var prev int64
		for i := 0; i < 50; i++ {
			id := decodeTrade(t, mustRead(t, ws)).ID
			if prev != 0 && id != prev+1 {
				t.Fatalf("gap %d -> %d", prev, id)
			}
			prev = id
		}
		_, err := readMsg(t, ws, 5*time.Second)
		if closeCode(err) != websocket.CloseAbnormalClosure {
			t.Fatalf("after 50 trades: %v (want an abrupt close, 1006)", err)
		}
	}
	waitFor(t, 2*time.Second, "dropped=2", func() bool { return s.state().Connections.Dropped == 2 })
	// runtime change
	got := s.post("/admin/faults", `{"drop_every":0,"malformed_every":0}`)
	if !strings.Contains(string(got), `"drop_every":0`) {
		t.Fatalf("faults reply %s", got)
	}
	ws := s.dial("/ws/btcusdt@trade")
	for i := 0; i < 200; i++ {
		mustRead(t, ws)
	}
	closes := s.log.lines("conn_close")
	if len(closes) < 2 || closes[0]["reason"] != "drop" || closes[0]["trades_sent"].(float64) != 50 {
		t.Fatalf("close log %v", closes)
	}
	sym := closes[0]["symbols"].(map[string]any)["BTCUSDT"].(map[string]any)
	if sym["first_id"].(float64) != 1 || sym["last_id"].(float64) != 50 {
		t.Fatalf("close log ids %v", sym)
	}
}

func TestServerShutdownAfter(t *testing.T) {
	s := startSim(t, func(c *Config) {
		c.Faults.ShutdownAfter = 20
		c.ShutdownDelay = 300 * time.Millisecond
	})
	ws := s.dial("/ws/btcusdt@trade")
	for i := int64(1); i <= 20; i++ {
		if id := decodeTrade(t, mustRead(t, ws)).ID; id != i {
			t.Fatalf("id %d want %d", id, i)
		}
	}
	// The raw endpoint sends the notice unwrapped.
	if b := mustRead(t, ws); !rawShutdown.Match(b) {
		t.Fatalf("want serverShutdown, got %s", b)
	}
	start := time.Now()
	m, err := readMsg(t, ws, 5*time.Second)
	if closeCode(err) != websocket.CloseNormalClosure {
		t.Fatalf("after serverShutdown: %v %s (want close 1000 and no trades)", err, m.data)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("closed %v after the notice", d)
	}
	st := s.state()
	if st.Connections.ShutdownNotices != 1 {
		t.Fatalf("state %+v", st.Connections)
	}
}

var (
	rawShutdown     = regexp.MustCompile(`^\{"e":"serverShutdown","E":1\d{12}\}$`)
	wrappedShutdown = regexp.MustCompile(`^\{"stream":"!serverShutdown","data":\{"e":"serverShutdown","E":1\d{12}\}\}$`)
)

// The combined stream wraps serverShutdown like Binance:
// {"stream":"!serverShutdown","data":{"e":"serverShutdown","E":ms}}.
func TestServerShutdownOnCombinedStreamIsWrapped(t *testing.T) {
	s := startSim(t, func(c *Config) {
		c.Faults.ShutdownAfter = 5
		c.ShutdownDelay = 100 * time.Millisecond
	})
	ws := s.dial("/stream?streams=btcusdt@trade")
	for i := int64(1); i <= 5; i++ {
		if id := decodeTrade(t, unwrap(t, mustRead(t, ws), true)).ID; id != i {
			t.Fatalf("id %d want %d", id, i)
		}
	}
	if b := mustRead(t, ws); !wrappedShutdown.Match(b) {
		t.Fatalf("want the wrapped serverShutdown, got %s", b)
	}
	if m, err := readMsg(t, ws, 5*time.Second); closeCode(err) != websocket.CloseNormalClosure {
		t.Fatalf("after serverShutdown: %v %s", err, m.data)
	}
	// POST /admin/shutdown wraps it too.
	s.post("/admin/faults", `{"shutdown_after":0}`)
	ws2 := s.dial("/stream?streams=btcusdt@trade")
	mustRead(t, ws2)
	s.post("/admin/shutdown", "")
	for {
		m, err := readMsg(t, ws2, 5*time.Second)
		if err != nil {
			t.Fatalf("no serverShutdown before %v", err)
		}
		if strings.Contains(string(m.data), `"serverShutdown"`) {
			if !wrappedShutdown.Match(m.data) {
				t.Fatalf("admin shutdown notice %s", m.data)
			}
			break
		}
	}
}

func TestAdminShutdownAndDrop(t *testing.T) {
	s := startSim(t, func(c *Config) {
		c.Rate = 200
		c.ShutdownDelay = 100 * time.Millisecond
	})
	ws := s.dial("/ws/btcusdt@trade")
	mustRead(t, ws)
	s.post("/admin/shutdown", "")
	sawNotice := false
	for {
		m, err := readMsg(t, ws, 5*time.Second)
		if err != nil {
			if closeCode(err) != websocket.CloseNormalClosure || !sawNotice {
				t.Fatalf("shutdown: %v notice=%v", err, sawNotice)
			}
			break
		}
		if strings.Contains(string(m.data), `"serverShutdown"`) {
			if !rawShutdown.Match(m.data) {
				t.Fatalf("raw notice %s", m.data)
			}
			sawNotice = true
		} else if sawNotice {
			t.Fatalf("trade after serverShutdown: %s", m.data)
		}
	}
	ws2 := s.dial("/ws/btcusdt@trade")
	mustRead(t, ws2)
	s.post("/admin/drop", "")
	readUntilDropped(t, ws2)
	waitFor(t, 2*time.Second, "no open connections", func() bool { return s.state().Connections.Open == 0 })
}

func TestLifetime(t *testing.T) {
	s := startSim(t, func(c *Config) {
		c.Rate = 100
		c.Faults.Lifetime = Duration(300 * time.Millisecond)
	})
	ws := s.dial("/ws/btcusdt@trade")
	start := time.Now()
	for {
		_, err := readMsg(t, ws, 5*time.Second)
		if err != nil {
			if closeCode(err) != websocket.CloseNormalClosure {
				t.Fatalf("lifetime close: %v", err)
			}
			break
		}
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 2*time.Second {
		t.Fatalf("closed after %v", d)
	}
	waitFor(t, 2*time.Second, "lifetime_closes=1", func() bool { return s.state().Connections.LifetimeCloses == 1 })
}

func TestFlap(t *testing.T) {
	s := startSim(t, func(c *Config) { c.Faults.Flap = 2 })
	for i := 0; i < 2; i++ {
		ws := s.dial("/ws/btcusdt@trade")
		if _, err := readMsg(t, ws, 5*time.Second); closeCode(err) != websocket.CloseAbnormalClosure {
			t.Fatalf("flap %d: %v", i, err)
		}
	}
	ws := s.dial("/ws/btcusdt@trade")
	if decodeTrade(t, mustRead(t, ws)).ID != 1 {
		t.Fatal("third connection got no trade 1")
	}
	st := s.state()
	if st.Connections.Flapped != 2 || st.Connections.Accepted != 3 || st.Connections.Open != 1 {
		t.Fatalf("state %+v", st.Connections)
	}
	s.post("/admin/faults", `{"flap":1}`)
	ws4 := s.dial("/ws/btcusdt@trade")
	if _, err := readMsg(t, ws4, 5*time.Second); closeCode(err) != websocket.CloseAbnormalClosure {
		t.Fatalf("runtime flap: %v", err)
	}
}

func TestSilent(t *testing.T) {
	s := startSim(t, func(c *Config) {
		c.Rate = 500
		c.Faults.Silent = []string{"btcusdt"}
	})
	ws := s.dial("/ws/btcusdt@trade")
	msgs := make(chan []byte, 16)
	go func() {
		defer close(msgs)
		for {
			_, b, err := ws.ReadMessage()
			if err != nil {
				return
			}
			msgs <- b
		}
	}()
	select {
	case b := <-msgs:
		t.Fatalf("silent symbol sent %s", b)
	case <-time.After(400 * time.Millisecond):
	}
	ms := s.state().Markets["BTCUSDT"]
	if !ms.Started || ms.Produced < 50 {
		t.Fatalf("silent market did not trade: %+v", ms)
	}
	if h := s.historical(t, "BTCUSDT", 1, 1000); int64(len(h)) < ms.Produced {
		t.Fatalf("history %d < produced %d", len(h), ms.Produced)
	}
	s.post("/admin/faults", `{"silent":[]}`)
	recv := func() []byte {
		select {
		case b := <-msgs:
			return b
		case <-time.After(5 * time.Second):
			t.Fatal("no trade after un-silencing")
			return nil
		}
	}
	first := decodeTrade(t, recv()).ID
	if first <= ms.Produced {
		t.Fatalf("after un-silencing got old trade %d", first)
	}
	if next := decodeTrade(t, recv()).ID; next != first+1 {
		t.Fatalf("%d then %d", first, next)
	}
}

func TestMalformedKinds(t *testing.T) {
	for _, combined := range []bool{false, true} {
		t.Run(map[bool]string{false: "raw", true: "combined"}[combined], func(t *testing.T) {
			s := startSim(t, func(c *Config) { c.Faults.MalformedEvery = 3 })
			path := "/ws/btcusdt@trade"
			if combined {
				path = "/stream?streams=btcusdt@trade"
			}
			ws := s.dial(path)
			var next int64 = 1
			for _, kind := range malformedKinds {
				for i := 0; i < 3; i++ {
					m, err := readMsg(t, ws, 5*time.Second)
					if err != nil {
						t.Fatal(err)
					}
					data := unwrap(t, m.data, combined)
					if m.op != websocket.TextMessage || !newShape.Match(data) || decodeTrade(t, data).ID != next {
						t.Fatalf("want good trade %d before %s, got %.300s", next, kind, m.data)
					}
					next++
				}
				m, err := readMsg(t, ws, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				checkMalformed(t, kind, m, combined, next-1)
			}
			if s.state().MalformedSent < int64(len(malformedKinds)) {
				t.Fatalf("malformed_sent %d", s.state().MalformedSent)
			}
		})
	}
}

func unwrap(t *testing.T, b []byte, combined bool) []byte {
	t.Helper()
	if !combined {
		return b
	}
	var env envelope
	if err := json.Unmarshal(b, &env); err != nil || env.Stream == "" {
		t.Fatalf("not an envelope: %.300s", b)
	}
	return env.Data
}

func checkMalformed(t *testing.T, kind string, m wireMsg, combined bool, lastID int64) {
	t.Helper()
	b := m.data
	isJSON := json.Valid(b)
	var obj map[string]any
	if isJSON && m.op == websocket.TextMessage && kind != "invalid_json" && kind != "truncated_json" {
		_ = json.Unmarshal(unwrap(t, b, combined), &obj)
	}
	fail := func() { t.Fatalf("%s: got op %d %.300s", kind, m.op, b) }
	switch kind {
	case "invalid_json", "truncated_json":
		if isJSON || m.op != websocket.TextMessage {
			fail()
		}
	case "missing_p":
		if _, has := obj["p"]; has || obj["e"] != "trade" || obj["t"].(float64) != float64(lastID) {
			fail()
		}
	case "p_number":
		if _, ok := obj["p"].(float64); !ok {
			fail()
		}
	case "p_nan":
		if obj["p"] != "NaN" {
			fail()
		}
	case "q_1e400":
		if obj["q"] != "1e400" || !strings.Contains(string(b), `"q":"1e400"`) {
			fail()
		}
	case "negative_price":
		if p, _ := obj["p"].(string); !strings.HasPrefix(p, "-") {
			fail()
		}
	case "unsubscribed_symbol":
		if obj["s"] == "BTCUSDT" || obj["e"] != "trade" {
			fail()
		}
		if combined && !strings.HasPrefix(string(b), `{"stream":"zzzusdt@trade"`) {
			fail()
		}
	case "binary_frame":
		if m.op != websocket.BinaryMessage {
			fail()
		}
	case "oversized_frame":
		if len(b) < 2<<20 || m.op != websocket.TextMessage {
			t.Fatalf("oversized frame is %d bytes", len(b))
		}
	case "other_event":
		if obj["e"] != "24hrTicker" {
			fail()
		}
	default:
		t.Fatalf("untested kind %s", kind)
	}
}

// A client that is away misses live trades; REST history has them.
func TestMissedTradesAreInHistory(t *testing.T) {
	s := startSim(t, func(c *Config) { c.Rate = 1000; c.Start = StartImmediate })
	ws := s.dial("/ws/btcusdt@trade")
	var last int64
	for i := 0; i < 20; i++ {
		last = decodeTrade(t, mustRead(t, ws)).ID
	}
	_ = ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
	_ = ws.Close()
	time.Sleep(300 * time.Millisecond)
	ws2 := s.dial("/ws/btcusdt@trade")
	first := decodeTrade(t, mustRead(t, ws2)).ID
	if first <= last+50 {
		t.Fatalf("reconnected at %d after %d: expected a gap", first, last)
	}
	missed := s.historical(t, "BTCUSDT", last+1, 1000)
	if len(missed) < int(first-last-1) {
		t.Fatalf("history from %d has %d trades, want >= %d", last+1, len(missed), first-last-1)
	}
	for i := range first - last - 1 {
		if missed[i].ID != last+1+i {
			t.Fatalf("history %d has id %d", i, missed[i].ID)
		}
	}
	waitFor(t, 2*time.Second, "client close log", func() bool {
		cl := s.log.lines("conn_close")
		return len(cl) == 1 && cl[0]["reason"] == "client"
	})
}

// With --rate 0 the market follows its slowest subscriber.
func TestFastMarketFollowsSubscribers(t *testing.T) {
	s := startSim(t, func(c *Config) { c.Window = 100 })
	time.Sleep(100 * time.Millisecond)
	if ms := s.state().Markets["BTCUSDT"]; ms.Started || ms.Produced != 0 {
		t.Fatalf("on-connect market started early: %+v", ms)
	}
	ws := s.dial("/ws/btcusdt@trade")
	mustRead(t, ws)
	// The client stops reading: once the socket buffers are full the market stops.
	time.Sleep(400 * time.Millisecond)
	n1 := s.state().Markets["BTCUSDT"].Produced
	time.Sleep(200 * time.Millisecond)
	if n2 := s.state().Markets["BTCUSDT"].Produced; n2 != n1 || n1 > 200000 {
		t.Fatalf("market ran on without a reader: %d -> %d", n1, n2)
	}
	for i := 0; i < 5000; i++ {
		mustRead(t, ws)
	}
}

func TestPongTimeout(t *testing.T) {
	s := startSim(t, func(c *Config) {
		c.PingInterval = 50 * time.Millisecond
		c.PongTimeout = 200 * time.Millisecond
		// 20 pongs a second would break Binance's 5 messages a second.
		c.Faults.MaxIncomingPerSec = 0
	})
	// A client that reads answers pings (gorilla does it while reading).
	alive := s.dial("/ws")
	go func() {
		for {
			if _, _, err := alive.ReadMessage(); err != nil {
				return
			}
		}
	}()
	mute := s.dial("/ws")
	_ = mute
	waitFor(t, 3*time.Second, "pong timeout", func() bool {
		for _, l := range s.log.lines("conn_close") {
			if l["reason"] == "pong_timeout" {
				return true
			}
		}
		return false
	})
	time.Sleep(300 * time.Millisecond)
	if st := s.state(); st.Connections.Open != 1 {
		t.Fatalf("open %d, want the reading client only", st.Connections.Open)
	}
}

func TestFaultsAPI(t *testing.T) {
	s := startSim(t, nil)
	got := s.post("/admin/faults", `{"drop_every":300,"lifetime":"24h","silent":["ethusdt"],"retry_after":2}`)
	var f Faults
	if err := json.Unmarshal(got, &f); err != nil {
		t.Fatal(err)
	}
	if f.DropEvery != 300 || f.Lifetime != Duration(24*time.Hour) || len(f.Silent) != 1 || f.Silent[0] != "ETHUSDT" || f.RetryAfter != 2 {
		t.Fatalf("faults %s", got)
	}
	s.post("/admin/faults", `{"lifetime":1.5}`)
	if s.state().Faults.Lifetime != Duration(1500*time.Millisecond) || s.state().Faults.DropEvery != 300 {
		t.Fatalf("faults %+v", s.state().Faults)
	}
	for _, bad := range []string{`{"nope":1}`, `{"drop_every":-1}`, `[1]`, `{"lifetime":"soon"}`} {
		resp, err := http.Post(s.http+"/admin/faults", "application/json", strings.NewReader(bad))
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("%s: %d", bad, resp.StatusCode)
		}
	}
}

func TestAdminDropWithLimitClosesTheOldestOnly(t *testing.T) {
	s := startSim(t, nil)
	first := s.dial("/stream?streams=btcusdt@trade")
	mustRead(t, first)
	second := s.dial("/stream?streams=btcusdt@trade")
	mustRead(t, second)
	b := s.post("/admin/drop?stream=btcusdt@trade&limit=1", "")
	if !strings.Contains(string(b), `"connections":1`) {
		t.Fatalf("drop with limit=1 answered %s", b)
	}
	readUntilDropped(t, first)
	// The younger connection carries on.
	for i := 0; i < 3; i++ {
		if _, err := readMsg(t, second, 5*time.Second); err != nil {
			t.Fatalf("the connection not dropped ended: %v", err)
		}
	}
	if open := s.state().Connections.Open; open != 1 {
		t.Fatalf("open connections after the drop: %d, want 1", open)
	}
}

// readUntilDropped reads what is still on its way until c ends, which must be abruptly (1006).
func readUntilDropped(t *testing.T, c *websocket.Conn) {
	t.Helper()
	for {
		_, err := readMsg(t, c, 5*time.Second)
		if err != nil {
			if closeCode(err) != websocket.CloseAbnormalClosure {
				t.Fatalf("drop: %v", err)
			}
			return
		}
	}
}
