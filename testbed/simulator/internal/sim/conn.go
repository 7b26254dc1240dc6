package sim

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// WebSocket opcodes of the frames the simulator writes itself.
const (
	opText   = 0x1
	opBinary = 0x2
	opClose  = 0x8
	opPing   = 0x9
	opPong   = 0xA
)

const (
	batchBytes  = 128 << 10 // trade frames per write syscall, in bytes
	perSubTake  = 512       // trades taken from one subscription before the next one's turn
	maxReadSize = 64 << 10  // largest client message accepted
)

// Close reasons (in the log and the counters).
const (
	reasonDrop        = "drop"
	reasonShutdown    = "shutdown"
	reasonLifetime    = "lifetime"
	reasonClient      = "client"
	reasonFlap        = "flap"
	reasonPongTimeout = "pong_timeout"
	reasonWriteError  = "write_error"
	reasonServerExit  = "server_exit"
	reasonMessageRate = "message_rate"
)

// sub is one stream subscribed on one connection.
type sub struct {
	c      *conn
	m      *Market // nil for a stream the exchange does not have (silent)
	stream string
	pos    int64        // next history index to send (writer's view)
	cursor atomic.Int64 // pos as of the last completed write (the market's view)
	linked bool         // registered with the market

	sentFirst, sentLast, sentCount int64
	pendFirst, pendLast, pendCount int64
}

type ctrlKind int

const (
	ctrlPing     ctrlKind = iota // client pinged: answer with a pong
	ctrlRequest                  // client sent a text message (SUBSCRIBE, ...)
	ctrlOverRate                 // client sent too many messages: close the connection
)

type ctrlMsg struct {
	kind ctrlKind
	data []byte
}

// conn is one WebSocket connection. Its writer goroutine (run) owns the
// socket for writing and the subscription list; frames are written as raw
// WebSocket frames in batches, many per system call. A reader goroutine
// parses what the client sends (through gorilla/websocket).
type conn struct {
	srv      *Server
	id       int64
	ws       *websocket.Conn
	nc       net.Conn
	path     string
	remote   string
	combined bool
	opened   time.Time
	streams  []string // as named in the URL; never changed after accept

	wakeCh     chan struct{}
	ctrl       chan ctrlMsg
	readerDone chan struct{}
	writerDone chan struct{}
	lastPong   atomic.Int64 // unix nanos
	shutdownRq atomic.Bool

	// reader-owned
	incoming slidingLog // times of the client's last messages
	overRate bool

	mu          sync.Mutex
	reason      string
	clientClose *websocket.CloseError

	// writer-owned
	subs         []*sub
	rr           int
	sent         int64
	malformed    map[string]int64
	lastTrade    *trade
	lastSub      *sub
	shuttingDown bool
}

func (c *conn) wake() {
	select {
	case c.wakeCh <- struct{}{}:
	default:
	}
}

// setReason records why the connection ends; the first reason wins.
func (c *conn) setReason(r string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reason == "" {
		c.reason = r
	}
	return c.reason
}

// opensWith reports whether the connection's URL named stream.
func (c *conn) opensWith(stream string) bool {
	for _, st := range c.streams {
		if st == stream {
			return true
		}
	}
	return false
}

// abort closes the TCP connection at once, without a close frame.
func (c *conn) abort(reason string) {
	c.setReason(reason)
	_ = c.nc.Close()
}

// ---------------------------------------------------------------------------
// accept

var upgrader = websocket.Upgrader{
	ReadBufferSize:  4096,
	WriteBufferSize: 1024,
	CheckOrigin:     func(*http.Request) bool { return true },
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request, streams []string, combined bool) {
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered with an HTTP error
	}
	s.stats.accepted.Add(1)
	id := s.nextID.Add(1)
	path := r.URL.RequestURI()
	nc := ws.NetConn()
	if s.takeFlap() {
		s.stats.flapped.Add(1)
		_ = nc.Close()
		s.log.Info("conn_open", "conn", id, "path", path, "remote", r.RemoteAddr)
		s.log.Info("conn_close", "conn", id, "reason", reasonFlap, "trades_sent", 0)
		return
	}
	now := time.Now()
	c := &conn{
		srv: s, id: id, ws: ws, nc: nc, path: path, remote: r.RemoteAddr, combined: combined, opened: now,
		streams:    streams,
		wakeCh:     make(chan struct{}, 1),
		ctrl:       make(chan ctrlMsg, 64),
		readerDone: make(chan struct{}),
		writerDone: make(chan struct{}),
		malformed:  make(map[string]int64),
	}
	c.lastPong.Store(now.UnixNano())
	s.connsMu.Lock()
	s.conns[id] = c
	s.connWG.Add(1)
	s.connsMu.Unlock()
	s.stats.open.Add(1)
	s.log.Info("conn_open", "conn", id, "path", path, "remote", r.RemoteAddr, "streams", streams)
	for _, st := range streams {
		c.subscribe(st)
	}
	go c.readLoop()
	c.finish(c.loop())
	close(c.writerDone)
	s.connWG.Done()
}

