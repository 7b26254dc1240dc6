#!/usr/bin/env python3
"""Wait until a Kafka listener answers a Kafka request.

Standard library only. Opens TCP (optionally TLS, verified against a CA file) to
host:port, sends an ApiVersions v0 request and checks that a well-formed
response comes back. ApiVersions is allowed before SASL authentication, so the
check also works on a SASL_SSL listener. With --metadata (unauthenticated
listeners only) it also sends a Metadata request and requires at least one
broker in the answer.

Retries until the timeout; exit 0 when ready, 1 otherwise (with the last error).

    wait_ready.py 127.0.0.1:19092 --metadata
    wait_ready.py localhost:19093 --tls --cafile .local/kafka/ca/ca.crt --pid 1234
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import struct
import sys
import time
from typing import TextIO

API_VERSIONS = 18
METADATA = 3
METADATA_VERSION = 4  # oldest Metadata version a Kafka 4 broker accepts
UNSUPPORTED_VERSION = 35
CLIENT_ID = b"wait-ready"


class NotReady(Exception):
    pass


def _request(api_key: int, api_version: int, correlation_id: int, body: bytes) -> bytes:
    # request header v1: api_key, api_version, correlation_id, client_id (nullable string)
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(CLIENT_ID))
    header += CLIENT_ID
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise NotReady("connection closed by the broker")
        buf += chunk
    return bytes(buf)


def _response(sock: socket.socket, correlation_id: int) -> bytes:
    (size,) = struct.unpack(">i", _read_exact(sock, 4))
    if size < 4 or size > 16 * 1024 * 1024:
        raise NotReady(f"malformed response size {size}")
    data = _read_exact(sock, size)
    (got,) = struct.unpack_from(">i", data, 0)
    if got != correlation_id:
        raise NotReady(f"correlation id {got} != {correlation_id}")
    return data[4:]


def _check_api_versions(sock: socket.socket) -> int:
    sock.sendall(_request(API_VERSIONS, 0, 1, b""))
    body = _response(sock, 1)
    error, count = struct.unpack_from(">hi", body, 0)
    if error not in (0, UNSUPPORTED_VERSION):
        raise NotReady(f"ApiVersions error code {error}")
    if count <= 0 or len(body) < 6 + 6 * count:
        raise NotReady(f"malformed ApiVersions response ({count} entries, {len(body)} bytes)")
    return int(count)


def _check_metadata(sock: socket.socket) -> None:
    # Metadata v4: topics = empty array (no topics), allow_auto_topic_creation = false
    sock.sendall(_request(METADATA, METADATA_VERSION, 2, struct.pack(">ib", 0, 0)))
    body = _response(sock, 2)
    _throttle, brokers = struct.unpack_from(">ii", body, 0)
    if brokers < 1:
        raise NotReady("Metadata response lists no broker yet")


def probe(
    host: str, port: int, context: ssl.SSLContext | None, metadata: bool, timeout: float
) -> int:
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock: socket.socket = raw
        if context is not None:
            sock = context.wrap_socket(raw, server_hostname=host)
        try:
            count = _check_api_versions(sock)
            if metadata:
                _check_metadata(sock)
            return count
        finally:
            if sock is not raw:
                sock.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _say(stream: TextIO, message: str) -> None:
    stream.write(f"wait_ready: {message}\n")
    stream.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("address", help="host:port of the listener")
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--cafile", help="CA certificate (PEM) that signs the broker certificate")
    parser.add_argument(
        "--metadata", action="store_true", help="also require a Metadata answer with a broker"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="give up after this many seconds (60)"
    )
    parser.add_argument(
        "--interval", type=float, default=0.2, help="seconds between attempts (0.2)"
    )
    parser.add_argument("--pid", type=int, help="fail at once when this process is gone")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)

    host, _, port_text = args.address.rpartition(":")
    if not host or not port_text.isdigit():
        parser.error(f"address must be host:port, got {args.address!r}")
    port = int(port_text)

    context: ssl.SSLContext | None = None
    if args.tls:
        context = ssl.create_default_context(cafile=args.cafile)

    deadline = time.monotonic() + args.timeout
    last = "no attempt made"
    while True:
        try:
            count = probe(host, port, context, args.metadata, timeout=5.0)
        except ssl.SSLCertVerificationError as exc:
            # a certificate problem does not go away by waiting
            _say(sys.stderr, f"{args.address}: TLS verification failed: {exc}")
            return 1
        except (OSError, NotReady, struct.error) as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if not args.quiet:
                _say(sys.stdout, f"{args.address} answered ApiVersions ({count} APIs)")
            return 0
        if args.pid is not None and not _alive(args.pid):
            _say(sys.stderr, f"{args.address}: process {args.pid} exited; last error: {last}")
            return 1
        if time.monotonic() >= deadline:
            _say(
                sys.stderr, f"{args.address} not ready after {args.timeout:g}s; last error: {last}"
            )
            return 1
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
