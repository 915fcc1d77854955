"""Server configuration: one dataclass, filled from command-line flags, their environment variables
and a TOML file (`--config`, see config_file), or built directly in tests."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from munet_server import config_file
from munet_server.evolve.budget import Budget
from munet_server.ingest.limits import UploadLimits
from munet_server.model.root_config import BUILTIN_LITE0, RootConfig

DEFAULT_STORE = Path("munet-store")


@dataclass(frozen=True)
class ServerConfig:
    store: Path = DEFAULT_STORE
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 50051
    root: RootConfig = field(default_factory=RootConfig)
    root_explicit: bool = True  # False: an existing store keeps its own root without complaint
    device: str = "auto"
    admin_token: str = ""  # required for AddTask/Cancel/Delete/Snapshot/Restore when set
    predict_token: str = ""  # required for every other munet RPC when set, and for admin ones if alone
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_message_mb: int = 64
    metrics_port: int = 0  # 0: no Prometheus endpoint
    metrics_host: str = ""  # the metrics endpoint's address; "": the same as host. It has no token
    http_port: int | None = None  # HTTP/REST (Open Inference Protocol) beside gRPC; None: off, 0: any free port
    max_batch: int = 64  # Predict: images per forward pass
    batch_wait_ms: float = 2.0  # Predict: how long a batch waits for more requests
    max_predict_images: int = 256  # Predict: images in one request
    max_queued_images: int = 1024  # Predict: images waiting for a forward pass; more: RESOURCE_EXHAUSTED
    predict_threads: int = 0  # CPU threads for large Predict batches; 0: all (see serve/predictor.py)
    max_resident_mb: float = 0.0  # committed layers beyond the root's kept in memory; 0: all (residency.py)
    training_yield_ms: float = 100.0  # a search waits at most this long per step while Predict runs (priority.py)
    rpc_workers: int = 16
    max_long_calls: int = 12  # uploads, restores, snapshots, waits, watches; the rest stay for short calls
    max_pending_operations: int = 8
    idle_improvement: bool = True  # rounds of ImproveTask over the tasks while the server is idle
    idle_round_seconds: float = 120.0  # one such round's budget
    idle_quiet_seconds: float = 10.0  # Predict quiet this long (and no operation) before a round starts
    operation_history: int = 1000  # finished operation records kept (oldest deleted first)
    resume_operations: bool = True
    snapshot_root: Path | None = None  # server-side snapshot dirs must be inside it, when set
    read_only: bool = False  # a replica: admin calls are refused
    follow: Path | None = None  # serve the newest complete snapshot under this dir, switching to newer ones
    follow_interval: float = 5.0  # seconds between looks for a newer snapshot
    default_budget: Budget = field(default_factory=Budget)
    upload: UploadLimits = field(default_factory=UploadLimits)
    executor: str = "local"  # or "ray"
    parallel_searches: int = 0  # operations (AddTask, ImproveTask, idle rounds) at once; 0: 1 local, 2 with Ray
    ray_address: str = ""
    ray_gpus_per_candidate: float = 0.0
    grace_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_long_calls < self.rpc_workers:
            raise ValueError(
                f"max_long_calls={self.max_long_calls} must be between 1 and rpc_workers-1 "
                f"({self.rpc_workers - 1}): some threads must stay free for health checks and Predict"
            )
        if self.training_yield_ms < 0:
            raise ValueError(f"training_yield_ms={self.training_yield_ms} must be 0 (never yield) or more")
        if self.max_queued_images < self.max_predict_images:
            raise ValueError(
                f"max_queued_images={self.max_queued_images} must be at least max_predict_images="
                f"{self.max_predict_images} (one full request)"
            )
        if self.parallel_searches < 0:
            raise ValueError(f"parallel_searches={self.parallel_searches} must be 0 (by the executor) or more")

    @property
    def searches_at_once(self) -> int:
        """Operations that search at the same time: a local search fills the machine; with Ray the
        cluster trains the candidates, so several tasks can improve together."""
        return self.parallel_searches or (2 if self.executor == "ray" else 1)


D = ServerConfig  # the flags' defaults are the dataclass's, stated once


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="munet-server",
        description="Serve one growing muNet multitask vision system over gRPC.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from munet_server import __version__

    p.add_argument("--version", action="version", version=f"munet-server {__version__}")
    p.add_argument(
        "--config", type=Path, default=None,
        help="a TOML file of settings named as the flags (http-port = 8000); flags and environment win over it",
    )  # fmt: skip
    for group in (_where, _security, _serving, _learning, _operations):
        group(p)
    return p


def _where(p: argparse.ArgumentParser) -> None:
    """The store, the addresses, the root model and the device."""
    p.add_argument(
        "--store",
        type=Path,
        default=Path(os.environ.get("MUNET_STORE", DEFAULT_STORE)),
        help="directory of the system's store [env MUNET_STORE]",
    )
    p.add_argument(
        "--host",
        default=os.environ.get("MUNET_HOST", D.host),
        help="address to bind, 0.0.0.0 to expose [env MUNET_HOST]",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("MUNET_PORT", D.port)),
        help="gRPC port, 0 picks a free one [env MUNET_PORT]",
    )
    p.add_argument(
        "--root", default=None, help="timm model name of the root of a new store [tf_efficientnet_lite0]"
    )
    p.add_argument(
        "--root-weights",
        default=BUILTIN_LITE0,
        help=f"{BUILTIN_LITE0}, a .safetensors/.pth file, 'hub' or 'random'",
    )
    p.add_argument("--root-kwargs", default="{}", help="timm kwargs as JSON, e.g. '{\"img_size\": 32}'")
    p.add_argument("--image-size", type=int, default=RootConfig.image_size, help="default image size of new paths")
    p.add_argument("--min-image-size", type=int, default=RootConfig.min_image_size, help="smallest image size the search tries")
    p.add_argument("--max-image-size", type=int, default=RootConfig.max_image_size, help="largest image size the search tries; uploads are stored as sent and decoded at this size")
    p.add_argument("--device", default=D.device, help="auto, cpu, cuda or cuda:N")


def _security(p: argparse.ArgumentParser) -> None:
    """Tokens and TLS."""
    p.add_argument("--admin-token", default="", help="or env MUNET_ADMIN_TOKEN (prefer the file flag)")
    p.add_argument("--predict-token", default="", help="or env MUNET_PREDICT_TOKEN (prefer the file flag)")
    p.add_argument(
        "--admin-token-file", type=Path, default=None, help="read the admin token from a file, out of `ps`"
    )
    p.add_argument("--predict-token-file", type=Path, default=None, help="read the predict token from a file")
    p.add_argument(
        "--tls-cert", type=Path, default=os.environ.get("MUNET_TLS_CERT") or None, help="[env MUNET_TLS_CERT]"
    )
    p.add_argument(
        "--tls-key", type=Path, default=os.environ.get("MUNET_TLS_KEY") or None, help="[env MUNET_TLS_KEY]"
    )


def _serving(p: argparse.ArgumentParser) -> None:
    """Message and batch limits, ports beside gRPC, bounds on long calls and queues."""
    p.add_argument("--max-message-mb", type=int, default=D.max_message_mb, help="largest gRPC message, in MiB")
    p.add_argument(
        "--http-port",
        type=int,
        default=None if os.environ.get("MUNET_HTTP_PORT", "off") in ("", "off") else int(os.environ["MUNET_HTTP_PORT"]),
        help="also serve HTTP/REST (Open Inference Protocol, /munet/v1) on this port, same host, tokens "
        "and TLS; off when not given [env MUNET_HTTP_PORT, 'off': off]",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("MUNET_METRICS_PORT") or 0),
        help="Prometheus /metrics port, 0: off; it answers without a token and names every task: "
        "firewall it or bind it with --metrics-host [env MUNET_METRICS_PORT]",
    )
    p.add_argument(
        "--metrics-host",
        default=os.environ.get("MUNET_METRICS_HOST", ""),
        help="address the metrics port listens on (e.g. 127.0.0.1 beside a public --host); empty: --host "
        "[env MUNET_METRICS_HOST]",
    )
    p.add_argument("--max-batch", type=int, default=D.max_batch, help="Predict: images per forward pass")
    p.add_argument(
        "--batch-wait-ms", type=float, default=D.batch_wait_ms,
        help="Predict: how long a batch waits for callers of the same task still decoding (a lone caller never waits)",
    )
    p.add_argument(
        "--predict-threads", type=int, default=D.predict_threads, help="CPU threads for large Predict batches (0: all)"
    )
    p.add_argument(
        "--max-resident-mb", type=float, default=D.max_resident_mb,
        help="tasks' own layers kept in memory (least recently used go back to disk); 0: all",
    )
    p.add_argument(
        "--training-yield-ms", type=float, default=D.training_yield_ms,
        help="a search on this server pauses up to this long per training step while Predict runs, and on a CPU trains on one thread while Predict traffic is recent; 0: neither",
    )
    p.add_argument(
        "--max-queued-images", type=int, default=D.max_queued_images, help="Predict images waiting; more: RESOURCE_EXHAUSTED"
    )
    p.add_argument(
        "--max-long-calls",
        type=int,
        default=D.max_long_calls,
        help="uploads, restores, snapshots, waits and watches at once (below the 16 RPC threads)",
    )
    p.add_argument(
        "--upload-idle-seconds", type=float, default=UploadLimits.idle_seconds, help="end an upload or restore that sends nothing"
    )
    p.add_argument(
        "--max-pending-operations", type=int, default=D.max_pending_operations, help="queued AddTasks; more get RESOURCE_EXHAUSTED"
    )


def _learning(p: argparse.ArgumentParser) -> None:
    """Resuming interrupted searches and improving tasks while idle."""
    p.add_argument("--no-resume", action="store_true", help="fail interrupted operations at start-up")
    p.add_argument(
        "--idle-improvement", action=argparse.BooleanOptionalAction,
        default=os.environ.get("MUNET_IDLE_IMPROVEMENT", "on").lower() not in ("0", "off", "false", "no"),
        help="while no operation runs and Predict is quiet, improve the tasks in rounds (ImproveTask, "
        "published only when better); a client's call comes first [env MUNET_IDLE_IMPROVEMENT]",
    )  # fmt: skip
    p.add_argument("--idle-round-seconds", type=float, default=D.idle_round_seconds, help="the budget of one idle round")
    p.add_argument(
        "--idle-quiet-seconds", type=float, default=D.idle_quiet_seconds,
        help="Predict quiet this long, and no operation queued or running, before an idle round starts",
    )  # fmt: skip


def _operations(p: argparse.ArgumentParser) -> None:
    """Snapshots, replicas, the executor and logging."""
    p.add_argument("--snapshot-root", type=Path, default=None, help="confine server-side snapshot dirs")
    p.add_argument(
        "--read-only", action="store_true", help="a replica: serve, and refuse AddTask, delete, restore, ..."
    )
    p.add_argument(
        "--follow",
        type=Path,
        default=None,
        help="serve the newest complete snapshot under DIR (a primary's Snapshot target) and switch to newer "
        "ones as they appear; implies --read-only",
    )
    p.add_argument("--follow-interval", type=float, default=D.follow_interval, help="seconds between looks for a newer snapshot")
    p.add_argument(
        "--executor", choices=("local", "ray"), default=D.executor, help="where a generation's candidates train"
    )
    p.add_argument("--ray-address", default="", help="ray://host:10001, or empty for a local Ray")
    p.add_argument(
        "--parallel-searches", type=int, default=D.parallel_searches,
        help="operations that search at once, idle rounds over different tasks included; 0: 1 with the local "
        "executor (a search fills the machine), 2 with Ray (the cluster trains the candidates)",
    )  # fmt: skip
    p.add_argument(
        "--ray-gpus-per-candidate", type=float, default=D.ray_gpus_per_candidate, help="GPUs a Ray candidate asks for (fractions share)"
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="json: one JSON object per line"
    )




def parse(argv: list[str] | None, env: dict[str, str]) -> argparse.Namespace:
    """The command line, after the settings of its --config file (so that flags win)."""
    p = parser()
    argv = sys.argv[1:] if argv is None else argv
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config", type=Path, default=None)
    known, _ = first.parse_known_args(argv)
    from_file = config_file.as_args(known.config, p, env) if known.config is not None else []
    return p.parse_args([*from_file, *argv])


def _token(flag: str, value: str, file: Path | None, env_value: str) -> str:
    """A token from its flag, its file (first line, trailing whitespace dropped) or its variable."""
    if file is None:
        return value or env_value
    if value:
        raise SystemExit(f"give --{flag} or --{flag}-file, not both")
    try:
        token = file.read_text().strip()
    except OSError as e:
        raise SystemExit(f"--{flag}-file {file}: {e.strerror or e}") from None
    if not token or "\n" in token:
        raise SystemExit(f"--{flag}-file {file} must hold the token on one line")
    return token


def from_args(args: argparse.Namespace, env: dict[str, str]) -> ServerConfig:
    try:
        kwargs = json.loads(args.root_kwargs)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--root-kwargs is not valid JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise SystemExit("--root-kwargs must be a JSON object")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("give both --tls-cert and --tls-key, or neither")
    root = RootConfig(
        model_name=args.root or RootConfig.model_name,
        model_kwargs=kwargs,
        weights=args.root_weights,
        image_size=args.image_size,
        min_image_size=args.min_image_size,
        max_image_size=args.max_image_size,
    )
    try:
        return _config(args, env, root)
    except ValueError as e:
        raise SystemExit(f"munet-server: {e}") from None


def _config(args: argparse.Namespace, env: dict[str, str], root: RootConfig) -> ServerConfig:
    return ServerConfig(
        store=args.store,
        host=args.host,
        port=args.port,
        root=root,
        root_explicit=args.root is not None,
        device=args.device,
        admin_token=_token(
            "admin-token", args.admin_token, args.admin_token_file, env.get("MUNET_ADMIN_TOKEN", "")
        ),
        predict_token=_token(
            "predict-token", args.predict_token, args.predict_token_file, env.get("MUNET_PREDICT_TOKEN", "")
        ),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        max_message_mb=args.max_message_mb,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        http_port=args.http_port,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        predict_threads=args.predict_threads,
        max_resident_mb=args.max_resident_mb,
        training_yield_ms=args.training_yield_ms,
        max_queued_images=args.max_queued_images,
        max_long_calls=args.max_long_calls,
        upload=UploadLimits(idle_seconds=args.upload_idle_seconds),
        max_pending_operations=args.max_pending_operations,
        resume_operations=not args.no_resume and not (args.read_only or args.follow),
        idle_improvement=args.idle_improvement and not (args.read_only or args.follow),
        idle_round_seconds=args.idle_round_seconds,
        idle_quiet_seconds=args.idle_quiet_seconds,
        snapshot_root=args.snapshot_root,
        read_only=args.read_only or args.follow is not None,
        follow=args.follow,
        follow_interval=args.follow_interval,
        executor=args.executor,
        ray_address=args.ray_address,
        parallel_searches=args.parallel_searches,
        ray_gpus_per_candidate=args.ray_gpus_per_candidate,
    )
