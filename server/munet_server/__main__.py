"""`munet-server`: run the gRPC service until SIGTERM/SIGINT, then shut down gracefully."""

from __future__ import annotations

import logging
import os
import signal
import threading

from munet_server import logs, preflight
from munet_server.allocator import keep_freed_memory
from munet_server.config import from_args, parse
from munet_server.errors import MunetError


def main(argv: list[str] | None = None) -> None:
    args = parse(argv, dict(os.environ))
    logs.configure(args.log_level, args.log_format)
    keep_freed_memory()  # before torch allocates: passes reuse their memory instead of page-faulting it in
    config = from_args(args, dict(os.environ))
    try:
        preflight.check(config)  # the common mistakes, before seconds of importing torch and timm
        from munet_server.app import MunetApp  # after logging is set up: importing torch/timm takes a moment

        app = MunetApp(config)
        port = app.start()
    except MunetError as e:
        raise SystemExit(f"munet-server: {e.code.name}: {e.message}") from None
    except OSError as e:  # a read-only or missing store directory, an unreadable TLS key, a busy metrics port
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        raise SystemExit(f"munet-server: {e.strerror or e}{where}") from None
    print(f"munet-server listening on {config.host}:{port}", flush=True)
    for line in app.listening()[1:]:
        print(f"munet-server listening on {line}", flush=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logging.getLogger("munet").info("signal %d: shutting down gracefully", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(1.0):  # a timed wait keeps the main thread responsive to signals
        pass
    if not app.stop():
        # A search thread is still inside torch: letting the interpreter tear down under it aborts
        # the process (exit 134). Everything committed is on disk and the search resumes on restart.
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":
    main()
