#!/usr/bin/env bash
# Build the Docker image and check it as a user would: the container becomes healthy as a non-root
# user, serves HTTP beside gRPC on its default ports, learns a small real task sent from the host with
# the `munet` CLI, and after the container is replaced the task is still on the volume and predicts
# the same.
#
# Needs a Docker engine and the project's venv (bash scripts/setup.sh) for the client side.
#   BASE=image        build on another base (default: the Dockerfile's CUDA PyTorch image)
#   DOCKER_NETWORK=host  for engines without a bridge network (the ports are then published as is)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
IMAGE=${IMAGE:-munet-server:smoke}
NAME=munet-smoke-$$
VOLUME=munet-smoke-$$
PORT=${PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
HTTP_PORT=${HTTP_PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
WORK=$(mktemp -d)
TOKEN=smoke-$RANDOM$RANDOM
munet() { "$PY" -m munet_client.cli --target "127.0.0.1:$PORT" --token "$TOKEN" "$@"; }
cleanup() {
  docker rm -f "$NAME" >/dev/null 2>&1 || true
  docker volume rm "$VOLUME" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

build_args=()
[[ -n "${BASE:-}" ]] && build_args+=(--build-arg "BASE=$BASE")
net_args=(-p "127.0.0.1:$PORT:8001" -p "127.0.0.1:$HTTP_PORT:8000")  # the image's gRPC and HTTP ports
[[ "${DOCKER_NETWORK:-}" == host ]] && net_args=(--network host)

echo "== build $IMAGE"
time docker build --network "${DOCKER_NETWORK:-default}" "${build_args[@]}" -t "$IMAGE" .

start() {
  local port=8001 http_port=8000
  [[ "${DOCKER_NETWORK:-}" == host ]] && port=$PORT http_port=$HTTP_PORT
  docker run -d --name "$NAME" "${net_args[@]}" -v "$VOLUME:/data" -e MUNET_ADMIN_TOKEN="$TOKEN" \
    -e MUNET_PORT="$port" -e MUNET_HTTP_PORT="$http_port" -e MUNET_METRICS_PORT=0 "$IMAGE" >/dev/null
  echo "== waiting for the container's HEALTHCHECK"
  for _ in $(seq 150); do
    status=$(docker inspect -f '{{.State.Health.Status}}' "$NAME")
    [[ "$status" == healthy ]] && { echo "healthy"; return; }
    [[ "$status" == unhealthy || "$(docker inspect -f '{{.State.Running}}' "$NAME")" != true ]] && break
    sleep 2
  done
  docker logs "$NAME"; echo "container did not become healthy ($status)"; exit 1
}

start
[[ "$(docker exec "$NAME" id -u)" != 0 ]] || { echo "the server runs as root"; exit 1; }
"$PY" -c "import httpx, sys; sys.exit(httpx.get('http://127.0.0.1:$HTTP_PORT/v2/health/ready').json() != {'ready': True})" \
  || { echo "HTTP is not served on the image's port"; exit 1; }

echo "== a real task: Fashion-MNIST sandals vs sneakers, 40 images each, 8 held out"
"$PY" -m scripts.smoke_data write "$WORK"
munet add-task shoes "$WORK/train" --seconds 60
munet tasks
munet --json predict shoes "$WORK"/held-out/*/*.png > "$WORK/before.json"
"$PY" -m scripts.smoke_data check "$WORK/before.json" || { echo "no better than chance"; exit 1; }

echo "== unauthenticated admin call is refused"
if "$PY" -m munet_client.cli --target "127.0.0.1:$PORT" delete shoes 2>"$WORK/err"; then
  echo "delete without the token succeeded"; exit 1
fi
# `a && b` never fails a `set -e` script: test explicitly.
if ! grep -q UNAUTHENTICATED "$WORK/err"; then
  echo "expected UNAUTHENTICATED, got: $(cat "$WORK/err")"; exit 1
fi
echo "refused: $(tr -s '\n' ' ' < "$WORK/err")"

echo "== replace the container; the task must survive on the volume"
docker rm -f "$NAME" >/dev/null
start
munet --json predict shoes "$WORK"/held-out/*/*.png > "$WORK/after.json"
if ! cmp "$WORK/before.json" "$WORK/after.json"; then
  echo "predictions changed after the container was replaced"; exit 1
fi
echo "predictions identical after the container was replaced"
docker exec "$NAME" ls -ln /data
echo "docker smoke test passed"
