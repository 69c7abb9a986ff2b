#!/opt/venv/bin/python
"""Container health check for both commands of the Graft image (HEALTHCHECK and compose).

`graft serve` (the default): GET http://127.0.0.1:$GRAFT_HEALTH_PORT/healthz (default 8000).
`graft worker`: a Celery ping answered by this container's own node (any node name ending in
`@<hostname>`), so a scaled-out worker is judged by itself, not by its siblings.
Exit 0 healthy, 1 not.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request


def _command() -> list[str]:
    try:
        with open("/proc/1/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def check_api() -> bool:
    port = os.environ.get("GRAFT_HEALTH_PORT", "8000")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        return resp.status == 200


def check_worker() -> bool:
    from celery import Celery
    from celery.app.utils import find_app

    app = find_app("workers.celery_app")
    assert isinstance(app, Celery)
    host = socket.gethostname()
    replies = app.control.ping(timeout=5.0) or []
    return any(name.endswith(f"@{host}") for reply in replies for name in reply)


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else ("worker" if "worker" in _command() else "api")
    try:
        ok = check_worker() if mode == "worker" else check_api()
    except Exception as exc:  # any failure to answer is "unhealthy", with the reason in the log
        print(f"unhealthy ({mode}): {exc!r}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
