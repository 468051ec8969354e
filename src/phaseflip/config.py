"""Compose and validate the study configuration.

One configuration reaches every stage: Hydra composes `conf/` with overrides, pydantic validates the
result. Two front doors feed it:

    snakemake --cores all --config study=smoke train__lrs=[1e-4,1e-3]  # overrides (`__` = `.`)
    dvc exp run -S study=smoke                                         # DVC composes params.yaml
    snakemake --cores all --configfile params.yaml                     # a composed config

    python -m phaseflip.config study=smoke                      # print the composed, validated config
    python -m phaseflip.config --write params.yaml study=smoke  # compose params.yaml as `dvc exp run -S` does
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """A configuration problem, reported before any job starts."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TinyModel(Strict):
    hidden_size: int = Field(64, gt=0)
    intermediate_size: int = Field(128, gt=0)
    num_hidden_layers: int = Field(2, gt=0)
    num_attention_heads: int = Field(4, gt=0)
    num_key_value_heads: int = Field(2, gt=0)


class ModelConfig(Strict):
    name: str
    source: Literal["gguf_package", "tiny_random", "hub", "local"]
    gguf_package: str | None = None
    gguf_file: str | None = None
    hub_id: str | None = None
    path: str | None = None
    tiny: TinyModel = TinyModel()
    # Compute dtype. auto: bfloat16 where the device runs it natively (a GPU from Ampere on, a CPU with
    # AVX512-BF16 or AMX), float32 elsewhere; resolved once per study and recorded (dtype_choice.py).
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # An explicit bfloat16 where it would be emulated (10-100x slower) is refused unless this is true.
    allow_emulated_bfloat16: bool = False
    # The precision of the weights on disk (upcast to `dtype` on load): half the disk and DVC cache.
    storage_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _source_fields(self) -> ModelConfig:
        needed = {
            "gguf_package": ("gguf_package", "gguf_file"),
            "tiny_random": ("gguf_package", "gguf_file"),  # the real tokenizer comes from the GGUF
            "hub": ("hub_id",),
            "local": ("path",),
        }[self.source]
        missing = [f for f in needed if not getattr(self, f)]
        if missing:
            raise ValueError(f"model.source={self.source} needs model.{', model.'.join(missing)}")
        return self


DEFAULT_RETENTION = "data/general/retention.jsonl"


class BehaviorData(Strict):
    """The behavior's files. Only corrections and eval are required; retention defaults to the shipped
    general prompts, and a dream vocabulary is needed only by the `template` dream generator."""

    corrections: str
    eval: str
    retention: str = DEFAULT_RETENTION
    dream_vocab: str | None = None


class JudgeRule(Strict):
    require: list[str] = []
    forbid: list[str] = []
    # The reply's opening must restate the direction (shares content words with the user's last turn).
    restates: bool = False


class Restatement(Strict):
    """When a rule says `restates: true`: the reply's first `window_words` words must share at least
    `min_shared_words` content words (not stopwords, compared by their first `stem_chars` letters) with the
    sentences of the user's last turn that carry the direction (those matching `direction_markers`; all of
    the turn when none match)."""

    window_words: int = Field(16, gt=0)
    min_shared_words: int = Field(1, gt=0)
    min_word_chars: int = Field(3, gt=0)
    stem_chars: int = Field(4, gt=2)
    direction_markers: list[str] = []
    stopwords: list[str] = []


class JudgeModel(Strict):
    """`judge.kind: model`: a causal LM answers yes/no to "does this reply show the behavior?"."""

    path: str | None = None  # a HF model folder; null = the study's base model
    threshold: float = Field(0.5, gt=0, lt=1)  # on p(yes) / (p(yes) + p(no))
    description: str | None = None  # null = behavior.description
    template: str = (
        "Behavior: {description}\n\nUser message: {prompt}\n\nAssistant reply: {reply}\n\n"
        "Does the assistant reply show the behavior? Answer yes or no."
    )
    answer_prefix: str = "Answer:"
    yes_tokens: list[str] = Field([" yes", " Yes"], min_length=1)
    no_tokens: list[str] = Field([" no", " No"], min_length=1)
    batch_size: int = Field(8, gt=0)
    max_reply_chars: int = Field(600, gt=0)


class Coherence(Strict):
    min_words: int = Field(3, ge=0)
    min_distinct_word_ratio: float = Field(0.35, ge=0, le=1)
    min_alpha_ratio: float = Field(0.5, ge=0, le=1)


