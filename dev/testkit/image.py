"""The built container image (``make image``), run with podman the way the Kubernetes Job runs it.

`ImageProcess` is a `LoaderProcess` whose command is ``podman run`` of the image: read-only root
filesystem, UID 10001, no capabilities, no privilege escalation, the host's network (the broker
and the simulator listen on loopback). The Job's variables go to podman's environment and are
passed by name (``-e NAME``), so no secret appears on a command line. Files the Job mounts
(``CA_PATH``) are bind-mounted read-only.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Final

from testkit.service import LoaderProcess

VERSION: Final = version("loader-ws-trades")
IMAGE: Final = f"localhost/loader-ws-trades:{VERSION}"
BASE_IMAGE: Final = "docker.io/library/python:3.11.14-slim-bookworm"

# runc, not crun (which fails on this host's cgroup setup), and explicit limits, as the
# container may not raise its own above the defaults' hard limits here.
RUN_FLAGS: Final = (
    "--runtime", "runc",
    "--ulimit", "nofile=1024:1024",
    "--ulimit", "nproc=1024:1024",
    "--read-only",
    "--user", "10001:10001",
    "--cap-drop", "ALL",
    "--security-opt", "no-new-privileges",
    "--network", "host",
)  # fmt: skip

_names = itertools.count()


class ImageError(RuntimeError):
    """podman is missing or the image was not built."""


def podman() -> str:
    binary = shutil.which("podman")
    if binary is None:
        raise ImageError("podman is not installed: run `make image`")
    return binary


def inspect(field: str, image: str = IMAGE) -> str:
    """A field of the image's metadata (``{{.Size}}``, ``{{.Config.User}}``, ...)."""
    done = subprocess.run(
        [podman(), "image", "inspect", "--format", field, image],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ImageError(f"{image}: {done.stderr.strip()}; run `make image`")
    return done.stdout.strip()


def run_in_image(*command: str, image: str = IMAGE, entrypoint: str = "") -> str:
    """The output of ``command`` in a container of ``image``, run as the Job runs it."""
    done = subprocess.run(
        [podman(), "run", "--rm", *RUN_FLAGS, f"--entrypoint={entrypoint}", image, *command],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise ImageError(f"{command} in {image}: {done.returncode} {done.stderr.strip()}")
    return done.stdout


class ImageProcess(LoaderProcess):
    """One run of the image as a Job's container; ``mounts`` are (host file, container path)."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        mounts: Sequence[tuple[Path, str]] = (),
    ) -> None:
        super().__init__(env, log_path)
        self._mounts = list(mounts)
        self.name = f"loader-ws-trades-test-{os.getpid()}-{next(_names)}"

    def command(self) -> list[str]:
        volumes = [f"--volume={host}:{path}:ro" for host, path in self._mounts]
        names = [f"--env={name}" for name in self._env]
        return [podman(), "run", "--rm", f"--name={self.name}", *RUN_FLAGS, *volumes, *names, IMAGE]

    async def kill(self) -> None:
        """Removes the container too: killing the podman client alone would leave it running."""
        if self._process is not None and self._process.returncode is None:
            remove = await asyncio.create_subprocess_exec(
                podman(),
                "rm",
                "--force",
                "--time=0",
                self.name,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await remove.wait()
        await super().kill()
