# loader-ws-trades: the Kubernetes Job's image. Build from the repository root:
#   docker build -t loader-ws-trades:0.1.0 --build-arg VERSION=0.1.0 .
# or without a Docker engine: make image (buildah; see testbed/image/build.sh).

# The same patch release in both stages: the venv's interpreter is the final image's.
FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build

# Dependencies first, from the lock file alone, so editing the source reuses this layer.
COPY requirements/runtime.lock requirements/runtime.lock
RUN pip install --no-cache-dir -r requirements/runtime.lock

COPY pyproject.toml README.md ./
COPY src/ src/
# The project without dependencies (all locked above). Bytecode is compiled here, unchecked,
# so the interpreter uses it whatever the copied files' times and never tries to rewrite it;
# the venv's own installers go, as the Job never installs anything.
RUN pip install --no-deps --no-cache-dir . \
    && python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash /opt/venv/lib \
    && pip uninstall --yes pip setuptools


FROM python:3.11.14-slim-bookworm

ARG VERSION=0.1.0
ARG SOURCE=https://github.com/streamforge/loader-ws-trades
LABEL org.opencontainers.image.title="loader-ws-trades" \
      org.opencontainers.image.description="StreamForge loader: every real-time exchange trade into Kafka, once, in order, with exact decimals." \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="LicenseRef-Proprietary" \
      org.opencontainers.image.version="${VERSION}"

# A fixed numeric identity, so Kubernetes can check runAsNonRoot and match runAsUser.
RUN groupadd --system --gid 10001 loader \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin loader

COPY --from=builder /opt/venv /opt/venv

# Nothing is written at run time: the root filesystem is mounted read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1

USER 10001:10001
EXPOSE 9108
ENTRYPOINT ["loader-ws-trades"]
CMD ["run"]
