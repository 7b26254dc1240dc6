package sim

import (
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ServeHTTP routes WebSocket, REST and admin requests.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch {
	case p == "/ws" || p == "/ws/" || strings.HasPrefix(p, "/ws/"):
		if !websocketRequest(r) {
			http.Error(w, "WebSocket endpoint", http.StatusBadRequest)
			return
		}
		streams := splitStreams(strings.TrimPrefix(strings.TrimPrefix(p, "/ws"), "/"))
		if s.admitWS(w, r, streams) {
			s.serveWS(w, r, streams, false)
		}
	case p == "/stream" || p == "/stream/":
		if !websocketRequest(r) {
			http.Error(w, "WebSocket endpoint", http.StatusBadRequest)
			return
		}
		streams := splitStreams(r.URL.Query().Get("streams"))
		if s.admitWS(w, r, streams) {
			s.serveWS(w, r, streams, true)
		}
	case strings.HasPrefix(p, "/api/"):
		s.serveREST(w, r)
	case strings.HasPrefix(p, "/admin/"):
		s.serveAdmin(w, r)
	default:
		writeJSON(w, http.StatusNotFound, map[string]any{"code": -1, "msg": "not found: " + p})
	}
}

// splitStreams splits "a@trade/b@trade" into its stream names.
func splitStreams(list string) []string {
	var streams []string
	for _, st := range strings.Split(list, "/") {
		if st != "" {
			streams = append(streams, st)
		}
	}
	return streams
}

