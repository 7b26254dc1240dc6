package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// dialRefused dials a URL the simulator must refuse before the upgrade.
func (s *testSim) dialRefused(path string) (*http.Response, string) {
	s.t.Helper()
	c, resp, err := websocket.DefaultDialer.Dial(s.ws+path, nil)
	if err == nil {
		_ = c.Close()
		s.t.Fatalf("dial %.80s: upgraded, want a refusal", path)
	}
	if !errors.Is(err, websocket.ErrBadHandshake) || resp == nil {
		s.t.Fatalf("dial %.80s: %v", path, err)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func streamNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("s%04dusdt@trade", i)
	}
	return names
}

func TestTooManyStreams(t *testing.T) {
	s := startSim(t, nil)
	names := streamNames(1025)
	want := `{"code":-1,"msg":"Too many streams: 1025 (at most 1024 per connection)"}`
	for _, path := range []string{"/stream?streams=" + strings.Join(names, "/"), "/ws/" + strings.Join(names, "/")} {
		resp, body := s.dialRefused(path)
		if resp.StatusCode != http.StatusBadRequest || body != want {
			t.Fatalf("%.40s...: %d %s", path, resp.StatusCode, body)
		}
	}
	// 1024 different streams are fine, a stream named twice is carried once.
	ws := s.dial("/ws/" + strings.Join(names[:1024], "/") + "/" + names[0])
	send := func(msg string) string {
		if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		return string(mustRead(t, ws))
	}
	if got := send(`{"method":"SUBSCRIBE","params":["` + names[1024] + `","btcusdt@trade"],"id":7}`); got !=
		`{"error":{"code":2,"msg":"Too many streams: 1026 (at most 1024 per connection)"},"id":7}` {
		t.Fatalf("SUBSCRIBE over the limit: %s", got)
	}
	var list struct {
		Result []string `json:"result"`
	}
	if err := json.Unmarshal([]byte(send(`{"method":"LIST_SUBSCRIPTIONS","id":8}`)), &list); err != nil || len(list.Result) != 1024 {
		t.Fatalf("subscriptions after the refused SUBSCRIBE: %d %v", len(list.Result), err)
	}
	if got := send(`{"method":"SUBSCRIBE","params":["` + names[3] + `"],"id":9}`); got != `{"result":null,"id":9}` {
		t.Fatalf("SUBSCRIBE of a carried stream: %s", got)
	}
	if st := s.state(); st.Connections.TooManyStreams != 3 || st.Connections.Accepted != 1 {
		t.Fatalf("state %+v", st.Connections)
	}
	if r := s.log.lines("conn_refused"); len(r) != 2 || r[0]["reason"] != "too_many_streams" || r[0]["streams"].(float64) != 1025 {
		t.Fatalf("conn_refused log %v", r)
	}
	if r := s.log.lines("subscribe_refused"); len(r) != 1 || r[0]["streams"].(float64) != 1026 {
		t.Fatalf("subscribe_refused log %v", r)
	}
}

// list sends LIST_SUBSCRIPTIONS and reads the answer: one counted message.
func list(t *testing.T, ws *websocket.Conn, id int) {
	t.Helper()
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"method":"LIST_SUBSCRIPTIONS","id":`+strconv.Itoa(id)+`}`)); err != nil {
		t.Fatal(err)
	}
	if b := mustRead(t, ws); !strings.HasSuffix(string(b), `"id":`+strconv.Itoa(id)+`}`) {
		t.Fatalf("reply %s", b)
	}
}

func TestIncomingMessageRate(t *testing.T) {
	s := startSim(t, nil)
	ws := s.dial("/ws")
	// Five messages of every kind Binance counts are allowed within a second...
	list(t, ws, 1)
	list(t, ws, 2)
	list(t, ws, 3)
	deadline := time.Now().Add(time.Second)
	if err := ws.WriteControl(websocket.PingMessage, nil, deadline); err != nil {
		t.Fatal(err)
	}
	if err := ws.WriteControl(websocket.PongMessage, nil, deadline); err != nil {
		t.Fatal(err)
	}
	// ...the sixth closes the connection with 1008, unanswered.
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"method":"LIST_SUBSCRIPTIONS","id":5}`)); err != nil {
		t.Fatal(err)
	}
	m, err := readMsg(t, ws, 5*time.Second)
	if closeCode(err) != websocket.ClosePolicyViolation {
		t.Fatalf("after 6 messages: %v %s, want close 1008", err, m.data)
	}
	waitFor(t, 2*time.Second, "message_rate close", func() bool {
		cl := s.log.lines("conn_close")
		return len(cl) == 1 && cl[0]["reason"] == "message_rate" && s.state().Connections.MessageRateCloses == 1
	})

	// The window rolls: two a second forever are fine at a limit of two.
	s.post("/admin/faults", `{"max_incoming_per_sec":2}`)
	ws2 := s.dial("/ws")
	list(t, ws2, 1)
	list(t, ws2, 2)
	time.Sleep(1050 * time.Millisecond)
	list(t, ws2, 3)
	list(t, ws2, 4)
	if err := ws2.WriteMessage(websocket.BinaryMessage, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := readMsg(t, ws2, 5*time.Second); closeCode(err) != websocket.ClosePolicyViolation {
		t.Fatalf("third message within a second: %v", err)
	}

	s.post("/admin/faults", `{"max_incoming_per_sec":0}`)
	ws3 := s.dial("/ws")
	for i := 0; i < 30; i++ {
		list(t, ws3, i)
	}
	waitFor(t, 2*time.Second, "two message_rate closes", func() bool {
		st := s.state()
		return st.Connections.MessageRateCloses == 2 && st.Connections.Open == 1 && st.Faults.MaxIncomingPerSec == 0
	})
}

