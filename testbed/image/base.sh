#!/usr/bin/env bash
# Makes the Dockerfile's base image on a machine with no registry: Debian bookworm (debootstrap
# --variant=minbase, from the Debian mirror apt already uses) with Python 3.11, laid out as the
# official python:3.11-slim-bookworm is where the Dockerfile relies on it (`python` and
# `python3` in /usr/local/bin, `python -m venv`, groupadd/useradd, CA certificates, netbase,
# tzdata) and trimmed like Debian's slim images (no documentation, manual pages or message
# catalogues), then imported into podman's store under the exact name the Dockerfile's FROM
# line resolves to, so the real Dockerfile builds unchanged with --pull=never.
# Installs buildah, podman, runc and debootstrap first when one is missing.
#
# Usage: testbed/image/base.sh [--force]
#   without --force it does nothing when the image exists (it stays cached on the machine);
#   --force builds it again. Needs root (or sudo): debootstrap, chroot and podman's store.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
force=0
case "${1:-}" in
--force) force=1 ;;
"") ;;
*) echo "usage: $0 [--force]" >&2 && exit 2 ;;
esac
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
	"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Both stages start FROM the same image; a short name means Docker Hub's library.
name="$(sed -n 's/^FROM \([^ ]*\).*/\1/p' "$root/Dockerfile" | sort -u)"
if [[ -z "$name" || "$name" == *$'\n'* ]]; then
	echo "base.sh: expected one base image in the Dockerfile's FROM lines, found: ${name:-none}" >&2
	exit 1
fi
[[ "$name" == */* ]] || name="docker.io/library/$name"
[[ "${name%%/*}" == *.* ]] || name="docker.io/$name"
if ((!force)) && "${sudo[@]}" podman image exists "$name"; then
	echo "== base image $name is there"
	exit 0
fi

# The Debian mirror apt uses here for bookworm: deb822 sources first, then one-line ones.
mirror="$(
	{
		awk 'FNR == 1 || /^$/ { uri = ""; suite = 0 }
			/^URIs:/ { uri = $2 }
			/^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") suite = 1 }
			uri != "" && suite { print uri; uri = ""; suite = 0 }' /etc/apt/sources.list.d/*.sources || true
		awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
			if ($(i + 1) == "bookworm") print $i }' /etc/apt/sources.list /etc/apt/sources.list.d/*.list || true
	} 2>/dev/null | sed -n 1p
)"
if [[ -z "$mirror" ]]; then
	echo "base.sh: no Debian bookworm mirror in /etc/apt/sources.list(.d)" >&2
	exit 1
fi
work="$(mktemp -d)"
trap '"${sudo[@]}" rm -rf "$work"' EXIT
rootfs="$work/rootfs"
started=$SECONDS

echo "== debootstrap --variant=minbase bookworm from $mirror"
if ! "${sudo[@]}" debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
	tail -20 "$work/debootstrap.log" >&2
	exit 1
fi

echo "== python3.11 into the root filesystem"
# The point releases' updates and the security archive too, as in Debian's own images.
security="${mirror%/debian}/debian-security"
"${sudo[@]}" tee "$rootfs/etc/apt/sources.list" >/dev/null <<-EOF
	deb $mirror bookworm main
	deb $mirror bookworm-updates main
	deb $security bookworm-security main
EOF
"${sudo[@]}" cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
"${sudo[@]}" chroot "$rootfs" /bin/sh -euc '
	# What Debian slim images leave out, for the packages to come and those debootstrap laid down.
	cat >/etc/dpkg/dpkg.cfg.d/slim <<-EOF
		path-exclude /usr/share/doc/*
		path-include /usr/share/doc/*/copyright
		path-exclude /usr/share/man/*
		path-exclude /usr/share/info/*
		path-exclude /usr/share/groff/*
		path-exclude /usr/share/lintian/*
		path-exclude /usr/share/locale/*
	EOF
	find /usr/share/doc -depth -mindepth 1 ! -name copyright ! -type d -delete
	find /usr/share/doc -mindepth 1 -type d -empty -delete
	rm -rf /usr/share/man/* /usr/share/info/* /usr/share/groff/* /usr/share/lintian/* /usr/share/locale/*
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends \
		python3.11 python3.11-venv ca-certificates netbase tzdata >/tmp/install.log 2>&1 ||
		{ tail -30 /tmp/install.log >&2; exit 1; }
	apt-get clean
	rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/* /tmp/*
	ln -s /usr/bin/python3.11 /usr/local/bin/python3
	ln -s /usr/bin/python3.11 /usr/local/bin/python
	: >/etc/resolv.conf
	# What the Dockerfile runs: python -m venv, groupadd and useradd.
	command -v groupadd >/dev/null
	command -v useradd >/dev/null
	PATH=/usr/local/bin:$PATH python -m venv /tmp/venv
	/tmp/venv/bin/python -m pip --version >/dev/null
	rm -rf /tmp/venv
'

echo "== importing as $name"
"${sudo[@]}" tar -C "$rootfs" --numeric-owner -c . | "${sudo[@]}" podman import --quiet \
	--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	--change 'ENV LANG=C.UTF-8' \
	--change 'CMD ["python3"]' - "$name" >/dev/null
size="$("${sudo[@]}" podman image inspect --format '{{.Size}}' "$name")"
echo "== base image $name: $((size / 1000000)) MB, made in $((SECONDS - started)) s"