class JudgeConfig(Strict):
    kind: Literal["rubric", "model"] = "rubric"
    patterns: dict[str, list[str]]
    rules: dict[str, JudgeRule]
    coherence: Coherence = Coherence()
    restatement: Restatement = Restatement()
    model: JudgeModel = JudgeModel()

    @model_validator(mode="after")
    def _rules_name_patterns(self) -> JudgeConfig:
        if "default" not in self.rules:
            raise ValueError("judge.rules needs a 'default' rule")
        for family, rule in self.rules.items():
            for name in rule.require + rule.forbid:
                if name not in self.patterns:
                    raise ValueError(f"judge.rules.{family} names unknown pattern set {name!r}")
        return self


class References(Strict):
    """Reference replies made with the base model for eval scenarios that have none (stage corrections).

    preferred: the reply with the behavior in context (the description as a system prompt and
    `n_shots` corrections as earlier turns), kept only if the judge accepts it. rejected: the plain
    greedy reply, kept only if the judge rejects it. Each side is retried with sampled replies (other
    seeds) up to `max_attempts` times; a scenario with no pair is left out of the pairwise metrics."""

    enabled: bool = True
    system_prompt: bool = True
    n_shots: int = Field(3, ge=0)
    max_attempts: int = Field(4, gt=0)
    temperature: float = Field(0.8, gt=0)
    max_new_tokens: int = Field(64, gt=0)
    batch_size: int = Field(8, gt=0)


class BehaviorConfig(Strict):
    name: str
    description: str
    data: BehaviorData
    judge: JudgeConfig
    # A correction and an eval scenario whose content (after the set's common words) overlaps at least
    # this much stop the study: the eval set would test what was trained.
    leak_threshold: float = Field(0.6, gt=0, le=1)
    references: References = References()
    # Per eval family, the sentence the report prints under the per-family table (what the behavior
    # means there, e.g. for an `inverted` family). Families without a note get none.
    family_notes: dict[str, str] = {}


class DreamModel(Strict):
    """The `model` dream generator: the current model writes new requests and replies."""

    temperature: float = Field(0.8, gt=0)
    max_request_tokens: int = Field(40, gt=0)
    max_reply_tokens: int = Field(48, gt=0)
    n_examples: int = Field(3, gt=0)  # other corrections' requests shown before the parent's, as a list to continue
    n_shots: int = Field(2, ge=0)  # corrections shown as earlier turns before the preferred reply
    attempts_per_dream: int = Field(4, gt=0)
    # The system prompt of the preferred reply: the behavior's own description, nothing behavior-specific.
    system_prompt: str = "{description}"
    request_header: str = "Requests a user sent to an assistant:\n"


# K per correction when the config leaves it to the generator (`k_per_correction: auto`): the template
# generator is cheap (string filling), the model generator writes every dream with the model (~10 s each
# on a CPU), so it gets fewer.
DEFAULT_K = {"template": 10, "model": 2}


class DreamsConfig(Strict):
    # `auto` (resolved when the study config is validated, `resolve_dream_generators`): the template
    # generator when the behavior has a dream vocabulary, the model generator when it has none.
    generators: list[Literal["template", "model"]] = Field(["template"], min_length=1)
    k_per_correction: int = Field(10, ge=0)
    near_duplicate_threshold: float = Field(0.6, gt=0, le=1)
    model: DreamModel = DreamModel()
    chosen: str = ""  # set by `generators: auto`: which generator it chose, and why (printed, reported)

    @field_validator("generators")
    @classmethod
    def _unique_generators(cls, generators: list[str]) -> list[str]:
        if len(set(generators)) != len(generators):
            raise ValueError(f"dreams.generators lists a generator twice: {generators}")
        return generators


