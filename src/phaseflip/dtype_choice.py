"""The compute dtype: chosen once from what the device runs natively, said in the terminal, recorded.

bfloat16 halves the memory traffic of every matmul, but only where the hardware has it: a CUDA GPU from
Ampere on, or a CPU with AVX512-BF16 or AMX. Elsewhere it is emulated, and far slower than float32
(measured on a 2-core AVX2 machine: 0.9 vs 88.6 GFLOP/s; on an AVX512-BF16 one 201 vs 83). So `auto`,
the default of every shipped config, takes bfloat16 exactly where it is native and float32 everywhere
else. An explicit `bfloat16` where it would be emulated is refused unless `model.allow_emulated_bfloat16`
says that is wanted, and an explicit `bfloat16` on a GPU without it is always refused.

Same config and same *resolved* dtype give the same numbers; bfloat16 and float32 results differ (the
README gives by how much), so the resolved dtype is part of every stage's params, of the base model's
manifest and of the report.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from phaseflip.io import DataError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cpu_has_native_bfloat16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 matmuls at ~2.4x float32's rate (measured: 201 vs 83 GFLOP/s, one core)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def gpu_has_native_bfloat16() -> bool:
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def has_native_bfloat16(device: torch.device) -> bool:
    return gpu_has_native_bfloat16() if device.type == "cuda" else cpu_has_native_bfloat16()


def _device_words(device: torch.device) -> str:
    if device.type == "cuda":
        return "this GPU"
    return "this CPU (no AVX512-BF16 or AMX)" if not cpu_has_native_bfloat16() else "this CPU (AVX512-BF16/AMX)"


@dataclass(frozen=True)
class DtypeChoice:
    """One resolved dtype: what was asked (`requested`), what runs (`name`), and why, in words."""

    setting: str  # the config key, e.g. "model.dtype"
    requested: str
    name: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def line(self) -> str:
        return f"{self.setting}={self.requested} -> {self.name}: {self.reason}"


def choose_dtype(requested: str, device: torch.device | str, allow_emulated: bool = False,
                 setting: str = "model.dtype") -> DtypeChoice:
    """Resolve `requested` (auto, float32, bfloat16) for `device`; refuse an emulated bfloat16 (see module)."""
    device = torch.device(device)
    if requested not in ("auto", *DTYPES):
        raise DataError(f"{setting}={requested!r}: expected one of auto, {', '.join(DTYPES)}")
    native = has_native_bfloat16(device)
    where = _device_words(device)
    if requested == "auto":
        if native:
            return DtypeChoice(setting, requested, "bfloat16", f"{where} runs bfloat16 natively")
        return DtypeChoice(setting, requested, "float32", f"{where} would emulate bfloat16 (far slower than float32)")
    if requested == "bfloat16" and not native:
        if device.type == "cuda":
            raise DataError(f"{setting}=bfloat16 but this GPU does not support bfloat16; use {setting}=auto")
        if not allow_emulated:
            raise DataError(
                f"{setting}=bfloat16 on {where}: every bfloat16 matmul would be emulated, 10-100x slower than "
                f"float32. Use {setting}=auto (float32 here), or set model.allow_emulated_bfloat16=true to "
                "compute in bfloat16 anyway (e.g. to reproduce bfloat16 numbers)")
        return DtypeChoice(setting, requested, "bfloat16", f"asked for explicitly; EMULATED on {where} (slow)")
    return DtypeChoice(setting, requested, requested, "asked for explicitly")


def resolve_dtype(requested: str, device: torch.device | str, allow_emulated: bool = False) -> torch.dtype:
    """The torch dtype `choose_dtype` picks."""
    return choose_dtype(requested, device, allow_emulated).dtype


def study_dtypes(model_dtype: str, screen_dtype: str, device: torch.device | str,
                 allow_emulated: bool = False) -> dict[str, DtypeChoice]:
    """Every compute dtype a study sets, resolved for `device`: `model.dtype` (training, evaluation,
    every stage that loads the model) and `steering.screen.dtype` (the steering screen's precision)."""
    return {setting: choose_dtype(requested, device, allow_emulated, setting)
            for setting, requested in (("model.dtype", model_dtype), ("steering.screen.dtype", screen_dtype))}


def compute_record(dtypes: dict[str, str], device: torch.device) -> dict[str, str]:
    """What params.yaml's `compute` block holds (see `check_compute_record`): the device type and each
    resolved dtype by setting, so DVC sees a change of resolved dtype as a change of params."""
    return {"device": device.type, **{setting.replace(".", "_"): name for setting, name in dtypes.items()}}


def check_compute_record(recorded: dict[str, str] | None, current: dict[str, str], source: str) -> None:
    """A params.yaml composed on another machine records other resolved dtypes: refuse to run with it
    silently (DVC would pair this machine's numbers with that machine's params)."""
    if recorded is not None and dict(recorded) != current:
        raise DataError(f"{source} records compute {dict(recorded)} (composed on another machine or device), but "
                        f"here it resolves to {current}: recompose it (`make study` does) or drop its `compute` "
                        "block")
