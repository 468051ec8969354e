"""Small I/O helpers every stage shares: atomic writes, JSON Lines with located errors, device choice.

Every output goes through a temp file + rename, so an interrupted job never leaves a file that
looks complete.
"""

from __future__ import annotations

import contextlib
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


class DataError(ValueError):
    """Bad input data: the message names file, line and field."""


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


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read JSON ({err}); rerun the rule that wrote it") from err


def read_csv(path: str | Path, sep: str = ",") -> pd.DataFrame:
    path = Path(path)
    try:
        return pd.read_csv(path, sep=sep)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: cannot read CSV table ({err}); rerun the rule that wrote it") from err


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Records with their 1-based line numbers. Blank lines are skipped; anything else must parse."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        bad_line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{bad_line}: not valid UTF-8 (byte {err.start}); save the file as UTF-8") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        records.append((lineno, record))
    return records


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