func websocketRequest(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"code":-1000,"msg":"internal error"}`)
	}
	writeRaw(w, status, b)
}

func writeRaw(w http.ResponseWriter, status int, b []byte) {
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func binanceError(w http.ResponseWriter, status, code int, msg string) {
	writeJSON(w, status, map[string]any{"code": code, "msg": msg})
}

// ---------------------------------------------------------------------------
// request weight, in a rolling minute

const weightLimit = 6000

type weightTracker struct {
	mu      sync.Mutex
	buckets [60]struct {
		sec    int64
		weight int
	}
}

func (t *weightTracker) usedLocked(now int64) (int, int64) {
	used, oldest := 0, int64(0)
	for _, b := range t.buckets {
		if b.weight > 0 && b.sec > now-60 {
			used += b.weight
			if oldest == 0 || b.sec < oldest {
				oldest = b.sec
			}
		}
	}
	return used, oldest
}

// take adds weight w unless that exceeds the limit; it returns the weight
// used in the last minute and, when refused, the seconds to wait.
func (t *weightTracker) take(now time.Time, w int) (used int, retryAfter int) {
	sec := now.Unix()
	t.mu.Lock()
	defer t.mu.Unlock()
	used, oldest := t.usedLocked(sec)
	if used+w > weightLimit {
		return used, int(max(oldest+60-sec, 1))
	}
	b := &t.buckets[sec%60]
	if b.sec != sec {
		b.sec, b.weight = sec, 0
	}
	b.weight += w
	return used + w, 0
}

func (t *weightTracker) used(now time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	u, _ := t.usedLocked(now.Unix())
	return u
}

// ---------------------------------------------------------------------------
// REST

var restWeights = map[string]int{
	"/api/v3/ping":             1,
	"/api/v3/time":             1,
	"/api/v3/exchangeInfo":     20,
	"/api/v3/historicalTrades": 25,
	"/api/v3/trades":           25,
	"/api/v3/aggTrades":        4, // Binance since 2025-03-10
}

func (s *Server) serveREST(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	if s.banned(w, r, now) {
		return
	}
	weight, known := restWeights[r.URL.Path]
	if !known {
		w.Header().Set("X-MBX-USED-WEIGHT-1M", strconv.Itoa(s.weight.used(now)))
		binanceError(w, http.StatusNotFound, -1000, "Unknown endpoint "+r.URL.Path)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("X-MBX-USED-WEIGHT-1M", strconv.Itoa(s.weight.used(now)))
		binanceError(w, http.StatusMethodNotAllowed, -1000, "Method not allowed")
		return
	}
	if r.URL.Path == "/api/v3/aggTrades" {
		s.stats.aggRequests.Add(1)
	}
	if r.URL.Path == "/api/v3/historicalTrades" {
		n := s.stats.historical.Add(1)
		if every := s.faults.Load().Rest429Every; every > 0 && n%every == 0 {
			s.stats.rateLimited.Add(1)
			s.stats.injected429.Add(1)
			ra := s.faults.Load().RetryAfter
			s.ban.told(now.Add(time.Duration(ra) * time.Second))
			s.log.Info("rest_429", "path", r.URL.Path, "query", r.URL.RawQuery, "cause", "rest_429_every", "retry_after", ra)
			w.Header().Set("X-MBX-USED-WEIGHT-1M", strconv.Itoa(s.weight.used(now)))
			w.Header().Set("Retry-After", strconv.FormatInt(ra, 10))
			binanceError(w, http.StatusTooManyRequests, -1003, "Too many requests; please use the websocket for live updates to avoid polling the API.")
			return
		}
	}
	used, retry := s.weight.take(now, weight)
	w.Header().Set("X-MBX-USED-WEIGHT-1M", strconv.Itoa(used))
	if retry > 0 {
		s.stats.rateLimited.Add(1)
		s.stats.weight429.Add(1)
		s.ban.told(now.Add(time.Duration(retry) * time.Second))
		s.log.Info("rest_429", "path", r.URL.Path, "cause", "weight", "used", used, "retry_after", retry)
		w.Header().Set("Retry-After", strconv.Itoa(retry))
		binanceError(w, http.StatusTooManyRequests, -1003,
			"Too much request weight used; current limit is 6000 request weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.")
		return
	}
	q := r.URL.Query()
	switch r.URL.Path {
	case "/api/v3/ping":
		writeRaw(w, http.StatusOK, []byte(`{}`))
	case "/api/v3/time":
		writeRaw(w, http.StatusOK, []byte(`{"serverTime":`+strconv.FormatInt(time.Now().UnixMilli(), 10)+`}`))
	case "/api/v3/exchangeInfo":
		s.exchangeInfo(w, q.Get("symbol"), q.Get("symbols"))
	case "/api/v3/historicalTrades", "/api/v3/trades":
		s.trades(w, r.URL.Path == "/api/v3/historicalTrades", q.Get("symbol"), q.Get("limit"), q.Get("fromId"), q.Has("fromId"))
	case "/api/v3/aggTrades":
		s.aggTrades(w, q)
	}
}

// banned answers 418 to a request that came before a 429's Retry-After ran
// out, and to every request during the ban that follows. Such requests cost
// no weight and are not counted per endpoint.
func (s *Server) banned(w http.ResponseWriter, r *http.Request, now time.Time) bool {
	until, cause := s.ban.check(now, s.cfg.Ban)
	if cause == "" {
		return false
	}
	s.stats.banned418.Add(1)
	secs := ceilSeconds(until.Sub(now))
	s.log.Info("rest_418", "path", r.URL.Path, "query", r.URL.RawQuery, "cause", cause,
		"banned_until", until.UnixMilli(), "retry_after", secs)
	w.Header().Set("X-MBX-USED-WEIGHT-1M", strconv.Itoa(s.weight.used(now)))
	w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	binanceError(w, http.StatusTeapot, -1003, "Way too much request weight used; IP banned until "+
		strconv.FormatInt(until.UnixMilli(), 10)+". Please use WebSocket Streams for live updates to avoid bans.")
	return true
}

var quoteAssets = []string{"FDUSD", "USDT", "USDC", "BUSD", "TUSD", "TRY", "EUR", "BTC", "ETH", "BNB"}

func splitSymbol(sym string) (string, string) {
	for _, qa := range quoteAssets {
		if strings.HasSuffix(sym, qa) && len(sym) > len(qa) {
			return strings.TrimSuffix(sym, qa), qa
		}
	}
	if len(sym) > 3 {
		return sym[:len(sym)-3], sym[len(sym)-3:]
	}
	return sym, ""
}

type symbolInfo struct {
	Symbol     string `json:"symbol"`
	Status     string `json:"status"`
	BaseAsset  string `json:"baseAsset"`
	QuoteAsset string `json:"quoteAsset"`
}

func (s *Server) known(sym string) bool { return s.markets[sym] != nil || s.halted[sym] }

// checkSymbolParam validates a symbol parameter like Binance.
func (s *Server) checkSymbolParam(w http.ResponseWriter, name, sym string) bool {
	if sym == "" {
		binanceError(w, http.StatusBadRequest, -1102, "Mandatory parameter '"+name+"' was not sent, was empty/null, or malformed.")
		return false
	}
	if !validSymbol(sym) {
		binanceError(w, http.StatusBadRequest, -1100, "Illegal characters found in parameter '"+name+"'; legal range is '^[A-Z0-9-_.]{1,20}$'.")
		return false
	}
	if !s.known(sym) {
		binanceError(w, http.StatusBadRequest, -1121, "Invalid symbol.")
		return false
	}
	return true
}

func (s *Server) exchangeInfo(w http.ResponseWriter, symbol, symbolsParam string) {
	var want []string
	switch {
	case symbol != "":
		if !s.checkSymbolParam(w, "symbol", symbol) {
			return
		}
		want = []string{symbol}
	case symbolsParam != "":
		if err := json.Unmarshal([]byte(symbolsParam), &want); err != nil || len(want) == 0 {
			binanceError(w, http.StatusBadRequest, -1100, "Illegal characters found in parameter 'symbols'; legal range is '^\\[(\"[A-Z0-9-_.]{1,20}\"(,\"[A-Z0-9-_.]{1,20}\"){0,}){0,1}\\]$'.")
			return
		}
		for _, sym := range want {
			if !s.checkSymbolParam(w, "symbols", sym) {
				return
			}
		}
	default:
		want = s.symbols
	}
	infos := make([]symbolInfo, 0, len(want))
	for _, sym := range want {
		base, quote := splitSymbol(sym)
		status := "TRADING"
		if s.halted[sym] {
			status = "BREAK"
		}
		infos = append(infos, symbolInfo{Symbol: sym, Status: status, BaseAsset: base, QuoteAsset: quote})
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"timezone":   "UTC",
		"serverTime": time.Now().UnixMilli(),
		"rateLimits": []any{
			map[string]any{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": weightLimit},
		},
		"exchangeFilters": []any{},
		"symbols":         infos,
	})
}

func (s *Server) trades(w http.ResponseWriter, historical bool, symbol, limitStr, fromStr string, hasFrom bool) {
	if !s.checkSymbolParam(w, "symbol", symbol) {
		return
	}
	limit, ok := parseLimit(w, limitStr)
	if !ok {
		return
	}
	var fromID int64
	if historical && hasFrom {
		if fromID, ok = parseFromID(w, fromStr); !ok {
			return
		}
	} else {
		hasFrom = false
	}
	m := s.markets[symbol]
	if m == nil { // halted: known, never traded
		writeRaw(w, http.StatusOK, []byte(`[]`))
		return
	}
	h := &m.hist
	n := h.len()
	var lo int64
	if hasFrom {
		lo = h.searchID(n, fromID)
	} else {
		lo = max(n-limit, 0)
	}
	hi := min(lo+limit, n)
	out := make([]byte, 0, 160*(hi-lo)+2)
	out = append(out, '[')
	for i := lo; i < hi; i++ {
		if i > lo {
			out = append(out, ',')
		}
		out = appendRESTTrade(out, h.at(i))
	}
	out = append(out, ']')
	writeRaw(w, http.StatusOK, out)
}

// parseLimit reads a REST limit (default 500, 1..1000) or answers the error.
func parseLimit(w http.ResponseWriter, limitStr string) (int64, bool) {
	if limitStr == "" {
		return 500, true
	}
	v, err := strconv.ParseInt(limitStr, 10, 64)
	if err != nil {
		binanceError(w, http.StatusBadRequest, -1100, "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'.")
		return 0, false
	}
	if v < 1 || v > 1000 {
		binanceError(w, http.StatusBadRequest, -1130, "Invalid data sent for a parameter.; limit must be between 1 and 1000")
		return 0, false
	}
	return v, true
}

// parseFromID reads a REST fromId or answers the error.
func parseFromID(w http.ResponseWriter, fromStr string) (int64, bool) {
	v, err := strconv.ParseInt(fromStr, 10, 64)
	if err != nil || v < 0 {
		binanceError(w, http.StatusBadRequest, -1100, "Illegal characters found in parameter 'fromId'; legal range is '^[0-9]{1,20}$'.")
		return 0, false
	}
	return v, true
}

// adminHistory is GET /admin/history?symbol=X[&fromId=N][&limit=L]: the
// produced trades in the historicalTrades shape, from fromId (default: the
// first trade), at most limit (default 1000, up to 100000). Unlike the REST
// endpoint it costs no weight, is not counted and is never refused.
func (s *Server) adminHistory(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	m := s.markets[q.Get("symbol")]
	if m == nil {
		if s.halted[q.Get("symbol")] {
			writeRaw(w, http.StatusOK, []byte(`[]`))
			return
		}
		binanceError(w, http.StatusBadRequest, -1121, "Invalid symbol.")
		return
	}
	limit, from := int64(1000), int64(0)
	if v := q.Get("limit"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 || n > 100000 {
			binanceError(w, http.StatusBadRequest, -1130, "limit must be between 1 and 100000")
			return
		}
		limit = n
	}
	if v := q.Get("fromId"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			binanceError(w, http.StatusBadRequest, -1100, "bad fromId")
			return
		}
		from = n
	}
	h := &m.hist
	n := h.len()
	lo := h.searchID(n, from)
	hi := min(lo+limit, n)
	out := make([]byte, 0, 160*(hi-lo)+2)
	out = append(out, '[')
	for i := lo; i < hi; i++ {
		if i > lo {
			out = append(out, ',')
		}
		out = appendRESTTrade(out, h.at(i))
	}
	writeRaw(w, http.StatusOK, append(out, ']'))
}

func appendRESTTrade(b []byte, t *trade) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, t.id, 10)
	b = append(b, `,"price":"`...)
	b = append(b, t.price()...)
	b = append(b, `","qty":"`...)
	b = append(b, t.qty()...)
	b = append(b, `","quoteQty":"`...)
	b = append(b, quoteQty(t.price(), t.qty())...)
	b = append(b, `","time":`...)
	b = strconv.AppendInt(b, t.tms, 10)
	b = append(b, `,"isBuyerMaker":`...)
	b = strconv.AppendBool(b, t.m)
	b = append(b, `,"isBestMatch":`...)
	b = strconv.AppendBool(b, t.bm)
	return append(b, '}')
}

