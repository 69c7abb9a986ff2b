"""Schemathesis against a running server's /openapi.json: no 5xx, no response outside the schema.

The default run sends ~1,300 requests (5 examples per operation and phase); `python -m bench.fuzz`
runs the full count and writes bench/results/fuzz.md.
"""

from __future__ import annotations

import pytest

from support.fuzz import FuzzResult, run_fuzz


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> FuzzResult:
    result = run_fuzz(5, seed=1, workdir=tmp_path_factory.mktemp("fuzz"))
    assert result.requests >= 500, result.tail
    return result


@pytest.mark.slow
@pytest.mark.bench  # `slow` alone stays in the default run here; the full run is `python -m bench.fuzz`
def test_fuzz_full_run_has_no_5xx(tmp_path_factory: pytest.TempPathFactory) -> None:
    result = run_fuzz(25, seed=2, workdir=tmp_path_factory.mktemp("fuzz-full"))
    assert result.requests >= 2000, result.tail
    assert result.server_errors == 0, result.status


def test_fuzz_finds_no_server_errors(fuzzed: FuzzResult) -> None:
    assert fuzzed.server_errors == 0, (fuzzed.status, fuzzed.failures)
    assert {200, 201, 404, 422} <= set(fuzzed.status), fuzzed.status


def test_fuzz_finds_no_schema_violations(fuzzed: FuzzResult) -> None:
    assert fuzzed.failures == []