func TestConnectionAttemptLimit(t *testing.T) {
	s := startSim(t, func(c *Config) {
		c.ConnectionLimit = 3
		c.ConnectionWindow = 700 * time.Millisecond
		c.Faults.Flap = 1
	})
	start := time.Now()
	// A flapped connection is an attempt too.
	if _, err := readMsg(t, s.dial("/ws/btcusdt@trade"), 5*time.Second); closeCode(err) != websocket.CloseAbnormalClosure {
		t.Fatalf("flap: %v", err)
	}
	s.dial("/ws/btcusdt@trade")
	s.dial("/stream?streams=btcusdt@trade")
	for i := 0; i < 2; i++ {
		resp, body := s.dialRefused("/ws/btcusdt@trade")
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" ||
			!strings.HasPrefix(body, `{"code":-1003,"msg":"Too many connection attempts: at most 3 per 700ms per IP`) {
			t.Fatalf("4th attempt: %d %v %s", resp.StatusCode, resp.Header, body)
		}
	}
	st := s.state()
	if st.Connections.AttemptsRefused != 2 || st.Connections.Accepted != 3 || st.Connections.Flapped != 1 {
		t.Fatalf("state %+v", st.Connections)
	}
	if r := s.log.lines("conn_refused"); len(r) != 2 || r[0]["reason"] != "connection_limit" || r[0]["status"].(float64) != 429 {
		t.Fatalf("conn_refused log %v", r)
	}
	// Refused attempts do not count: once the first three are out of the
	// window, three more are let in.
	time.Sleep(time.Until(start.Add(800 * time.Millisecond)))
	for i := 0; i < 3; i++ {
		s.dial("/ws/btcusdt@trade")
	}
	if resp, _ := s.dialRefused("/ws/btcusdt@trade"); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("4th attempt of the next window: %d", resp.StatusCode)
	}
}

var bannedMsg = regexp.MustCompile(`^\{"code":-1003,"msg":"Way too much request weight used; IP banned until (\d+)\. `)

