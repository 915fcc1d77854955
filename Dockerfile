# muNet server on a CUDA-capable PyTorch base. Build: docker build -t munet-server .
# Run (GPU): docker run --gpus all -p 50051:50051 -v munet-data:/data munet-server
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MUNET_STORE=/data
WORKDIR /app

# Install dependencies first so code edits do not invalidate this layer.
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY client ./client
COPY server ./server
RUN pip install ".[server]" && python -c "import server, client, timm, lmdb, safetensors"

RUN useradd --create-home --uid 1000 munet && mkdir -p /data && chown munet:munet /data
USER munet
VOLUME ["/data"]
EXPOSE 50051 9100

# The server binds loopback by default; inside a container it must listen on all interfaces.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD munet --target 127.0.0.1:50051 health || exit 1
ENTRYPOINT ["munet-server", "--store", "/data", "--host", "0.0.0.0", "--port", "50051", "--device", "auto"]
