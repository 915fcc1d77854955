"""`munet` in a real terminal: the CLI runs in a pseudo-terminal (so tqdm and rich draw as they do
for a person) and pyte, a terminal emulator, renders what the screen finally shows."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time

import pyte
import pytest

from tests.helpers import ServerProcess, image_folder, make_app

COLS, ROWS = 200, 60


def run_in_terminal(*args: str, timeout: float = 300) -> tuple[list[str], int]:
    """Run `munet ARGS` on a pty of COLS x ROWS; the rendered screen's non-empty lines and the exit code."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(COLS), "LINES": str(ROWS)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "munet_client.cli", *args], stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    screen = pyte.Screen(COLS, ROWS)
    stream = pyte.ByteStream(screen)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            stream.feed(chunk)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return [line.rstrip() for line in screen.display if line.strip()], proc.returncode


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_vit):
    tmp = tmp_path_factory.mktemp("terminal")
    app = make_app(tmp / "store", tiny_vit)
    folder, _ = image_folder(tmp, classes=3, per_class=10)
    yield f"127.0.0.1:{app.port}", folder, tmp
    app.stop(0)


def test_add_task_draws_its_progress_and_ends_with_the_result(served):
    target, folder, _ = served
    lines, code = run_in_terminal("--target", target, "add-task", "digits", str(folder), "--generations", "0")
    screen = "\n".join(lines)
    assert code == 0, screen
    assert lines[0].startswith("uploading 30 images in 3 classes")
    assert any(line.startswith("upload: 100%") for line in lines), screen  # the upload bar, complete
    assert any(line.startswith("learn:") for line in lines), screen  # the search's bar against its clock
    assert "validation accuracy" in screen and "digits" in screen
    # Every line is whole: no bar was drawn over another line's text.
    assert not any("upload:" in line and not line.startswith("upload:") for line in lines), screen


def test_a_failed_upload_leaves_a_readable_error_and_no_finished_bar(served):
    target, folder, tmp = served
    bad = tmp / "bad"
    shutil.copytree(folder, bad)
    broken = bad / sorted(p.name for p in folder.iterdir())[2] / "zz-broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lines, code = run_in_terminal("--target", target, "add-task", "broken", str(bad))
    screen = "\n".join(lines)
    assert code == 1, screen
    assert not any("100%" in line for line in lines), screen
    (error,) = [line for line in lines if line.startswith("error INVALID_ARGUMENT")]
    assert "zz-broken.png (example 30)" in error, screen


def test_usage_errors_exit_2_with_one_line(served):
    target, _, _ = served
    lines, code = run_in_terminal("--target", "localhost:99999", "tasks")
    assert code == 2 and len(lines) == 1 and "'99999'" in lines[0]
    lines, code = run_in_terminal("tasks", "--json", "--target", target)
    assert code == 0 and lines[-1] == "]"  # the JSON list ends the screen (its start scrolled off)


def test_a_server_lost_while_following_names_the_operation_to_wait_for(tmp_path, tiny_vit_weights):
    """kill -9 of the server while `munet add-task` follows the search: the screen ends with the
    operation id and how to pick it up, not a traceback (the operation resumes on restart)."""
    store = tmp_path / "store"
    server = ServerProcess(store, tiny_vit_weights)
    folder, _ = image_folder(tmp_path, classes=3, per_class=10)
    killer = threading.Thread(target=_kill_when_learning, args=(server,), daemon=True)
    killer.start()
    lines, code = run_in_terminal("--target", f"127.0.0.1:{server.port}", "add-task", "digits", str(folder),
                                  "--seconds", "120")  # fmt: skip
    killer.join(60)
    server.wait_dead()
    screen = "\n".join(lines)
    assert code == 1, screen
    (error,) = [line for line in lines if line.startswith("error UNAVAILABLE")]
    assert "lost the server while following operation" in error and "munet wait" in error, screen
    assert "Traceback" not in screen


def _kill_when_learning(server: ServerProcess) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            ops = server.client.operations()
        except Exception:
            ops = []
        if any(o.state == "RUNNING" for o in ops):
            time.sleep(1.0)  # the CLI is following it by now
            server.proc.send_signal(signal.SIGKILL)
            return
        time.sleep(0.2)
