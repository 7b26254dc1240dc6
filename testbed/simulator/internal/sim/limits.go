package sim

import (
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Binance's limits for many symbols (spot, 2026): at most 1024 streams on one
// connection, 5 incoming messages a second on one connection, 300 connection
// attempts per 5 minutes per IP; a REST client that ignores a 429's
// Retry-After is banned with 418.
const (
	maxStreamsPerConn = 1024
	maxRingLimit      = 100000         // largest per-window limit (a ring of this many times)
	maxBan            = 72 * time.Hour // Binance: bans scale "from 2 minutes to 3 days"
)

// ---------------------------------------------------------------------------
// sliding log

// slidingLog remembers the times of the last events it admitted, to allow at
// most limit of them in any window. A ring of limit times makes each check
// O(1) without allocating: the slot to overwrite holds the oldest time.
type slidingLog struct {
	times []int64 // unix nanos, 0 = unused
	next  int
}

// admit records an event at now unless limit events were already admitted
// within window before it; when refused it says how long until one expires.
// A changed limit starts the log afresh.
func (l *slidingLog) admit(now int64, limit int64, window time.Duration) (bool, time.Duration) {
	if limit <= 0 {
		return true, 0
	}
	if int64(len(l.times)) != limit {
		l.times, l.next = make([]int64, limit), 0
	}
	if oldest := l.times[l.next]; oldest != 0 && now-oldest < int64(window) {
		return false, time.Duration(oldest + int64(window) - now)
	}
	l.times[l.next] = now
	l.next = (l.next + 1) % len(l.times)
	return true, 0
}

// ---------------------------------------------------------------------------
// connection attempts per IP

type attemptLimiter struct {
	mu   sync.Mutex
	byIP map[string]*slidingLog // grows by one entry per client IP: fine on 127.0.0.1
}

// admit counts one connection attempt of ip; refused attempts are not
// counted, so a client that waits is let in again once old attempts expire.
func (a *attemptLimiter) admit(ip string, now time.Time, limit int64, window time.Duration) (bool, time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.byIP == nil {
		a.byIP = make(map[string]*slidingLog)
	}
	l := a.byIP[ip]
	if l == nil {
		l = &slidingLog{}
		a.byIP[ip] = l
	}
	return l.admit(now.UnixNano(), limit, window)
}

func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// admitWS applies the limits that refuse a WebSocket request before the
// upgrade: connection attempts per IP (429), then streams per connection
// (400). False when it has answered the request.
func (s *Server) admitWS(w http.ResponseWriter, r *http.Request, streams []string) bool {
	limit, window := s.cfg.ConnectionLimit, s.cfg.ConnectionWindow
	if ok, wait := s.attempts.admit(remoteIP(r), time.Now(), limit, window); !ok {
		s.stats.attemptsRefused.Add(1)
		secs := ceilSeconds(wait)
		s.log.Info("conn_refused", "path", r.URL.RequestURI(), "remote", r.RemoteAddr, "status", http.StatusTooManyRequests,
			"reason", "connection_limit", "retry_after", secs)
		w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
		binanceError(w, http.StatusTooManyRequests, -1003, "Too many connection attempts: at most "+
			strconv.FormatInt(limit, 10)+" per "+window.String()+" per IP; retry after "+strconv.FormatInt(secs, 10)+" s.")
		return false
	}
	if n := countDistinct(streams); n > maxStreamsPerConn {
		s.stats.tooManyStreams.Add(1)
		s.log.Info("conn_refused", "path", truncate(r.URL.RequestURI(), 200), "remote", r.RemoteAddr,
			"status", http.StatusBadRequest, "reason", "too_many_streams", "streams", n)
		binanceError(w, http.StatusBadRequest, -1, tooManyStreamsMsg(n))
		return false
	}
	return true
}

func tooManyStreamsMsg(n int) string {
	return "Too many streams: " + strconv.Itoa(n) + " (at most " + strconv.Itoa(maxStreamsPerConn) + " per connection)"
}

// countDistinct counts the different names: a stream named twice is carried once.
func countDistinct(names []string) int {
	seen := make(map[string]struct{}, len(names))
	for _, n := range names {
		seen[n] = struct{}{}
	}
	return len(seen)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// ceilSeconds rounds up to whole seconds, at least 1 (Retry-After is in seconds).
func ceilSeconds(d time.Duration) int64 {
	return max(int64((d+time.Second-1)/time.Second), 1)
}

// ---------------------------------------------------------------------------
// REST: 418 for clients that do not wait out a 429

// restBan is the simulator's one REST ban (like the weight, it is shared by
// all clients: they are one IP).
type restBan struct {
	mu         sync.Mutex
	retryUntil time.Time     // until when the last 429 told the client to wait
	until      time.Time     // end of the current ban
	next       time.Duration // length of the next ban; 0 = the first
}

// told records a 429's Retry-After.
func (b *restBan) told(until time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if until.After(b.retryUntil) {
		b.retryUntil = until
	}
}

// check says whether a request at now is answered 418, and until when the
// ban runs. A request during a 429's Retry-After starts a ban (cause
// "retry_after"), twice as long as the previous one; requests during the ban
// are refused too (cause "banned") without making it longer.
func (b *restBan) check(now time.Time, first time.Duration) (time.Time, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Before(b.until) {
		return b.until, "banned"
	}
	if first <= 0 || !now.Before(b.retryUntil) {
		return time.Time{}, ""
	}
	if b.next == 0 {
		b.next = min(first, maxBan)
	}
	b.until = now.Add(b.next)
	b.next = min(2*b.next, maxBan)
	b.retryUntil = time.Time{}
	return b.until, "retry_after"
}
