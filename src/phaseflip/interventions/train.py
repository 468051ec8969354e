"""LoRA training: one run of the grid (docs/design.md §5), with dense adapter checkpoints as safetensors.

Loss on reply tokens only; AdamW at a constant learning rate; per-step loss, gradient norm and
learning rate in `train_log.csv`. A run that diverges (NaN or loss above `divergence_loss`) stops and
is recorded as diverged with its last good checkpoint; the study goes on. A run that finds
checkpoints from an interrupted attempt resumes from the last one (adapter + optimizer state).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from phaseflip.config import LoraConfig, TrainConfig, TrainRecipe
from phaseflip.data import Example
from phaseflip.io import DataError, read_csv, read_safetensors, write_csv, write_json, write_text
from phaseflip.model.scoring import IGNORE, encode_reply, generate, pad_batch, prompt_of, reply_token_logprobs


@dataclass(frozen=True)
class RunSpec:
    """One grid point. The id names its parameters, so results are laid out by it."""

    lr: float
    n_real: int | str
    dream_k: int
    seed: int
    control: str | None = None  # the negative control's kind ("own-replies", ...); None for real runs

    @property
    def run_id(self) -> str:
        prefix = f"control-{self.control}_" if self.control else ""
        return f"{prefix}lr{lr_text(self.lr)}_n{self.n_real}_k{self.dream_k}_s{self.seed}"


def lr_text(lr: float) -> str:
    """An lr as the run id writes it: one significant digit where that is exact (3e-03), else two (4.5e-03)."""
    short = f"{lr:.0e}"
    return short if float(short) == lr else f"{lr:.1e}"


def grid_lrs(cfg: TrainConfig, chosen: list[float] | None = None) -> list[float]:
    """The grid's learning rates: the configured list, or under `lrs: auto` the pilot's `chosen` ones."""
    if cfg.lrs != "auto":
        return list(cfg.lrs)
    if not chosen:
        raise DataError("train.lrs is auto: the grid needs the pilot's lrs (results/pilot/grid.json, rule pilot)")
    return list(chosen)


def grid(cfg: TrainConfig, chosen_lrs: list[float] | None = None) -> list[RunSpec]:
    """Every run: lrs x n_real x dream_k x seeds, the extra runs, the negative control. An extra run's or the
    control's lr `main` is the grid's first lr."""
    lrs = grid_lrs(cfg, chosen_lrs)

    def lr_of(lr: float | str) -> float:
        return lrs[0] if lr == "main" else float(lr)

    runs = [RunSpec(lr, n, k, s) for lr in lrs for n in cfg.n_real for k in cfg.dream_k for s in cfg.seeds]
    runs += [spec for r in cfg.extra_runs if (spec := RunSpec(lr_of(r.lr), r.n_real, r.dream_k, r.seed)) not in runs]
    if cfg.negative_control.enabled:
        runs.append(RunSpec(lr_of(cfg.negative_control.lr), "all", 0, cfg.seeds[0], control=cfg.negative_control.kind))
    return runs


RUN_ID = re.compile(r"^(?:control-(?P<control>[a-z-]+)_)?lr(?P<lr>[0-9.e+-]+)_n(?P<n>all|[0-9]+)"
                    r"_k(?P<k>[0-9]+)_s(?P<s>[0-9]+)$")


def parse_run_id(run_id: str, cfg: TrainConfig | None = None, chosen_lrs: list[float] | None = None) -> RunSpec:
    """The grid point a run id names (ids name their parameters); with `cfg`, it must be in that grid."""
    if cfg is not None:
        for spec in grid(cfg, chosen_lrs):
            if spec.run_id == run_id:
                return spec
        raise DataError(f"run id {run_id!r} is not in the configured grid")
    m = RUN_ID.match(run_id)
    if not m:
        raise DataError(f"run id {run_id!r} is not of the form [control-<kind>_]lr<lr>_n<n_real>_k<dream_k>_s<seed>")
    n = m["n"] if m["n"] == "all" else int(m["n"])
    return RunSpec(float(m["lr"]), n, int(m["k"]), int(m["s"]), control=m["control"])


def training_examples(spec: RunSpec, corrections: list[Example], dreams: list[Example],
                      unrelated: list[str] | None = None,
                      own_replies: Callable[[list[Example]], list[str]] | None = None) -> list[Example]:
    """The run's training set: n_real corrections (seeded choice), their first dream_k dreams each.

    A negative control keeps the prompts and the example count but takes the behavior out of the replies:
    `own-replies` trains on the base model's own greedy replies (`own_replies`: what the model already
    does, so any behavior at all can serve as its own null), `irrelevant` replaces each reply with an
    unrelated text (`unrelated`, e.g. the retention set: a null only if those texts lack the behavior),
    `shuffled` gives each prompt another example's reply (a derangement: still the behavior's replies).
    """
    rng = random.Random(spec.seed)
    chosen = list(corrections)
    if spec.n_real != "all":
        chosen = rng.sample(chosen, min(int(spec.n_real), len(chosen)))
    by_parent: dict[str, list[Example]] = {}
    for d in dreams:
        by_parent.setdefault(str(d.meta.get("parent")), []).append(d)
    examples = chosen + [d for c in chosen for d in by_parent.get(c.id, [])[: spec.dream_k]]
    if spec.control == "own-replies":
        if own_replies is None:
            raise DataError("the own-replies negative control needs the base model to write its replies")
        replies = own_replies(examples)
    elif spec.control == "irrelevant":
        if not unrelated:
            raise DataError("the irrelevant negative control needs unrelated texts (the retention set)")
        order = rng.sample(range(len(unrelated)), len(unrelated))
        replies = [unrelated[order[i % len(order)]] for i in range(len(examples))]
    elif spec.control == "shuffled" and len(examples) > 1:
        shift = rng.randrange(1, len(examples))
        replies = [examples[(i + shift) % len(examples)].preferred or "" for i in range(len(examples))]
    else:
        return examples
    return [Example(id=f"{e.id}~{spec.control}", messages=e.messages, preferred=r, family=e.family,
                    prompt_format=e.prompt_format) for e, r in zip(examples, replies, strict=True)]


def greedy_replies(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[Example],
                   max_length: int, batch_size: int = 8) -> list[str]:
    """The model's own greedy reply to each example's prompt, as long as the longest given reply (the
    `own-replies` control: as many reply tokens to learn as the real runs have, none of them new)."""
    lengths = [len(tokenizer(e.preferred or "", add_special_tokens=False).input_ids) for e in examples]
    budget = max(8, min(max(lengths, default=8), max_length // 2))
    return generate(model, tokenizer, [prompt_of(tokenizer, e) for e in examples], budget, batch_size)


def add_lora(model: PreTrainedModel, cfg: LoraConfig) -> PeftModel:
    """LoRA on the configured attention projections, under the architecture's own names
    (`architecture.lora_targets`: GPT-NeoX `query_key_value`/`dense`, GPT-2 `c_attn`/`attn.c_proj`)."""
    from phaseflip.model.architecture import lora_targets

    try:
        targets = lora_targets(model, list(cfg.target_modules))
    except ValueError as err:
        raise DataError(str(err)) from err
    # GPT-2's Conv1D stores its weight transposed: peft needs fan_in_fan_out for it.
    fan_in_fan_out = model.config.model_type == "gpt2"
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                              bias="none", task_type="CAUSAL_LM", fan_in_fan_out=fan_in_fan_out)
    return get_peft_model(model, peft_cfg)  # type: ignore[arg-type,return-value]


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:04d}"


def _save_checkpoint(model: PeftModel, optimizer: torch.optim.Optimizer, out: Path, step: int,
                     log: list[dict[str, Any]]) -> None:
    """Adapter + optimizer state (safetensors), then the log; the folder appears only when complete."""
    final = checkpoint_dir(out, step)
    tmp = final.with_name(final.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()},
              str(tmp / "adapter_model.safetensors"), metadata={"step": str(step)})
    state: dict[str, torch.Tensor] = {}
    for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"]):
        for key, value in optimizer.state.get(p, {}).items():
            state[f"{i}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    save_file(state, str(tmp / "optimizer.safetensors"))
    write_csv(tmp / "train_log.csv", pd.DataFrame(log))
    tmp.rename(final)
    # A resume reads the newest checkpoint's optimizer state (or, once a corrupt newest one is deleted,
    # the one before): older checkpoints drop theirs, so saving at every step costs the adapters alone.
    for _, older in checkpoints(out)[:-2]:
        (older / "optimizer.safetensors").unlink(missing_ok=True)


def _fingerprint(spec: RunSpec, cfg: TrainRecipe, examples: list[Example], base: str) -> str:
    """What a checkpoint depends on: a resume only continues checkpoints with the same fingerprint."""
    # Not the grid lists or the schedule length: adding a grid point or extending max_steps keeps a run valid.
    recipe = cfg.model_dump(mode="json", include={"batch_size", "micro_batch_size", "max_grad_norm", "weight_decay",
                                                  "max_length", "lora"})
    payload = json.dumps({"spec": asdict(spec), "train": recipe, "base": base,
                          "examples": [e.to_json() for e in examples]}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _resume(model: PeftModel, optimizer: torch.optim.Optimizer, out: Path,
            fingerprint: str) -> tuple[int, list[dict[str, Any]]]:
    stamp = out / "checkpoints" / "fingerprint.txt"
    if stamp.is_file() and stamp.read_text().strip() != fingerprint:
        # Checkpoints of another configuration (e.g. another study in the same results/): start over.
        print(f"{out}: existing checkpoints belong to another configuration; starting from step 0")
        shutil.rmtree(out / "checkpoints")
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_text(stamp, fingerprint + "\n")
    done = sorted((out / "checkpoints").glob("step-[0-9][0-9][0-9][0-9]"))
    if not done:
        return 0, []
    last = done[-1]
    try:
        set_peft_model_state_dict(model, read_safetensors(last / "adapter_model.safetensors", "adapter"))
        state = read_safetensors(last / "optimizer.safetensors", "optimizer state")
    except Exception as err:  # safetensors raises several types for truncated files
        raise DataError(f"{last}: corrupt checkpoint ({err}); delete it to restart from the previous one") from err
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for key, value in state.items():
        i, name = key.split(".", 1)
        optimizer.state[params[int(i)]][name] = value
    log = read_csv(last / "train_log.csv").to_dict("records")
    return int(last.name.split("-")[1]), log


def train_run(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[Example],
              spec: RunSpec, cfg: TrainRecipe, out: str | Path, base_fingerprint: str = "",
              on_step: Callable[[int, PeftModel], bool] | None = None) -> dict[str, Any]:
    """Train one run; writes checkpoints/, train_log.csv and run.json under `out`.

    `base_fingerprint` identifies the base model (its weights' sha256), so a resume never continues
    checkpoints trained from another model. With `checkpoint_steps: auto` an adapter is saved at every
    step (the optimizer state only in the newest: it is what a resume needs). `on_step(step, model)`,
    called after each step, ends the run early by returning True (status "stopped"; the pilot's probes).
    """
    out = Path(out)
    torch.manual_seed(spec.seed)
    model = add_lora(model, cfg.lora)  # type: ignore[assignment]
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.lr,
                                  weight_decay=cfg.weight_decay)
    encoded = [encode_reply(tokenizer, prompt_of(tokenizer, ex), ex.preferred or "", cfg.max_length, ex.prompt_format)
               for ex in examples]
    n_reply_tokens = sum(sum(t != IGNORE for t in labels) for _, labels in encoded)
    batch_size = cfg.batch_size or len(encoded)
    device = next(model.parameters()).device
    fingerprint = _fingerprint(spec, cfg, examples, base_fingerprint)
    start_step, log = _resume(model, optimizer, out, fingerprint)  # type: ignore[arg-type]
    status, last_good = "completed", start_step
    started = time.time()
    rng = random.Random(spec.seed)
    order = list(range(len(encoded)))
    for step in tqdm(range(start_step + 1, cfg.max_steps + 1), desc=spec.run_id, initial=start_step,
                     total=cfg.max_steps, unit="step"):
        if batch_size < len(encoded):  # minibatches: a seeded permutation per step keeps resume exact
            rng = random.Random(spec.seed * 100_003 + step)
            rng.shuffle(order)
        # Gradient accumulation over length-sorted micro-batches: the same full-batch gradient with
        # less padding (and less memory) than one padded batch.
        idx = sorted(order[:batch_size], key=lambda i: len(encoded[i][0]))
        n_tokens = sum(sum(t != IGNORE for t in encoded[i][1][1:]) for i in idx)
        optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros(())
        for start in range(0, len(idx), cfg.micro_batch_size):
            chunk = idx[start : start + cfg.micro_batch_size]
            ids, mask, labels = pad_batch([encoded[i][0] for i in chunk], [encoded[i][1] for i in chunk],
                                          tokenizer.pad_token_id, device)
            part = -reply_token_logprobs(model, ids, mask, labels).sum() / n_tokens
            part.backward()
            loss += part.detach().cpu()
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value) or loss_value > cfg.divergence_loss or not math.isfinite(grad_norm):
            status = "diverged"
            log.append({"step": step, "loss": loss_value, "grad_norm": grad_norm, "lr": spec.lr})
            break
        optimizer.step()
        log.append({"step": step, "loss": loss_value, "grad_norm": grad_norm, "lr": spec.lr})
        if cfg.checkpoint_steps == "auto" or step in cfg.checkpoint_steps:
            _save_checkpoint(model, optimizer, out, step, log)  # type: ignore[arg-type]
            last_good = step
        if on_step is not None and on_step(step, model):  # type: ignore[arg-type]
            status = "stopped"
            break
    seconds = time.time() - started
    steps_run = max(0, len(log) - start_step)
    write_csv(out / "train_log.csv", pd.DataFrame(log, columns=["step", "loss", "grad_norm", "lr"]))
    log_to_dvclive(log, out / "dvclive", spec)
    summary = {
        "run_id": spec.run_id, "lr": spec.lr, "n_real": spec.n_real, "dream_k": spec.dream_k, "seed": spec.seed,
        "control": spec.control is not None, "control_kind": spec.control, "status": status,
        "last_good_step": last_good, "resumed_from": start_step,
        "n_examples": len(examples), "example_ids": [e.id for e in examples], "n_reply_tokens": n_reply_tokens,
        "seconds": round(seconds, 2),
        "reply_tokens_per_s": round(n_reply_tokens * min(batch_size, len(encoded)) / len(encoded) * steps_run
                                    / max(seconds, 1e-9), 1),
    }
    write_json(out / "run.json", summary)
    return summary


def log_to_dvclive(log: list[dict[str, Any]], folder: Path, spec: RunSpec) -> None:
    """The run's per-step loss, gradient norm and lr in dvclive's layout (`dvc plots`/`dvc exp show`).

    Written from the whole log once the run ends, so a resumed run's history is complete and single.
    """
    from dvclive import Live

    tmp = folder.with_name(folder.name + ".tmp")  # built aside, then swapped in: never half-written
    shutil.rmtree(tmp, ignore_errors=True)
    with Live(dir=str(tmp), save_dvc_exp=False, dvcyaml=None) as live:
        live.log_params({k: v for k, v in asdict(spec).items() if v is not None})
        for row in log:
            live.step = int(row["step"])
            for key in ("loss", "grad_norm", "lr"):
                value = float(row[key])
                if math.isfinite(value):
                    live.log_metric(f"train/{key}", value)
            live.next_step()
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def checkpoints(out: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint of a run, in step order."""
    found = sorted(Path(out, "checkpoints").glob("step-[0-9][0-9][0-9][0-9]"))
    return [(int(p.name.split("-")[1]), p) for p in found]


def load_adapter_weights(model: PeftModel, folder: Path) -> None:
    """Swap a checkpoint's LoRA weights into an already wrapped model (no model reload)."""
    path = folder / "adapter_model.safetensors"
    set_peft_model_state_dict(model, read_safetensors(path, "adapter"))



@contextmanager
def merged_checkpoint(model: PeftModel, folder: Path) -> Iterator[None]:
    """A checkpoint's LoRA weights merged into the base weights (W + BA in place) for the block's duration.

    Evaluation then runs at base-model speed, with no LoRA branch per call. Afterwards the base weights
    are restored from a copy rather than by subtracting BA again: in bfloat16 (the CPU compute dtype of
    the shipped model) W + BA - BA is not W, and the error would pile up over a run's checkpoints.
    """
    load_adapter_weights(model, folder)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    bases: list[Any] = [layer.get_base_layer() for layer in layers]
    originals = [base.weight.detach().clone() for base in bases]
    model.merge_adapter()
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, base, weight in zip(layers, bases, originals, strict=True):
                base.weight.copy_(weight)
                layer.merged_adapters = []  # peft's record of what is merged: nothing now
