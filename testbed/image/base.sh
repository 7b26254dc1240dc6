#!/usr/bin/env bash
# Makes the Dockerfile's base image locally, for a machine with no registry: Debian bookworm
# (debootstrap, from the mirror apt already uses) with Python 3.11, laid out as the official
# python:3.11-slim-bookworm is where the Dockerfile relies on it (`python` on PATH in
# /usr/local/bin, `python -m venv`, groupadd/useradd, CA certificates), and imported into
# podman's store under the exact name of the Dockerfile's FROM line, so the real Dockerfile
# builds unchanged with --pull=never. Also installs buildah, podman and runc when missing.
#
# Usage: testbed/image/base.sh [--force]    (--force rebuilds an image that exists)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

sudo=()
((EUID == 0)) || sudo=(sudo)
missing=()
for tool in buildah podman runc debootstrap; do
	command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
	echo "== installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	"${sudo[@]}" apt-get update -qq
	"${sudo[@]}" apt-get install -y -qq --no-install-recommends buildah podman runc debootstrap \
		fuse-overlayfs uidmap >/dev/null
fi

name="$(sed -n 's/^FROM \([^ ]*\) AS builder$/\1/p' "$root/Dockerfile")"
[[ -n "$name" ]] || { echo "base.sh: no 'FROM image AS builder' line in the Dockerfile" >&2; exit 1; }
[[ "$name" == */* ]] || name="docker.io/library/$name"
if [[ "${1:-}" != "--force" ]] && "${sudo[@]}" podman image exists "$name"; then
	echo "== base image $name is there"
	exit 0
fi

# The first deb822 source apt uses (Debian's mirror, or the one this machine is given).
mirror="$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1)"
mirror="${mirror:-http://deb.debian.org/debian}"
work="$(mktemp -d)"
trap '"${sudo[@]}" rm -rf "$work"' EXIT
rootfs="$work/rootfs"
started=$SECONDS
echo "== debootstrap bookworm from $mirror"
"${sudo[@]}" debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
	{ tail -20 "$work/debootstrap.log" >&2; exit 1; }
echo "== python3.11 into the root filesystem"
"${sudo[@]}" cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
"${sudo[@]}" chroot "$rootfs" /bin/sh -euc '
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends python3.11 python3.11-venv ca-certificates netbase tzdata >/dev/null
	apt-get clean
	rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/* /tmp/* /usr/share/doc/* /usr/share/man/* /usr/share/info/*
	ln -s /usr/bin/python3.11 /usr/local/bin/python3
	ln -s /usr/bin/python3.11 /usr/local/bin/python
	: >/etc/resolv.conf
' 2>"$work/chroot.log" || { tail -20 "$work/chroot.log" >&2; exit 1; }
echo "== importing as $name"
"${sudo[@]}" tar -C "$rootfs" -c . | "${sudo[@]}" podman import --quiet \
	--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	--change 'ENV LANG=C.UTF-8' \
	--change 'CMD ["python3"]' - "$name" >/dev/null
size="$("${sudo[@]}" podman image inspect --format '{{.Size}}' "$name")"
echo "== base image $name: $((size / 1000000)) MB in $((SECONDS - started)) s"