// ---------------------------------------------------------------------------
// reader

func (c *conn) readLoop() {
	defer close(c.readerDone)
	c.ws.SetReadLimit(maxReadSize)
	c.ws.SetPongHandler(func(string) error {
		if c.countIncoming() {
			c.lastPong.Store(time.Now().UnixNano())
		}
		return nil
	})
	c.ws.SetPingHandler(func(p string) error {
		if !c.countIncoming() {
			return nil
		}
		select {
		case c.ctrl <- ctrlMsg{kind: ctrlPing, data: []byte(p)}:
		default:
		}
		return nil
	})
	c.ws.SetCloseHandler(func(code int, text string) error {
		c.mu.Lock()
		c.clientClose = &websocket.CloseError{Code: code, Text: text}
		c.mu.Unlock()
		return nil
	})
	for {
		mt, data, err := c.ws.ReadMessage()
		if err != nil {
			return
		}
		if !c.countIncoming() || mt != websocket.TextMessage {
			continue
		}
		select {
		case c.ctrl <- ctrlMsg{kind: ctrlRequest, data: data}:
		case <-c.writerDone:
			return
		}
	}
}

// countIncoming counts one client message (ping, pong, text or binary)
// against Binance's limit per rolling second. The message that goes over it
// tells the writer to close the connection (through ctrl, so the writer's
// loop has no extra case); from then on the reader still reads, so the
// client's close frame arrives, but ignores what it reads.
func (c *conn) countIncoming() bool {
	if c.overRate {
		return false
	}
	limit := c.srv.faults.Load().MaxIncomingPerSec
	if ok, _ := c.incoming.admit(time.Now().UnixNano(), limit, time.Second); ok {
		return true
	}
	c.overRate = true
	select {
	case c.ctrl <- ctrlMsg{kind: ctrlOverRate}:
	case <-c.writerDone:
	}
	return false
}

// ---------------------------------------------------------------------------
// subscriptions

func (c *conn) subscribe(stream string) {
	for _, s := range c.subs {
		if s.stream == stream {
			return
		}
	}
	s := &sub{c: c, stream: stream, m: c.srv.byStream[stream]}
	c.subs = append(c.subs, s)
	if s.m == nil {
		return
	}
	if !c.shuttingDown {
		s.m.addSub(s)
		s.linked = true
	}
	if c.srv.cfg.Start == StartOnConnect {
		s.m.start("subscription")
	}
}

func (c *conn) unsubscribe(stream string) {
	for i, s := range c.subs {
		if s.stream == stream {
			c.unlink(s)
			c.subs = append(c.subs[:i], c.subs[i+1:]...)
			c.rr = 0
			return
		}
	}
}

func (c *conn) unlink(s *sub) {
	if s.linked {
		s.m.removeSub(s)
		s.linked = false
	}
}

type wsRequest struct {
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	ID     json.RawMessage `json:"id"`
}

