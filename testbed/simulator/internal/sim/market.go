package sim

import (
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ---------------------------------------------------------------------------
// history: every trade a market produced, pre-encoded, append-only.

const (
	chunkBits = 12
	chunkSize = 1 << chunkBits
	chunkMask = chunkSize - 1
	slabSize  = 1 << 20
)

// trade is one produced trade. data is the encoded trade event (the raw
// /ws/<symbol>@trade form); price and quantity are slices of it.
type trade struct {
	id    int64
	tms   int64 // T
	data  []byte
	pOff  uint16
	pLen  uint16
	qOff  uint16
	qLen  uint16
	m, bm bool
}

func (t *trade) price() []byte { return t.data[t.pOff : t.pOff+t.pLen] }
func (t *trade) qty() []byte   { return t.data[t.qOff : t.qOff+t.qLen] }

type chunk [chunkSize]trade

// history is written by its market's producer only; readers may read any
// index below len() without locks.
type history struct {
	chunks atomic.Pointer[[]*chunk]
	n      atomic.Int64
	slab   []byte
}

func (h *history) len() int64 { return h.n.Load() }

func (h *history) at(i int64) *trade {
	cs := *h.chunks.Load()
	return &cs[i>>chunkBits][i&chunkMask]
}

// put stores trade i (== the current length); publish makes it visible.
func (h *history) put(i int64, t trade) {
	p := h.chunks.Load()
	var cs []*chunk
	if p != nil {
		cs = *p
	}
	ci := int(i >> chunkBits)
	if ci >= len(cs) {
		grown := make([]*chunk, ci+1, max(2*len(cs), ci+1))
		copy(grown, cs)
		grown[ci] = new(chunk)
		h.chunks.Store(&grown)
		cs = grown
	}
	cs[ci][i&chunkMask] = t
}

// alloc returns n bytes of arena memory for encoded trades.
func (h *history) alloc(n int) []byte {
	if len(h.slab)+n > cap(h.slab) {
		h.slab = make([]byte, 0, max(slabSize, n))
	}
	start := len(h.slab)
	h.slab = h.slab[:start+n]
	return h.slab[start : start+n : start+n]
}

// searchID returns the index of the first trade with id >= id among the
// first n trades.
func (h *history) searchID(n, id int64) int64 {
	return int64(sort.Search(int(n), func(i int) bool { return h.at(int64(i)).id >= id }))
}

// ---------------------------------------------------------------------------
// Market: one symbol's trade clock.

// Market produces the trades of one symbol into its history.
type Market struct {
	srv    *Server
	Symbol string
	lower  string
	stream string // "btcusdt@trade"
	prefix []byte // {"stream":"btcusdt@trade","data":
	src    source
	hist   history
	agg    aggIndex // aggregate trades, built by aggTrades requests

	startOnce sync.Once
	startCh   chan struct{}
	started   atomic.Bool
	done      atomic.Bool

	mu   sync.Mutex
	subs map[*sub]struct{}

	progress chan struct{} // subscribers advanced (or joined/left); cap 1

	// set by run
	startWall time.Time
	pause0    time.Duration
}

func newMarket(srv *Server, symbol string, src source) *Market {
	lower := strings.ToLower(symbol)
	m := &Market{
		srv:      srv,
		Symbol:   symbol,
		lower:    lower,
		stream:   lower + "@trade",
		src:      src,
		startCh:  make(chan struct{}),
		subs:     make(map[*sub]struct{}),
		progress: make(chan struct{}, 1),
	}
	m.prefix = []byte(`{"stream":"` + m.stream + `","data":`)
	empty := []*chunk{}
	m.hist.chunks.Store(&empty)
	return m
}

// start starts the market clock (once).
func (m *Market) start(why string) {
	m.startOnce.Do(func() {
		m.started.Store(true)
		close(m.startCh)
		m.srv.log.Info("market_started", "symbol", m.Symbol, "by", why)
	})
}

func (m *Market) poke() {
	select {
	case m.progress <- struct{}{}:
	default:
	}
}

// addSub registers a subscription; it receives every trade produced from now on.
func (m *Market) addSub(s *sub) {
	m.mu.Lock()
	s.pos = m.hist.len()
	s.cursor.Store(s.pos)
	m.subs[s] = struct{}{}
	m.mu.Unlock()
	m.poke()
}

func (m *Market) removeSub(s *sub) {
	m.mu.Lock()
	delete(m.subs, s)
	m.mu.Unlock()
	m.poke()
}

// publish makes the first n trades visible and wakes the subscribers.
func (m *Market) publish(n int64) {
	m.hist.n.Store(n)
	m.mu.Lock()
	for s := range m.subs {
		s.c.wake()
	}
	m.mu.Unlock()
}

// emit encodes a trade and stores it as trade number i.
func (m *Market) emit(i int64, r *record, eMs, tMs int64) {
	// {"e":"trade","E":..,"s":"..","t":..,"p":"..","q":"..",["b":..,"a":..,]"T":..,"m":..,"M":..}
	var tmp [320]byte
	b := append(tmp[:0], `{"e":"trade","E":`...)
	b = strconv.AppendInt(b, eMs, 10)
	b = append(b, `,"s":"`...)
	b = append(b, m.Symbol...)
	b = append(b, `","t":`...)
	b = strconv.AppendInt(b, r.id, 10)
	b = append(b, `,"p":"`...)
	pOff := len(b)
	b = append(b, r.price...)
	b = append(b, `","q":"`...)
	qOff := len(b)
	b = append(b, r.qty...)
	b = append(b, '"')
	if r.hasBA {
		b = append(b, `,"b":`...)
		b = strconv.AppendInt(b, r.b, 10)
		b = append(b, `,"a":`...)
		b = strconv.AppendInt(b, r.a, 10)
	}
	b = append(b, `,"T":`...)
	b = strconv.AppendInt(b, tMs, 10)
	b = append(b, `,"m":`...)
	b = strconv.AppendBool(b, r.m)
	b = append(b, `,"M":`...)
	b = strconv.AppendBool(b, r.bm)
	b = append(b, '}')
	data := m.hist.alloc(len(b))
	copy(data, b)
	m.hist.put(i, trade{
		id: r.id, tms: tMs, data: data,
		pOff: uint16(pOff), pLen: uint16(len(r.price)),
		qOff: uint16(qOff), qLen: uint16(len(r.qty)),
		m: r.m, bm: r.bm,
	})
}

// activeElapsed is the market's running time, pauses excluded.
func (m *Market) activeElapsed(now time.Time) time.Duration {
	return now.Sub(m.startWall) - (m.srv.pausedTotal(now) - m.pause0)
}

// run is the market's producer goroutine.
func (m *Market) run() {
	select {
	case <-m.startCh:
	case <-m.srv.ctx.Done():
		return
	}
	m.startWall = time.Now()
	m.pause0 = m.srv.pausedTotal(m.startWall)
	cfg := &m.srv.cfg
	switch {
	case cfg.Pace == PaceRecorded:
		m.runRecorded()
	case cfg.Rate > 0:
		m.runRate()
	default:
		m.runFast()
	}
	if m.srv.ctx.Err() == nil {
		m.done.Store(true)
		m.srv.log.Info("market_done", "symbol", m.Symbol, "produced", m.hist.len())
	}
}

// waitRunning blocks while the clocks are paused; false when the server stops.
func (m *Market) waitRunning() bool {
	for {
		paused, ch := m.srv.pauseState()
		if !paused {
			return true
		}
		select {
		case <-ch:
		case <-m.srv.ctx.Done():
			return false
		}
	}
}

// sleep waits for d, a pause change or the server's end.
func (m *Market) sleep(d time.Duration) bool {
	_, ch := m.srv.pauseState()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ch:
	case <-m.srv.ctx.Done():
		return false
	}
	return true
}