// quoteQty is price*qty computed exactly and rounded half-up to 8 decimals.
func quoteQty(price, qty []byte) string {
	pi, ps := parseDecimal(price)
	qi, qs := parseDecimal(qty)
	if pi == nil || qi == nil {
		return "0.00000000"
	}
	prod := new(big.Int).Mul(pi, qi)
	scale := ps + qs
	if scale > 8 {
		div := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(scale-8)), nil)
		half := new(big.Int).Rsh(div, 1)
		prod.Add(prod, half)
		prod.Quo(prod, div)
	} else if scale < 8 {
		prod.Mul(prod, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(8-scale)), nil))
	}
	return formatDecimal(prod, 8)
}

// formatDecimal writes v·10^-scale (v >= 0) with exactly scale decimals.
func formatDecimal(v *big.Int, scale int) string {
	s := v.String()
	if scale <= 0 {
		return s
	}
	if len(s) <= scale {
		s = strings.Repeat("0", scale+1-len(s)) + s
	}
	return s[:len(s)-scale] + "." + s[len(s)-scale:]
}

func parseDecimal(b []byte) (*big.Int, int) {
	s := string(b)
	scale := 0
	if i := strings.IndexByte(s, '.'); i >= 0 {
		scale = len(s) - i - 1
		s = s[:i] + s[i+1:]
	}
	v, ok := new(big.Int).SetString(s, 10)
	if !ok {
		return nil, 0
	}
	return v, scale
}

