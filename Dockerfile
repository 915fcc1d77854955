# muNet server on a CUDA-capable PyTorch base.
#   Build:     docker build -t munet-server .
#   Run (GPU): docker run --gpus all -p 8000-8002:8000-8002 -v munet-data:/data munet-server
# BASE may name any image with Python >= 3.11 (tomllib reads pyproject.toml below) and `pip` on PATH;
# torch already in it is kept.
ARG BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE}

# The server reads MUNET_STORE/HOST/PORT; inside a container it must listen on all interfaces.
# Set MUNET_ADMIN_TOKEN at `docker run` (-e) before exposing the ports beyond this host.
# The ports are Triton's: HTTP 8000, gRPC 8001, Prometheus metrics 8002 (MUNET_HTTP_PORT=off and
# MUNET_METRICS_PORT=0 turn HTTP and metrics off). Settings in a file: mount it and pass
# `--config /etc/munet/server.toml` after the image name.
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MUNET_STORE=/data MUNET_HOST=0.0.0.0 MUNET_PORT=8001 \
    MUNET_HTTP_PORT=8000 MUNET_METRICS_PORT=8002
WORKDIR /app
LABEL org.opencontainers.image.title="munet-server" \
      org.opencontainers.image.description="A gRPC service that learns image-classification tasks as paths through one growing multitask network (muNet), without forgetting" \
      org.opencontainers.image.version="0.3.0" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/*

# Dependencies first, read from pyproject.toml and pinned by docker/constraints.txt (the versions the
# tests passed with), so that code edits reuse this layer and a rebuild installs the same set.
COPY pyproject.toml README.md ./
COPY docker/constraints.txt /tmp/constraints.txt
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['server']))" > /tmp/requirements.txt \
 && pip install -c /tmp/constraints.txt -r /tmp/requirements.txt && rm /tmp/requirements.txt

COPY protos ./protos
COPY client ./client
COPY server ./server
RUN pip install --no-deps . && python -c "import munet_server, munet_client, munet_proto, timm, lmdb, safetensors"

RUN useradd --create-home --uid 1000 munet && mkdir -p /data && chown munet:munet /data
USER munet
VOLUME ["/data"]
EXPOSE 8000 8001 8002

# `munet-health` imports grpc and the health stubs only, and follows MUNET_PORT and TLS given at
# `docker run`: with MUNET_TLS_CERT (and MUNET_TLS_KEY) it speaks TLS, trusting MUNET_TLS_CA or else the
# (self-signed) certificate itself, and expects the name MUNET_TLS_SERVER_NAME (default localhost) in it.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 CMD ["munet-health"]
# tini as PID 1: signals reach the server (it shuts down gracefully on SIGTERM) and zombies are reaped.
ENTRYPOINT ["tini", "--", "munet-server", "--device", "auto"]
