#!/usr/bin/env bash
# Installs the Debian packages the integration tests run for real: Prometheus (with promtool)
# and kcat. Does nothing when they are already there. Usage: testbed/tools.sh
set -euo pipefail
packages=()
command -v prometheus >/dev/null || packages+=(prometheus)
command -v promtool >/dev/null || packages+=(prometheus)
command -v kcat >/dev/null || packages+=(kcat)
((${#packages[@]})) || exit 0
sudo=()
((EUID == 0)) || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# --no-install-recommends: the prometheus package otherwise pulls in node-exporter and friends.
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
# The package starts a system Prometheus on :9090 where a service manager runs; tests start their own.
command -v systemctl >/dev/null && "${sudo[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
