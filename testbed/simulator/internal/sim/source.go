package sim

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
)

// record is one trade as a source delivers it, before the market gives it
// its symbol and (possibly re-timed) event and trade times.
type record struct {
	id    int64
	e, t  int64  // recorded event time E and trade time T, epoch ms
	price string // exact decimal string, e.g. "61837.63000000"
	qty   string // exact decimal string
	hasBA bool   // legacy shape: carries buyer and seller order ids
	b, a  int64
	m, bm bool // m (buyer is maker) and M (best match)
}

// source yields the trades of one market in order.
type source interface {
	next() (record, bool)
}

// parseSource parses the SOURCE part of --market SYMBOL=SOURCE.
func parseSource(spec string) (source, error) {
	kind, arg, ok := strings.Cut(spec, ":")
	if !ok {
		return nil, fmt.Errorf("source %q: want replay:PATH or synthetic:seed=N[,...]", spec)
	}
	switch kind {
	case "replay":
		if arg == "" {
			return nil, fmt.Errorf("source %q: empty path", spec)
		}
		return loadReplay(arg)
	case "synthetic":
		return parseSynthetic(arg)
	default:
		return nil, fmt.Errorf("source %q: unknown kind %q (want replay or synthetic)", spec, kind)
	}
}

// ---------------------------------------------------------------------------
// replay

type replaySource struct {
	recs []record
	i    int
}

func (r *replaySource) next() (record, bool) {
	if r.i >= len(r.recs) {
		return record{}, false
	}
	rec := r.recs[r.i]
	r.i++
	return rec, true
}

// wireTrade is the JSON shape of a Binance trade event. encoding/json prefers
// exact key matches, so "e"/"E", "t"/"T" and "m"/"M" land in their own fields.
type wireTrade struct {
	Event string           `json:"e"`
	E     int64            `json:"E"`
	S     string           `json:"s"`
	ID    *int64           `json:"t"`
	P     *json.RawMessage `json:"p"`
	Q     *json.RawMessage `json:"q"`
	B     *int64           `json:"b"`
	A     *int64           `json:"a"`
	T     int64            `json:"T"`
	M     bool             `json:"m"`
	BM    bool             `json:"M"`
}

type envelope struct {
	Stream string          `json:"stream"`
	Data   json.RawMessage `json:"data"`
}

// loadReplay reads a recorded trade file: gzip-compressed (or plain) JSON
// lines, each either a combined-stream envelope {"stream":..,"data":{..}} or
// a raw trade event. Prices and quantities are kept as the exact strings of
// the file.
func loadReplay(path string) (*replaySource, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	var r io.Reader
	br := bufio.NewReaderSize(f, 1<<16)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		defer func() { _ = gz.Close() }()
		r = gz
	} else {
		r = br
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 1<<24)
	src := &replaySource{}
	line := 0
	for sc.Scan() {
		line++
		raw := bytes.TrimSpace(sc.Bytes())
		if len(raw) == 0 {
			continue
		}
		var env envelope
		if err := json.Unmarshal(raw, &env); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		data := raw
		if len(env.Data) > 0 {
			data = env.Data
		}
		var w wireTrade
		if err := json.Unmarshal(data, &w); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		if w.Event != "" && w.Event != "trade" {
			continue // not a trade message
		}
		rec, err := w.record()
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		if n := len(src.recs); n > 0 && rec.id <= src.recs[n-1].id {
			return nil, fmt.Errorf("%s:%d: trade id %d does not increase (previous %d)", path, line, rec.id, src.recs[n-1].id)
		}
		src.recs = append(src.recs, rec)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(src.recs) == 0 {
		return nil, fmt.Errorf("%s: no trades", path)
	}
	return src, nil
}

func (w *wireTrade) record() (record, error) {
	if w.ID == nil {
		return record{}, fmt.Errorf("trade without t")
	}
	p, err := decimalField("p", w.P)
	if err != nil {
		return record{}, err
	}
	q, err := decimalField("q", w.Q)
	if err != nil {
		return record{}, err
	}
	rec := record{id: *w.ID, e: w.E, t: w.T, price: p, qty: q, m: w.M, bm: w.BM}
	if w.B != nil || w.A != nil {
		rec.hasBA = true
		if w.B != nil {
			rec.b = *w.B
		}
		if w.A != nil {
			rec.a = *w.A
		}
	}
	return rec, nil
}

