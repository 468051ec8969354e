from pathlib import Path

import torch

from phaseflip.config import SteeringConfig
from phaseflip.data import Example
from phaseflip.steering import load_vector, save_vector, single_layer, train_vector

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

    from phaseflip.steering import forward_up_to, training_pairs

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
