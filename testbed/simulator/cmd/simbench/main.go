// Command simbench measures how fast binance-sim sends trade frames to one
// WebSocket connection. It starts the simulator with --rate 0 (the market is
// driven by sending) and synthetic markets, reads every frame, checks that the
// trade ids of each symbol are contiguous, and reports frames per second and
// the CPU time used by the simulator and by itself.
//
//	simbench --sim .local/bin/binance-sim --symbols 1 --count 1000000
//	simbench --sim .local/bin/binance-sim --symbols 10 --count 200000
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

func main() {
	simPath := flag.String("sim", ".local/bin/binance-sim", "simulator binary to start")
	symbols := flag.Int("symbols", 1, "number of synthetic symbols (more than one: combined stream)")
	count := flag.Int64("count", 1000000, "trades per symbol")
	combined := flag.Bool("combined", false, "use the combined stream even for one symbol")
	profile := flag.String("profile", "btc", "synthetic profile: btc or meme")
	rate := flag.String("rate", "0", "simulator --rate (0: as fast as this client reads)")
	extra := flag.String("sim-args", "--log /dev/null", "extra simulator arguments (space separated)")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
	flag.Parse()
	if err := run(*simPath, *rate, *symbols, *count, *combined || *symbols > 1, *profile, strings.Fields(*extra), *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "simbench:", err)
		os.Exit(1)
	}
}

func symbolName(i int) string {
	if i == 0 {
		return "BTCUSDT"
	}
	return fmt.Sprintf("S%02dUSDT", i)
}

// procCPU returns user+system CPU seconds of a process from /proc.
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(fields[11], 64)
	st, _ := strconv.ParseFloat(fields[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// procRSSMB returns the resident memory of a process in MB.
func procRSSMB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return -1
}

func selfCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func run(simPath, rate string, nsym int, count int64, combined bool, profile string, extra []string, timeout time.Duration) error {
	args := []string{"--rate", rate, "--count", strconv.FormatInt(count, 10), "--ping-interval", "0"}
	var streams []string
	for i := 0; i < nsym; i++ {
		sym := symbolName(i)
		args = append(args, "--market", fmt.Sprintf("%s=synthetic:seed=%d,profile=%s", sym, i+1, profile))
		streams = append(streams, strings.ToLower(sym)+"@trade")
	}
	args = append(args, extra...)
	cmd := exec.Command(simPath, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return fmt.Errorf("no ready line: %w", err)
	}
	var ready struct {
		WSURL string `json:"ws_url"`
	}
	if err := json.Unmarshal([]byte(line), &ready); err != nil {
		return fmt.Errorf("ready line %q: %w", line, err)
	}
	base := strings.TrimSuffix(ready.WSURL, "/ws")
	url := base + "/ws/" + streams[0]
	if combined {
		url = base + "/stream?streams=" + strings.Join(streams, "/")
	}
	d := websocket.Dialer{ReadBufferSize: 1 << 16, HandshakeTimeout: 10 * time.Second}
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		return err
	}
	defer func() { _ = ws.Close() }()
	_ = ws.SetReadDeadline(time.Now().Add(timeout))

	total := count * int64(nsym)
	last := make(map[string]int64, nsym)
	var frames, nbytes int64
	buf := bytes.NewBuffer(make([]byte, 0, 4096))
	simCPU0, selfCPU0 := procCPU(cmd.Process.Pid), selfCPU()
	var start time.Time
	for frames < total {
		_, r, err := ws.NextReader()
		if err != nil {
			return fmt.Errorf("after %d frames: %w", frames, err)
		}
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil && err != io.EOF {
			return err
		}
		if frames == 0 {
			start = time.Now()
		}
		frames++
		nbytes += int64(buf.Len())
		sym, id, ok := parseTrade(buf.Bytes())
		if !ok {
			return fmt.Errorf("frame %d is not a trade: %.200s", frames, buf.Bytes())
		}
		if prev, seen := last[sym]; seen && id != prev+1 {
			return fmt.Errorf("%s: trade id %d after %d", sym, id, prev)
		}
		last[sym] = id
	}
	el := time.Since(start)
	simCPU, cliCPU := procCPU(cmd.Process.Pid)-simCPU0, selfCPU()-selfCPU0
	fps := float64(frames-1) / el.Seconds()
	rss := procRSSMB(cmd.Process.Pid)
	res := map[string]any{
		"symbols":          nsym,
		"combined":         combined,
		"frames":           frames,
		"seconds":          el.Seconds(),
		"sim_rate":         rate,
		"frames_per_s":     int64(fps),
		"sim_rss_mb":       rss,
		"mb_per_s":         float64(nbytes) / el.Seconds() / 1e6,
		"sim_cpu_s":        simCPU,
		"client_cpu_s":     cliCPU,
		"sim_cpu_share":    simCPU / el.Seconds(),
		"client_cpu_share": cliCPU / el.Seconds(),
	}
	b, _ := json.Marshal(res)
	fmt.Println(string(b))
	fmt.Fprintf(os.Stderr, "%d frames (%d symbols, %s) in %.2fs: %.0f frames/s, %.1f MB/s; simulator CPU %.2fs (%.0f%% of one core), client CPU %.2fs (%.0f%%)\n",
		frames, nsym, map[bool]string{true: "combined stream", false: "raw stream"}[combined], el.Seconds(), fps,
		float64(nbytes)/el.Seconds()/1e6, simCPU, 100*simCPU/el.Seconds(), cliCPU, 100*cliCPU/el.Seconds())
	fmt.Fprintf(os.Stderr, "simulator resident memory: %.0f MB\n", rss)
	return nil
}

// parseTrade finds the symbol and trade id of a trade frame (raw or combined).
func parseTrade(b []byte) (string, int64, bool) {
	i := bytes.Index(b, []byte(`"s":"`))
	if i < 0 {
		return "", 0, false
	}
	b = b[i+5:]
	j := bytes.IndexByte(b, '"')
	if j < 0 {
		return "", 0, false
	}
	sym := string(b[:j])
	k := bytes.Index(b, []byte(`"t":`))
	if k < 0 {
		return "", 0, false
	}
	b = b[k+4:]
	var id int64
	n := 0
	for n < len(b) && b[n] >= '0' && b[n] <= '9' {
		id = id*10 + int64(b[n]-'0')
		n++
	}
	return sym, id, n > 0
}
