import math

import torch

from phaseflip.data import Example
from phaseflip.model.scoring import (
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


def _shot_prompts(tok):  # type: ignore[no-untyped-def]
    """ICL-like prompts: one long shared shot context, then each scenario's own turn; one plain outlier."""
    shots = [{"role": "user", "content": " ".join(f"shot {i} asks for tabs" for i in range(30))},
             {"role": "assistant", "content": "Understood: tabs."}]
    chat = [render_prompt(tok, shots + [{"role": "user", "content": q}]) for q in ("Use tabs.", "a " * 9, "Go")]
    return chat + ["User: plain question\nAssistant:"]


def test_shared_prefix_is_encoded_once_with_the_same_logprobs(tiny, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Prefix KV reuse gives the log-probs, probe and greedy replies of encoding each prompt whole."""
    import phaseflip.model.scoring as scoring
    from phaseflip.model.architecture import Architecture

    model, tok = tiny
    prompts = _shot_prompts(tok)
    pairs = [["Understood.", "Tabs it is.", "Fine", "Ok"], ["Sure! Or spaces.", "No", "Hm, spaces?", "Nope"]]
    rows = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    groups = scoring._prefix_groups(rows, scoring.MIN_SHARED_PREFIX)
    assert sorted(len(m) for _, m in groups) == [1, 3] and max(n for n, _ in groups) >= 64
    calls = []
    original = model.forward
    Architecture.of(model)  # its one probe pass, before the passes counted here
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(k["input_ids"].shape) or original(*a, **k))
    reused, samples = scoring.score_and_sample(model, tok, prompts, pairs, n=1, max_new_tokens=5, batch_size=8,
                                               layers=[1])
    assert calls[0][0] == 1 and calls[1][1] < min(len(r) for r in rows[:3])  # prefix alone, then the rest only
    monkeypatch.setattr(scoring, "MIN_SHARED_PREFIX", 0)  # encode every prompt whole
    whole, whole_samples = scoring.score_and_sample(model, tok, prompts, pairs, n=1, max_new_tokens=5,
                                                    batch_size=8, layers=[1])
    for got, want in zip(reused, whole, strict=True):
        assert torch.allclose(got.logprob_sum, want.logprob_sum, atol=1e-4)
        assert torch.equal(got.n_tokens, want.n_tokens)
    assert torch.allclose(samples.probe.next_token_logprobs, whole_samples.probe.next_token_logprobs, atol=1e-4)
    assert torch.allclose(samples.probe.hidden[1], whole_samples.probe.hidden[1], atol=1e-4)
    assert samples.replies == whole_samples.replies


def test_prefix_groups_keep_every_row_and_one_own_token() -> None:
    from phaseflip.model.scoring import _prefix_groups

    rows = [[1] * 10 + [2], [1] * 10 + [3, 4], [5, 6], [1] * 10]
    groups = _prefix_groups(rows, 4)
    assert sorted(i for _, members in groups for i in members) == [0, 1, 2, 3]
    shared = {i: n for n, members in groups for i in members}
    assert all(shared[i] < len(rows[i]) for i in range(4))  # the last token is always a row's own
    assert shared[0] == shared[1] == shared[3] == 9 and shared[2] == 0


def test_preallocated_decode_cache_samples_the_same_tokens(tiny, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Same seed -> the same replies, token for token, with the static cache as with the growing one."""
    import phaseflip.model.scoring as scoring

    model, tok = tiny
    prompts = [render_prompt(tok, [{"role": "user", "content": "word " * n}]) for n in (1, 6, 13)]
    got = {}
    for static in (True, False):
        monkeypatch.setattr(scoring, "STATIC_DECODE_CACHE", static)
        got[static] = (sample_replies(model, tok, prompts, n=3, max_new_tokens=12, batch_size=9, temperature=1.0,
                                      seed=5).replies,
                       generate(model, tok, prompts, max_new_tokens=12, batch_size=4))
    assert got[True] == got[False]
    assert len({r for reps in got[True][0] for r in reps}) > 3  # really sampled, not one repeated reply


def test_reply_logprobs_hand_the_head_a_contiguous_input_with_the_same_values_and_gradients(tiny) -> None:  # type: ignore[no-untyped-def]
    """Training's hot path: the head's input is made contiguous (a strided slice made autograd broadcast
    the head weight per row); log-probs and gradients equal those of the full-sequence head."""
    from phaseflip.model.scoring import pad_batch, reply_token_logprobs, token_logprobs

    model, tok = tiny
    prompts = ["Use tabs.", "A much longer request, so the batch needs padding on the right side."]
    enc = [encode_reply(tok, p, "Understood — tabs only.", 64) for p in prompts]
    ids, mask, labels = pad_batch([a for a, _ in enc], [b for _, b in enc], tok.pad_token_id, torch.device("cpu"))
    seen: list[bool] = []
    spy = model.get_output_embeddings().register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous()))
    fast = reply_token_logprobs(model, ids, mask, labels)
    fast.sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    spy.remove()
    assert seen == [True]
    full = token_logprobs(model(input_ids=ids, attention_mask=mask).logits, labels)
    full.sum().backward()
    kept = labels.shape[1] - fast.shape[1] - 1  # reply_token_logprobs starts one token before the first reply
    assert torch.allclose(fast, full[:, kept:], atol=1e-5)
    for a, p in zip(grads, [p for p in model.parameters() if p.grad is not None], strict=True):
        assert torch.allclose(a, p.grad, atol=1e-5, rtol=1e-4)
