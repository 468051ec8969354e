"""Every architecture of the matrix (tiny random models from `transformers`' config classes, the SmolLM2
tokenizer): the fast paths equal the generic ones, each fast path is used exactly where `Architecture`
can prove it exact, and (integration) every stage runs from a local model folder to the forecast."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from _architectures import ARCHITECTURES, save, smollm2_tokenizer
from steering_vectors import SteeringVector

import phaseflip.model.scoring as scoring
from phaseflip.config import ModelConfig, load_study_config
from phaseflip.data import Example
from phaseflip.interventions.steering import _base_pass, _encode, patched_setting, screen
from phaseflip.model import base_model
from phaseflip.model.architecture import FAST, Architecture

ROOT = Path(__file__).resolve().parents[2]
SLIDING = ("upper_blocks", "cache_crop", "decode_cache", "shared_prefix_kv")
# The fast paths each architecture must get (every other one is `fast`): a shortcut that stops
# applying, or one that starts applying where it cannot be proven exact, fails here.
GENERIC = {
    "llama": (), "qwen2": (), "phi3": (), "gpt_neox": (),
    "mistral": SLIDING,  # sliding-window cache layers (its config sets `sliding_window`)
    "gemma2": (*SLIDING, "attention"),  # sliding-window layers; soft-capped attention logits (eager)
    "gemma3": SLIDING,  # hybrid sliding / full cache
    "gpt2": ("upper_blocks",),  # position embeddings are added to the input embedding before block 0
}
SCENARIOS = [Example(id=f"e{i}", messages=[{"role": "user", "content": f"Question {i}: please use tabs " * 3}],
                     preferred="Understood — tabs only, as you asked.", rejected="Sure! Alternatively, use spaces.",
                     family="in_distribution") for i in range(3)]
RETENTION = ["The river runs to the sea, past the mill and the old bridge.", "Bread needs flour, water and time."]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return smollm2_tokenizer()


@pytest.fixture(scope="module", params=ARCHITECTURES)
def materialised(request: pytest.FixtureRequest, tokenizer: Any,
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(architecture, stage base_model's folder) from a local folder, as `model=local model.path=...` runs it."""
    folder = save(request.param, tmp_path_factory.mktemp(request.param) / "hf", tokenizer)
    out = folder.parent / "base_model"
    # float32: the fast-vs-generic tolerances are float32's, whatever the machine's native dtype
    base_model.materialise(ModelConfig(name="local", source="local", path=str(folder), dtype="float32"), out)
    return request.param, out


def _manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())  # type: ignore[no-any-return]


def test_manifest_records_architecture_and_fast_paths(materialised: tuple[str, Path]) -> None:
    arch, folder = materialised
    manifest = _manifest(folder)
    generic = {p for p, why in manifest["fast_paths"].items() if why != FAST}
    assert generic == set(GENERIC[arch]), manifest["fast_paths"]
    assert manifest["n_parameters"] > 0 and manifest["architecture"].endswith(("ForCausalLM", "LMHeadModel"))


LLAMA_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA_TARGETS = {"gpt_neox": ["query_key_value", "dense"], "gpt2": ["c_attn", "attn.c_proj"],
                "phi3": ["qkv_proj", "o_proj"]}


def test_lora_adapts_the_architectures_own_attention_projections(materialised: tuple[str, Path]) -> None:
    from phaseflip.config import LoraConfig
    from phaseflip.interventions.train import add_lora
    from phaseflip.model.architecture import lora_targets

    arch, folder = materialised
    model, _ = base_model.load(folder)
    assert lora_targets(model, LLAMA_ATTENTION) == LORA_TARGETS.get(arch, LLAMA_ATTENTION)
    wrapped = add_lora(model, LoraConfig(target_modules=LLAMA_ATTENTION))
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in wrapped.named_parameters() if ".lora_A" in name}
    assert len(adapted) == len(LORA_TARGETS.get(arch, LLAMA_ATTENTION)) * 2  # every target, in both blocks
    with pytest.raises(ValueError, match="no counterpart"):
        lora_targets(model, ["gate_of_nothing"])


