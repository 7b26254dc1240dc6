// Package sim is a Binance-compatible spot exchange simulator: trade streams
// over WebSocket, the REST endpoints a trade loader uses, fault injection and
// an admin API, all on one HTTP port.
package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Server is one simulated exchange.
type Server struct {
	cfg Config
	log *slog.Logger

	markets  map[string]*Market // by symbol
	byStream map[string]*Market // by "btcusdt@trade"
	symbols  []string           // markets then halted, in command-line order
	halted   map[string]bool

	faultsMu sync.Mutex
	faults   atomic.Pointer[faultState]
	flapLeft atomic.Int64

	pauseMu     sync.Mutex
	paused      bool
	pausedSum   time.Duration
	pauseStart  time.Time
	pauseChange chan struct{}

	ctx    context.Context
	cancel context.CancelFunc

	connsMu sync.Mutex
	conns   map[int64]*conn
	connWG  sync.WaitGroup
	nextID  atomic.Int64

	stats struct {
		open, accepted, flapped, dropped, shutdownNotices, lifetimeCloses atomic.Int64
		tooManyStreams, messageRateCloses, attemptsRefused                atomic.Int64
		sentTrades, malformedSent                                         atomic.Int64
		historical, rateLimited, injected429, weight429                   atomic.Int64
		banned418, aggRequests                                            atomic.Int64
	}
	malformedKind atomic.Int64
	weight        weightTracker
	ban           restBan
	attempts      attemptLimiter

	httpSrv *http.Server
	lnMu    sync.Mutex
	ln      net.Listener
}

type faultState struct {
	Faults
	version int64
	silent  map[string]bool
}

// New builds a simulator from its configuration (loading replay files).
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewJSONHandler(io.Discard, nil))
	}
	s := &Server{
		cfg:         cfg,
		log:         log,
		markets:     make(map[string]*Market),
		byStream:    make(map[string]*Market),
		halted:      make(map[string]bool),
		conns:       make(map[int64]*conn),
		pauseChange: make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	for _, ms := range cfg.Markets {
		sym := strings.ToUpper(strings.TrimSpace(ms.Symbol))
		if !validSymbol(sym) {
			return nil, fmt.Errorf("--market %s: bad symbol", ms.Symbol)
		}
		if _, dup := s.markets[sym]; dup {
			return nil, fmt.Errorf("--market %s given twice", sym)
		}
		src, err := parseSource(ms.Source)
		if err != nil {
			return nil, fmt.Errorf("--market %s: %w", sym, err)
		}
		m := newMarket(s, sym, src)
		s.markets[sym] = m
		s.byStream[m.stream] = m
		s.symbols = append(s.symbols, sym)
	}
	for _, h := range cfg.Halted {
		sym := strings.ToUpper(strings.TrimSpace(h))
		if !validSymbol(sym) {
			return nil, fmt.Errorf("--halted %s: bad symbol", h)
		}
		if _, dup := s.markets[sym]; dup || s.halted[sym] {
			return nil, fmt.Errorf("--halted %s: symbol given twice", sym)
		}
		s.halted[sym] = true
		s.symbols = append(s.symbols, sym)
	}
	s.flapLeft.Store(cfg.Faults.Flap)
	s.setFaults(cfg.Faults)
	s.httpSrv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

func validSymbol(s string) bool {
	if s == "" || len(s) > 20 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// Serve runs the simulator on a listener until Close.
func (s *Server) Serve(ln net.Listener) error {
	s.lnMu.Lock()
	s.ln = ln
	s.lnMu.Unlock()
	for _, sym := range s.symbols {
		if m := s.markets[sym]; m != nil {
			go m.run()
			if s.cfg.Start == StartImmediate {
				m.start("startup")
			}
		}
	}
	err := s.httpSrv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops the markets, drops every connection and stops serving.
func (s *Server) Close() {
	s.cancel()
	_ = s.httpSrv.Close()
	for _, c := range s.openConns() {
		c.abort("server_exit")
	}
	done := make(chan struct{})
	go func() { s.connWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
	}
}

// Addr is the address the simulator listens on.
func (s *Server) Addr() net.Addr {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

func (s *Server) openConns() []*conn {
	s.connsMu.Lock()
	defer s.connsMu.Unlock()
	out := make([]*conn, 0, len(s.conns))
	for _, c := range s.conns {
		out = append(out, c)
	}
	return out
}

// ---------------------------------------------------------------------------
// pause

func (s *Server) pauseState() (bool, <-chan struct{}) {
	s.pauseMu.Lock()
	defer s.pauseMu.Unlock()
	return s.paused, s.pauseChange
}

// pausedTotal is the time spent paused so far, the current pause included.
func (s *Server) pausedTotal(now time.Time) time.Duration {
	s.pauseMu.Lock()
	defer s.pauseMu.Unlock()
	d := s.pausedSum
	if s.paused {
		d += now.Sub(s.pauseStart)
	}
	return d
}

func (s *Server) setPaused(p bool) {
	s.pauseMu.Lock()
	defer s.pauseMu.Unlock()
	if p == s.paused {
		return
	}
	now := time.Now()
	if p {
		s.pauseStart = now
	} else {
		s.pausedSum += now.Sub(s.pauseStart)
	}
	s.paused = p
	close(s.pauseChange)
	s.pauseChange = make(chan struct{})
}

// ---------------------------------------------------------------------------
// faults

func (s *Server) setFaults(f Faults) {
	prev := s.faults.Load()
	st := &faultState{Faults: f, silent: make(map[string]bool)}
	if prev != nil {
		st.version = prev.version + 1
	}
	for _, sym := range f.Silent {
		st.silent[sym] = true
	}
	s.faults.Store(st)
}

func (s *Server) isSilent(sym string) bool {
	return s.faults.Load().silent[sym]
}

// currentFaults returns the knobs, flap as the number of attempts still to flap.
func (s *Server) currentFaults() Faults {
	f := s.faults.Load().Faults
	f.Flap = s.flapLeft.Load()
	f.Silent = append([]string{}, f.Silent...)
	return f
}

// updateFaults applies a JSON object of knobs.
func (s *Server) updateFaults(body []byte) (Faults, error) {
	s.faultsMu.Lock()
	f := s.currentFaults()
	before := f.Flap
	if err := f.applyJSON(body); err != nil {
		s.faultsMu.Unlock()
		return Faults{}, err
	}
	if f.Flap != before {
		s.flapLeft.Store(f.Flap)
	}
	s.setFaults(f)
	s.faultsMu.Unlock()
	s.log.Info("faults_changed", "faults", f)
	for _, c := range s.openConns() {
		c.wake()
	}
	for _, m := range s.markets {
		m.poke()
	}
	return s.currentFaults(), nil
}

// takeFlap consumes one pending flap; true when this connection must flap.
func (s *Server) takeFlap() bool {
	for {
		n := s.flapLeft.Load()
		if n <= 0 {
			return false
		}
		if s.flapLeft.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

func (s *Server) nextMalformedKind() int {
	return int((s.malformedKind.Add(1) - 1) % int64(len(malformedKinds)))
}
