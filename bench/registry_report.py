"""The markdown report of `python -m bench.registry` (bench/results/registry.md) from its result dict."""

from __future__ import annotations

import statistics


def _ratio_rows(t: dict) -> list[str]:
    def row(label: str, api_mbps: float, s3_mbps: float, ratio: float) -> str:
        return f"| {label} | {api_mbps:.0f} MB/s | {s3_mbps:.0f} MB/s | {ratio:.2f}× |"

    mb = t["runs"][0]["bytes"] / 1e6

    def mbps(key: str) -> float:
        return mb / statistics.median(r[key] for r in t["runs"])

    return [
        row("upload, the client's default (sha256 declared: streamed to S3 while received)",
            t["api_upload_MBps"], t["s3_upload_MBps"], t["upload_ratio"]),
        row("upload without a declared digest (received, then put to S3)",
            mbps("api_upload_undeclared_s"), t["s3_upload_MBps"], t["upload_undeclared_ratio"]),
        row("download, GRAFT_S3_PRESIGN_DOWNLOADS (307 to a presigned URL, followed by the client)",
            t["api_download_MBps"], t["s3_download_MBps"], t["download_ratio"]),
        row("download proxied by the API (presigning off)",
            mbps("api_download_proxied_s"), t["s3_download_MBps"], t["download_proxied_ratio"]),
    ]


def _run_ratios(t: dict, key: str) -> str:
    ratios = sorted(r["s3_upload_s"] / r[key] for r in t["runs"])
    return f"{ratios[0]:.2f}–{ratios[-1]:.2f}× (" + ", ".join(f"{x:.2f}" for x in ratios) + ")"


def _budget_lines(t: dict) -> list[str]:
    """Where the declared upload's time went, and what a 0.8× upload would leave for relaying the bytes."""
    runs = t["runs"]
    if "s3_alone_2_cpu_s" not in runs[0]:  # results from before these were measured
        return []

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    direct_s = med("s3_upload_s")
    busy = (med("cpu_s_s3_upload_s3") + med("cpu_s_s3_upload_client")) / direct_s
    target_s = direct_s / 0.8
    # The S3 server's cheaper way to take the bytes (fewer parts at once cost it less, mostly system time).
    parts, other = sorted((2, 8), key=lambda n: med(f"s3_alone_{n}_cpu_s"))
    store_cpu = med(f"s3_alone_{parts}_cpu_s")
    needed = store_cpu + 2 * med("sha256_cpu_s") + med("probe_cpu_s")
    # The client hashes before its first byte leaves, so meanwhile one core works and the rest wait.
    budget = target_s * busy - med("sha256_cpu_s") * (busy - 1)
    ours = med("cpu_s_api_upload_api") + med("cpu_s_api_upload_client") - 2 * med("sha256_cpu_s")
    hops = sorted(r["relay_cpu_s"] for r in runs)
    return [
        "", "Where the declared upload's time went (median seconds; from the API's "
        "`graft_upload_phase_seconds`, the client's hash timed on its own):", "",
        "| whole upload | client hashes the file | API receives the body (parts go on to S3 meanwhile) "
        "| probe (after the last byte) | waiting for S3 after the probe |", "|---|---|---|---|---|",
        f"| {med('api_upload_s'):.2f} | {med('sha256_cpu_s'):.2f} | {med('phase_receive_s'):.2f} | "
        f"{med('phase_probe_s'):.2f} | {med('phase_store_s'):.2f} |", "",
        "What 0.8× would leave for relaying the bytes (median CPU seconds, each part measured on its own "
        f"in the same run). The direct upload keeps {busy:.2f} of the 2 cores busy; at that rate a "
        f"{target_s:.2f} s upload (0.8× of {direct_s:.2f} s) has {target_s * busy:.2f} CPU-s, less "
        f"{med('sha256_cpu_s') * (busy - 1):.2f} while the client hashes the file before sending it (one "
        f"core works, nothing else can start): {budget:.2f}. The work it "
        "needs besides relaying: the S3 server storing the file from a client that costs next to nothing "
        f"(presigned parts sent with sendfile, {parts} at a time: {store_cpu:.2f}; "
        f"{med(f's3_alone_{other}_cpu_s'):.2f} with {other}), two sha256 passes (the client "
        f"names the file, the API checks it) 2 × {med('sha256_cpu_s'):.2f}, one load-and-run probe "
        f"{med('probe_cpu_s'):.2f}: {needed:.2f} CPU-s. That leaves **{budget - needed:.2f} CPU-s** "
        "for relaying 256 MB from the client through the API to S3, with no core idle at any other moment. "
        f"Graft's relay took **{ours:.2f}** (the API process and the client, less their hashes). One hop "
        "with nothing but the kernel touching the bytes (sendfile over loopback into a file) took "
        f"{hops[0]:.2f}–{hops[-1]:.2f} CPU-s in these runs. On this machine the S3 server alone keeps most "
        "of the 2 cores busy, so every cycle spent relaying is taken from it.",
    ]