// handleRequest answers a client message like Binance does.
func (c *conn) handleRequest(data []byte) []byte {
	var req wsRequest
	if err := json.Unmarshal(data, &req); err != nil {
		return []byte(`{"error":{"code":3,"msg":"Invalid JSON: ` + jsonEscape(err.Error()) + `"},"id":null}`)
	}
	id := "null"
	if len(req.ID) > 0 {
		id = string(req.ID)
	}
	bad := func(msg string) []byte {
		return []byte(`{"error":{"code":2,"msg":"Invalid request: ` + jsonEscape(msg) + `"},"id":` + id + `}`)
	}
	var params []string
	if len(req.Params) > 0 && string(req.Params) != "null" {
		if err := json.Unmarshal(req.Params, &params); err != nil {
			return bad("params must be an array of strings")
		}
	}
	switch req.Method {
	case "SUBSCRIBE":
		if n := c.streamsAfter(params); n > maxStreamsPerConn {
			c.srv.stats.tooManyStreams.Add(1)
			c.srv.log.Info("subscribe_refused", "conn", c.id, "reason", "too_many_streams", "streams", n, "id", id)
			return []byte(`{"error":{"code":2,"msg":"` + tooManyStreamsMsg(n) + `"},"id":` + id + `}`)
		}
		for _, p := range params {
			c.subscribe(p)
		}
		return []byte(`{"result":null,"id":` + id + `}`)
	case "UNSUBSCRIBE":
		for _, p := range params {
			c.unsubscribe(p)
		}
		return []byte(`{"result":null,"id":` + id + `}`)
	case "LIST_SUBSCRIPTIONS":
		names := make([]string, 0, len(c.subs))
		for _, s := range c.subs {
			names = append(names, s.stream)
		}
		b, _ := json.Marshal(names)
		return []byte(`{"result":` + string(b) + `,"id":` + id + `}`)
	case "SET_PROPERTY":
		return []byte(`{"result":null,"id":` + id + `}`)
	case "GET_PROPERTY":
		return []byte(`{"result":` + strconv.FormatBool(c.combined) + `,"id":` + id + `}`)
	default:
		return bad("unknown method " + strconv.Quote(req.Method))
	}
}

// streamsAfter is how many streams the connection would carry after
// subscribing to names.
func (c *conn) streamsAfter(names []string) int {
	have := make(map[string]struct{}, len(c.subs)+len(names))
	for _, s := range c.subs {
		have[s.stream] = struct{}{}
	}
	for _, n := range names {
		have[n] = struct{}{}
	}
	return len(have)
}

func jsonEscape(s string) string {
	b, _ := json.Marshal(s)
	return string(b[1 : len(b)-1])
}

// ---------------------------------------------------------------------------
// writer

func (c *conn) write(b []byte) error {
	if t := c.srv.cfg.PongTimeout; t > 0 {
		_ = c.nc.SetWriteDeadline(time.Now().Add(max(t, time.Second)))
	}
	_, err := c.nc.Write(b)
	return err
}

func (c *conn) writeFrame(op byte, payload []byte) error {
	b := appendHeader(make([]byte, 0, len(payload)+10), op, len(payload))
	return c.write(append(b, payload...))
}

func appendHeader(b []byte, op byte, n int) []byte {
	b = append(b, 0x80|op)
	switch {
	case n < 126:
		return append(b, byte(n))
	case n <= math.MaxUint16:
		return append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127)
		return binary.BigEndian.AppendUint64(b, uint64(n))
	}
}

func (c *conn) appendTrade(buf []byte, m *Market, t *trade) []byte {
	if c.combined {
		buf = appendHeader(buf, opText, len(m.prefix)+len(t.data)+1)
		buf = append(buf, m.prefix...)
		buf = append(buf, t.data...)
		return append(buf, '}')
	}
	buf = appendHeader(buf, opText, len(t.data))
	return append(buf, t.data...)
}

// fill appends up to budget trade frames that are due on this connection.
func (c *conn) fill(buf []byte, budget int64) ([]byte, int64) {
	ns := len(c.subs)
	if ns == 0 || budget <= 0 {
		return buf, 0
	}
	silent := c.srv.faults.Load().silent
	var total int64
	for {
		progressed := false
		for k := 0; k < ns; k++ {
			s := c.subs[(c.rr+k)%ns]
			if !s.linked {
				continue
			}
			h := &s.m.hist
			n := h.len()
			if s.pos >= n {
				continue
			}
			if silent[s.m.Symbol] {
				s.pos = n
				continue
			}
			take := min(n-s.pos, budget-total, perSubTake)
			for j := int64(0); j < take; j++ {
				t := h.at(s.pos)
				buf = c.appendTrade(buf, s.m, t)
				if s.pendCount == 0 {
					s.pendFirst = t.id
				}
				s.pendLast = t.id
				s.pendCount++
				s.pos++
				total++
				c.lastTrade, c.lastSub = t, s
				if len(buf) >= batchBytes {
					break
				}
			}
			progressed = true
			if total >= budget || len(buf) >= batchBytes {
				c.rr = (c.rr + k + 1) % ns
				return buf, total
			}
		}
		if !progressed {
			return buf, total
		}
	}
}