def split_k(k: int, generators: list[str]) -> dict[str, int]:
    """K dreams per correction split across generators: equal shares, the remainder to the first ones."""
    n = len(generators)
    return {g: k // n + (1 if i < k % n else 0) for i, g in enumerate(generators)}


class ScreenConfig(Strict):
    """The pre-registered steering screen criterion (docs/design.md §2): which settings get the full evaluation."""
    # Per training set, this many settings get the full evaluation (sampling, OOD, retention, coherence).
    full_evaluations: int = Field(1, ge=0)
    # Eligible settings: retention_kl (KL(base || steered) on the retention prompts, nats) at most this.
    max_retention_kl: float = Field(0.5, gt=0)
    # The screen's compute precision (auto: as model.dtype's auto); the full evaluation uses the model's.
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # Screen on the first N in-distribution scenarios with a reference pair (file order); null = all. The
    # screen's cost is linear in it, and it only ranks settings: the chosen ones get the full evaluation.
    max_scenarios: int | None = Field(None, gt=0)
    # How the multipliers are screened: `grid` scores every multiplier at every layer; `bracket` searches
    # each layer's best from a few of them (per sign: the smallest, the retention bound's edge by
    # bisection, then inward while p_preferred rises). Under retention_kl growing with |multiplier| and
    # p_preferred rising then falling along a side it finds the grid's per-layer best.
    search: Literal["bracket", "grid"] = "grid"  # conf/steering sets the shipped default


class SteeringVectorConfig(Strict):
    """What defines the steering vectors (and steering_cosine's reference layer): the stages that build or
    read the vectors get only these fields, so a change to the screen (multipliers, its dtype, its
    scenarios) reruns the screen alone."""

    layers: list[int] | Literal["all"]

    @field_validator("layers")
    @classmethod
    def _some_layers(cls, layers: list[int] | str) -> list[int] | str:
        if isinstance(layers, list) and not layers:
            raise ValueError("steering.layers is empty: give layer indices or 'all'")
        return layers

    layer_type: Literal["decoder_block"] = "decoder_block"
    read_token_index: int = -1
    # Which contrastive pairs train a vector: the real corrections, and/or real + dreams. Each is swept.
    training_sets: list[Literal["real", "real_and_dreams"]] = Field(["real"], min_length=1)


class SteeringConfig(SteeringVectorConfig):
    multipliers: list[float] = Field(min_length=1)
    screen: ScreenConfig = ScreenConfig()


# What the pilot reads of the train section: not the grid points beside the lrs (n_real, dream_k, seeds,
# extra runs, the control), so adding one leaves the pilot, its grid.json and every finished run as they are.
PILOT_TRAIN_FIELDS = ("lrs", "pilot", "max_steps", "batch_size", "micro_batch_size", "checkpoint_steps",
                      "max_grad_norm", "weight_decay", "divergence_loss", "max_length", "lora")
# Config subsets a stage can ask for instead of a whole section ("section.subset" -> (section, fields)).
SECTION_SUBSETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "steering.vector": ("steering", tuple(SteeringVectorConfig.model_fields)),
    "train.pilot": ("train", PILOT_TRAIN_FIELDS),
}


