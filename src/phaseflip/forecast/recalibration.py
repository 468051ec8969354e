"""Quantile recalibration of a forecaster from what the study already knows: its PITs on the other runs.

A method's predictive distribution can be too narrow, too wide or shifted in ways its own model class
cannot see (a delayed onset, scenarios that are not copies of each other). The study can measure that
before forecasting a run: forecast each *other* configuration's finished run from its own origins, the
same way (leave-one-configuration-out among the runs that are neither it nor the run being forecast),
and read where its measured t50 fell in each forecast (the randomised PIT of the censored target). A
calibrated forecaster's PITs are uniform; if they are not, the run's forecast is remapped through their
distribution (quantile recalibration, Kuleshov, Fenner & Ermon 2018): the recalibrated CDF is
R(F(t)), with R the distribution of the calibration PITs, so its draws are F's quantiles at R's
quantile levels.

- The run being forecast is never seen: its configuration is excluded from every nested forecast's
  other runs (`LeakageError` otherwise), and only the other runs' measured outcomes enter.
- R is a weighted empirical CDF: PITs from origins at a similar fraction of max_steps weigh more (a
  Gaussian kernel, `bandwidth`), mixed with `prior_pits` pseudo-PITs of a calibrated forecaster (the
  uniform CDF), so a study with few other runs moves the forecast little.
- Nested forecasts are cached per (run, origin, excluded configurations): replicates of one
  configuration share them.

    from phaseflip.forecast.recalibration import Recalibrator
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from phaseflip.config import ForecastConfig
from phaseflip.forecast.methods import METHODS, Context, RunData
from phaseflip.forecast.scores import randomised_pit
from phaseflip.forecast.view import LeakageError, condition, context_for, crossed_by

SUFFIX = "_recalibrated"


def recalibrated_name(method: str) -> str:
    return method + SUFFIX


def remap(draws: np.ndarray, pits: np.ndarray, weights: np.ndarray, prior: float) -> np.ndarray:
    """Draws of the recalibrated distribution: `draws`' quantiles at the quantile levels of R, the
    weighted empirical CDF of `pits` mixed with `prior` pseudo-observations of a uniform PIT. As many
    draws as given, evenly spaced in probability (deterministic). inf draws stay inf."""
    draws = np.sort(np.asarray(draws, float))
    n = len(draws)
    total = float(weights.sum()) + prior
    if n == 0 or total <= 0:
        return draws
    grid = np.linspace(0.0, 1.0, 1001)
    order = np.argsort(pits)
    cum = np.concatenate([[0.0], np.cumsum(weights[order])])
    below = cum[np.searchsorted(pits[order], grid, side="right")]
    r = (below + prior * grid) / total  # R(u): nondecreasing from 0 to 1
    levels = np.interp((np.arange(n) + 0.5) / n, r, grid)  # R^-1 at evenly spaced probabilities
    return np.quantile(draws, np.clip(levels, 0.0, 1.0), method="inverted_cdf")


@dataclass
class Recalibrator:
    """Recalibrates `cfg.recalibration.method` for the runs of one study (all of them, finished)."""

    runs: list[RunData]
    cfg: ForecastConfig
    max_steps: int
    _contexts: dict[frozenset[str], Context] = field(default_factory=dict, repr=False)
    _pits: dict[tuple[str, float, frozenset[str]], float | None] = field(default_factory=dict, repr=False)

    @property
    def method(self) -> str | None:
        return self.cfg.recalibration.method

    def _context(self, excluded: frozenset[str]) -> Context:
        if excluded not in self._contexts:
            others = [r for r in self.runs if r.configuration not in excluded]
            self._contexts[excluded] = context_for(others, self.cfg, self.max_steps,
                                                   zlib.crc32(",".join(sorted(excluded)).encode()))
        return self._contexts[excluded]

    def _pit(self, other: RunData, origin: float, excluded: frozenset[str]) -> float | None:
        """The PIT of the method's forecast of `other` at `origin` (None: crossed by then, or no forecast)."""
        key = (other.run_id, origin, excluded)
        if key not in self._pits:
            ctx = self._context(excluded)
            if any(r.configuration in excluded for r in ctx.others):
                raise LeakageError(f"recalibration of {other.run_id}: an excluded configuration is among its others")
            view = other.prefix(origin)
            pit = None
            if not crossed_by(view, self.cfg.flip_threshold):
                fc = METHODS[str(self.method)](view, origin, ctx)
                if fc.draws is not None and len(fc.draws):
                    draws = condition(np.asarray(fc.draws, float), origin)
                    u = np.random.default_rng(zlib.crc32(f"{other.run_id}@{origin}".encode())).random()
                    pit = randomised_pit(draws, other.t50, self.max_steps, float(u))
            self._pits[key] = pit
        return self._pits[key]

    def calibration_pits(self, run: RunData) -> tuple[np.ndarray, np.ndarray]:
        """(origin fractions, PITs) of the method's forecasts of every other configuration's run at each of
        its origins, each made without `run`'s configuration (nor the other run's own)."""
        fractions, pits = [], []
        for other in self.runs:
            if other.configuration == run.configuration:
                continue
            excluded = frozenset({run.configuration, other.configuration})
            for origin in other.curve.step.to_numpy(float):
                if origin >= self.max_steps:
                    continue
                pit = self._pit(other, float(origin), excluded)
                if pit is not None:
                    fractions.append(origin / self.max_steps)
                    pits.append(pit)
        return np.array(fractions, float), np.array(pits, float)

    def recalibrate(self, run: RunData, origin: float, draws: np.ndarray) -> tuple[np.ndarray, int]:
        """The run's forecast draws at `origin` remapped through the other runs' PITs, and how many PITs."""
        fractions, pits = self.calibration_pits(run)
        if not len(pits):
            return np.asarray(draws, float), 0
        bw = self.cfg.recalibration.bandwidth
        weights = np.exp(-0.5 * ((fractions - origin / self.max_steps) / bw) ** 2)
        out = remap(draws, pits, weights, self.cfg.recalibration.prior_pits)
        return out, len(pits)


def describe(form: str | None, n_pits: int) -> str:
    return f"{form or ''} recalibrated on {n_pits} PIT(s)" if n_pits else f"{form or ''} (no PIT to recalibrate on)"