// commit records that everything filled so far went out.
func (c *conn) commit() {
	for _, s := range c.subs {
		if s.pendCount > 0 {
			if s.sentCount == 0 {
				s.sentFirst = s.pendFirst
			}
			s.sentLast = s.pendLast
			s.sentCount += s.pendCount
			s.pendCount = 0
		}
		if s.linked && s.cursor.Load() != s.pos {
			s.cursor.Store(s.pos)
			s.m.poke()
		}
	}
}

// loop is the writer; it returns why the connection ends.
func (c *conn) loop() string {
	cfg := &c.srv.cfg
	buf := make([]byte, 0, batchBytes+8192)
	var (
		faultsVer                        int64 = -1
		dropEvery, shutAfter, malfEvery  int64
		lifetime                         Duration
		dropBase, shutBase, goodSinceBad int64
		lifetimeT                        *time.Timer
		lifetimeC                        <-chan time.Time
		shutdownC                        <-chan time.Time
		tickC                            <-chan time.Time
		nextPing                         time.Time
		unanswered                       time.Time // oldest ping without a pong since
	)
	if cfg.PingInterval > 0 {
		iv := cfg.PingInterval
		if cfg.PongTimeout > 0 {
			iv = min(iv, cfg.PongTimeout)
		}
		iv = min(max(iv/4, 5*time.Millisecond), time.Second)
		tk := time.NewTicker(iv)
		defer tk.Stop()
		tickC = tk.C
		nextPing = c.opened.Add(cfg.PingInterval)
	}
	defer func() {
		if lifetimeT != nil {
			lifetimeT.Stop()
		}
	}()
	closed := make(chan struct{})
	close(closed)

	beginShutdown := func() string {
		if c.shuttingDown {
			return ""
		}
		c.shuttingDown = true
		for _, s := range c.subs {
			c.unlink(s)
		}
		notice := []byte(`{"e":"serverShutdown","E":` + strconv.FormatInt(time.Now().UnixMilli(), 10) + `}`)
		if c.combined { // Binance wraps it like a stream's event
			notice = concat([]byte(`{"stream":"!serverShutdown","data":`), notice, []byte(`}`))
		}
		if err := c.writeFrame(opText, notice); err != nil {
			return reasonWriteError
		}
		c.srv.stats.shutdownNotices.Add(1)
		c.srv.log.Info("server_shutdown_notice", "conn", c.id, "trades_sent", c.sent)
		shutdownC = time.After(cfg.ShutdownDelay)
		return ""
	}

	// event handles one pending event (blocking for one when block is set).
	event := func(block bool) string {
		wake := closed
		if block {
			wake = c.wakeCh
		}
		select {
		case <-wake:
		case msg := <-c.ctrl:
			switch msg.kind {
			case ctrlPing:
				if err := c.writeFrame(opPong, msg.data); err != nil {
					return reasonWriteError
				}
			case ctrlRequest:
				if err := c.writeFrame(opText, c.handleRequest(msg.data)); err != nil {
					return reasonWriteError
				}
			case ctrlOverRate:
				c.srv.stats.messageRateCloses.Add(1)
				return c.graceful(websocket.ClosePolicyViolation, "Too many messages", reasonMessageRate)
			}
		case now := <-tickC:
			lp := time.Unix(0, c.lastPong.Load())
			if !unanswered.IsZero() && !lp.Before(unanswered) {
				unanswered = time.Time{}
			}
			if cfg.PongTimeout > 0 && !unanswered.IsZero() && now.Sub(unanswered) > cfg.PongTimeout {
				c.setReason(reasonPongTimeout)
				return reasonPongTimeout
			}
			if !now.Before(nextPing) {
				if err := c.writeFrame(opPing, nil); err != nil {
					return reasonWriteError
				}
				if unanswered.IsZero() {
					unanswered = now
				}
				nextPing = now.Add(cfg.PingInterval)
			}
		case <-lifetimeC:
			c.srv.stats.lifetimeCloses.Add(1)
			return c.graceful(websocket.CloseNormalClosure, "connection lifetime reached", reasonLifetime)
		case <-shutdownC:
			return c.graceful(websocket.CloseNormalClosure, "server shutdown", reasonShutdown)
		case <-c.readerDone:
			c.mu.Lock()
			ce := c.clientClose
			c.mu.Unlock()
			if ce != nil {
				c.setReason(reasonClient)
				payload := []byte{}
				if ce.Code != websocket.CloseNoStatusReceived {
					payload = websocket.FormatCloseMessage(ce.Code, "")
				}
				_ = c.writeFrame(opClose, payload)
			}
			return reasonClient
		case <-c.srv.ctx.Done():
			return reasonServerExit
		}
		return ""
	}

	for {
		f := c.srv.faults.Load()
		if f.version != faultsVer {
			faultsVer = f.version
			if f.DropEvery != dropEvery {
				dropEvery, dropBase = f.DropEvery, c.sent
			}
			if f.ShutdownAfter != shutAfter {
				shutAfter, shutBase = f.ShutdownAfter, c.sent
			}
			if f.MalformedEvery != malfEvery {
				malfEvery, goodSinceBad = f.MalformedEvery, 0
			}
			if f.Lifetime != lifetime {
				lifetime = f.Lifetime
				if lifetimeT != nil {
					lifetimeT.Stop()
					lifetimeT, lifetimeC = nil, nil
				}
				if lifetime > 0 {
					lifetimeT = time.NewTimer(max(time.Until(c.opened.Add(time.Duration(lifetime))), 0))
					lifetimeC = lifetimeT.C
				}
			}
		}
		if c.shutdownRq.Load() {
			if r := beginShutdown(); r != "" {
				return r
			}
		}
		if r := event(false); r != "" {
			return r
		}
		if c.shuttingDown {
			if r := event(true); r != "" {
				return r
			}
			continue
		}

		budget := int64(math.MaxInt64)
		if dropEvery > 0 {
			budget = min(budget, dropEvery-(c.sent-dropBase))
		}
		if shutAfter > 0 {
			budget = min(budget, shutAfter-(c.sent-shutBase))
		}
		if malfEvery > 0 {
			budget = min(budget, malfEvery-goodSinceBad)
		}
		buf = buf[:0]
		var n int64
		buf, n = c.fill(buf, max(budget, 0))
		goodSinceBad += n
		if malfEvery > 0 && n > 0 && goodSinceBad >= malfEvery {
			kind := c.srv.nextMalformedKind()
			buf = c.appendMalformed(buf, kind)
			c.malformed[malformedKinds[kind]]++
			c.srv.stats.malformedSent.Add(1)
			goodSinceBad = 0
		}
		if len(buf) > 0 {
			if err := c.write(buf); err != nil {
				return reasonWriteError
			}
			if cap(buf) > 4*batchBytes {
				buf = make([]byte, 0, batchBytes+8192)
			}
		}
		c.sent += n
		c.srv.stats.sentTrades.Add(n)
		c.commit()
		if dropEvery > 0 && c.sent-dropBase >= dropEvery {
			c.setReason(reasonDrop)
			return reasonDrop
		}
		if shutAfter > 0 && c.sent-shutBase >= shutAfter {
			if r := beginShutdown(); r != "" {
				return r
			}
			continue
		}
		if n > 0 {
			continue
		}
		if r := event(true); r != "" {
			return r
		}
	}
}

