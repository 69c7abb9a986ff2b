"""CI runs the GPU check's dry run (`make gpu-check-dry`): on the CPU at tiny sizes, every section must
finish, so that a run on the lent GPU machine can fail only for GPU reasons."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu.md"
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--device", "cpu", "--size", "tiny",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    report = out.read_text()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Sections failed: none" in report
    for section in ("1. Parity with the CPU", "2. A transplant job through the service",
                    "3. Cost of a back-distillation step", "4. Serving"):
        assert f"## {section}" in report
    assert "**passed**" in report  # the parity tests ran and passed
    assert "back_distillation: succeeded" in report  # the service's job trained and registered
    assert "EfficientNet-Lite1 → Lite0" in report  # the real pair's cost row
    assert "Batched ÷ unbatched server throughput" in report and "Real network (EfficientNet-Lite0" in report