func (m *Market) limitReached(n int64) bool {
	return m.srv.cfg.Count > 0 && n >= m.srv.cfg.Count
}

const maxProduceBatch = 1 << 14

// runRate produces --rate trades a second (the first one at once).
func (m *Market) runRate() {
	rate := m.srv.cfg.Rate
	keep := m.srv.cfg.KeepTimes
	var n int64
	for {
		if !m.waitRunning() {
			return
		}
		now := time.Now()
		el := m.activeElapsed(now)
		due := int64(el.Seconds()*rate) + 1
		if c := m.srv.cfg.Count; c > 0 && due > c {
			due = c
		}
		nowMs := now.UnixMilli()
		batch := 0
		for n < due && batch < maxProduceBatch {
			r, ok := m.src.next()
			if !ok {
				m.publish(n)
				return
			}
			if keep {
				m.emit(n, &r, r.e, r.t)
			} else {
				m.emit(n, &r, nowMs, nowMs)
			}
			n++
			batch++
		}
		if batch > 0 {
			m.publish(n)
		}
		if m.limitReached(n) {
			return
		}
		if n < due {
			continue
		}
		next := time.Duration(float64(n) / rate * float64(time.Second))
		if !m.sleep(max(next-el, 50*time.Microsecond)) {
			return
		}
	}
}

