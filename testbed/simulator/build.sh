#!/usr/bin/env bash
# Builds the exchange simulator into <repo>/.local/bin/binance-sim (and the
# benchmark client into <repo>/.local/bin/simbench). Skips the build when the
# binaries are newer than every source file. Usage: testbed/simulator/build.sh [--force]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$root/.local/bin"
mkdir -p "$bin"
if [[ "${1:-}" != "--force" && -x "$bin/binance-sim" && -x "$bin/simbench" ]] &&
	[[ -z "$(find "$here" \( -name '*.go' -o -name go.mod -o -name go.sum \) -newer "$bin/binance-sim" -print -quit)" ]]; then
	exit 0
fi
cd "$here"
export GOFLAGS="${GOFLAGS:-} -mod=readonly"
# Build to unique names and rename, so concurrent builds never leave a torn binary.
go build -trimpath -o "$bin/.simbench.$$" ./cmd/simbench
go build -trimpath -o "$bin/.binance-sim.$$" ./cmd/binance-sim
mv -f "$bin/.simbench.$$" "$bin/simbench"
mv -f "$bin/.binance-sim.$$" "$bin/binance-sim"