// expect418 checks a 418 and returns how long the ban runs from now.
func expect418(t *testing.T, resp *http.Response, body []byte) time.Duration {
	t.Helper()
	m := bannedMsg.FindSubmatch(body)
	if resp.StatusCode != http.StatusTeapot || m == nil || resp.Header.Get("Retry-After") == "" ||
		resp.Header.Get("X-MBX-USED-WEIGHT-1M") == "" {
		t.Fatalf("want 418: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	until, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return time.Until(time.UnixMilli(until))
}

func TestRest418Ban(t *testing.T) {
	s := startSim(t, func(c *Config) {
		c.Faults.Rest429Every = 2
		c.Faults.RetryAfter = 1
		c.Ban = 300 * time.Millisecond
	})
	hist := func() (*http.Response, []byte) { return s.get("/api/v3/historicalTrades?symbol=BTCUSDT&fromId=1") }
	if resp, _ := hist(); resp.StatusCode != 200 {
		t.Fatalf("first request %d", resp.StatusCode)
	}
	if resp, _ := hist(); resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("second request %d", resp.StatusCode)
	}
	// Asking again within the Retry-After: banned for --ban-seconds ...
	resp, body := hist()
	if d := expect418(t, resp, body); d < 200*time.Millisecond || d > 300*time.Millisecond || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("first ban runs %v more, Retry-After %s", d, resp.Header.Get("Retry-After"))
	}
	// ... and every request during the ban gets 418.
	resp, body = s.get("/api/v3/ping")
	d := expect418(t, resp, body)
	time.Sleep(d + 20*time.Millisecond)
	if resp, _ := hist(); resp.StatusCode != 200 {
		t.Fatalf("after the ban: %d", resp.StatusCode)
	}
	if resp, _ := hist(); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("4th counted request: %d", resp.StatusCode)
	}
	// A repeated offence is banned twice as long.
	resp, body = hist()
	if d := expect418(t, resp, body); d < 500*time.Millisecond || d > 600*time.Millisecond {
		t.Fatalf("second ban runs %v more, want about 600ms", d)
	}
	time.Sleep(650 * time.Millisecond)

	// A weight 429 starts a ban the same way.
	s.post("/admin/faults", `{"rest_429_every":0}`)
	for i := 0; ; i++ {
		resp, _ := hist()
		if resp.StatusCode == http.StatusTooManyRequests {
			break
		}
		if resp.StatusCode != 200 || i > 300 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
	}
	resp, body = s.get("/api/v3/exchangeInfo")
	if d := expect418(t, resp, body); d < 1100*time.Millisecond || d > 1200*time.Millisecond {
		t.Fatalf("third ban runs %v more, want about 1200ms", d)
	}
	st := s.state()
	if st.REST.Banned418 != 4 || st.REST.Injected429 != 2 || st.REST.Weight429 != 1 || st.REST.HistoricalRequests < 240 {
		t.Fatalf("rest state %+v", st.REST)
	}
	var causes []string
	for _, l := range s.log.lines("rest_418") {
		causes = append(causes, l["cause"].(string))
	}
	if strings.Join(causes, ",") != "retry_after,banned,retry_after,retry_after" {
		t.Fatalf("rest_418 causes %v", causes)
	}
}

type aggTrade struct {
	A  int64  `json:"a"`
	P  string `json:"p"`
	Q  string `json:"q"`
	F  int64  `json:"f"`
	L  int64  `json:"l"`
	T  int64  `json:"T"`
	M  bool   `json:"m"`
	BM bool   `json:"M"`
}

func (s *testSim) aggTrades(t *testing.T, query string) ([]aggTrade, *http.Response) {
	t.Helper()
	resp, body := s.get("/api/v3/aggTrades?" + query)
	if resp.StatusCode != 200 {
		t.Fatalf("aggTrades?%s: %d %s", query, resp.StatusCode, body)
	}
	var out []aggTrade
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	return out, resp
}

// units8 is a decimal string with 8 decimals in units of 1e-8.
func units8(t *testing.T, s string) int64 {
	t.Helper()
	v, err := strconv.ParseInt(strings.Replace(s, ".", "", 1), 10, 64)
	if err != nil || len(s) < 9 || s[len(s)-9] != '.' {
		t.Fatalf("not 8 decimals: %q", s)
	}
	return v
}

// expectedAggregates groups trades the way Binance's aggTrades does.
func expectedAggregates(t *testing.T, trades []restTrade) []aggTrade {
	var out []aggTrade
	var qty []int64 // the sums of out[i].Q in units of 1e-8
	for _, tr := range trades {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if tr.ID == last.L+1 && tr.Price == last.P && tr.Time == last.T && tr.IsBuyerMaker == last.M {
				last.L = tr.ID
				qty[n-1] += units8(t, tr.Qty)
				continue
			}
		}
		out = append(out, aggTrade{A: int64(len(out) + 1), P: tr.Price, F: tr.ID, L: tr.ID, T: tr.Time,
			M: tr.IsBuyerMaker, BM: tr.IsBestMatch})
		qty = append(qty, units8(t, tr.Qty))
	}
	for i, u := range qty {
		out[i].Q = fmt.Sprintf("%d.%08d", u/100000000, u%100000000)
	}
	return out
}

