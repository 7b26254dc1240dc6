package sim

import (
	"bytes"
	"strconv"
	"strings"
	"time"
)

// malformedKinds are the bad frames --malformed-every injects, in the order
// they are cycled through (one cycle shared by all connections). Frames that
// look like trades reuse the id of the last trade sent on the connection, so
// they never take an id from the sequence: a client that accepted one would
// produce a duplicate.
var malformedKinds = []string{
	"invalid_json",        // text that is not JSON at all
	"truncated_json",      // the last trade frame cut in half
	"missing_p",           // trade without "p"
	"p_number",            // "p" as a JSON number, not a string
	"p_nan",               // "p":"NaN"
	"q_1e400",             // "q":"1e400"
	"negative_price",      // "p":"-61837.63000000"
	"unsubscribed_symbol", // a well-formed trade of a symbol not subscribed on this connection
	"binary_frame",        // a binary (not text) frame with a trade in it
	"oversized_frame",     // a ~2 MB text frame (the last trade plus padding)
	"other_event",         // an unrelated event type: a 24hrTicker
}

// MalformedKinds lists the kinds of bad frames in cycle order.
func MalformedKinds() []string { return append([]string(nil), malformedKinds...) }

const oversizedBytes = 2 << 20

func concat(parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	out := make([]byte, 0, n)
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// appendMalformed appends one bad frame of the given kind, built from the
// last trade sent on this connection.
func (c *conn) appendMalformed(buf []byte, kind int) []byte {
	t, s := c.lastTrade, c.lastSub
	d := t.data
	p0, p1 := int(t.pOff), int(t.pOff+t.pLen)
	q0, q1 := int(t.qOff), int(t.qOff+t.qLen)
	sym := s.m.Symbol
	stream := s.stream
	wrap := func(payload []byte, stream string) []byte {
		if !c.combined {
			return payload
		}
		return concat([]byte(`{"stream":"`+stream+`","data":`), payload, []byte(`}`))
	}
	text := func(payload []byte) []byte {
		buf = appendHeader(buf, opText, len(payload))
		return append(buf, payload...)
	}
	switch malformedKinds[kind] {
	case "invalid_json":
		return text([]byte(`{"e":"trade","s":"` + sym + `","t":` + strconv.FormatInt(t.id, 10) + `,"p":<not json>`))
	case "truncated_json":
		full := wrap(d, stream)
		return text(full[:len(full)/2])
	case "missing_p":
		// drop `"p":"<price>",`
		return text(wrap(concat(d[:p0-5], d[p1+2:]), stream))
	case "p_number":
		return text(wrap(concat(d[:p0-1], d[p0:p1], d[p1+1:]), stream))
	case "p_nan":
		return text(wrap(concat(d[:p0], []byte("NaN"), d[p1:]), stream))
	case "q_1e400":
		return text(wrap(concat(d[:q0], []byte("1e400"), d[q1:]), stream))
	case "negative_price":
		return text(wrap(concat(d[:p0], []byte("-"), d[p0:]), stream))
	case "unsubscribed_symbol":
		other := c.foreignSymbol()
		payload := bytes.Replace(d, []byte(`"s":"`+sym+`"`), []byte(`"s":"`+other+`"`), 1)
		return text(wrap(payload, strings.ToLower(other)+"@trade"))
	case "binary_frame":
		payload := wrap(d, stream)
		buf = appendHeader(buf, opBinary, len(payload))
		return append(buf, payload...)
	case "oversized_frame":
		pad := bytes.Repeat([]byte("x"), oversizedBytes)
		return text(wrap(concat(d[:len(d)-1], []byte(`,"pad":"`), pad, []byte(`"}`)), stream))
	default: // other_event
		now := strconv.FormatInt(time.Now().UnixMilli(), 10)
		id := strconv.FormatInt(t.id, 10)
		p, q := string(d[p0:p1]), string(d[q0:q1])
		ev := `{"e":"24hrTicker","E":` + now + `,"s":"` + sym + `","p":"0.00000000","P":"0.000","w":"` + p +
			`","x":"` + p + `","c":"` + p + `","Q":"` + q + `","b":"` + p + `","B":"1.00000000","a":"` + p +
			`","A":"1.00000000","o":"` + p + `","h":"` + p + `","l":"` + p + `","v":"` + q +
			`","q":"0.00000000","O":` + now + `,"C":` + now + `,"F":` + id + `,"L":` + id + `,"n":1}`
		return text(wrap([]byte(ev), s.m.lower+"@ticker"))
	}
}

// foreignSymbol is a symbol this connection is not subscribed to.
func (c *conn) foreignSymbol() string {
	for _, cand := range []string{"ZZZUSDT", "ZZZBUSD", "ZZZZUSDT"} {
		used := false
		for _, s := range c.subs {
			if s.stream == strings.ToLower(cand)+"@trade" {
				used = true
			}
		}
		if !used {
			return cand
		}
	}
	return "ZZZZZUSDT"
}
