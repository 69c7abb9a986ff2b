"""The probe's forkserver preload warms torch.export's deserializer, so each probe child starts warm."""

from __future__ import annotations

import sys

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