// ---------------------------------------------------------------------------
// admin

// MarketState is one market in GET /admin/state.
type MarketState struct {
	FirstID  *int64 `json:"first_id"`
	LastID   *int64 `json:"last_id"`
	Produced int64  `json:"produced"`
	Done     bool   `json:"done"`
	Started  bool   `json:"started"`
}

// State is GET /admin/state.
type State struct {
	Markets     map[string]MarketState `json:"markets"`
	Connections struct {
		Open            int64 `json:"open"`
		Accepted        int64 `json:"accepted"`
		Flapped         int64 `json:"flapped"`
		Dropped         int64 `json:"dropped"`
		ShutdownNotices int64 `json:"shutdown_notices"`
		LifetimeCloses  int64 `json:"lifetime_closes"`
		// TooManyStreams counts URLs refused (400) and SUBSCRIBEs refused for
		// taking a connection over 1024 streams.
		TooManyStreams    int64 `json:"too_many_streams"`
		MessageRateCloses int64 `json:"message_rate_closes"`
		AttemptsRefused   int64 `json:"attempts_refused"`
	} `json:"connections"`
	SentTrades    int64 `json:"sent_trades"`
	MalformedSent int64 `json:"malformed_sent"`
	REST          struct {
		HistoricalRequests int64 `json:"historical_requests"`
		RateLimited        int64 `json:"rate_limited"`
		Injected429        int64 `json:"injected_429"`
		Weight429          int64 `json:"weight_429"`
		Banned418          int64 `json:"banned_418"`
		AggRequests        int64 `json:"agg_requests"`
		UsedWeight1M       int   `json:"used_weight_1m"`
	} `json:"rest"`
	Paused bool   `json:"paused"`
	Faults Faults `json:"faults"`
}