// graceful sends a close frame, waits briefly for the client's close frame,
// and reports reason.
func (c *conn) graceful(code int, text, reason string) string {
	c.setReason(reason)
	if err := c.writeFrame(opClose, websocket.FormatCloseMessage(code, text)); err == nil {
		select {
		case <-c.readerDone:
		case <-time.After(time.Second):
		case <-c.srv.ctx.Done():
		}
	}
	return reason
}

type symSent struct {
	Sent    int64  `json:"sent"`
	FirstID *int64 `json:"first_id"`
	LastID  *int64 `json:"last_id"`
}

// finish closes the socket, unregisters the connection and logs a summary.
func (c *conn) finish(reason string) {
	final := c.setReason(reason)
	_ = c.nc.Close()
	for _, s := range c.subs {
		c.unlink(s)
	}
	srv := c.srv
	srv.connsMu.Lock()
	delete(srv.conns, c.id)
	srv.connsMu.Unlock()
	srv.stats.open.Add(-1)
	if final == reasonDrop {
		srv.stats.dropped.Add(1)
	}
	per := make(map[string]symSent, len(c.subs))
	for _, s := range c.subs {
		key := strings.ToUpper(strings.TrimSuffix(s.stream, "@trade"))
		ss := symSent{Sent: s.sentCount}
		if s.sentCount > 0 {
			first, last := s.sentFirst, s.sentLast
			ss.FirstID, ss.LastID = &first, &last
		}
		per[key] = ss
	}
	srv.log.Info("conn_close", "conn", c.id, "path", c.path, "reason", final, "trades_sent", c.sent,
		"malformed_sent", c.malformed, "duration_ms", time.Since(c.opened).Milliseconds(), "symbols", per)
}