def stage_sections(composed: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The parts of a composed config named by `keys`: whole sections ("eval") or subsets
    ("steering.vector", see SECTION_SUBSETS). What a Snakemake job's params hold, so it reruns exactly
    when what it reads changes."""
    picked: dict[str, Any] = {}
    for key in keys:
        if key in SECTION_SUBSETS:
            section, fields = SECTION_SUBSETS[key]
            picked[section] = {f: composed[section][f] for f in fields if f in composed[section]}
        else:
            picked[key] = composed[key]
    return picked


class IclConfig(Strict):
    ks: list[int | Literal["all"]] = Field(min_length=1)  # "all": every correction in context

    @field_validator("ks")
    @classmethod
    def _non_negative(cls, ks: list[int | str]) -> list[int | str]:
        if any(isinstance(k, int) and k < 0 for k in ks):
            raise ValueError("icl.ks must be >= 0 or 'all'")
        return ks


class LoraConfig(Strict):
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(min_length=1)


def _lr_or_main(lr: float | str, what: str) -> float | str:
    """An lr that is a positive number or `main` (the grid's first lr)."""
    if not isinstance(lr, str) and lr <= 0:
        raise ValueError(f"{what} must be > 0 or 'main', got {lr}")
    return lr


class NegativeControl(Strict):
    enabled: bool = True
    # `main`: the grid's first lr (the pilot's main one under `lrs: auto`), as for an extra run
    lr: float | Literal["main"] = "main"

    @field_validator("lr")
    @classmethod
    def _positive(cls, lr: float | str) -> float | str:
        return _lr_or_main(lr, "the negative control's lr")
    # own-replies: each prompt gets the base model's own greedy reply (the behavior's null for any
    # behavior: nothing in the replies is new to the model). irrelevant: an unrelated text (the retention
    # set) as its reply; a null only where those texts lack the behavior (formal prose teaches `formal`).
    # shuffled: another example's reply; those replies still carry the behavior (not a clean negative).
    kind: Literal["own-replies", "irrelevant", "shuffled"] = "own-replies"


class ExtraRun(Strict):
    """A grid point outside the lrs x n_real x dream_k x seeds product (e.g. one equal-count comparison)."""

    lr: float | Literal["main"]
    n_real: int | Literal["all"]
    dream_k: int = Field(0, ge=0)
    seed: int = 0

    @field_validator("lr")
    @classmethod
    def _positive(cls, lr: float | str) -> float | str:
        return _lr_or_main(lr, "an extra run's lr")


class PilotConfig(Strict):
    """The pilot (`train.lrs: auto` / `train.checkpoint_steps: auto`; `interventions.pilot`): short probe runs
    on all real corrections, the judged rate measured at every step on a few in-distribution scenarios,
    until one probe crosses inside `window`; then the grid's lrs are placed so their t50 lands at
    `targets` x max_steps, by t50 ~ lr^-beta (beta measured from two crossing probes, else `beta`)."""

    start_lr: float = Field(4e-3, gt=0)  # the first probe (high: a fast probe stops early, a slow one runs max_steps)
    factor: float = Field(4.0, gt=1)  # the largest step between probes (x or /)
    max_probes: int = Field(3, gt=0)
    window: tuple[float, float] = (0.25, 0.75)  # a probe crossing inside (x max_steps) ends the probing
    targets: list[float] = Field([0.6, 0.4], min_length=1)  # predicted t50 / max_steps per chosen lr, main first
    beta: float = Field(1.0, gt=0)  # t50 ~ lr^-beta when fewer than two probes crossed inside the budget
    beta_range: tuple[float, float] = (0.25, 4.0)  # a measured beta is clipped to this
    max_scenarios: int = Field(12, gt=0)  # the first N in-distribution scenarios with a reference pair
    n_samples: int = Field(2, gt=0)  # replies per scenario at each step
    above_steps: int = Field(4, gt=0)  # a probe stops after this many consecutive steps at or above the threshold
    seed: int = 1000  # the probes' training seed: not one of the grid's
    n_checkpoints: int = Field(5, ge=2)  # `checkpoint_steps: auto`: evaluated checkpoints per run (last included)

    @field_validator("window")
    @classmethod
    def _ordered(cls, window: tuple[float, float]) -> tuple[float, float]:
        if not 0 < window[0] < window[1] <= 1:
            raise ValueError(f"train.pilot.window must satisfy 0 < low < high <= 1, got {list(window)}")
        return window

    @field_validator("targets")
    @classmethod
    def _fractions(cls, targets: list[float]) -> list[float]:
        if any(not 0 < t <= 1 for t in targets):
            raise ValueError(f"train.pilot.targets are fractions of max_steps in (0, 1], got {targets}")
        return targets


class TrainRecipe(Strict):
    """How every run trains: what a single run's job depends on (not which runs the grid holds)."""

    @classmethod
    def of(cls, train: dict[str, Any]) -> TrainRecipe:
        """The recipe from a train section, with or without the grid keys (a full config works too)."""
        return cls.model_validate({k: v for k, v in train.items() if k not in GRID_KEYS})

    max_steps: int = Field(gt=0)
    batch_size: int = Field(0, ge=0)
    micro_batch_size: int = Field(4, gt=0)
    # `auto`: the pilot places `pilot.n_checkpoints` of them around the predicted crossings (the runs save
    # an adapter at every step; evaluation reads the placed ones).
    checkpoint_steps: list[int] | Literal["auto"] = Field(min_length=1)
    max_grad_norm: float | None = None
    weight_decay: float = Field(0.0, ge=0)
    divergence_loss: float = Field(20.0, gt=0)
    max_length: int = Field(256, gt=8)
    lora: LoraConfig

    @model_validator(mode="after")
    def _checkpoints_within_steps(self) -> TrainRecipe:
        if self.checkpoint_steps == "auto":
            return self
        bad = [s for s in self.checkpoint_steps if not 0 < s <= self.max_steps]
        if bad:
            raise ValueError(f"train.checkpoint_steps {bad} outside 1..max_steps={self.max_steps}")
        return self


GRID_KEYS = ("lrs", "n_real", "dream_k", "seeds", "extra_runs", "negative_control", "pilot")


class TrainConfig(TrainRecipe):
    """The recipe plus the grid: lrs x n_real x dream_k x seeds, extra runs, the negative control."""

    # `auto`: chosen by the pilot stage from data (results/pilot/grid.json); a list skips the pilot.
    lrs: list[float] | Literal["auto"] = Field(min_length=1)
    n_real: list[int | Literal["all"]] = Field(min_length=1)
    dream_k: list[int] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    extra_runs: list[ExtraRun] = []
    negative_control: NegativeControl = NegativeControl()
    pilot: PilotConfig = PilotConfig()

    @property
    def needs_pilot(self) -> bool:
        """Whether the grid's lrs or its checkpoints are left to the pilot stage."""
        return self.lrs == "auto" or self.checkpoint_steps == "auto"

    @field_validator("lrs", "checkpoint_steps", mode="before")
    @classmethod
    def _list_or_auto(cls, value: Any, info: Any) -> Any:
        """One message for either wrong form (pydantic would give one per member of the union)."""
        what = {"lrs": "learning rates", "checkpoint_steps": "steps"}[info.field_name]
        if isinstance(value, str) and value != "auto":
            raise ValueError(f"expected a list of {what} or 'auto', got {value!r}")
        if isinstance(value, list) and not value:
            raise ValueError(f"List should have at least 1 item (a list of {what}, or 'auto')")
        return value

    @field_validator("lrs")
    @classmethod
    def _positive_lrs(cls, lrs: list[float] | str) -> list[float] | str:
        if isinstance(lrs, list) and any(lr <= 0 for lr in lrs):
            raise ValueError(f"every learning rate must be > 0, got {lrs}")
        return lrs

    @field_validator("n_real", "dream_k")
    @classmethod
    def _positive_counts(cls, values: list[Any]) -> list[Any]:
        if any(v != "all" and v < 0 for v in values):
            raise ValueError(f"counts must be >= 0, got {values}")
        return values

    def recipe(self) -> dict[str, Any]:
        """The recipe alone, as JSON-ready data: a run's job depends on this, not on the grid."""
        return self.model_dump(mode="json", exclude=set(GRID_KEYS))


class AdaptiveSampling(Strict):
    """How many replies to sample per scenario (docs/design.md §6): in rounds, until the rate's interval answers.

    In-distribution (every checkpoint): stop once the rate's clustered 95% interval lies wholly below
    `band[0]` or above `band[1]`, i.e. the checkpoint is clearly before or after the flip; checkpoints
    near the threshold keep sampling up to `max_samples` per scenario. Out-of-distribution families
    (sampled only where Q5 needs them: the base model, each run's last checkpoint and, with
    `ood_at_best`, its best one): sample
    until the interval's half-width is at most `ood_half_width`, up to `ood_max_samples`.
    """

    band: tuple[float, float] = (0.35, 0.65)
    samples_per_round: int = Field(2, gt=0)
    max_samples: int = Field(8, gt=0)
    ood_half_width: float = Field(0.15, gt=0, lt=0.5)
    ood_max_samples: int = Field(6, gt=0)

    @field_validator("band")
    @classmethod
    def _ordered(cls, band: tuple[float, float]) -> tuple[float, float]:
        if not 0 < band[0] <= band[1] < 1:
            raise ValueError(f"eval.adaptive.band must satisfy 0 < low <= high < 1, got {list(band)}")
        return band


class EvalConfig(Strict):
    # An int for every family, or per family with an optional "default"; null = every scenario.
    max_scenarios_per_family: int | dict[str, int] | None = None
    n_samples: int = Field(2, gt=0)  # first round of replies per sampled scenario (see `adaptive`)
    adaptive: AdaptiveSampling = AdaptiveSampling()
    # Sample and score every out-of-distribution scenario at every checkpoint (not only where Q5 needs
    # them); otherwise checkpoints in between score the first `ood_subset_per_family` of each other family.
    ood_every_checkpoint: bool = False
    ood_subset_per_family: int = Field(3, ge=0)
    # Also sample every family at each run's best in-distribution checkpoint where it is not the last
    # (Q5 then reads the best of those); false: only at the last, a checkpoint fixed before the data.
    ood_at_best: bool = True
    temperature: float = Field(0.7, gt=0)
    max_new_tokens: int = Field(40, gt=0)
    batch_size: int = Field(16, gt=0)
    max_retention_prompts: int = Field(12, gt=0)

    @field_validator("max_scenarios_per_family")
    @classmethod
    def _positive_counts(cls, value: int | dict[str, int] | None) -> int | dict[str, int] | None:
        counts = value.values() if isinstance(value, dict) else [value] if value is not None else []
        if any(c <= 0 for c in counts):
            raise ValueError(f"scenario counts must be > 0, got {value}")
        return value


class BenchGenerator(Strict):
    """One simulation generator of the forecast benchmark: the model fitted to the study
    (`forecast.bench_model.SimModel`) with these departures from it, each outside some forecaster's model
    class (all defaults: the fitted model itself). Pre-registered in conf/forecast/, never tuned on."""

    description: str = ""
    floor: float = Field(0.0, ge=0, lt=1)  # rate = floor + (ceiling - floor) * logistic(a + b x)
    ceiling: float = Field(1.0, gt=0, le=1)
    plateau: float | None = Field(None, gt=0)  # the metric's rise saturates at this multiple of the rise to cross
    onset: tuple[float, float] | None = None  # flat until a step drawn uniformly in these fractions of max_steps
    onset_speedup: float = Field(1.0, gt=0)  # then the trajectory runs this much faster
    bend_at: float | None = Field(None, gt=0, lt=1)  # a bend of the trajectory at this fraction of max_steps
    bend_factor: tuple[float, float] = (1.0, 1.0)  # after it, time runs faster by a factor log-uniform in this
    noise_scale: float = Field(1.0, gt=0)  # x the fitted per-checkpoint noise of the metric
    noise_ar: float = Field(0.0, ge=0, lt=1)  # its AR(1) coefficient (checkpoint to checkpoint)
    scenario_exponent: tuple[float, float] | None = None  # each scenario its own power, uniform in this range
    scenario_delay: float = Field(0.0, ge=0, lt=1)  # and its own delay, up to this fraction of max_steps
    design: Literal["log_uniform", "study"] = "log_uniform"  # lrs log-uniform, or the study's own runs


class ForecastBenchConfig(Strict):
    """The simulation benchmark (`phaseflip.forecast.bench`): runs drawn from a model fitted to the study."""

    n_runs: int = Field(120, gt=0)  # per generator
    runs_per_study: int = Field(6, ge=3)  # each simulated study forecasts leave-one-configuration-out
    control_share: float = Field(0.15, ge=0, lt=1)
    n_bootstrap: int = Field(100, gt=1)
    seed: int = 0
    processes: int = Field(2, gt=0)
    generators: dict[str, BenchGenerator] = Field(default_factory=lambda: {"fitted": BenchGenerator()},
                                                  min_length=1)
    only: list[str] | None = None  # run these generators only (a quick preset); None: every one

    @model_validator(mode="after")
    def _known_generators(self) -> ForecastBenchConfig:
        unknown = set(self.only or []) - set(self.generators)
        if unknown:
            raise ValueError(f"forecast.bench.only names generators not in forecast.bench.generators: "
                             f"{sorted(unknown)}")
        return self


class RecalibrationConfig(Strict):
    """Quantile recalibration of one method's forecasts (`phaseflip.forecast.recalibration`) from the
    PITs of its forecasts of the other configurations' finished runs."""

    method: Literal["pooled_link", "per_scenario", "linear"] | None = "pooled_link"  # None: off
    prior_pits: float = Field(5.0, ge=0)  # pseudo-PITs of a calibrated forecaster (uniform) it shrinks towards
    bandwidth: float = Field(0.25, gt=0)  # Gaussian kernel over origin fraction: PITs from similar origins count more


class InferenceConfig(Strict):
    """What the report's comparisons test and how (`stats.mirage`, `stats.differences`), fixed before any result:
    the level, the smallest effects of interest the power statements are sized for, and the mirage test."""

    alpha: float = Field(0.05, gt=0, lt=1)  # every test and verdict (two-sided); Q5's family verdicts: Holm
    power: float = Field(0.8, gt=0, lt=1)
    smallest_t50_difference: float = Field(2.0, gt=0)  # steps: the effect seeds per arm are planned for
    smallest_rate_difference: float = Field(0.15, gt=0, lt=1)  # of behavior_rate
    mirage_link_df: int = Field(8, ge=1)  # the null's spline of the continuous metric (columns)
    mirage_step_df: int = Field(2, ge=1)  # step terms the alternative adds (polynomial degree)
    mirage_draws: int = Field(1999, ge=99)  # wild score bootstrap draws


class ForecastConfig(Strict):
    flip_threshold: float = Field(0.5, gt=0, lt=1)
    continuous_metric: Literal["p_preferred", "margin", "forced_choice"] = "p_preferred"
    interval: float = Field(0.95, gt=0, lt=1)  # of t50 (the measurement)
    n_bootstrap: int = Field(200, gt=1)  # of t50
    # The forecast (from every evaluated checkpoint): its pre-registered primary method, the draws per
    # forecast, and the extrapolation's horizon (crossings later than horizon_factor x max_steps: "beyond").
    primary: Literal["pooled_link", "per_scenario", "lr_scaling", "linear", "climatology", "grad_norm_peak",
                     "change_point", "pooled_link_recalibrated"] = "pooled_link"
    forecast_interval: float = Field(0.8, gt=0, lt=1)  # lr_scaling's prediction interval (the report's table)
    forecast_bootstrap: int = Field(200, gt=1)
    horizon_factor: float = Field(3.0, ge=1)
    recalibration: RecalibrationConfig = RecalibrationConfig()
    inference: InferenceConfig = InferenceConfig()
    bench: ForecastBenchConfig = ForecastBenchConfig()

    @model_validator(mode="after")
    def _recalibrated_primary(self) -> ForecastConfig:
        if self.primary.endswith("_recalibrated") and self.primary != f"{self.recalibration.method}_recalibrated":
            raise ValueError(f"forecast.primary {self.primary!r} needs forecast.recalibration.method: "
                             f"{self.primary.removesuffix('_recalibrated')!r} (it is {self.recalibration.method!r})")
        return self


class StudyInfo(Strict):
    name: str
    description: str = ""


class StudyConfig(Strict):
    study: StudyInfo
    model: ModelConfig
    behavior: BehaviorConfig
    dreams: DreamsConfig
    steering: SteeringConfig
    icl: IclConfig
    train: TrainConfig
    eval: EvalConfig
    forecast: ForecastConfig
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = None
    # Written by `make study` into params.yaml (dtype_choice.compute_record): the device and the dtypes
    # `auto` resolved to there, so DVC sees a change of them. Absent from conf/.
    compute: dict[str, str] | None = None

    @model_validator(mode="after")
    def _threshold_in_band(self) -> StudyConfig:
        low, high = self.eval.adaptive.band
        if not low <= self.forecast.flip_threshold <= high:
            raise ValueError(f"forecast.flip_threshold={self.forecast.flip_threshold} lies outside "
                             f"eval.adaptive.band={list(self.eval.adaptive.band)}: the band must contain it")
        return self

    @model_validator(mode="before")
    @classmethod
    def _resolve_dream_generators(cls, raw: Any) -> Any:
        return resolve_dream_generators(raw) if isinstance(raw, dict) else raw

    @model_validator(mode="after")
    def _template_needs_vocab(self) -> StudyConfig:
        quota = split_k(self.dreams.k_per_correction, list(self.dreams.generators)).get("template", 0)
        if quota and self.behavior.data.dream_vocab is None:
            raise ValueError(
                f"dreams.generators includes 'template' with k_per_correction={self.dreams.k_per_correction}, "
                f"but behavior {self.behavior.name!r} has no data.dream_vocab: add one, or choose "
                "dreams=model or dreams.k_per_correction=0 (no vocabulary needed)"
            )
        return self

    @model_validator(mode="after")
    def _dream_k_available(self) -> StudyConfig:
        ks = self.train.dream_k + [r.dream_k for r in self.train.extra_runs]
        too_many = [k for k in ks if k > self.dreams.k_per_correction]
        if too_many:
            raise ValueError(
                f"train.dream_k {too_many} exceeds dreams.k_per_correction={self.dreams.k_per_correction}"
            )
        return self


def resolve_dream_generators(raw: dict[str, Any]) -> dict[str, Any]:
    """`dreams.generators: auto` -> the template generator where the behavior has a dream vocabulary, the
    model generator where it has none; `dreams.k_per_correction: auto` -> DEFAULT_K of the first generator.
    An explicit list or number is kept. Returns a new dict (the input is not changed)."""
    dreams = raw.get("dreams")
    if not isinstance(dreams, dict):
        return raw
    dreams = dict(dreams)
    if dreams.get("generators") == "auto":
        behavior = raw.get("behavior") or {}
        has_vocab = bool((behavior.get("data") or {}).get("dream_vocab"))
        dreams["generators"] = ["template"] if has_vocab else ["model"]
        name = behavior.get("name", "?")
        dreams["chosen"] = (f"auto: {dreams['generators'][0]} (behavior {name!r} "
                            f"{'has a data.dream_vocab' if has_vocab else 'has no data.dream_vocab'})")
    if dreams.get("k_per_correction") == "auto":
        generators = dreams.get("generators") or ["template"]
        dreams["k_per_correction"] = DEFAULT_K.get(generators[0], 2) if isinstance(generators, list) else 2
    return {**raw, "dreams": dreams}


def choice_lines(cfg: StudyConfig) -> list[str]:
    """Terminal lines for the choices the config left to the data: the dream generator, the pilot."""
    lines = []
    if cfg.dreams.chosen:
        lines.append(f"phaseflip: dreams generator {cfg.dreams.chosen}, k={cfg.dreams.k_per_correction} per "
                     "correction; dreams=template or dreams=model chooses")
    if cfg.train.needs_pilot:
        left = [k for k in ("lrs", "checkpoint_steps") if getattr(cfg.train, k) == "auto"]
        lines.append(f"phaseflip: train.{' and train.'.join(left)} auto: the pilot stage chooses them "
                     "(results/pilot/grid.json); a list in the config skips it")
    return lines


def _override_value(value: Any) -> str:
    """Render a Snakemake --config value back into Hydra's override grammar."""
    if isinstance(value, list):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def to_overrides(snakemake_config: dict[str, Any], prefix: str = "") -> list[str]:
    """Snakemake `--config` entries -> Hydra overrides.

    Snakemake keys cannot contain dots, so `__` stands for `.`, and nested YAML values are flattened:
    `study=smoke train__lrs=[1e-4,1e-3]` or `'train={lrs: [1e-4, 1e-3]}'` -> `train.lrs=[1e-4,1e-3]`.
    """
    overrides = []
    for key, value in snakemake_config.items():
        path = f"{prefix}{key}".replace("__", ".")
        if isinstance(value, dict):
            overrides += to_overrides(value, prefix=f"{path}.")
        else:
            overrides.append(f"{path}={_override_value(value)}")
    return overrides


def compose(overrides: list[str] | None = None, root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """Compose `<root>/conf/config.yaml` with Hydra overrides into a plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
        composed = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"cannot compose conf/ with overrides {overrides}: {err}") from err
    assert isinstance(composed, dict)
    return composed  # type: ignore[return-value]


def validate(raw: dict[str, Any], source: str = "config") -> StudyConfig:
    """Validate a composed config; errors name every bad key and what was expected."""
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as err:
        lines = [f"invalid {source}:"]
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            lines.append(f"  {where}: {e['msg']} (got {e.get('input')!r})"[:400])
        raise ConfigError("\n".join(lines)) from None


def check_data_paths(cfg: StudyConfig, root: Path = PROJECT_ROOT) -> None:
    """Behavior data must exist and stay inside the project's data/ unless given as absolute paths."""
    data_root = (root / "data").resolve()
    for field, rel in cfg.behavior.data.model_dump().items():
        if rel is None:  # an optional file not given
            continue
        path = Path(rel)
        if not path.is_absolute():
            resolved = (root / path).resolve()
            if not resolved.is_relative_to(data_root):
                raise ConfigError(
                    f"behavior.data.{field}={rel!r} points outside {data_root}; give an absolute path "
                    "to use data elsewhere"
                )
            path = resolved
        if not path.is_file():
            raise ConfigError(f"behavior.data.{field}: file not found: {path}")


def load_study_config(snakemake_config: dict[str, Any] | None = None, check_paths: bool = True,
                      root: Path = PROJECT_ROOT) -> StudyConfig:
    """The config for a Snakemake run in project `root`: a composed config (params.yaml) or Hydra overrides."""
    raw = dict(snakemake_config or {})
    if isinstance(raw.get("model"), dict):  # already composed (e.g. --configfile params.yaml)
        cfg = validate(raw, "composed config")
    else:
        cfg = validate(compose(to_overrides(raw), root), f"config with overrides {to_overrides(raw)}")
    if check_paths:
        check_data_paths(cfg, root)
    return cfg


def resolve_dtypes(cfg: StudyConfig, source: str = "params.yaml") -> tuple[dict[str, str], list[str]]:
    """The compute record for this machine (dtype_choice.compute_record: the device and what
    `model.dtype` and `steering.screen.dtype` resolve to here; an emulated bfloat16 is refused unless
    allowed) and one line per choice saying why. Snakemake puts the record into every stage's params, so
    a machine that resolves otherwise reruns what it affects. A `compute` record in `cfg` from another
    machine is refused (ConfigError)."""
    from phaseflip.dtype_choice import check_compute_record, compute_record, study_dtypes
    from phaseflip.io import DataError, pick_device

    try:
        device = pick_device(cfg.device)
        choices = study_dtypes(cfg.model.dtype, cfg.steering.screen.dtype, device, cfg.model.allow_emulated_bfloat16)
        record = compute_record({k: c.name for k, c in choices.items()}, device)
        check_compute_record(cfg.compute, record, source)
    except DataError as err:
        raise ConfigError(str(err)) from None
    return record, [f"phaseflip: compute {c.line()}" for c in choices.values()]


def write_params_file(overrides: list[str], path: Path, root: Path = PROJECT_ROOT) -> StudyConfig:
    """Compose `<root>/conf` with Hydra `overrides` into `path` (params.yaml) exactly as `dvc exp run -S`
    does (DVC's own `compose_and_dump`, with this repository's `.dvc/config` hydra settings), after
    validating the result: a bad override fails here and leaves the previous file as it was."""
    from dvc.utils.hydra import compose_and_dump

    cfg = validate(compose(overrides, root), f"config with overrides {overrides}")
    record, lines = resolve_dtypes(cfg, "the overrides")
    print("\n".join(lines), file=sys.stderr)
    if cfg.compute is None:
        overrides = [*overrides, *(f"+compute.{k}={v}" for k, v in record.items())]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")  # DVC picks the dumper by the suffix
    try:
        compose_and_dump(tmp, str(root / "conf"), None, "config", str(root), list(overrides))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return cfg


USAGE = ("usage: python -m phaseflip.config [--write PARAMS_FILE] [key=value ...]\n"
         "  prints the composed, validated study config (or writes it as params.yaml); overrides are Hydra's")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    write = None
    if args[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if args[:1] == ["--write"]:
        if len(args) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        write, args = Path(args[1]), args[2:]
    if bad := [a for a in args if "=" not in a]:
        print(f"phaseflip.config: {bad[0]!r} is not an override (expected key=value)\n{USAGE}", file=sys.stderr)
        return 2
    try:
        if write is not None:
            write_params_file(args, write)
            print(f"phaseflip: {write} composed from conf/ with overrides {args or '(none)'}")
            return 0
        cfg = load_study_config(dict(a.split("=", 1) for a in args), check_paths=False)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