def _shot_prompts(tok: Any) -> list[str]:
    """Prompts sharing a long prefix (as ICL's shots do), one that shares nothing, mixed lengths."""
    shots = [{"role": "user", "content": "Use tabs, please, in every file of this project."},
             {"role": "assistant", "content": "Understood: tabs only, everywhere."}] * 4
    chat = [scoring.render_prompt(tok, shots + [{"role": "user", "content": q}]) for q in
            ("Indent this.", "And the next file, the long one with many functions?", "Ok")]
    return chat + [scoring.render_prompt(tok, [{"role": "user", "content": "Alone."}])]


REPLIES = [["Understood.", "Tabs it is.", "Fine", "Ok"], ["Sure! Or spaces.", "No", "Hm, spaces?", "Nope"]]


def test_pair_scores_on_the_prompt_cache_equal_whole_sequence_scores(materialised: tuple[str, Path]) -> None:
    """Scoring each reply list on the prompt's cache (cropped or copied) = encoding prompt + reply whole."""
    model, tok = base_model.load(materialised[1])
    prompts = _shot_prompts(tok)
    cached = scoring.score_reply_pairs(model, tok, prompts, REPLIES, batch_size=8)
    for got, replies in zip(cached, REPLIES, strict=True):
        whole = scoring.score_replies(model, tok, prompts, replies, batch_size=8)
        assert torch.allclose(got.logprob_sum, whole.logprob_sum, atol=1e-4), (got.logprob_sum, whole.logprob_sum)
        assert torch.equal(got.n_tokens, whole.n_tokens)


