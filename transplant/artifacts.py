"""Module artifacts: recognise, safely load, probe and export network pieces (pure PyTorch).

Three formats are accepted, and none of them is ever unpickled with Python's `pickle`:

- `torch_export` (`torch.export.save`): a zip of JSON graph + raw tensor payloads. `torch.export.load`
  still has pickle paths (payloads flagged `use_pickle`, opaque/custom objects, legacy `.pt` weight
  files, AOTInductor shared libraries, and `sample_inputs/*.pt`, a `torch.save` file it loads with
  `weights_only=True` and then *falls back to `weights_only=False`*). So before loading, every member
  name is checked against an allowlist, the payload configs are parsed and any pickled payload is
  refused, and the archive is copied with the sample inputs blanked out (an empty payload is read as
  "no sample inputs"): no byte of the upload reaches an unpickler.
- `torchscript` (`torch.jit.save`) is refused, at upload and when a stored one is loaded: its graphs
  hold `prim::` nodes and methods that the operator allow-list cannot cover as strictly as a
  torch.export graph, and TorchScript is deprecated upstream. The refusal says how to re-save.
- `safetensors`: a JSON header and raw tensors, loaded into a built-in architecture named by `arch`
  (`transplant.adapters.build_from_spec`).

Every torch_export graph (and every subgraph in it) is checked against `transplant.allowlist` before
`torch.export.load` reads it, from the archive's JSON, and again on the loaded program before anything
runs it: an operator outside the list (`aten.from_file`, `aten._print`, a while loop, an unknown op)
is refused with `ForbiddenOperator`, naming it. The JSON check comes first because loading is not
inert: `torch.export.load` hands every symbolic-shape expression string to `sympy.sympify`, an `eval`,
and `.module()` `exec`s the archive's `guards_code` when sample inputs are present. So expression
strings must be plain shape arithmetic, and `guards_code` is dropped from the copy that is loaded.

A `torch.save(model)` file (zip with `data.pkl` but no `code/`, or a legacy bare pickle) is recognised
from its member names / magic bytes alone and refused with `PickledArtifact`. `torch.load` is never
called on uploaded bytes, not even with `weights_only=True`.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import tempfile
import threading
import zipfile
from pathlib import Path

import torch
from torch import nn

from transplant import allowlist

FORMATS = ("torch_export", "torchscript", "safetensors")
HOW_TO_SAVE = (
    "save the module with torch.export.save(torch.export.export(model, (x,)), path) "
    "or as safetensors weights with an `arch` spec"
)
TORCHSCRIPT_REFUSED = (
    "TorchScript artifacts are not accepted (their graphs cannot be checked against Graft's operator "
    "allow-list as strictly as torch.export's, and TorchScript is deprecated); re-save the module with "
    'torch.export.save(torch.export.export(model, (example,)), "m.pt2") and upload it with format '
    "torch_export"
)
# A zip whose members inflate to more than this many times its size is refused (zip bomb).
MAX_INFLATION = 20
_EXPORT_MEMBERS = re.compile(
    r"^(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/[\w.-]+\.json|data/weights/[\w.-]+_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/[\w.-]+_constants_config\.json|data/constants/tensor_\d+"
    r"|data/sample_inputs/[\w.-]+\.pt|extra/[\w.-]+)$"
)


class ArtifactError(ValueError):
    """The file is not a loadable artifact of the declared format (a client error, 4xx)."""


class PickledArtifact(ArtifactError):
    """The file is a pickle (`torch.save`), which Graft refuses to load (415)."""


class RefusedArtifact(ArtifactError):
    """The artifact is refused by policy, not because it is broken: TorchScript, or a forbidden operator."""


class ForbiddenOperator(RefusedArtifact):
    """The graph calls an operator outside the allow-list of pure tensor operators (422)."""


class OutOfMemory(ArtifactError):
    """Loading or running the module could not allocate memory (under a memory limit, or the machine's)."""


# How torch's CPU allocator and the C++ runtime word a failed allocation (errno 12, ENOMEM).
_OUT_OF_MEMORY = ("can't allocate memory", "Cannot allocate memory", "std::bad_alloc")


def _is_out_of_memory(exc: BaseException | None) -> bool:
    return isinstance(exc, MemoryError) or any(m in str(exc) for m in _OUT_OF_MEMORY)


def _zip_names(path: Path) -> tuple[str, list[str]] | None:
    """(common prefix, member names below it) of a zip file, or None when it is not a zip."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArtifactError(f"the file is a damaged zip archive ({exc})") from None
    if not infos:
        raise ArtifactError("the file is an empty zip archive")
    inflated = sum(i.file_size for i in infos)
    if inflated > MAX_INFLATION * max(path.stat().st_size, 1) + (1 << 20):
        raise ArtifactError("the zip archive inflates to far more than its size; refused")
    prefix = infos[0].filename.split("/", 1)[0] + "/"
    if any(not i.filename.startswith(prefix) for i in infos):
        raise ArtifactError("the zip archive does not have a single top-level folder like torch files do")
    return prefix, [i.filename[len(prefix):] for i in infos]


def sniff_format(path: Path) -> str:
    """What the file is, from magic bytes and zip member names only: a format, "pickle" or "unknown"."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        raise ArtifactError("the file is empty")
    names = _zip_names(path)
    if names is not None:
        members = set(names[1])
        if "constants.pkl" in members and any(n.startswith("code/") for n in members):
            return "torchscript"
        has_model = any(n.startswith("models/") and n.endswith(".json") for n in members)
        if has_model and "archive_format" in members:
            return "torch_export"
        if "data.pkl" in members:
            return "pickle"
        return "unknown"
    # Legacy (pre-zip) torch.save files and bare pickles start with the PROTO opcode.
    if head[0] == 0x80 and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 2 <= header_len <= 100 * 1024 * 1024 and head[8:9] == b"{":
            return "safetensors"
    return "unknown"


def check_format(path: Path, format: str) -> None:
    """Raise unless `path` looks like an artifact of `format` (PickledArtifact for pickles)."""
    if format not in FORMATS:
        raise ArtifactError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    found = sniff_format(path)
    if found == "pickle":
        raise PickledArtifact(
            "the file is a pickle (torch.save), which Graft never loads because unpickling can run "
            f"arbitrary code; {HOW_TO_SAVE}"
        )
    if found == "unknown":
        raise ArtifactError(
            f"the file is not a {format} artifact (truncated or not a saved module); {HOW_TO_SAVE}"
        )
    if "torchscript" in (found, format):
        raise RefusedArtifact(TORCHSCRIPT_REFUSED)
    if found != format:
        raise ArtifactError(f"the file is a {found} artifact but meta.format says {format}; fix meta.format")
    if format == "torch_export":
        check_export_graph(path)


# Symbolic-shape expressions as torch.export writes them: `Symbol('s31', positive=True, integer=True)`,
# `2*s0 + 1`, `FloorDiv(s1, 2)`. Only these tokens reach `sympy.sympify` (an `eval`): numbers, quoted
# symbol names, arithmetic, and the names below or symbol names (s0, u3): no dots, brackets or dunders.
# Powers only by a small literal (`s0**2`), short numbers, short expressions: `9**9**9` would make sympy
# compute a number with hundreds of millions of digits, holding the thread that loads the module.
_EXPR_TOKEN = re.compile(
    r"\s+|\d+(?:\.\d+)?(?:e[-+]?\d+)?|'[a-z]+\d+'|[A-Za-z][A-Za-z0-9]*|\*\*|//|[-+*/%(),=<>!]"
)
_EXPR_NAMES = frozenset(
    "Symbol Integer Float Rational True False positive integer nonnegative negative real finite "
    "infinite zero nonzero oo Max Min Mod Abs Eq Ne Lt Le Gt Ge And Or Not Mul Add floor ceiling "
    "FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv RShift "
    "FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat "
    "TruncToInt RoundToInt RoundDecimal ToFloat Identity".split()
)
_SYMBOL_NAME = re.compile(r"^[a-z]+\d+$")
MAX_EXPRESSION = 1000


def _check_expression(expr: str) -> None:
    def refuse(why: str) -> ArtifactError:
        return ArtifactError(f"the torch_export graph holds a shape expression {why} ({expr[:80]!r}); "
                             "refused")

    if len(expr) > MAX_EXPRESSION:
        raise refuse(f"longer than {MAX_EXPRESSION} characters")
    tokens, pos = [], 0
    while pos < len(expr):
        match = _EXPR_TOKEN.match(expr, pos)
        if match is None:
            raise refuse("that is not plain arithmetic")
        token = match.group()
        if token[0].isalpha() and token not in _EXPR_NAMES and not _SYMBOL_NAME.match(token):
            raise refuse(f"using {token!r}, which is not shape arithmetic")
        if token[0].isdigit() and len(token) > 18:
            raise refuse("with a number beyond 18 digits")
        if not token.isspace():
            tokens.append(token)
        pos = match.end()
    for i, token in enumerate(tokens):
        if token == "**":
            exponent = tokens[i + 1] if i + 1 < len(tokens) else ""
            after = tokens[i + 2] if i + 2 < len(tokens) else ""
            if not (exponent.isdigit() and len(exponent) <= 2) or after == "**":
                raise refuse("with a power other than by a small literal")


def check_graph_json(graph: object) -> None:
    """Refuse a torch_export archive's model JSON unless every operator and expression is allowed."""
    for node in _walk(graph):
        target = node.get("target")
        if isinstance(target, str):
            name = allowlist.serialized_name(target)
            if not allowlist.is_allowed(name):
                raise ForbiddenOperator(_forbidden(name))
        expr = node.get("expr_str")
        if expr is not None:
            if not isinstance(expr, str):
                raise ArtifactError("the torch_export graph holds a malformed shape expression")
            _check_expression(expr)


def _walk(obj: object):
    """Every dict inside a parsed JSON value, depth first (iterative: deep nesting cannot overflow)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _forbidden(name: str) -> str:
    return (f"the graph calls {name}, which is not on Graft's allow-list of pure tensor operators "
            "(transplant/allowlist.py); operators that touch files, processes, the network or loop "
            "on their input are never run")


def _model_json(raw: bytes) -> dict:
    try:
        model = json.loads(raw)
    except (ValueError, RecursionError):
        raise ArtifactError("the torch_export archive has an unreadable graph (models/*.json)") from None
    if not isinstance(model, dict):
        raise ArtifactError("the torch_export archive's graph is not a JSON object")
    check_graph_json(model)
    return model


def check_export_graph(path: Path) -> None:
    """Check the graphs of a torch_export archive against the allow-list, reading only its JSON."""
    prefix, members = _zip_names(path) or ("", [])
    with zipfile.ZipFile(path) as zf:
        for rel in members:
            if rel.startswith("models/") and rel.endswith(".json"):
                _model_json(zf.read(prefix + rel))


def check_program(program: torch.export.ExportedProgram) -> None:
    """Refuse a loaded program unless every node of its graph and subgraphs calls an allowed operator."""
    for gm in program.graph_module.modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        for node in gm.graph.nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            if node.op != "call_function":
                raise ForbiddenOperator(f"the graph has a {node.op} node ({node.target}); refused")
            name = allowlist.target_name(node.target)
            if not allowlist.is_allowed(name):
                raise ForbiddenOperator(_forbidden(name))


def _check_payload_config(raw: bytes, kind: str) -> None:
    try:
        config = json.loads(raw).get("config", {})
    except (ValueError, AttributeError):
        raise ArtifactError(f"the torch_export archive has an unreadable {kind} config") from None
    for fqn, meta in config.items():
        if not isinstance(meta, dict) or meta.get("use_pickle"):
            raise PickledArtifact(
                f"the torch_export archive stores {kind} {fqn!r} pickled; re-export it with plain "
                "tensors (torch.export.save of a model without custom objects)"
            )
        if kind == "constant" and not str(meta.get("path_name", "")).startswith("tensor_"):
            raise PickledArtifact(f"the torch_export archive holds a custom object constant {fqn!r}; "
                                  "only tensor constants are accepted")


def _sanitised_export_copy(path: Path, dest: Path) -> None:
    """Copy a torch_export archive to `dest` after checking it, with its pickled sample inputs blanked."""
    prefix, members = _zip_names(path) or ("", [])
    bad = [m for m in members if not _EXPORT_MEMBERS.match(m)]
    if bad:
        raise ArtifactError(
            f"the torch_export archive holds unexpected member(s) {bad[:3]}; only plain "
            "torch.export.save archives (no AOTInductor packages or custom objects) are accepted"
        )
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            rel = info.filename[len(prefix):]
            if rel.endswith("_weights_config.json"):
                _check_payload_config(src.read(info), "weight")
            elif rel.endswith("_constants_config.json"):
                _check_payload_config(src.read(info), "constant")
            elif rel.startswith("models/") and rel.endswith(".json"):
                # Checked again on these very bytes; guards_code is Python source that `.module()`
                # would exec, so the loaded copy never carries it.
                model = _model_json(src.read(info))
                model["guards_code"] = []
                out.writestr(info.filename, json.dumps(model))
                continue
            if rel.startswith("data/sample_inputs/"):
                out.writestr(info.filename, b"")
                continue
            with src.open(info) as fin, out.open(info.filename, "w", force_zip64=True) as fout:
                while chunk := fin.read(1 << 20):
                    fout.write(chunk)


# torch.export keeps process-global state: the deserializer (`_CURRENT_DESERIALIZER`), and while
# exporting, dispatch-mode stacks, the module hierarchy and pickling hooks for fake tensors. Two threads
# loading, exporting or saving at once (two exports of a composition in one server, a job and a predict)
# make one of them fail ("Trying to pop empty mode stack"). They are rare; every one takes this lock.
TORCH_EXPORT_LOCK = threading.RLock()


def load_module(path: Path, format: str, arch: dict | None = None) -> nn.Module:
    """Load an artifact as a module in eval mode, never unpickling uploaded bytes."""
    path = Path(path)
    check_format(path, format)
    if arch is not None and format != "safetensors":
        raise ArtifactError("`arch` is only meaningful with format safetensors; drop it or change the format")
    try:
        if format == "torch_export":
            with tempfile.TemporaryDirectory(prefix="graft-export-") as tmp:
                clean = Path(tmp) / "clean.pt2"
                _sanitised_export_copy(path, clean)
                with TORCH_EXPORT_LOCK:
                    program = torch.export.load(clean)
                    check_program(program)
                    module = program.module()
        else:
            module = _load_safetensors(path, arch)
    except ArtifactError:
        raise
    except Exception as exc:  # torch raises many types for a file that does not load
        if _is_out_of_memory(exc):
            raise OutOfMemory("loading the module ran out of memory") from None
        raise ArtifactError(f"the {format} file does not load: {_short(exc)}") from None
    try:
        module.eval()
    except Exception:  # noqa: BLE001 - torch.export modules refuse eval() in some versions
        pass
    return module


def _load_safetensors(path: Path, arch: dict | None) -> nn.Module:
    from safetensors.torch import load_file

    from transplant.adapters import build_from_spec

    if not arch:
        raise ArtifactError("a safetensors artifact needs `arch`, the spec of a built-in architecture")
    try:
        module = build_from_spec(arch)
    except Exception as exc:
        raise ArtifactError(f"`arch` does not describe a built-in architecture: {_short(exc)}") from None
    state = load_file(str(path), device="cpu")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"the safetensors weights do not fit `arch`: {_short(exc)}") from None
    return module.eval()


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shape_elements(input_shape: list[int | None], batch: int = 1) -> int:
    """Elements of a tensor of `input_shape` with the batch dimension (null) set to `batch`."""
    return math.prod(batch if d is None else int(d) for d in input_shape)


def probe_output_shape(module: nn.Module, input_shape: list[int | None]) -> list[int | None]:
    """Run `module` once on zeros of `input_shape` (null = batch, tried as 2 then 1); its output shape."""
    batches = (2, 1) if input_shape and input_shape[0] is None else (None,)
    last: Exception | None = None
    for batch in batches:
        dims = [batch if d is None else int(d) for d in input_shape]
        try:
            with torch.inference_mode():
                out = module(torch.zeros(dims))
        except Exception as exc:  # noqa: BLE001 - any failure is the artifact's, reported below
            last = exc
            continue
        if isinstance(out, (tuple, list)) and len(out) == 1:
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise ArtifactError(f"the module returned {type(out).__name__}, not one tensor")
        shape: list[int | None] = list(out.shape)
        if batch is not None:
            if not shape or shape[0] != batch:
                raise ArtifactError(
                    f"the output shape {list(out.shape)} does not keep the batch dimension first"
                )
            shape[0] = None
        return shape
    if _is_out_of_memory(last):
        raise OutOfMemory(f"running the module on zeros of input_shape {input_shape} ran out of memory")
    raise ArtifactError(f"the module fails on zeros of input_shape {input_shape}: {_short(last)}")


def save_module(module: nn.Module, example_input: torch.Tensor, format: str) -> bytes:
    """Serialise `module` as torch_export (dynamic batch dim) or torchscript bytes."""
    module = module.eval()
    buf = io.BytesIO()
    if format == "torch_export":
        batch = torch.export.Dim("batch", min=1)
        dynamic = ({0: batch},) if example_input.shape[0] > 1 else None
        with TORCH_EXPORT_LOCK:
            program = torch.export.export(module, (example_input,), dynamic_shapes=dynamic)
            torch.export.save(program, buf)
    elif format == "torchscript":
        try:
            scripted = torch.jit.script(module)
        except Exception:  # noqa: BLE001 - tracing covers modules TorchScript cannot compile
            scripted = torch.jit.trace(module, example_input)
        torch.jit.save(scripted, buf)
    else:
        raise ArtifactError(f"save_module writes torch_export or torchscript, not {format!r}")
    return buf.getvalue()