// runRecorded replays at the recorded pace (gaps between E), scaled by --speed.
func (m *Market) runRecorded() {
	speed := m.srv.cfg.Speed
	keep := m.srv.cfg.KeepTimes
	startMs := m.startWall.UnixMilli()
	r, ok := m.src.next()
	if !ok {
		return
	}
	e0 := r.e
	var n int64
	for ok {
		if !m.waitRunning() {
			return
		}
		now := time.Now()
		el := m.activeElapsed(now)
		offMs := float64(r.e-e0) / speed
		dueAt := time.Duration(offMs * float64(time.Millisecond))
		if dueAt > el {
			if !m.sleep(dueAt - el) {
				return
			}
			continue
		}
		pausedMs := (m.srv.pausedTotal(now) - m.pause0).Milliseconds()
		batch := 0
		for ok && batch < maxProduceBatch {
			offMs = float64(r.e-e0) / speed
			if time.Duration(offMs*float64(time.Millisecond)) > el {
				break
			}
			if keep {
				m.emit(n, &r, r.e, r.t)
			} else {
				e := startMs + pausedMs + int64(math.Round(offMs))
				m.emit(n, &r, e, e-(r.e-r.t))
			}
			n++
			batch++
			if m.limitReached(n) {
				m.publish(n)
				return
			}
			r, ok = m.src.next()
		}
		m.publish(n)
	}
}

// runFast (--rate 0) produces as fast as the subscribers take the trades: it
// runs at most Window trades ahead of the slowest subscriber and rests while
// nobody is subscribed.
func (m *Market) runFast() {
	window := m.srv.cfg.Window
	keep := m.srv.cfg.KeepTimes
	var n int64
	for {
		if !m.waitRunning() {
			return
		}
		var allowed int64
		silent := m.srv.isSilent(m.Symbol)
		m.mu.Lock()
		gating, silentOnly := 0, false
		minPos := n
		for s := range m.subs {
			if silent {
				silentOnly = true
				continue
			}
			gating++
			minPos = min(minPos, s.cursor.Load())
		}
		m.mu.Unlock()
		switch {
		case gating > 0:
			allowed = min(window-(n-minPos), maxProduceBatch)
		case silentOnly:
			// Silent subscriptions take nothing: trade at a modest pace.
			allowed = 1
		}
		if allowed <= 0 {
			_, pch := m.srv.pauseState()
			select {
			case <-m.progress:
			case <-pch:
			case <-m.srv.ctx.Done():
				return
			}
			continue
		}
		nowMs := time.Now().UnixMilli()
		var produced int64
		for produced < allowed {
			r, ok := m.src.next()
			if !ok {
				m.publish(n)
				return
			}
			if keep {
				m.emit(n, &r, r.e, r.t)
			} else {
				m.emit(n, &r, nowMs, nowMs)
			}
			n++
			produced++
			if m.limitReached(n) {
				m.publish(n)
				return
			}
		}
		m.publish(n)
		if silentOnly && gating == 0 {
			if !m.sleep(time.Millisecond) {
				return
			}
		}
	}
}