func TestAggTrades(t *testing.T) {
	s := startSim(t, func(c *Config) {
		c.Rate = 20000 // many trades share a millisecond, so some aggregate
		c.Count = 3000
		c.Start = StartImmediate
		c.Markets = []MarketSpec{{Symbol: "BTCUSDT", Source: "synthetic:seed=5,start_id=700"}}
		c.Halted = []string{"XRPUSDT"}
	})
	waitFor(t, 5*time.Second, "3000 trades", func() bool { return s.state().Markets["BTCUSDT"].Done })
	var trades []restTrade
	_, body := s.get("/admin/history?symbol=BTCUSDT&limit=100000")
	if err := json.Unmarshal(body, &trades); err != nil || len(trades) != 3000 {
		t.Fatalf("history: %d %v", len(trades), err)
	}
	want := expectedAggregates(t, trades)
	if len(want) >= len(trades) || len(want) < 100 {
		t.Fatalf("%d aggregates of %d trades: the test data do not aggregate", len(want), len(trades))
	}

	// The newest aggregate ends with the newest trade (what limit=1 is for).
	newest, resp := s.aggTrades(t, "symbol=BTCUSDT&limit=1")
	if len(newest) != 1 || newest[0] != want[len(want)-1] || newest[0].L != 3699 || resp.Header.Get("X-MBX-USED-WEIGHT-1M") != "4" {
		t.Fatalf("limit=1: %+v weight %s, want %+v", newest, resp.Header.Get("X-MBX-USED-WEIGHT-1M"), want[len(want)-1])
	}
	// Paging by fromId returns every aggregate once, in order.
	var got []aggTrade
	requests := int64(1)
	for from := int64(1); ; requests++ {
		page, resp := s.aggTrades(t, fmt.Sprintf("symbol=BTCUSDT&fromId=%d&limit=1000", from))
		if len(page) == 0 {
			break
		}
		if from == 1 && resp.Header.Get("X-MBX-USED-WEIGHT-1M") != "8" {
			t.Fatalf("weight %s after two aggTrades", resp.Header.Get("X-MBX-USED-WEIGHT-1M"))
		}
		got = append(got, page...)
		from = page[len(page)-1].A + 1
	}
	if len(got) != len(want) {
		t.Fatalf("%d aggregates, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("aggregate %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if def, _ := s.aggTrades(t, "symbol=BTCUSDT"); len(def) != min(500, len(want)) || def[len(def)-1].L != 3699 {
		t.Fatalf("default: %d aggregates", len(def))
	}
	if p, _ := s.aggTrades(t, "symbol=BTCUSDT&fromId=0&limit=2"); len(p) != 2 || p[0].A != 1 || p[0].F != 700 {
		t.Fatalf("fromId=0: %+v", p)
	}
	if p, _ := s.aggTrades(t, "symbol=XRPUSDT"); len(p) != 0 {
		t.Fatal("halted symbol has aggregates")
	}
	for q, want := range map[string]string{
		"symbol=BTCUSDT&limit=1001":          `"code":-1130`,
		"symbol=BTCUSDT&fromId=x":            `"code":-1100`,
		"symbol=DOGEUSDT":                    `{"code":-1121,"msg":"Invalid symbol."}`,
		"":                                   `"code":-1102`,
		"symbol=BTCUSDT&startTime=1&limit=5": `"code":-1104`,
	} {
		if resp, body := s.get("/api/v3/aggTrades?" + q); resp.StatusCode != 400 || !strings.Contains(string(body), want) {
			t.Errorf("%s: %d %s, want 400 %s", q, resp.StatusCode, body, want)
		}
	}
	if st := s.state(); st.REST.AggRequests != requests+1+3+5 || st.REST.HistoricalRequests != 0 {
		t.Fatalf("rest state %+v", st.REST)
	}
}

// While the market trades, the newest aggregate always ends with the newest trade.
func TestAggTradesNewestEndsWithNewestTrade(t *testing.T) {
	s := startSim(t, func(c *Config) { c.Rate = 5000; c.Start = StartImmediate })
	for i := 0; i < 20; i++ {
		time.Sleep(10 * time.Millisecond)
		s.post("/admin/pause", "")
		time.Sleep(5 * time.Millisecond) // a batch under way when pausing is published

		newest, _ := s.aggTrades(t, "symbol=BTCUSDT&limit=1")
		if last := *s.state().Markets["BTCUSDT"].LastID; len(newest) != 1 || newest[0].L != last {
			t.Fatalf("newest aggregate %+v, newest trade %d", newest, last)
		}
		s.post("/admin/resume", "")
	}
}

func TestSlidingLog(t *testing.T) {
	var l slidingLog
	sec := int64(time.Second)
	for i, c := range []struct {
		at   int64
		ok   bool
		wait time.Duration
	}{
		{1 * sec, true, 0}, {1*sec + 1, true, 0}, {1*sec + 2, true, 0},
		{2*sec - 1, false, 1}, // the 4th within a second of the 1st
		{2 * sec, true, 0},    // the 1st has left the window
		{2*sec + 1, true, 0}, {2*sec + 1, false, 1},
	} {
		ok, wait := l.admit(c.at, 3, time.Second)
		if ok != c.ok || wait != c.wait {
			t.Fatalf("event %d: %v %v, want %v %v", i, ok, wait, c.ok, c.wait)
		}
	}
	if ok, _ := l.admit(2*sec+1, 0, time.Second); !ok {
		t.Fatal("limit 0 refused")
	}
}
