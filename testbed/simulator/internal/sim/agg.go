package sim

import (
	"bytes"
	"math/big"
	"net/http"
	"net/url"
	"strconv"
	"sync"
)

// aggIndex groups a market's trades into aggregate trades like Binance does:
// consecutive trades (contiguous ids) with the same price, the same taker
// side (m) and the same time T form one aggregate. It is built lazily by the
// aggTrades requests, so the producer's hot path does not pay for it.
// Aggregate ids count from 1; the newest aggregate stays open (a later trade
// may still join it), so its "l" is always the newest produced trade.
type aggIndex struct {
	mu     sync.Mutex
	starts []int64 // history index of each aggregate's first trade
	built  int64   // trades [0, built) are grouped
}

func sameAggregate(prev, t *trade) bool {
	return t.id == prev.id+1 && t.tms == prev.tms && t.m == prev.m && bytes.Equal(t.price(), prev.price())
}

// extendLocked groups the trades produced since the last call.
func (x *aggIndex) extendLocked(h *history) {
	n := h.len()
	for i := x.built; i < n; i++ {
		if i == 0 || !sameAggregate(h.at(i-1), h.at(i)) {
			x.starts = append(x.starts, i)
		}
	}
	x.built = n
}

// bounds is the history range [lo, hi) of aggregate k.
func (x *aggIndex) bounds(k int64) (int64, int64) {
	if k+1 < int64(len(x.starts)) {
		return x.starts[k], x.starts[k+1]
	}
	return x.starts[k], x.built
}

// aggTrades is GET /api/v3/aggTrades?symbol=X[&fromId=N][&limit=L]: the
// aggregates with id >= fromId, or the most recent L without fromId.
func (s *Server) aggTrades(w http.ResponseWriter, q url.Values) {
	symbol := q.Get("symbol")
	if !s.checkSymbolParam(w, "symbol", symbol) {
		return
	}
	if q.Has("startTime") || q.Has("endTime") {
		// Refused rather than ignored, so a client relying on them notices.
		binanceError(w, http.StatusBadRequest, -1104, "Not all sent parameters were read; the simulator does not support startTime/endTime.")
		return
	}
	limit, ok := parseLimit(w, q.Get("limit"))
	if !ok {
		return
	}
	var fromID int64
	if q.Has("fromId") {
		if fromID, ok = parseFromID(w, q.Get("fromId")); !ok {
			return
		}
	}
	m := s.markets[symbol]
	if m == nil { // halted: known, never traded
		writeRaw(w, http.StatusOK, []byte(`[]`))
		return
	}
	x := &m.agg
	x.mu.Lock()
	defer x.mu.Unlock()
	x.extendLocked(&m.hist)
	count := int64(len(x.starts))
	lo := max(count-limit, 0)
	if q.Has("fromId") {
		lo = min(max(fromID-1, 0), count)
	}
	hi := min(lo+limit, count)
	out := make([]byte, 0, 140*(hi-lo)+2)
	out = append(out, '[')
	for k := lo; k < hi; k++ {
		if k > lo {
			out = append(out, ',')
		}
		first, end := x.bounds(k)
		out = appendAggTrade(out, k+1, &m.hist, first, end)
	}
	writeRaw(w, http.StatusOK, append(out, ']'))
}

// appendAggTrade writes aggregate id of the trades [lo, hi) of h:
// {"a":..,"p":"..","q":"..","f":..,"l":..,"T":..,"m":..,"M":..}.
func appendAggTrade(b []byte, id int64, h *history, lo, hi int64) []byte {
	t, last := h.at(lo), h.at(hi-1)
	b = append(b, `{"a":`...)
	b = strconv.AppendInt(b, id, 10)
	b = append(b, `,"p":"`...)
	b = append(b, t.price()...)
	b = append(b, `","q":"`...)
	if hi-lo == 1 {
		b = append(b, t.qty()...)
	} else {
		b = append(b, sumQty(h, lo, hi)...)
	}
	b = append(b, `","f":`...)
	b = strconv.AppendInt(b, t.id, 10)
	b = append(b, `,"l":`...)
	b = strconv.AppendInt(b, last.id, 10)
	b = append(b, `,"T":`...)
	b = strconv.AppendInt(b, t.tms, 10)
	b = append(b, `,"m":`...)
	b = strconv.AppendBool(b, t.m)
	b = append(b, `,"M":`...)
	b = strconv.AppendBool(b, t.bm)
	return append(b, '}')
}

// sumQty adds the quantities of the trades [lo, hi) exactly; the sum has the
// largest number of decimals among them (8 for Binance's strings).
func sumQty(h *history, lo, hi int64) string {
	sum, scale := new(big.Int), 0
	ten := big.NewInt(10)
	for i := lo; i < hi; i++ {
		v, sc := parseDecimal(h.at(i).qty())
		if v == nil {
			continue
		}
		for ; scale < sc; scale++ {
			sum.Mul(sum, ten)
		}
		for ; sc < scale; sc++ {
			v.Mul(v, ten)
		}
		sum.Add(sum, v)
	}
	return formatDecimal(sum, scale)
}