def test_shared_prefix_and_decode_cache_equal_the_generic_paths(materialised: tuple[str, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Log-probs, probe and sampled tokens with every decoding shortcut on = with all of them off."""
    model, tok = base_model.load(materialised[1])
    prompts = _shot_prompts(tok)

    def run() -> Any:
        return scoring.score_and_sample(model, tok, prompts, REPLIES, n=2, max_new_tokens=6, batch_size=8,
                                        temperature=1.0, seed=3, layers=[1])

    fast_scores, fast = run()
    monkeypatch.setattr(scoring, "MIN_SHARED_PREFIX", 0)
    monkeypatch.setattr(scoring, "STATIC_DECODE_CACHE", False)
    slow_scores, slow = run()
    for got, want in zip(fast_scores, slow_scores, strict=True):
        assert torch.allclose(got.logprob_sum, want.logprob_sum, atol=1e-4)
    assert torch.allclose(fast.probe.next_token_logprobs, slow.probe.next_token_logprobs, atol=1e-4)
    assert torch.allclose(fast.probe.hidden[1], slow.probe.hidden[1], atol=1e-4)
    assert fast.replies == slow.replies


def test_attention_fast_path_equals_transformers_eager_attention(materialised: tuple[str, Path]) -> None:
    """The attention `load` picks (sdpa_gqa where it applies) = `transformers`' eager reference, on a
    padded batch and on decoded tokens."""
    model, tok = base_model.load(materialised[1])
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_pretrained(materialised[1], use_safetensors=True, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    prompts = _shot_prompts(tok)
    got = scoring.score_replies(model, tok, prompts, REPLIES[0], batch_size=8)
    want = scoring.score_replies(eager, tok, prompts, REPLIES[0], batch_size=8)
    assert torch.allclose(got.logprob_sum, want.logprob_sum, atol=1e-4)
    assert scoring.generate(model, tok, prompts, 6, 8) == scoring.generate(eager, tok, prompts, 6, 8)


def test_steering_screen_equals_steering_the_whole_model(materialised: tuple[str, Path]) -> None:
    """Each screened setting's scores = `steering-vectors`' own patch on the whole model; the screen
    runs the blocks above the layer alone exactly where that shortcut applies."""
    arch, folder = materialised
    model, tok = base_model.load(folder)
    torch.manual_seed(0)
    d = model.get_input_embeddings().weight.shape[1]
    vector = SteeringVector({0: torch.randn(d), 1: torch.randn(d)}, "decoder_block")
    table = screen(model, tok, {"real": vector}, SCENARIOS, RETENTION, [-2.0, 2.0])
    assert set(table.screen_path) == {FAST if "upper_blocks" not in GENERIC[arch] else
                                      Architecture.of(model).reasons["upper_blocks"]}
    enc = _encode(tok, SCENARIOS, RETENTION, torch.device("cpu"))
    base = _base_pass(model, enc, record_blocks=False)
    for row in table.to_dict("records"):
        layer = int(row["layer"])
        slow = patched_setting(model, enc, base, SteeringVector({layer: vector.layer_activations[layer]},
                                                                "decoder_block"), layer, row["multiplier"])
        for metric in ("margin", "p_preferred", "forced_choice", "retention_kl"):
            assert abs(row[metric] - slow[metric]) < 1e-4, (metric, row[metric], slow[metric])


# --- integration: every stage function, from the local folder to the forecast -------------------------


def _params(folder: Path) -> dict[str, Any]:
    cfg = load_study_config({"study": "smoke", "model": "local", "model.path": str(folder)}).model_dump(mode="json")
    for key, rel in cfg["behavior"]["data"].items():
        cfg["behavior"]["data"][key] = str(ROOT / rel)
    cfg["eval"]["max_scenarios_per_family"] = 1
    cfg["train"]["checkpoint_steps"] = [2, 4]
    return cfg


@pytest.mark.integration
def test_every_stage_runs_and_training_resumes(materialised: tuple[str, Path], tmp_path: Path) -> None:
    from phaseflip.cli import main
    from phaseflip.io import read_json

    params = json.dumps(_params(materialised[1]))
    base, res = str(materialised[1]), tmp_path

    def stage(*argv: str) -> None:
        assert main([argv[0], "--params", params, "--threads", "2", *argv[1:]]) == 0, argv[0]

    corr = res / "corrections"
    stage("corrections", "--base", base, "--out", str(corr))
    data = read_json(corr / "data_report.json")
    assert data["references"]["with_pair"] > 0  # reference pairs for the steering screen
    ev, ret, train = (str(corr / f) for f in ("eval.jsonl", "retention.jsonl", "train.jsonl"))
    stage("dreams", "--base", base, "--corrections", train, "--eval", ev, "--out", str(res / "dreams"))
    dreams = str(res / "dreams" / "dreams.jsonl")
    stage("steering_vectors", "--base", base, "--corrections", train, "--dreams", dreams, "--out", str(res / "steer"))
    stage("evaluate", "--base", base, "--eval", ev, "--retention", ret, "--out", str(res / "base_eval/metrics.csv"))
    base_metrics = str(res / "base_eval/metrics.csv")
    stage("steering", "--base", base, "--vectors", str(res / "steer"), "--eval", ev, "--retention", ret,
          "--base-metrics", base_metrics, "--out", str(res / "steer"))
    stage("icl", "--base", base, "--corrections", train, "--eval", ev, "--retention", ret,
          "--base-metrics", base_metrics, "--out", str(res / "icl"))
    run_id = "lr1e-02_nall_k0_s0"
    run = res / "runs" / run_id
    interrupted = json.loads(params)
    interrupted["train"].update(max_steps=2, checkpoint_steps=[2])
    assert main(["train", "--params", json.dumps(interrupted), "--threads", "2", "--base", base, "--corrections",
                 train, "--dreams", dreams, "--retention", ret, "--run-id", run_id, "--out", str(run)]) == 0
    stage("train", "--base", base, "--corrections", train, "--dreams", dreams, "--retention", ret,
          "--run-id", run_id, "--out", str(run))
    assert read_json(run / "run.json")["resumed_from"] == 2
    stage("evaluate", "--base", base, "--eval", ev, "--retention", ret, "--steering-vector",
          str(res / "steer/vector.safetensors"), "--run-dir", str(run), "--base-metrics", base_metrics,
          "--out", str(run / "metrics.csv"))
    stage("forecast", "--run-dirs", str(run), "--out", str(res / "forecast"))
    assert (res / "forecast" / "transitions.csv").stat().st_size > 0
