"""Small I/O helpers every stage shares: atomic writes, JSON Lines with located errors, device choice.

Every output goes through a temp file + rename, so an interrupted job never leaves a file that
looks complete.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open

from phaseflip.dag import writers


class DataError(ValueError):
    """Bad input data: the message names file, line and field (and, for a study output, the rule that wrote it)."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    lines = [json.dumps(r, ensure_ascii=False, default=_json_default) for r in records]
    write_text(path, "".join(line + "\n" for line in lines))


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# Safetensors files are named by what they hold, wherever they lie (e.g. a copied checkpoint).
_SAFETENSORS_WRITERS = {"adapter_model.safetensors": "train", "optimizer.safetensors": "train",
                        "vector.safetensors": "steering_vectors", "model.safetensors": "base_model"}


def writer_of(path: str | Path) -> str | None:
    """The rule that writes `path` (a results/ output of the study), or None for anything else: an unreadable
    file's error names the rule to rerun instead of surfacing a parser's traceback."""
    path = Path(path)
    parts = path.parts
    if "results" in parts:
        rel = "/".join(parts[len(parts) - parts[::-1].index("results"):])
        for pattern, rule in writers():  # the stage table's `writes`, the most specific first
            if pattern.endswith("/") and rel.startswith(pattern):
                return rule
            if not pattern.endswith("/") and Path(rel).match(pattern):
                return rule
    return _SAFETENSORS_WRITERS.get(path.name)


def _fix_hint(path: Path) -> str:
    rule = writer_of(path)
    if rule is None:
        return "rerun the rule that wrote it"
    return f"written by rule {rule}; delete it and rerun"


def _truncated(path: Path, data: bytes) -> bool:
    """A study output that does not end in a newline was cut off (every writer here ends its text with one)."""
    return writer_of(path) is not None and bool(data) and not data.endswith(b"\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read JSON ({_reason(err)}); {_fix_hint(path)}") from None


def read_csv(path: str | Path, sep: str = ",") -> pd.DataFrame:
    path = Path(path)
    try:
        data = path.read_bytes()
        if _truncated(path, data):
            raise ValueError("truncated: the last line is incomplete")
        return pd.read_csv(io.BytesIO(data), sep=sep)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: cannot read CSV table ({_reason(err)}); {_fix_hint(path)}") from None


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Records with their 1-based line numbers. Blank lines are skipped; anything else must parse."""
    path = Path(path)
    hint = "" if writer_of(path) is None else f" ({_fix_hint(path)})"
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        bad_line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{bad_line}: not valid UTF-8 (byte {err.start}); save the file as UTF-8"
                        f"{hint}") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror}){hint}") from None
    if _truncated(path, data):
        raise DataError(f"{path}:{text.count(chr(10)) + 1}: truncated (the last line is incomplete){hint}")
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno}){hint}") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}{hint}")
        records.append((lineno, record))
    return records


def read_safetensors_with_metadata(path: str | Path,
                                   what: str = "tensors") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file; a missing, truncated or corrupt file is a DataError."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read {what}: file not found ({_fix_hint(path)})") from None
    except (OSError, SafetensorError, RuntimeError, ValueError) as err:
        raise DataError(f"{path}: cannot read {what}: truncated or corrupt safetensors file ({_fix_hint(path)}) "
                        f"[{_reason(err)}]") from None
    return tensors, metadata


def read_safetensors(path: str | Path, what: str = "tensors") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (never a pickle); a missing or corrupt file is a DataError naming it."""
    return read_safetensors_with_metadata(path, what)[0]


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(requested: str = "auto") -> torch.device:
    """`auto`: the GPU when CUDA is available, else the CPU; `cpu`/`cuda` as asked (cuda must exist)."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"device={requested!r} but CUDA is not available here; use device=auto or device=cpu")
    return torch.device(requested)


# Thread pools a job may start besides torch's: OpenMP/BLAS (numpy, scipy, torch's MKL) and the Rust
# tokenizers' rayon pool. Snakemake exports the first four for shell jobs; the CLI may also run alone.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                   "RAYON_NUM_THREADS")


def set_threads(threads: int | None) -> None:
    """Every thread pool of this process follows the Snakemake job's `threads`.

    Parallel jobs then do not oversubscribe the cores: `--cores 4` with 1-thread jobs runs 4 grid
    points side by side, each with exactly one compute thread. Sets torch's intra-op and inter-op
    threads, caps BLAS pools already loaded (numpy's) with threadpoolctl, and exports the variables
    that pools started later (tokenizers, subprocesses) read. None or 0: leave the defaults.
    """
    if not threads:
        return
    if threads < 0:
        raise ValueError(f"threads must be >= 1, got {threads}")
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass  # only settable before the first inter-op parallel work; a fresh CLI process sets it first
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scipy's stack but is optional
        return
    threadpool_limits(limits=threads)
