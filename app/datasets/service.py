"""Datasets: validated `.npz` files of inputs `x` (and optional labels `y`) stored by content address.

Arrays are read with `np.load(..., allow_pickle=False)`, so an object array (a pickle) is refused.
"""

from __future__ import annotations

import logging
import math
import tempfile
import uuid
import zipfile
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.datasets import repository
from app.datasets.schemas import DatasetMeta
from app.errors import BackendUnavailable, NotFound, Unprocessable
from app.models import Dataset
from app.storage import ArtifactStore, key_for

log = logging.getLogger(__name__)
ALLOWED_KEYS = {"x", "y"}
# An .npz whose members inflate to more than this many times its size is refused (zip bomb).
MAX_INFLATION = 50


def get_dataset(session: Session, dataset_id: str) -> Dataset:
    """The dataset with this id, or NotFound."""
    dataset = repository.get(session, dataset_id)
    if dataset is None:
        raise NotFound(f"No dataset has id {dataset_id!r}; upload one with POST /v1/datasets.")
    return dataset


def parse_meta(meta: dict) -> DatasetMeta:
    try:
        return DatasetMeta.model_validate(meta)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "meta"
        raise Unprocessable(f"Invalid meta: {where}: {err['msg'].removeprefix('Value error, ')}.") from None


def _numeric(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise Unprocessable(f"Array `{name}` has dtype {arr.dtype}; use a numeric (float32-castable) array.")
    return arr


def _check_members(path: Path) -> None:
    """Refuse zip bombs, object arrays and arrays larger than their bytes before numpy allocates any."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if sum(i.file_size for i in infos) > MAX_INFLATION * max(path.stat().st_size, 1) + (1 << 20):
                raise Unprocessable("The .npz inflates to far more than its size (a zip bomb?); refused.")
            for info in infos:
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, _fortran, dtype = header(fh, max_header_size=10000)
                    data_bytes = info.file_size - fh.tell()
                if dtype.hasobject:
                    raise Unprocessable(
                        f"Array {info.filename!r} is an object array (a pickle), which Graft never loads; "
                        "save plain numeric arrays."
                    )
                if math.prod(shape) * dtype.itemsize > data_bytes:
                    raise Unprocessable(
                        f"Array {info.filename!r} declares shape {list(shape)} but holds only "
                        f"{data_bytes} bytes; save it again."
                    )
    except Unprocessable:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, TypeError) as exc:
        raise Unprocessable(
            f"The .npz is damaged or not plain numpy arrays ({exc}); save it again."
        ) from None


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The validated (x float32, y or None) of an uploaded .npz; Unprocessable with the reason."""
    if not zipfile.is_zipfile(path):
        raise Unprocessable(
            "The dataset file is not an .npz archive; save it with numpy.savez(path, x=..., y=...)."
        )
    _check_members(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if "x" not in keys:
                raise Unprocessable(
                    "The .npz has no array `x`; save the inputs as numpy.savez(path, x=inputs)."
                )
            extra = keys - ALLOWED_KEYS
            if extra:
                raise Unprocessable(
                    f"The .npz holds unexpected arrays {sorted(extra)}; keep only `x` and `y`."
                )
            x = _numeric("x", npz["x"])
            y = _numeric("y", npz["y"]) if "y" in keys else None
    except Unprocessable:
        raise
    except ValueError as exc:  # object arrays (pickles) and malformed members
        raise Unprocessable(
            f"The .npz could not be read without pickles ({exc}); save plain numeric arrays."
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise Unprocessable(f"The .npz is damaged or truncated ({exc}); save it again.") from None
    if x.ndim < 2 or x.shape[0] < 1:
        raise Unprocessable(f"Array `x` has shape {list(x.shape)}; it must be N×… with N ≥ 1 samples.")
    with np.errstate(over="ignore"):
        x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise Unprocessable("Array `x` contains NaN or infinite values (or values too large for float32).")
    if y is not None:
        if y.ndim < 1 or y.shape[0] != x.shape[0]:
            raise Unprocessable(f"Array `y` has {y.shape[0] if y.ndim else 0} rows but `x` has {x.shape[0]}; "
                                "give one label or target per sample.")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise Unprocessable("Array `y` contains NaN or infinite values.")
    return x, y


def create_dataset(
    session: Session, store: ArtifactStore, *, file_path: Path, sha256: str, size: int, meta: dict
) -> Dataset:
    """Validate the .npz, store it, and add its row (flushed, not committed)."""
    parsed = parse_meta(meta)
    if size == 0:
        raise Unprocessable("The dataset file is empty; attach an .npz as `file`.")
    x, y = read_npz(file_path)
    key = key_for(sha256)
    try:
        store.put_file(file_path, key)
    except Exception as exc:
        log.warning("artifact store put failed for %s: %s", key, exc)
        raise BackendUnavailable("The artifact store is unreachable right now; retry the upload.") from None
    dataset = Dataset(
        id=str(uuid.uuid4()), name=parsed.name, category=parsed.category, n=int(x.shape[0]),
        input_shape=[None, *(int(d) for d in x.shape[1:])],
        y_shape=None if y is None else [None, *(int(d) for d in y.shape[1:])],
        sha256=sha256, size=size, storage_key=key,
    )
    session.add(dataset)
    session.flush()
    return dataset


def load_arrays(store: ArtifactStore, dataset: Dataset) -> tuple[np.ndarray, np.ndarray | None]:
    """The dataset's (x float32, y or None), read from the store without unpickling."""
    with tempfile.TemporaryDirectory(prefix="graft-dataset-") as tmp:
        path = Path(tmp) / "data.npz"
        store.get_to_file(dataset.storage_key, path)
        with np.load(path, allow_pickle=False) as npz:
            x = np.asarray(npz["x"], dtype=np.float32)
            y = np.asarray(npz["y"]) if "y" in npz.files else None
    return x, y
