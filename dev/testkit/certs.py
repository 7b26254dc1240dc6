"""A throwaway CA certificate for tests that need a real PEM file."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_ca_certificate(directory: Path) -> Path:
    """A self-signed certificate (PEM) in ``directory``, made with the openssl command."""
    certificate = directory / "ca.crt"
    key = directory / "ca.key"
    command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    command += ["-nodes", "-keyout", str(key), "-out", str(certificate)]
    command += ["-days", "2", "-subj", "/CN=test CA"]
    subprocess.run(command, check=True, capture_output=True)
    return certificate
