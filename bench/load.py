"""A bounded load run on loopback: mixed clients against the whole stack, then check that nothing was lost.

    python -m bench.load [--duration 180] [--uploaders 2] [--readers 3] [--predictors 2] [--jobs 1]

The stack is the production shape, started the way the tests start it: SeaweedFS S3, a fresh
PostgreSQL database, a Redis database of our own, one uvicorn process (`graft.local_server`) and real
`graft worker` processes. Concurrent clients (threads, one httpx connection each) mix for `duration`:

- uploaders: new torch_export bytes each time (small convs, weights nudged in place so
  no export is paid per upload), and ~20 % re-sends of bytes already accepted (must answer 200 with
  the same version: idempotency under load);
- readers: listings, filters, module and version gets, artifact downloads (sha256 checked), job gets,
  the grid, cell compositions;
- predictors: JSON and .npy predicts on a composition f → transplanted h → g;
- job submitters: tiny CPU-light transplants (1 epoch, 16 samples), paced so the workers keep up;
- one client sends deliberately bad requests (pickle upload, unknown names, wrong shapes, no token):
  their expected 4xx are counted apart. Any other 4xx, any 5xx or a transport error is an error.

Afterwards: the queue is drained (bounded), every accepted upload is downloaded and its sha256
compared, every accepted job must be final; jobs run twice and adapter versions per job are counted.
Results: bench/results/load.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
from pathlib import Path

from support.load import DEFAULT_THINK, TOKEN, run_load
from support.services import claim_redis_db, create_db, drop_db, s3_settings, start_seaweedfs, stop_seaweedfs

RESULTS = Path(__file__).parent / "results"

def _markdown(r: dict, args: argparse.Namespace) -> str:
    ck = r["checks"]
    lines = [
        "# Bounded load run on loopback",
        "",
        f"`python -m bench.load --duration {args.duration:g}`; machine: {r['machine']}. One uvicorn process "
        f"(PostgreSQL, SeaweedFS S3, Redis) and {r['workers']} `graft worker` processes; clients are threads "
        "of the same machine (everything shares the 2 cores).",
        f"Clients: {r['clients']}, pauses between requests (s): {r['think_s']}.",
        f"Load average: {r['load_average_before']:.1f} before, {r['load_average_during_mean']:.1f} mean / "
        f"{r['load_average_during_max']:.1f} max during, {r['load_average_after']:.1f} after.",
        "",
        f"- requests: **{r['requests']}** in {r['seconds']:.0f} s ({r['requests'] / r['seconds']:.1f}/s)",
        f"- errors (5xx, unexpected status, transport error): **{r['errors']}** "
        f"(error rate {r['error_rate']:.4%})",
        f"- nothing lost: **{r['lost'] == 0}** ({r['lost']} lost or wrong, itemised below)",
        "",
        "| route | requests | p50 ms | p99 ms | errors | statuses |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {k} | {v['requests']} | {v['p50_ms']:.1f} | {v['p99_ms']:.1f} | {v['errors']} "
              f"| {v['statuses']} |" for k, v in r["routes"].items()]
    lines += ["", "Deliberately bad requests answered as expected (not errors): "
              + (", ".join(f"{k} × {n}" for k, n in sorted(r["expected_4xx"].items())) or "none"), ""]
    lines += [
        "## Loss checks (after the run)",
        "",
        f"- uploads accepted (201): {ck['uploads_accepted']}; downloaded afterwards with a wrong sha256: "
        f"{ck['uploads_wrong_sha256']}; missing: {ck['uploads_missing']}; versions stored that no accepted "
        f"upload accounts for (idempotent repeats must add none): {ck['versions_not_accounted_for']}",
        f"- jobs accepted (202): {ck['jobs_accepted']}; final after draining ({ck['drain_s']:.0f} s): "
        f"{ck['jobs_final']}, by status {ck['jobs_by_status']}; not final: {ck['jobs_not_final']}",
        f"- jobs run more than once (attempts ≠ 1): {ck['jobs_run_more_than_once']}; succeeded jobs without "
        f"exactly one adapter version: {ck['succeeded_jobs_without_exactly_one_version']}",
        f"- tracebacks in the server and worker logs: {r['tracebacks_in_logs']}",
    ]
    lines += [
        "",
        "Defects that earlier runs of this script found, fixed in the service (each with a test):",
        "",
        "- two workers finishing jobs into the same new `result_module` raced to create it; the loser's job "
        "failed (\"A module called … already exists\"). Now `get_or_create_module` "
        "(tests/hardening/test_concurrent_registration.py).",
        "- torch.export is not thread-safe: this script's own upload clients failed saving at once, and the "
        "service's export path has the same race (reproduced with threads: 7 of 9 concurrent exports "
        "failed, \"Trying to pop empty mode stack\", which the export route answers as a 422; not seen "
        "over HTTP in a run). Now one process-wide lock (tests/hardening/test_concurrent_exports.py).",
    ]
    if r["error_samples"]:
        lines += ["", "First errors:", ""] + [f"- `{s}`" for s in r["error_samples"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0)
    parser.add_argument("--uploaders", type=int, default=2)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--predictors", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=1, help="job-submitting clients")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="load", help="results file stem in bench/results/")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    counts = {"uploader": args.uploaders, "reader": args.readers, "predictor": args.predictors,
              "submitter": args.jobs, "bad": 1}
    with tempfile.TemporaryDirectory(prefix="graft-load-") as tmp:
        proc_s3, s3 = start_seaweedfs(Path(tmp) / "s3")
        db_name, db_url = create_db()
        broker, rclient = claim_redis_db()
        try:
            settings = s3_settings(s3, db_url, Path(tmp) / "data", broker_url=broker, bootstrap_token=TOKEN)
            result = run_load(settings, Path(tmp), duration=args.duration, counts=counts, think=DEFAULT_THINK,
                              workers=args.workers)
        finally:
            rclient.flushdb()
            drop_db(db_name)
            stop_seaweedfs(proc_s3)
    result["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2))
    text = _markdown(result, args)
    (RESULTS / f"{args.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
