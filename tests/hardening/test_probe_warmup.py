"""The probe's forkserver preload warms torch.export's deserializer, so each probe child starts warm."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from app.modules import probe

# Imported by the first torch.export.load of a process (~2 s of lazy imports on these machines).
DESERIALIZER = ("torch._export.serde.serialize", "torch.export.pt2_archive._package", "torch._dynamo")


def _report_modules(conn) -> None:  # noqa: ANN001 - a multiprocessing connection
    conn.send({name: name in sys.modules for name in DESERIALIZER})
    conn.close()


def test_probe_children_start_with_the_export_deserializer_imported() -> None:
    ctx = probe._ctx()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_report_modules, args=(child,), daemon=True)
    proc.start()
    child.close()
    assert parent.poll(120), "the probe child did not answer"
    assert parent.recv() == dict.fromkeys(DESERIALIZER, True)
    proc.join(5)


_STARTS_APP = """
import os, sys
from pathlib import Path
from fastapi.testclient import TestClient
from app.config import Settings
from app.main import create_app
from support.services import process_tree

def forkservers():
    return [pid for pid in process_tree(os.getpid())[1:]
            if b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()]

if __name__ == "__main__":
    before = forkservers()
    with TestClient(create_app(Settings(data_dir=Path(sys.argv[1])))):
        print(len(before), len(forkservers()))
"""


def test_the_server_starts_the_forkserver_before_the_first_upload(tmp_path) -> None:
    """Started with the app, not by the first probe: that upload would wait seconds for torch's imports."""
    out = subprocess.run([sys.executable, "-c", _STARTS_APP, str(tmp_path / "graft")], capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0", "1"]
