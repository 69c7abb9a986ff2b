"""Load and probe an uploaded artifact in a child process: time- and memory-limited, its memory not ours.

A torch op cannot be interrupted inside a thread, so the only honest time limit is a process that can
be killed. The memory limit is the child's address space (RLIMIT_AS, set before it loads anything):
a module whose weights or forward pass want more fails its allocation inside the child, which reports
it, and the API process never sees the allocation. Children fork from a forkserver that has already
imported torch and loaded one tiny torch_export program (the first `torch.export.load` of a process
pulls in ~2-5 s of lazy imports), so each probe starts in milliseconds; the API process never holds
the artifact's weights. The server starts the forkserver as it starts (`start_forkserver`), so the first
upload after a restart is not the one that waits for torch's imports.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from pathlib import Path

_PRELOAD = ["torch", "transplant.artifacts", "app.modules.probe"]
_lock = threading.Lock()
_context = None


class ProbeFailed(Exception):
    """The artifact did not load or run; `pickled` marks a refused pickle (415)."""

    def __init__(self, message: str, *, pickled: bool = False, timed_out: bool = False) -> None:
        super().__init__(message)
        self.pickled = pickled
        self.timed_out = timed_out


def _warm_up() -> None:
    """Export, save and load a tiny module once, so children inherit torch.export's imports warm."""
    import tempfile

    import torch

    from transplant import artifacts

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="graft-warm-") as tmp:
        path = Path(tmp) / "warm.pt2"
        path.write_bytes(artifacts.save_module(torch.nn.Linear(2, 2), torch.zeros(1, 2), "torch_export"))
        artifacts.probe_output_shape(artifacts.load_module(path, "torch_export"), [1, 2])


def _imported_by_forkserver() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "main" and code.co_filename.endswith("forkserver.py"):
            return True
        frame = frame.f_back
    return False


def _ctx():
    global _context
    with _lock:
        if _context is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(_PRELOAD)
            _context = ctx
    return _context


def start_forkserver() -> None:
    """Start the forkserver now (it warms up on its own), so the first upload does not wait seconds for it.

    Returns at once: the server process imports torch and runs `_warm_up` in the background, and the
    first probe's fork waits only for what is left of that.
    """
    from multiprocessing import forkserver

    _ctx()
    forkserver.ensure_running()


def _limit_memory(extra_bytes: int) -> None:
    """Cap this process's address space at what it maps now (torch, warm imports) plus `extra_bytes`."""
    import resource

    try:
        mapped = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # no /proc (not Linux): the time limit still holds, the memory limit cannot
        return
    limit = mapped + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _child(conn, path: str, format: str, arch: dict | None, input_shape: list,  # noqa: ANN001
           max_memory_bytes: int | None) -> None:
    import torch

    from transplant import artifacts

    torch.set_num_threads(1)
    try:
        if max_memory_bytes:
            _limit_memory(max_memory_bytes)
        module = artifacts.load_module(Path(path), format, arch)
        conn.send(("ok", artifacts.probe_output_shape(module, input_shape)))
    except artifacts.PickledArtifact as exc:
        conn.send(("pickled", str(exc)))
    except (artifacts.OutOfMemory, MemoryError) as exc:
        conn.send(("memory", str(exc)))
    except artifacts.ArtifactError as exc:
        conn.send(("error", str(exc)))
    except BaseException as exc:  # noqa: BLE001 - anything else is still the artifact's fault
        conn.send(("error", f"{type(exc).__name__}: {exc}"[:500]))
    finally:
        conn.close()


def probe_artifact(
    path: Path, format: str, arch: dict | None, input_shape: list, *, timeout_s: float,
    max_memory_bytes: int | None = None,
) -> list[int | None]:
    """Output shape of the artifact run once on zeros of `input_shape`; ProbeFailed otherwise.

    `max_memory_bytes`: memory the child may take beyond what it maps at start (None: no limit).
    """
    ctx = _ctx()
    parent, child = ctx.Pipe(duplex=False)
    args = (child, str(path), format, arch, list(input_shape), max_memory_bytes)
    proc = ctx.Process(target=_child, args=args, daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout_s):
            raise ProbeFailed(
                f"loading and running the module on input_shape took longer than {timeout_s:g} s",
                timed_out=True,
            )
        try:
            status, value = parent.recv()
        except EOFError:
            raise ProbeFailed("the module crashed the loader (out of memory or a native error)") from None
    finally:
        parent.close()
        if proc.is_alive():
            proc.kill()
        proc.join(5)
    if status == "ok":
        return value
    if status == "memory":
        limit = (f"the probe's memory limit of {max_memory_bytes / 2**20:.0f} MiB "
                 "(GRAFT_PROBE_MAX_MEMORY_BYTES)" if max_memory_bytes else "the memory available")
        raise ProbeFailed(f"{value or 'the module ran out of memory'}: it needs more than {limit}")
    raise ProbeFailed(value, pickled=status == "pickled")


# Imported as a forkserver preload: warm up there (and only there; the API process never pays for it).
if _imported_by_forkserver():
    try:
        _warm_up()
    except Exception:  # noqa: BLE001 - a failed warm-up only costs the first probe its speed
        pass
