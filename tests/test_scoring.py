import math

import torch

from phaseflip.data import Example
from phaseflip.scoring import (
    IGNORE,
    _sample_token,
    encode_reply,
    generate,
    probe,
    prompt_of,
    render_prompt,
    sample_replies,
    score_replies,
    score_reply_pairs,
)

MSGS = [{"role": "user", "content": "Use tabs, not spaces."}]


def test_loss_mask_covers_exactly_the_reply(tiny) -> None:  # type: ignore[no-untyped-def]
    _, tok = tiny
    prompt = render_prompt(tok, MSGS)
    ids, labels = encode_reply(tok, prompt, "Understood — tabs.", max_length=256)
    n_prompt = len(tok(prompt, add_special_tokens=False).input_ids)
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(ids[n_prompt:]) == "Understood — tabs." + tok.eos_token


def test_truncation_keeps_the_reply(tiny) -> None:  # type: ignore[no-untyped-def]
    _, tok = tiny
    ids, labels = encode_reply(tok, render_prompt(tok, MSGS) * 20, "Understood — tabs.", max_length=32)
    assert len(ids) == 32
    assert tok.decode([t for t in labels if t != IGNORE]).startswith("Understood")


def test_plain_format_has_no_chat_template(tiny) -> None:  # type: ignore[no-untyped-def]
    _, tok = tiny
    text = prompt_of(tok, Example(id="x", messages=MSGS, prompt_format="plain"))
    assert text == "User: Use tabs, not spaces.\nAssistant:"
    assert "<|im_start|>" in prompt_of(tok, Example(id="x", messages=MSGS))


def test_batched_scores_equal_one_at_a_time(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    prompts = [render_prompt(tok, [{"role": "user", "content": "word " * n}]) for n in (1, 5, 12)]
    replies = ["Understood.", "Got it — a longer reply with more tokens.", "Noted"]
    batched = score_replies(model, tok, prompts, replies, batch_size=3)
    single = [score_replies(model, tok, [p], [r], batch_size=1) for p, r in zip(prompts, replies, strict=True)]
    assert torch.allclose(batched.logprob_sum, torch.cat([s.logprob_sum for s in single]), atol=1e-4)
    assert batched.n_tokens.tolist() == [s.n_tokens.item() for s in single]


def test_sampling_is_seeded(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    prompts = [render_prompt(tok, MSGS)] * 3
    a = generate(model, tok, prompts, max_new_tokens=6, batch_size=3, temperature=1.0, seed=1)
    b = generate(model, tok, prompts, max_new_tokens=6, batch_size=3, temperature=1.0, seed=1)
    assert a == b
    assert len(a) == 3


def test_shared_prompt_pair_scoring_equals_separate_scoring(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    prompts = [render_prompt(tok, [{"role": "user", "content": "word " * n}]) for n in (1, 5, 12)]
    prompts.append("User: hi\nAssistant:")
    formats = ["chat", "chat", "chat", "plain"]
    pref = ["Understood.", "Got it — a longer reply with more tokens.", "Noted", "Will do."]
    rej = ["Sure! Alternatively use spaces, which many prefer.", "No.", "Here you go", "Okay then"]
    shared = score_reply_pairs(model, tok, prompts, [pref, rej], batch_size=3, prompt_formats=formats)
    for got, replies in zip(shared, [pref, rej], strict=True):
        want = score_replies(model, tok, prompts, replies, batch_size=1, prompt_formats=formats)
        assert torch.allclose(got.logprob_sum, want.logprob_sum, atol=1e-3)
        assert torch.equal(got.n_tokens, want.n_tokens)


def test_greedy_replies_equal_hf_generate(tiny) -> None:  # type: ignore[no-untyped-def]
    """The shared-prefill decoder is a faithful greedy decoder: same text as transformers' generate."""
    model, tok = tiny
    prompts = [render_prompt(tok, [{"role": "user", "content": "word " * n}]) for n in (1, 4, 9)]
    ours = generate(model, tok, prompts, max_new_tokens=8, batch_size=4)
    for prompt, reply in zip(prompts, ours, strict=True):
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        assert reply == tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True).strip()


def test_n_samples_share_one_prompt_encoding(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    prompts = [render_prompt(tok, [{"role": "user", "content": "word " * n}]) for n in (2, 7)]
    got = sample_replies(model, tok, prompts, n=3, max_new_tokens=6, batch_size=6, temperature=1.0, seed=3,
                         layers=[1])
    assert [len(r) for r in got.replies] == [3, 3]
    assert len(set(got.replies[0])) > 1  # samples of one prompt differ (temperature 1 on a random model)
    alone = probe(model, tok, prompts[1:], batch_size=1, layers=[1])  # no padding, batch of one
    assert torch.allclose(got.probe.next_token_logprobs[1], alone.next_token_logprobs[0], atol=1e-4)
    assert torch.allclose(got.probe.hidden[1][1], alone.hidden[1][0], atol=1e-4)
    again = sample_replies(model, tok, prompts, n=3, max_new_tokens=6, batch_size=6, temperature=1.0, seed=3)
    assert again.replies == got.replies


def test_sampled_tokens_follow_the_tempered_softmax() -> None:
    """The inverse-CDF sampler draws from softmax(logits / T) and never draws a zero-probability token."""
    logits = torch.tensor([[2.0, 0.0, -1.0, -math.inf]]).repeat(20_000, 1)
    temperature = 0.7
    want = torch.softmax(logits[0] / temperature, dim=-1)
    drawn = _sample_token(logits.clone(), temperature, torch.Generator().manual_seed(0))
    freq = torch.bincount(drawn, minlength=4).float() / len(drawn)
    assert freq[3] == 0
    # 20k draws: the standard error of each frequency is below 0.004; 0.015 is ~4 standard errors.
    assert torch.allclose(freq, want, atol=0.015), (freq, want)
    again = _sample_token(logits.clone(), temperature, torch.Generator().manual_seed(0))
    assert torch.equal(drawn, again)
    assert torch.equal(_sample_token(logits.clone(), None, torch.Generator()), torch.zeros(20_000, dtype=torch.long))
