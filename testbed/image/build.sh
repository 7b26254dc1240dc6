#!/usr/bin/env bash
# Builds the real Dockerfile, unchanged, with buildah (no Docker engine, no registry) into
# podman's store as loader-ws-trades:<version of pyproject.toml>, on the base image that
# testbed/image/base.sh makes when it is missing. Layers are cached between builds.
#
# pip inside the build reaches PyPI the way this machine does: through the same TLS trust. The
# host's CA bundle (pip's `cert`, else SSL_CERT_FILE, else Debian's) is bind-mounted over the
# base's /etc/ssl/certs/ca-certificates.crt, which the base's pip uses, for the RUN steps only:
# a mount over an existing file leaves nothing in any layer (tests/image checks the image keeps
# the base's bundle and has no pip.conf). Proxy variables are passed by buildah for the build
# only. A host pip configuration naming another index cannot be carried into the unchanged
# Dockerfile's build, so it stops the build with a message rather than letting pip fail later.
#
# Usage: testbed/image/build.sh   prints the image's name, size and build time; the build's
#   output goes to .local/image-build.log
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
sudo=()
((EUID == 0)) || sudo=(sudo)

bash "$root/testbed/image/base.sh"

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/pyproject.toml" | sed -n 1p)"
image="localhost/loader-ws-trades:$version"

pip_setting() {
	local found=""
	if command -v pip >/dev/null; then
		found="$(pip config list 2>/dev/null | sed -n "s/^[a-z:]*\.$1='\(.*\)'$/\1/p" | sed -n 1p)"
	fi
	echo "$found"
}
for setting in index-url extra-index-url proxy; do
	if [[ -n "$(pip_setting "$setting")" ]]; then
		echo "build.sh: this machine's pip uses $setting=$(pip_setting "$setting"); the image's" \
			"build reaches PyPI directly and cannot take that setting" >&2
		exit 2
	fi
done
ca="$(pip_setting cert)"
ca="${ca:-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}"
if [[ ! -f "$ca" ]]; then
	echo "build.sh: no CA bundle at $ca for pip in the build" >&2
	exit 2
fi

started=$SECONDS
echo "== building $image (pip trusts $ca)"
cd "$root"
mkdir -p .local
log=.local/image-build.log
if ! "${sudo[@]}" buildah bud --isolation chroot --layers --pull=never --network host \
	--volume "$ca:/etc/ssl/certs/ca-certificates.crt:ro" \
	--build-arg "VERSION=$version" --tag "$image" --file Dockerfile . >"$log" 2>&1; then
	tail -40 "$log" >&2
	echo "build.sh: the build failed; its whole output is in $log" >&2
	exit 1
fi
size="$("${sudo[@]}" podman image inspect --format '{{.Size}}' "$image")"
echo "== $image: $((size / 1000000)) MB, built in $((SECONDS - started)) s"
