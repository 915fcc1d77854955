"""`munet-server --config FILE`: every flag as a TOML setting, named as the flag without its dashes
(`http-port = 8000`, `http_port` too). A flag on the command line, or its environment variable, wins
over the file; the file wins over the defaults. An unknown or mistyped setting stops the start with
its name, before anything is opened."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# The settings an environment variable also sets: the variable, when present, wins over the file.
ENVIRONMENT = {
    "store": "MUNET_STORE", "host": "MUNET_HOST", "port": "MUNET_PORT", "http_port": "MUNET_HTTP_PORT",
    "metrics_port": "MUNET_METRICS_PORT", "metrics_host": "MUNET_METRICS_HOST", "tls_cert": "MUNET_TLS_CERT",
    "tls_key": "MUNET_TLS_KEY", "admin_token": "MUNET_ADMIN_TOKEN", "predict_token": "MUNET_PREDICT_TOKEN",
    "idle_improvement": "MUNET_IDLE_IMPROVEMENT",
}  # fmt: skip
NOT_SETTINGS = {"help", "version", "config"}


def as_args(path: Path, parser: argparse.ArgumentParser, env: dict[str, str]) -> list[str]:
    """The file's settings as command-line arguments, to be parsed before the real ones."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise SystemExit(f"--config {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SystemExit(f"--config {path}: not valid TOML: {e}") from None
    flags = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in NOT_SETTINGS}
    out: list[str] = []
    for key, value in data.items():
        dest = key.replace("-", "_")
        action = flags.get(dest)
        if action is None:
            names = ", ".join(sorted(d.replace("_", "-") for d in flags))
            raise SystemExit(f"--config {path}: unknown setting {key!r}; the settings are the flags' names: {names}")
        if ENVIRONMENT.get(dest) in env:
            continue
        out += _arguments(path, key, action, value)
    return out


def _arguments(path: Path, key: str, action: argparse.Action, value: Any) -> list[str]:
    flag = next(s for s in action.option_strings if s.startswith("--"))
    if isinstance(action, argparse.BooleanOptionalAction) or action.nargs == 0:
        if not isinstance(value, bool):
            raise SystemExit(f"--config {path}: {key} is true or false, not {value!r}")
        if isinstance(action, argparse.BooleanOptionalAction):
            return [flag if value else "--no-" + flag[2:]]
        return [flag] if value else []
    if isinstance(value, dict):  # a table: JSON, as the flag takes it (root-kwargs)
        value = json.dumps(value)
    if isinstance(value, (bool, list)):
        raise SystemExit(f"--config {path}: {key} takes one value, not {value!r}")
    return [flag, str(value)]
