#!/usr/bin/env bash
# Builds the real Dockerfile with buildah (no Docker engine needed) into podman's store as
# loader-ws-trades:<version of pyproject.toml>, on the base image testbed/image/base.sh makes.
#
# pip inside the build reaches the package index the way this machine does: the host's CA
# bundle is mounted over the base's for the RUN steps only (a build-time mount is not part of
# any layer), so no certificate or pip setting of this machine ends up in the image.
# Usage: testbed/image/build.sh        prints the image's name, size and build time
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
sudo=()
((EUID == 0)) || sudo=(sudo)

bash "$here/base.sh"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/pyproject.toml" | head -1)"
image="localhost/loader-ws-trades:$version"
ca="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
started=$SECONDS
echo "== building $image"
cd "$root"
"${sudo[@]}" buildah bud --quiet --isolation chroot --layers --pull=never --network host \
	--volume "$ca:/etc/ssl/certs/ca-certificates.crt:ro" \
	--build-arg "VERSION=$version" --tag "$image" --file Dockerfile . >/dev/null
size="$("${sudo[@]}" podman image inspect --format '{{.Size}}' "$image")"
echo "== $image: $((size / 1000000)) MB, built in $((SECONDS - started)) s"