// decimalField returns the exact text of a JSON string holding a plain
// decimal number.
func decimalField(name string, raw *json.RawMessage) (string, error) {
	if raw == nil {
		return "", fmt.Errorf("trade without %s", name)
	}
	b := []byte(*raw)
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return "", fmt.Errorf("%s is not a string: %s", name, b)
	}
	s := string(b[1 : len(b)-1])
	if !isPlainDecimal(s) {
		return "", fmt.Errorf("%s is not a plain decimal: %q", name, s)
	}
	return s, nil
}

func isPlainDecimal(s string) bool {
	if s == "" {
		return false
	}
	digits, dots := 0, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			digits++
		case c == '.':
			dots++
		default:
			return false
		}
	}
	return digits > 0 && dots <= 1 && s[0] != '.' && s[len(s)-1] != '.'
}

// ---------------------------------------------------------------------------
// synthetic

const (
	profileBTC  = "btc"
	profileMeme = "meme"
)

// synthSource generates a deterministic, endless trade sequence from a seed.
type synthSource struct {
	rng     *rand.Rand
	profile string
	legacy  bool
	id      int64
	price   int64 // in 1e-8 units
	e       int64
	b, a    int64
}

func parseSynthetic(arg string) (*synthSource, error) {
	s := &synthSource{profile: profileBTC, id: 1, e: 1723161255343, b: 20720542158, a: 20720542592}
	seed := int64(-1)
	for _, kv := range strings.Split(arg, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			return nil, fmt.Errorf("synthetic: bad option %q (want key=value)", kv)
		}
		switch k {
		case "seed":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("synthetic: seed: %w", err)
			}
			seed = n
		case "start_id":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("synthetic: bad start_id %q", v)
			}
			s.id = n
		case "profile":
			if v != profileBTC && v != profileMeme {
				return nil, fmt.Errorf("synthetic: profile %q (want btc or meme)", v)
			}
			s.profile = v
		case "legacy":
			s.legacy = v == "1" || v == "true"
		default:
			return nil, fmt.Errorf("synthetic: unknown option %q", k)
		}
	}
	if seed < 0 {
		return nil, fmt.Errorf("synthetic: seed=N is required")
	}
	s.rng = rand.New(rand.NewPCG(uint64(seed), 0x62696e616e636573)) //nolint:gosec // deterministic test data
	if s.profile == profileMeme {
		s.price = 1234 // 0.00001234
	} else {
		s.price = 6183763000000 // 61837.63
	}
	return s, nil
}

func (s *synthSource) next() (record, bool) {
	r := s.rng
	rec := record{id: s.id, m: r.IntN(2) == 0, bm: true}
	s.id++
	// Event time: gaps of 0..39 ms (about 50 trades a second on average).
	s.e += int64(r.IntN(40))
	rec.e = s.e
	rec.t = s.e - int64(r.IntN(3))
	switch s.profile {
	case profileMeme:
		if r.IntN(10) < 3 {
			s.price += int64(r.IntN(3)) - 1
		}
		s.price = max(s.price, 1)
		rec.price = fmtUnits8(s.price)
		// log-uniform whole-token quantities from 1 to 1e11
		tokens := int64(math.Pow(10, r.Float64()*11))
		rec.qty = strconv.FormatInt(max(tokens, 1), 10) + ".00000000"
	default:
		if r.IntN(10) < 4 {
			s.price += (int64(r.IntN(11)) - 5) * 1000000 // +-5 cents
		}
		s.price = max(s.price, 1000000)
		rec.price = fmtUnits8(s.price)
		// quantities in 1e-5 BTC, log-uniform from 0.00001 to ~2
		units := int64(math.Pow(10, r.Float64()*5.3))
		rec.qty = fmtUnits8(max(units, 1) * 1000)
	}
	if s.legacy {
		rec.hasBA = true
		s.b += int64(r.IntN(3))
		s.a += 1 + int64(r.IntN(4))
		rec.b, rec.a = s.b, s.a
	}
	return rec, true
}

// fmtUnits8 formats n * 1e-8 with exactly eight decimals.
func fmtUnits8(n int64) string {
	frac := strconv.FormatInt(n%100000000, 10)
	return strconv.FormatInt(n/100000000, 10) + "." + strings.Repeat("0", 8-len(frac)) + frac
}
