# muNet server on a CUDA-capable PyTorch base.
#   Build:     docker build -t munet-server .
#   Run (GPU): docker run --gpus all -p 50051:50051 -v munet-data:/data munet-server
# BASE may name any image with Python >= 3.11 (tomllib reads pyproject.toml below) and `pip` on PATH;
# torch already in it is kept.
ARG BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE}

# The server reads MUNET_STORE/HOST/PORT; inside a container it must listen on all interfaces.
# Set MUNET_ADMIN_TOKEN at `docker run` (-e) before exposing the port beyond this host.
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MUNET_STORE=/data MUNET_HOST=0.0.0.0 MUNET_PORT=50051
WORKDIR /app

# Dependencies first, read from pyproject.toml, so that code edits reuse this layer.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['server']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

COPY protos ./protos
COPY client ./client
COPY server ./server
RUN pip install --no-deps . && python -c "import munet_server, munet_client, munet_proto, timm, lmdb, safetensors"

RUN useradd --create-home --uid 1000 munet && mkdir -p /data && chown munet:munet /data
USER munet
VOLUME ["/data"]
EXPOSE 50051 9100

# Shell form so that the check follows MUNET_PORT and TLS given at `docker run`: with MUNET_TLS_CERT
# (and MUNET_TLS_KEY) the check speaks TLS, trusting MUNET_TLS_CA or else the (self-signed) certificate
# itself, and expects the name MUNET_TLS_SERVER_NAME (default localhost) in it.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD munet --target "127.0.0.1:${MUNET_PORT}" ${MUNET_TLS_CERT:+--tls-ca "${MUNET_TLS_CA:-$MUNET_TLS_CERT}" --tls-server-name "${MUNET_TLS_SERVER_NAME:-localhost}"} health || exit 1
ENTRYPOINT ["munet-server", "--device", "auto"]
