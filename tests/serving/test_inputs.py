"""The predict route's plain .npy reader on its own: what np.load reads, or a fall back to np.load."""

from __future__ import annotations

import io

import numpy as np
import pytest

from app.errors import GraftError
from app.serving.inputs import _plain_npy, decode


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize("x", [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    np.ones((1, 5), dtype=np.float64),
    np.arange(6, dtype=np.int64).reshape(3, 2),
    np.arange(6, dtype=">f4").reshape(2, 3),  # big-endian
    np.zeros((0, 3), dtype=np.float32),
    np.float32(3.5),  # 0-d
    np.arange(7, dtype=np.uint8),
])
def test_plain_npy_reads_what_np_load_reads(x: np.ndarray) -> None:
    body = _npy(x)
    fast = _plain_npy(body)
    assert fast is not None
    want = np.load(io.BytesIO(body), allow_pickle=False)
    assert fast.dtype == want.dtype and fast.shape == want.shape
    assert np.array_equal(fast, want)
    assert fast.flags.writeable  # torch.from_numpy needs it


@pytest.mark.parametrize("x", [
    np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
    np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f4")]),
    np.array([1 + 2j], dtype=np.complex64),
])
def test_other_arrays_go_through_np_load(x: np.ndarray) -> None:
    body = _npy(x)
    assert _plain_npy(body) is None
    assert np.array_equal(decode(body, "npy"), x)


def test_truncated_or_padded_bodies_are_refused_clearly() -> None:
    body = _npy(np.ones((4, 3), dtype=np.float32))
    assert _plain_npy(body[:-4]) is None and _plain_npy(body + b"\0\0\0\0") is None
    with pytest.raises(GraftError, match="not a valid .npy"):
        decode(body[:-4], "npy")
    assert _plain_npy(b"\x93NUMPY") is None and _plain_npy(b"not npy at all") is None


@pytest.mark.parametrize("shape", [(1, 10), (3,), (2, 3, 4), (0, 5), (17, 10, 1), (100_000, 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_encode_npy_writes_what_np_save_writes(shape: tuple, dtype) -> None:  # noqa: ANN001
    from app.serving.inputs import encode_npy

    y = (np.random.default_rng(0).standard_normal(shape) * 100).astype(dtype)
    assert encode_npy(y) == _npy(y)
    assert np.array_equal(np.load(io.BytesIO(encode_npy(y)), allow_pickle=False), y)
