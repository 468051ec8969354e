import numpy as np
import pandas as pd
import pytest

from phaseflip.forecast.scores import pit_coverage, score_forecasts

H = 16.0


def test_pit_coverage_of_a_run_that_does_not_cross_is_the_share_of_its_tie_inside_the_band() -> None:
    half_beyond = np.r_[np.linspace(2, 14, 50), np.full(50, np.inf)]
    # PIT uniform on [0.5, 1]; the central 80% band (0.1, 0.9) holds 0.4 of that 0.5
    assert pit_coverage(half_beyond, None, H, 0.8) == pytest.approx(0.8)
    assert pit_coverage(half_beyond, None, H, 0.5) == pytest.approx(0.25 / 0.5)
    assert pit_coverage(np.full(10, np.inf), None, H, 0.8) == pytest.approx(0.8)  # PIT uniform on [0, 1]
    assert pit_coverage(np.linspace(2, 14, 100), None, H, 0.8) == 0.0  # nothing beyond: PIT 1
    # a run that crosses: inside the band or not, as the plain interval says
    assert pit_coverage(half_beyond, 5.0, H, 0.8) == 1.0
    assert pit_coverage(half_beyond, 2.1, H, 0.8) == 0.0


def _censored_forecasts(n: int, width: float, seed: int) -> tuple[list[dict], dict]:
    """n forecasts of a log-normal t50 (median 8-24 steps, so many runs do not cross by H); each truth is
    drawn from a log-normal whose spread is `width` times the forecast's (1: calibrated)."""
    rng = np.random.default_rng(seed)
    rows, truth = [], {}
    for i in range(n):
        mu, sd = np.log(rng.uniform(8, 24)), rng.uniform(0.2, 0.6)
        draws = np.exp(rng.normal(mu, sd, 400))
        draws[draws > H] = np.inf
        q = np.quantile(np.minimum(draws, H), [0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975])
        q = np.where(q >= H, np.inf, q)
        rows.append({"run_id": f"r{i}", "predicted": q[3], "q025": q[0], "q10": q[1], "q25": q[2], "q50": q[3],
                     "q75": q[4], "q90": q[5], "q975": q[6], "_draws": draws})
        t = float(np.exp(rng.normal(mu, width * sd)))
        truth[f"r{i}"] = t if t <= H else None
    return rows, truth


def test_a_calibrated_forecaster_of_a_censored_target_covers_at_the_nominal_rate_by_its_pit() -> None:
    rows, truth = _censored_forecasts(1500, 1.0, 0)
    scored = score_forecasts(rows, truth, H)
    assert 0.3 < (~scored.crosses).mean() < 0.7  # the atom at H matters here
    for k in (50, 80, 95):
        assert scored[f"pit_coverage_{k}"].mean() == pytest.approx(k / 100, abs=0.03)
    # the plain interval holds every run that does not cross once the forecast's mass beyond H exceeds 10%:
    # a calibrated forecaster looks over-covered by it
    assert scored.covered_80.astype(float).mean() > 0.86


def test_pit_coverage_catches_an_overconfident_forecaster() -> None:
    rows, truth = _censored_forecasts(1500, 2.0, 1)  # the truth twice as spread as the forecast says
    scored = score_forecasts(rows, truth, H)
    assert scored.pit_coverage_80.mean() < 0.7


def test_summary_row_without_a_judged_origin_says_so() -> None:
    from phaseflip.forecast.scores import MIN_RUNS, format_summary

    row = {"generator": "this study", "method": "pooled_link", "runs": 3, "runs_crossing": 2,
           "first_winning_origin": None, "first_winning_fraction": None, "skill_linear": 0.1, "skill_linear_lo": -0.2,
           "skill_linear_hi": 0.3, "skill_climatology": 0.5, "skill_climatology_lo": 0.1, "skill_climatology_hi": 0.9,
           "coverage_80": 0.72, "coverage_80_min": float("nan"), "coverage_80_max": float("nan"),
           "interval_coverage_80": 0.8, "brier": 0.0, "brier_climatology": 0.4, "false_alarm_p": 0.0,
           "median_lead_within_25": 0.1, "median_lead_covered_80": 0.1}
    text = format_summary(pd.DataFrame([row]))
    assert f"0.72 (no origin with {MIN_RUNS} forecasts); 0.80" in text
    assert "0.72 (0.60-0.80)" in format_summary(pd.DataFrame([dict(row, coverage_80_min=0.6, coverage_80_max=0.8)]))