def report(result: dict) -> list[str]:
    """The markdown of a result (bench/results/registry.md)."""
    t, latency, before = result["throughput"], result["latency"], result.get("before") or {}
    cpu = t["cpu_s"]
    lines = [
        "# Registry benchmarks", "",
        f"Machine: {result['machine']}. Produced by `python -m bench.registry`; load average "
        f"{t['runs'][0]['load_average']:.1f}–{t['runs'][-1]['load_average']:.1f} during the transfers.", "",
        "## 256 MB artifact through the API vs boto3 straight to the same SeaweedFS S3 "
        f"(median of {len(t['runs'])})", "",
        f"Artifact: {t['artifact']}. API side: `graft serve` processes on PostgreSQL + SeaweedFS, driven "
        "by the Python client (`Client.upload_version`, whose time includes hashing the file; downloads "
        "through `Client.pull`'s transfer code). Direct: boto3 `upload_file` (16 MiB parts, 8 threads) and "
        "`get_object`.", "",
        "| | API | boto3 direct | ratio (goal ≥ 0.8) |", "|---|---|---|---|", *_ratio_rows(t), "",
        "Ratios of the medians, after one untimed upload each way. Run by run, the declared upload "
        f"was {_run_ratios(t, 'api_upload_s')} of the direct one taken right after it.", "",
        f"Peak RSS of the API process during the upload: {t['rss_above_idle_mb']:.0f} MB above idle "
        f"(goal < 150 MB; {t['rss_above_idle_undeclared_mb']:.0f} MB without a declared digest). The shape "
        "probe runs in a forkserver child, not counted as the API's.", "",
        "CPU seconds per upload (median), by process; the three share the machine's 2 cores, so the API's "
        "own work on the bytes (receive, hash, send on) adds to the time the S3 server needs anyway:", "",
        "| | S3 server | API process | client | total |", "|---|---|---|---|---|",
    ]
    for label, key in (("API, sha256 declared", "api_upload"), ("API, no digest", "api_upload_undeclared"),
                       ("boto3 direct", "s3_upload")):
        c = cpu[key]
        lines.append(f"| {label} | {c['s3']:.2f} | {c.get('api', 0):.2f} | {c['client']:.2f} | "
                     f"{sum(c.values()):.2f} |")
    lines += _budget_lines(t)
    if before.get("throughput"):
        b = before["throughput"]
        lines += ["", f"Before this change ({before['label']}): upload {b['upload_ratio']:.2f}× "
                  f"({b['api_upload_MBps']:.0f} vs {b['s3_upload_MBps']:.0f} MB/s), download "
                  f"{b['download_ratio']:.2f}× ({b['api_download_MBps']:.0f} vs "
                  f"{b['s3_download_MBps']:.0f} MB/s)."]
    lines += [
        "", f"## Read latency, {latency['modules']} modules × 10 versions in PostgreSQL, "
        "in-process TestClient",
        f"(load average {latency['load_average']:.1f} before, {latency['load_average_after']:.1f} after, "
        "on 2 shared cores)", "",
    ]
    old = before.get("latency") or {}
    head = "| request | p50 ms | p99 ms (goal < 20) | CPU ms / request |"
    if old:
        lines += [head + f" before ({before['label']}): p50 / p99 / CPU ms |", "|---|---|---|---|---|"]
    else:
        lines += [head, "|---|---|---|---|"]
    for label, v in latency.items():
        if isinstance(v, dict):
            cpu_ms = v.get("cpu_ms", float("nan"))
            row = f"| `{label}` | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {cpu_ms:.2f} |"
            if old and label in old:
                o = old[label]
                row += f" {o['p50_ms']:.2f} / {o['p99_ms']:.2f} / {o.get('cpu_ms', float('nan')):.2f} |"
            lines.append(row)
    lines += ["", "CPU ms / request: this process's CPU time (TestClient, app and database driver are all "
              "in-process; PostgreSQL's own is not counted) over the requests; other work on the shared "
              "machine moves it far less than the wall times."]
    lines += ["", "Read path: no-I/O dependencies run on the event loop (FastAPI runs each `def` dependency "
              "in a thread: one hop each), pooled connections are pinged only after 10 s idle instead of "
              "on every checkout, GET requests read in autocommit (no BEGIN/ROLLBACK round trips), a version "
              "with its module and aliases is one query, a module page is selected as columns, and "
              "responses are serialised once. Rerun: "
              "`python -m bench.registry --latency-only`."]
    return lines
