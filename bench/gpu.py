"""The GPU check: `make gpu-check` on the lent GPU machine; `make gpu-check-dry` here (CPU, tiny sizes).

    python -m bench.gpu --device cuda            # ≈ 6 min on one H200; writes bench/results/gpu.md
    python -m bench.gpu --device cpu --size tiny --out /tmp/gpu.md   # the dry run CI runs

It needs only what that machine has (Python 3.12 with its own torch and CUDA) plus the pure-Python
packages carried to it as wheels (`make gpu-wheels` here): no PostgreSQL, Redis, S3 or network. Each
section runs on its own and reports its error instead of ending the check:

1. parity: `pytest -m gpu tests/gpu` with the device forced (engine, search, amalgamation, composition,
   export against the CPU, tolerances stated in the tests);
2. service: the demo (`graft demo --size tiny`) on the embedded defaults, its jobs run by the in-process
   runner on the device; the comparison table and the device each job trained on;
3. cost: one back-distillation step ÷ one distillation step and their memory, on the toy world and on
   the real pretrained pair (EfficientNet-Lite1 → Lite0) at batch sizes the GPU likes, steps/s for both;
4. serving: the bare forward's batching gain, batched ÷ unbatched server throughput with 32 clients, and
   the real network's predict latency over HTTP against its bare forward.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
SIZES = {
    # toy batch, real batch and side, requests per serving run, reps per cost row
    "tiny": {"toy_batch": 16, "real_batch": 4, "real_side": 64, "seconds": 1.0, "reps": 2, "clients": 4},
    "full": {
        "toy_batch": 256,
        "real_batch": 64,
        "real_side": 224,
        "seconds": 10.0,
        "reps": 20,
        "clients": 32,
    },
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def section_parity(device: torch.device) -> str:
    """pytest -m gpu tests/gpu with GRAFT_TEST_DEVICE set; its summary and failures."""
    env = {**os.environ, "GRAFT_TEST_DEVICE": device.type, "PYTHONPATH": _pythonpath()}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "gpu",
        "tests/gpu",
        "--confcutdir=tests/gpu",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "--tb=short",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    tail = "\n".join(lines[-40:])
    verdict = "passed" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
    return (
        f"`{' '.join(cmd[2:])}` with GRAFT_TEST_DEVICE={device.type}: **{verdict}** in "
        f"{time.perf_counter() - t0:.0f} s.\n\n```\n{tail}\n```\n"
    )


def _pythonpath() -> str:
    parts = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(parts)


def section_service(device: torch.device) -> str:
    """The demo on the embedded defaults; its jobs train where the worker picks (cuda when present)."""
    from rich.console import Console

    from graft.client import Client
    from graft.demo import run_demo
    from graft.local_server import LocalServer

    out = io.StringIO()
    console = Console(file=out, width=130, force_terminal=False, color_system=None)
    data_dir = Path(tempfile.mkdtemp(prefix="graft-gpu-demo-"))
    os.environ["PYTHONPATH"] = _pythonpath()
    t0 = time.perf_counter()
    code = run_demo(size="tiny", data_dir=data_dir, console=console)
    wall = time.perf_counter() - t0
    devices = []
    token = (data_dir / "demo-token").read_text().strip()
    server = LocalServer(data_dir, token=token).start()
    try:
        with Client(server.url, token) as c:
            for job in c.jobs(limit=100):
                metrics = (job.get("result") or {}).get("metrics") or {}
                devices.append(
                    f"{job['id'][:8]} {job['request'].get('method')}: {job['status']} on "
                    f"{metrics.get('device', '?')}, {metrics.get('steps', '?')} steps, "
                    f"{metrics.get('wall_s', 0):.1f} s"
                )
    finally:
        server.stop()
    text = "\n".join(line.rstrip() for line in out.getvalue().splitlines())
    return (
        f"`graft demo --size tiny` exited {code} in {wall:.0f} s (torch sees "
        f"{'cuda: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}).\n\n"
        f"Jobs (device each trained on):\n\n```\n" + "\n".join(devices) + f"\n```\n\n```\n{text}\n```\n"
    )


def section_cost(device: torch.device, size: dict) -> str:
    """Back-distillation ÷ distillation step on the toy world and on the real pair."""
    from bench.science import step_cost, world_step_cost
    from transplant.world import build_world

    rows = [
        world_step_cost(
            build_world(0, "small", "shapes"),
            reps=size["reps"],
            batch_size=size["toy_batch"],
            device=str(device),
        )
    ]
    real = _real_pair(size["real_side"])
    if real is not None:
        f, g_t, g_s, note = real
        x = torch.randn(size["real_batch"], 3, size["real_side"], size["real_side"])
        rows.append(
            step_cost(
                f,
                g_t,
                g_s,
                x,
                reps=size["reps"],
                device=str(device),
                cell=f"EfficientNet-Lite1 → Lite0 at {size['real_side']}² ({note})",
            )
        )
    head = (
        "| cell | batch | dist ms | bd ms | bd ÷ dist | through g_S ÷ dist | dist steps/s | bd steps/s "
        "| memory bd ÷ dist |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['cell']} | {r['batch_size']} | {r['dist_step_ms']} | {r['bd_step_ms']} | "
        f"{r['time_ratio']:.2f} | "
        f"{r['time_ratio_through_g_s']:.2f} | {r['dist_steps_per_s']:.1f} | {r['bd_steps_per_s']:.1f} | "
        f"{r['memory_ratio']:.2f} |\n"
        for r in rows
    )
    return head + body + f"\nMemory: {rows[0]['memory_measure']}.\n"


def _real_pair(side: int):
    """(f, g_T, g_S, note): Lite1's lower half, its upper half and Lite0's upper half, cut at 112 channels."""
    try:
        from transplant.realworld import CUTS, load_lite, split_lite
    except ImportError:
        return None
    k0, k1 = CUTS[112]
    try:
        nets, note = {n: load_lite(n) for n in ("lite0", "lite1")}, "ImageNet weights"
    except (ImportError, StopIteration):
        from efficientnet_lite_pytorch import EfficientNet

        nets = {n: EfficientNet.from_name(f"efficientnet-{n}").eval() for n in ("lite0", "lite1")}
        note = "random weights: the weight packages were not carried; the cost does not depend on them"
    f, g_t = split_lite(nets["lite1"], k1)
    _, g_s = split_lite(nets["lite0"], k0)
    return f, g_t, g_s, note


def _inputs_per_s(fn, x: torch.Tensor, device: torch.device, seconds: float) -> float:
    with torch.inference_mode():
        fn(x)
        _sync(device)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn(x)
            n += x.shape[0]
        _sync(device)
        return n / (time.perf_counter() - t0)


def section_serving(device: torch.device, size: dict) -> str:
    """Bare-forward batching gain, server throughput batched ÷ unbatched, real-network predict latency."""
    from graft.client import Client
    from graft.local_server import LocalServer
    from transplant.compose import compose
    from transplant.world import build_world

    world = build_world(0, "small", "shapes")
    cat = world.new_categories[0]
    f, g = world.teachers[cat]["cls"]
    net = compose(f, None, g).to(device)
    x1 = world.data[cat].test.x[:1].to(device)
    x32 = world.data[cat].test.x[:32].to(device)
    bare1 = _inputs_per_s(net, x1, device, size["seconds"] / 2)
    bare32 = _inputs_per_s(net, x32, device, size["seconds"] / 2)
    lines = [
        f"Bare forward of the toy composition on {device}: {bare1:.0f} inputs/s at batch 1, {bare32:.0f} "
        f"at batch 32: batching gain **{bare32 / bare1:.2f}×**.",
        "",
    ]
    rates = {}
    for label, max_batch in (("batched", 64), ("unbatched", 1)):
        env = {
            "GRAFT_PREDICT_MAX_BATCH": str(max_batch),
            "GRAFT_SERVING_DEVICE": device.type,
            "PYTHONPATH": _pythonpath(),
        }
        data_dir = Path(tempfile.mkdtemp(prefix="graft-gpu-serve-"))
        server = LocalServer(data_dir, env=env).start()
        try:
            with Client(server.url, server.token) as c:
                pushed = c.push_teacher(
                    torch.nn.Sequential(f, g),
                    "0",
                    world.data[cat].test.x[:2],
                    category=cat,
                    task="cls",
                    name_prefix=cat,
                )
                comp = c.compose(
                    category_module=_ref(pushed["category_module"]),
                    task_module=_ref(pushed["teacher_task_module"]),
                )
                rates[label], served_on = _load(
                    server.url, server.token, comp["id"], world.data[cat].test.x[:1].numpy(), size
                )
        finally:
            server.stop()
        lines.append(
            f"- server, {label} (GRAFT_PREDICT_MAX_BATCH={max_batch}), {size['clients']} clients: "
            f"{rates[label]:.0f} requests/s; forwards on {served_on}"
        )
    lines += [
        "",
        f"Batched ÷ unbatched server throughput: **{rates['batched'] / rates['unbatched']:.2f}×** "
        "(goal ≥ 5× on a GPU).",
        "",
    ]
    lines.append(_real_latency(device, size))
    return "\n".join(lines) + "\n"


def _ref(version: dict) -> str:
    return f"{version['name']}@{version['version']}"


def _load(url: str, token: str, comp_id: str, x: np.ndarray, size: dict) -> tuple[float, str]:
    """Requests/s of `clients` threads sending one-input .npy predicts for `seconds`; the serving device."""
    import httpx

    buf = io.BytesIO()
    np.save(buf, x.astype(np.float32))
    body = buf.getvalue()
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/x-npy",
        "Accept": "application/x-npy",
    }
    done, stop = [0] * size["clients"], threading.Event()

    def client(i: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            while not stop.is_set():
                http.post(f"/v1/compositions/{comp_id}/predict", content=body).raise_for_status()
                done[i] += 1

    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        http.post(f"/v1/compositions/{comp_id}/predict", content=body).raise_for_status()  # load it
        stats = http.get("/v1/serving").json()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(size["clients"])]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(size["seconds"])
    stop.set()
    for t in threads:
        t.join(30)
    return sum(done) / (time.perf_counter() - t0), str(stats.get("device", "cpu (the server reports none)"))


def _real_latency(device: torch.device, size: dict) -> str:
    """Median predict latency of whole EfficientNet-Lite0 over HTTP vs its bare forward (one image)."""
    import httpx

    from graft.client import Client
    from graft.local_server import LocalServer
    from transplant.realworld import CUTS, split_lite

    real = _real_pair(size["real_side"])
    if real is None:
        return "Real network: transplant.realworld is not importable here."
    note = real[3]
    try:
        from transplant.realworld import load_lite

        lite0 = load_lite("lite0")
    except (ImportError, StopIteration):
        from efficientnet_lite_pytorch import EfficientNet

        lite0 = EfficientNet.from_name("efficientnet-lite0").eval()
    side = size["real_side"]
    x = torch.randn(1, 3, side, side)
    f0, g0 = split_lite(lite0, CUTS[112][0])
    bare = torch.nn.Sequential(f0, g0).to(device).eval()
    xd = x.to(device)
    with torch.inference_mode():
        for _ in range(5):
            bare(xd)
        times = []
        for _ in range(30):
            _sync(device)
            t0 = time.perf_counter()
            bare(xd)
            _sync(device)
            times.append(time.perf_counter() - t0)
    bare_ms = statistics.median(times) * 1e3
    env = {"GRAFT_SERVING_DEVICE": device.type, "PYTHONPATH": _pythonpath()}
    server = LocalServer(Path(tempfile.mkdtemp(prefix="graft-gpu-real-")), env=env).start()
    try:
        with Client(server.url, server.token) as c:
            pushed = c.push_teacher(
                torch.nn.Sequential(f0, g0),
                "0",
                torch.randn(2, 3, side, side),
                category="imagenet",
                task="cls",
                name_prefix="lite0",
            )
            comp = c.compose(
                category_module=_ref(pushed["category_module"]),
                task_module=_ref(pushed["teacher_task_module"]),
            )
        buf = io.BytesIO()
        np.save(buf, x.numpy())
        headers = {
            "Authorization": f"Bearer {server.token}",
            "Content-Type": "application/x-npy",
            "Accept": "application/x-npy",
        }
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
            path = f"/v1/compositions/{comp['id']}/predict"
            for _ in range(5):
                http.post(path, content=buf.getvalue()).raise_for_status()
            lat = []
            for _ in range(30):
                t0 = time.perf_counter()
                http.post(path, content=buf.getvalue()).raise_for_status()
                lat.append(time.perf_counter() - t0)
    finally:
        server.stop()
    api_ms = statistics.median(lat) * 1e3
    return (
        f"Real network (EfficientNet-Lite0, {note}), one {side}×{side} image: bare forward on {device} "
        f"{bare_ms:.2f} ms, predict over HTTP {api_ms:.2f} ms (median of 30): "
        f"overhead {api_ms - bare_ms:.2f} ms "
        f"= {(api_ms - bare_ms) / bare_ms:.0%} of the forward."
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (the GPU machine) or cpu (the dry run)")
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu.md")
    p.add_argument("--only", nargs="*", default=None, help="sections to run (parity service cost serving)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    size = SIZES[args.size]
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    t_all = time.perf_counter()
    env = (
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        + (
            f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}"
            if torch.cuda.is_available()
            else "no CUDA device"
        )
        + f", {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads"
    )
    sections = [
        ("1. Parity with the CPU", "parity", lambda: section_parity(device)),
        ("2. A transplant job through the service", "service", lambda: section_service(device)),
        ("3. Cost of a back-distillation step", "cost", lambda: section_cost(device, size)),
        ("4. Serving", "serving", lambda: section_serving(device, size)),
    ]
    parts, failed = [], []
    for title, key, run in sections:
        if args.only is not None and key not in args.only:
            continue
        t0 = time.perf_counter()
        print(f"== {title}", flush=True)
        try:
            body = run()
        except Exception:  # noqa: BLE001 - one section's failure is reported, the others still run
            failed.append(key)
            body = f"**FAILED**\n\n```\n{traceback.format_exc()[-3000:]}\n```\n"
        print(body, flush=True)
        parts.append(f"## {title} ({time.perf_counter() - t0:.0f} s)\n\n{body}")
    report = (
        f"# GPU check (`python -m bench.gpu --device {args.device} --size {args.size}`)\n\n"
        f"{env}. Total {time.perf_counter() - t_all:.0f} s. "
        f"Sections failed: {', '.join(failed) or 'none'}.\n\n" + "\n".join(parts)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