// Snapshot returns the admin state.
func (s *Server) Snapshot() State {
	var st State
	st.Markets = make(map[string]MarketState, len(s.markets))
	for sym, m := range s.markets {
		n := m.hist.len()
		ms := MarketState{Produced: n, Done: m.done.Load(), Started: m.started.Load()}
		if n > 0 {
			first, last := m.hist.at(0).id, m.hist.at(n-1).id
			ms.FirstID, ms.LastID = &first, &last
		}
		st.Markets[sym] = ms
	}
	c := &st.Connections
	c.Open = s.stats.open.Load()
	c.Accepted = s.stats.accepted.Load()
	c.Flapped = s.stats.flapped.Load()
	c.Dropped = s.stats.dropped.Load()
	c.ShutdownNotices = s.stats.shutdownNotices.Load()
	c.LifetimeCloses = s.stats.lifetimeCloses.Load()
	c.TooManyStreams = s.stats.tooManyStreams.Load()
	c.MessageRateCloses = s.stats.messageRateCloses.Load()
	c.AttemptsRefused = s.stats.attemptsRefused.Load()
	st.SentTrades = s.stats.sentTrades.Load()
	st.MalformedSent = s.stats.malformedSent.Load()
	st.REST.HistoricalRequests = s.stats.historical.Load()
	st.REST.RateLimited = s.stats.rateLimited.Load()
	st.REST.Injected429 = s.stats.injected429.Load()
	st.REST.Weight429 = s.stats.weight429.Load()
	st.REST.Banned418 = s.stats.banned418.Load()
	st.REST.AggRequests = s.stats.aggRequests.Load()
	st.REST.UsedWeight1M = s.weight.used(time.Now())
	st.Paused, _ = s.pauseState()
	st.Faults = s.currentFaults()
	return st
}

func (s *Server) serveAdmin(w http.ResponseWriter, r *http.Request) {
	action := strings.TrimPrefix(r.URL.Path, "/admin/")
	switch action {
	case "state":
		writeJSON(w, http.StatusOK, s.Snapshot())
		return
	case "history":
		s.adminHistory(w, r)
		return
	}
	if r.Method != http.MethodPost {
		writeJSON(w, http.StatusMethodNotAllowed, map[string]any{"error": "use POST"})
		return
	}
	switch action {
	case "faults":
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]any{"error": err.Error()})
			return
		}
		f, err := s.updateFaults(body)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]any{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, f)
		return
	case "start":
		for _, sym := range s.symbols {
			if m := s.markets[sym]; m != nil {
				m.start("admin")
			}
		}
	case "drop":
		conns := s.openConns()
		if stream := r.URL.Query().Get("stream"); stream != "" {
			// Only the connections opened with this stream in their URL (one shard of a client).
			kept := conns[:0]
			for _, c := range conns {
				if c.opensWith(stream) {
					kept = append(kept, c)
				}
			}
			conns = kept
		}
		if limit := r.URL.Query().Get("limit"); limit != "" {
			// The oldest `limit` of them: one of two redundant connections, say.
			n, err := strconv.Atoi(limit)
			if err != nil || n < 0 {
				writeJSON(w, http.StatusBadRequest, map[string]any{"error": "limit must be a whole number"})
				return
			}
			sort.Slice(conns, func(i, j int) bool { return conns[i].id < conns[j].id })
			if n < len(conns) {
				conns = conns[:n]
			}
		}
		s.log.Info("admin", "action", "drop", "connections", len(conns))
		for _, c := range conns {
			c.abort(reasonDrop)
		}
		writeJSON(w, http.StatusOK, map[string]any{"ok": true, "connections": len(conns)})
		return
	case "shutdown":
		conns := s.openConns()
		s.log.Info("admin", "action", "shutdown", "connections", len(conns))
		for _, c := range conns {
			c.shutdownRq.Store(true)
			c.wake()
		}
		writeJSON(w, http.StatusOK, map[string]any{"ok": true, "connections": len(conns)})
		return
	case "pause":
		s.setPaused(true)
	case "resume":
		s.setPaused(false)
	default:
		writeJSON(w, http.StatusNotFound, map[string]any{"error": "unknown admin action " + action})
		return
	}
	s.log.Info("admin", "action", action)
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}
