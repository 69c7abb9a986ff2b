"""The README is this test's input: every command it shows runs, as written, against a live server.

Fenced `bash` and `console` blocks are shell (a console block's commands are its `$ ` lines); `python`
blocks run with the venv's python. All of them run in order in one shell, so what a block exports the
next one sees, as in a reader's terminal. Two marks, an HTML comment on the line before the fence:
`<!-- norun -->` for a block not meant to run here (`make test` itself), `<!-- background -->` for a
block that keeps running (the server): it is started first and the rest wait for its /healthz.
The harness sets only the environment (a free port, a data folder in tmp, the repo on PYTHONPATH) and
runs in a scratch folder whose `.venv` is this checkout's.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from graft.local_server import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


@dataclass
class Block:
    lang: str
    code: str
    mark: str | None  # norun | background | None


def readme_blocks(text: str) -> list[Block]:
    blocks = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip().splitlines()
        mark = re.fullmatch(r"<!--\s*(\w+)\s*-->", before[-1].strip()) if before else None
        blocks.append(Block(m.group(1), m.group(2), mark.group(1) if mark else None))
    return blocks


def shell_of(block: Block) -> str:
    if block.lang == "python":
        return f"python - <<'GRAFT_README_PY'\n{block.code}GRAFT_README_PY\n"
    if block.lang == "console":
        return "".join(line[2:] + "\n" for line in block.code.splitlines() if line.startswith("$ "))
    return block.code


def test_readme_is_short_links_inside_the_repo_and_marks_few_blocks() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert not re.match(r"\w+://|/|\.\./", target), f"the README links outside the repository: {target}"
        assert (ROOT / target.split("#")[0]).exists(), f"the README links a missing file: {target}"
    blocks = readme_blocks(text)
    runnable = [b for b in blocks if b.lang in ("bash", "console", "python")]
    assert len(runnable) >= 4 and sum(b.mark == "norun" for b in runnable) <= 2
    assert {b.mark for b in blocks} <= {None, "norun", "background"}


@pytest.mark.slow
def test_every_command_in_the_readme_runs_as_written(tmp_path: Path) -> None:
    blocks = [b for b in readme_blocks(README.read_text())
              if b.lang in ("bash", "console", "python") and b.mark != "norun"]
    work = tmp_path / "reader"
    work.mkdir()
    (work / ".venv").symlink_to((ROOT / ".venv").resolve())
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}
    env.update(GRAFT_PORT=str(port), GRAFT_URL=f"http://127.0.0.1:{port}",
               GRAFT_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(ROOT), COLUMNS="120")
    background = [subprocess.Popen(["bash", "-euc", shell_of(b)], cwd=work, env=env, start_new_session=True,
                                   stdout=open(tmp_path / f"background-{i}.log", "wb"),  # noqa: SIM115
                                   stderr=subprocess.STDOUT)
                  for i, b in enumerate(blocks) if b.mark == "background"]
    assert background, "the README starts no server (a <!-- background --> block)"
    try:
        _wait_for(env["GRAFT_URL"], background, tmp_path)
        script = "set -euo pipefail\n" + "\n".join(shell_of(b) for b in blocks if b.mark is None)
        run = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                             timeout=900)
        assert run.returncode == 0, f"{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    finally:
        for proc in background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
    out = run.stdout
    assert "top-1 agreement with Lite1" in out and "best held-out metric: " in out
    assert (work / "outputs.npy").exists() and (work / "photo-f.pt2").exists()
    assert "photo" in out and "transplanted" in out  # the grid after the shell's own transplant


def _wait_for(url: str, procs: list[subprocess.Popen], tmp_path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            logs = "\n".join(p.read_text() for p in tmp_path.glob("background-*.log"))
            pytest.fail(f"the README's server exited:\n{logs[-3000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the README's server did not answer at {url} within {timeout:.0f} s")
