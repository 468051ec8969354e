from pathlib import Path

import numpy as np
import pytest
import torch

from phaseflip.config import SteeringConfig
from phaseflip.data import Example
from phaseflip.interventions.steering import load_vector, save_vector, single_layer, train_vector
from phaseflip.io import DataError

PAIRS = [
    Example(id=f"c{i}", messages=[{"role": "user", "content": f"Task {i}: use tabs."}],
            preferred="Understood — tabs only.", rejected="Sure! Alternatively, use spaces.")
    for i in range(3)
]


def vector(model, tok):  # type: ignore[no-untyped-def]
    return train_vector(model, tok, PAIRS, SteeringConfig(layers=[0, 1], multipliers=[1.0]))


def test_vector_round_trip_through_safetensors(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    v = vector(model, tok)
    save_vector(v, tmp_path / "v.safetensors", {"pair_ids": ["c0", "c1", "c2"]})
    loaded, meta = load_vector(tmp_path / "v.safetensors")
    assert meta["pair_ids"] == ["c0", "c1", "c2"]
    assert loaded.layer_type == v.layer_type
    for layer, act in v.layer_activations.items():
        assert torch.equal(loaded.layer_activations[layer], act)


def _hidden(model, ids):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model(ids, output_hidden_states=True).hidden_states


def test_steering_changes_only_the_chosen_layer_and_is_removed(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    v = vector(model, tok)
    ids = tok("Please use tabs.", return_tensors="pt").input_ids
    before = _hidden(model, ids)
    handle = single_layer(v, 1).patch_activations(model, multiplier=4.0)
    during = _hidden(model, ids)
    handle.remove()
    after = _hidden(model, ids)
    # hidden_states[i + 1] is decoder block i's output: block 0 untouched, block 1 shifted.
    assert torch.allclose(during[1], before[1])
    assert not torch.allclose(during[2], before[2])
    assert all(torch.allclose(a, b) for a, b in zip(after, before, strict=True))


def test_truncated_forward_gives_the_same_vector_and_restores_the_model(tiny) -> None:  # type: ignore[no-untyped-def]
    """Training on blocks 0..L only (no LM head) reads the same activations as the whole model."""
    from steering_vectors import train_steering_vector

    from phaseflip.interventions.steering import forward_up_to, training_pairs

    model, tok = tiny
    ids = tok("Use tabs.", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    head, n_blocks = model.get_output_embeddings(), len(model.get_decoder().layers)
    whole = train_steering_vector(model, tok, training_pairs(tok, PAIRS), layers=[0], batch_size=2)
    with forward_up_to(model, 0):
        assert len(model.get_decoder().layers) == 1
        cut = train_steering_vector(model, tok, training_pairs(tok, PAIRS), layers=[0], batch_size=2)
    assert torch.allclose(whole.layer_activations[0], cut.layer_activations[0], atol=1e-6)
    assert model.get_output_embeddings() is head and len(model.get_decoder().layers) == n_blocks
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits)


def _scenarios() -> list[Example]:
    return [Example(id=f"e{i}", messages=[{"role": "user", "content": f"Question {i}: please use tabs."}],
                    preferred="Understood — tabs only, as you asked.", rejected="Sure! Alternatively, use spaces.",
                    family="in_distribution") for i in range(4)]


RETENTION = ["The river runs to the sea.", "Bread needs flour, water and time."]


def test_screen_equals_the_full_evaluation_of_a_setting(tiny) -> None:  # type: ignore[no-untyped-def]
    """Running only the blocks above the layer gives the evaluator's own p_preferred and retention_kl."""
    from phaseflip.config import EvalConfig, load_study_config
    from phaseflip.interventions.steering import screen
    from phaseflip.measure.evaluator import Evaluator
    from phaseflip.measure.judge import make_judge

    model, tok = tiny
    v = vector(model, tok)
    table = screen(model, tok, {"real": v}, _scenarios(), RETENTION, [-3.0, 2.0]).set_index(["layer", "multiplier"])
    assert len(table) == 4  # 2 layers x 2 multipliers
    judge = make_judge(load_study_config({"study": "smoke"}).behavior)
    evaluator = Evaluator(tok, _scenarios(), RETENTION, judge, EvalConfig(n_samples=1, max_new_tokens=2))
    evaluator.set_references(model)
    for layer in (0, 1):
        handle = single_layer(v, layer).patch_activations(model, multiplier=2.0)
        rows = {(r["family"], r["metric"]): r for r in evaluator.evaluate(model, step=0)}
        handle.remove()
        got = table.loc[(layer, 2.0)]
        for metric in ("margin", "p_preferred", "forced_choice"):
            want = rows[("in_distribution", metric)]
            assert abs(got[metric] - want["value"]) < 1e-4
            assert abs(got[f"{metric}_lo"] - want["lo"]) < 1e-4 and abs(got[f"{metric}_hi"] - want["hi"]) < 1e-4
        assert abs(got["retention_kl"] - rows[("all", "retention_kl")]["value"]) < 1e-5


def _planted(model, tok):  # type: ignore[no-untyped-def]
    """A vector that helps only at the last layer: there it points from the rejected reply's token
    embeddings to the preferred reply's (tied embeddings: it raises the preferred tokens' logits)."""
    emb = model.get_input_embeddings().weight.detach()
    pref = emb[tok(_scenarios()[0].preferred, add_special_tokens=False).input_ids].mean(0)
    rej = emb[tok(_scenarios()[0].rejected, add_special_tokens=False).input_ids].mean(0)
    direction = (pref - rej) / (pref - rej).norm()
    from steering_vectors import SteeringVector

    return SteeringVector({0: torch.zeros_like(direction), 1: direction}, "decoder_block")


def test_screen_ranks_a_planted_best_setting_first(tiny) -> None:  # type: ignore[no-untyped-def]
    from phaseflip.config import ScreenConfig
    from phaseflip.interventions.steering import screen, screen_rows, select

    model, tok = tiny
    table = screen(model, tok, {"real": _planted(model, tok)}, _scenarios(), RETENTION, [-4.0, 1.0, 4.0])
    assert table.attrs["settings_per_s"] > 0
    ranked = select(table, ScreenConfig(full_evaluations=1, max_retention_kl=100.0))
    best = ranked[ranked.selected]
    assert len(best) == 1 and (int(best.layer.iloc[0]), best.multiplier.iloc[0]) == (1, 4.0)
    assert ranked.loc[best.index[0], "p_preferred"] > ranked.p_preferred.drop(best.index).max()
    # The retention bound is part of the criterion: below the planted setting's KL it is not eligible.
    bound = float(best.retention_kl.iloc[0]) * 0.99
    capped = select(table, ScreenConfig(full_evaluations=2, max_retention_kl=bound))
    assert not capped.loc[best.index[0], "eligible"] and capped.loc[best.index[0], "rank"] != 1
    assert (capped[capped.selected].retention_kl <= bound).all() and capped.selected.sum() == 2
    rows = screen_rows(capped)
    assert {r["metric"] for r in rows} == {"screen_margin", "screen_p_preferred", "screen_forced_choice",
                                           "screen_retention_kl", "screen_rank"}


def test_screen_refuses_scenarios_without_reference_pairs(tiny) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from phaseflip.interventions.steering import screen
    from phaseflip.io import DataError

    model, tok = tiny
    bare = [Example(id="e", messages=[{"role": "user", "content": "Q"}], family="in_distribution")]
    with pytest.raises(DataError, match="in_distribution eval scenario has both"):
        screen(model, tok, {"real": _planted(model, tok)}, bare, RETENTION, [1.0])


def test_screen_and_evaluate_fully_evaluates_the_selected_setting_only(tiny) -> None:  # type: ignore[no-untyped-def]
    from phaseflip.config import EvalConfig, load_study_config
    from phaseflip.interventions.steering import screen_and_evaluate
    from phaseflip.measure.evaluator import Evaluator
    from phaseflip.measure.judge import make_judge

    model, tok = tiny
    judge = make_judge(load_study_config({"study": "smoke"}).behavior)
    cfg = SteeringConfig(layers=[0, 1], multipliers=[-4.0, 4.0],
                         screen={"full_evaluations": 1, "max_retention_kl": 100.0, "dtype": "float32"})
    evaluator = Evaluator(tok, _scenarios(), RETENTION, judge, EvalConfig(n_samples=1, max_new_tokens=2))
    per_scenario: list[dict] = []  # type: ignore[type-arg]
    table, rows, seconds = screen_and_evaluate(model, tok, {"real": _planted(model, tok)}, evaluator, cfg,
                                               per_scenario)
    assert len(table) == 4 and table.selected.sum() == 1 and set(seconds) == {"screen", "full"}
    chosen = table[table.selected].iloc[0]
    full = {(r["layer"], r["multiplier"]) for r in rows if r["metric"] == "behavior_rate"}
    assert full == {(int(chosen.layer), float(chosen.multiplier))}  # sampled: the selected setting alone
    # its per-scenario counts, tagged with the setting (the report's held-out selection reads them)
    sampled = [r for r in per_scenario if r["n"] > 0]
    assert {(r["training_set"], r["layer"], r["multiplier"]) for r in per_scenario} == \
        {("real", int(chosen.layer), float(chosen.multiplier))}
    assert {r["scenario_id"] for r in sampled} == {ex.id for ex in _scenarios() if ex.family == "in_distribution"}
    assert sum(r["metric"] == "screen_rank" for r in rows) == 4  # the whole screen is reported
    bare = Evaluator(tok, [Example(id="e", messages=[{"role": "user", "content": "Q"}], family="in_distribution")],
                     RETENTION, judge, EvalConfig(n_samples=1, max_new_tokens=2))
    empty, none, _ = screen_and_evaluate(model, tok, {"real": _planted(model, tok)}, bare, cfg)
    assert empty.empty and none == []


def test_bracketing_screen_scores_a_subset_of_the_grid_with_the_same_numbers(tiny) -> None:  # type: ignore[no-untyped-def]
    from phaseflip.interventions.steering import screen

    model, tok = tiny
    v = vector(model, tok)
    multipliers = [-4.0, -1.0, 1.0, 4.0, 16.0]
    grid = screen(model, tok, {"real": v}, _scenarios(), RETENTION, multipliers, search="grid")
    bracket = screen(model, tok, {"real": v}, _scenarios(), RETENTION, multipliers, search="bracket",
                     max_retention_kl=0.05)
    assert len(grid) == 10 and set(bracket.layer) == {0, 1} and len(bracket) < len(grid)
    merged = bracket.merge(grid, on=["training_set", "layer", "multiplier"], suffixes=("", "_grid"))
    assert len(merged) == len(bracket)
    for metric in ("margin", "p_preferred", "retention_kl"):
        assert np.allclose(merged[metric], merged[f"{metric}_grid"], atol=1e-6)


def test_the_steering_cosine_reference_is_the_middle_steered_layer() -> None:
    from phaseflip.config import SteeringVectorConfig
    from phaseflip.interventions.steering import reference_layer

    assert reference_layer(SteeringVectorConfig(layers="all"), 30) == 15
    assert reference_layer(SteeringVectorConfig(layers=[2, 4, 9]), 30) == 4
    with pytest.raises(DataError, match="outside"):
        reference_layer(SteeringVectorConfig(layers=[31]), 30)


def test_the_steering_table_puts_the_base_model_first_as_multiplier_zero() -> None:
    from phaseflip.interventions.steering import steering_table

    base = [{"family": "in_distribution", "metric": "behavior_rate", "value": 0.1}]
    swept = [{"family": "in_distribution", "metric": "behavior_rate", "value": 0.7, "training_set": "real",
              "layer": 3, "multiplier": 4.0}]
    assert steering_table(base, swept) == [dict(base[0], training_set="none", layer=-1, multiplier=0.0), *swept]


@pytest.mark.parametrize("native", [True, False])
def test_the_screen_dtype_is_resolved_for_the_device_and_refused_where_emulated(
        monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    from phaseflip import dtype_choice
    from phaseflip.config import load_study_config
    from phaseflip.interventions.steering import with_screen_dtype

    monkeypatch.setattr(dtype_choice, "cpu_has_native_bfloat16", lambda: native)
    study = load_study_config({"study": "smoke"})

    def screen(dtype: str) -> SteeringConfig:
        return study.steering.model_copy(update={"screen": study.steering.screen.model_copy(update={"dtype": dtype})})

    resolved, choice = with_screen_dtype(screen("auto"), study.model, "cpu")
    assert resolved.screen.dtype == choice.name == ("bfloat16" if native else "float32")
    if native:
        assert with_screen_dtype(screen("bfloat16"), study.model, "cpu")[0].screen.dtype == "bfloat16"
    else:
        with pytest.raises(DataError, match="steering.screen.dtype"):
            with_screen_dtype(screen("bfloat16"), study.model, "cpu")
        allowed = study.model.model_copy(update={"allow_emulated_bfloat16": True})
        assert with_screen_dtype(screen("bfloat16"), allowed, "cpu")[0].screen.dtype == "bfloat16"
