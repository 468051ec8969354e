"""Batched model computations shared by training, baselines and evaluation.

- `render_prompt`: chat turns -> prompt text (chat template, or plain text for `prompt_format: plain`)
- `encode_reply`: prompt + reply -> token ids with labels on the reply tokens only
- `score_replies`: per-reply log-prob sums and token counts, in padded batches
- `score_and_sample`: from one encoding of each prompt, the `probe` (next-token log-probs and hidden
  states where the reply starts), the scores of given replies, and n sampled (or greedy) replies;
  `score_reply_pairs`, `sample_replies`, `generate` and `probe` are its single-purpose views
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicCache, DynamicLayer

from phaseflip.data import Example
from phaseflip.model.architecture import announce

IGNORE = -100
# Prompts of one batch that share at least this many leading tokens (ICL's shot prefix) have that prefix
# encoded once and its KV copied to each of them. Shorter prefixes (the chat template's system prompt)
# are encoded with each prompt: a separate pass costs more than it saves, and batches stay as they were.
MIN_SHARED_PREFIX = 64
# Decoding writes each step's keys and values into a cache preallocated for the whole reply instead of
# growing it by concatenation (which copies the whole cache at every step).
STATIC_DECODE_CACHE = True
# Scoring reference replies without sampling: at most this many prompts per batch, ordered by prompt plus
# longest reply, so a batch pads to its own lengths (the eval set's 60 pairs: 14,340 -> 10,800 token
# positions, and its logits stay under ~250 MB instead of ~1 GB). Sampling batches keep `batch_size` rows.
SCORE_ROWS = 8


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                  prompt_format: str = "chat") -> str:
    if prompt_format == "plain":
        # A format shift: the same turns as a plain transcript, no chat template.
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n".join(lines) + "\nAssistant:"
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert isinstance(text, str)
    return text


def prompt_of(tokenizer: PreTrainedTokenizerBase, ex: Example) -> str:
    return render_prompt(tokenizer, ex.messages, ex.prompt_format)


def reply_suffix(tokenizer: PreTrainedTokenizerBase, prompt_format: str) -> str:
    """What ends a reply: the end-of-turn token in chat format, EOS in plain text."""
    return tokenizer.eos_token if tokenizer.eos_token else ""


def encode_reply(tokenizer: PreTrainedTokenizerBase, prompt: str, reply: str, max_length: int,
                 prompt_format: str = "chat") -> tuple[list[int], list[int]]:
    """Token ids of prompt+reply and labels that are IGNORE on the prompt (loss on reply tokens only).

    Prompt and reply are tokenized separately so the boundary is exact; if too long, the prompt is
    truncated from the left so the reply is always kept.
    """
    sep = "" if prompt_format == "chat" else " "
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    reply_ids = tokenizer(sep + reply + reply_suffix(tokenizer, prompt_format), add_special_tokens=False).input_ids
    reply_ids = reply_ids[:max_length - 1]
    prompt_ids = prompt_ids[-(max_length - len(reply_ids)):]
    return prompt_ids + reply_ids, [IGNORE] * len(prompt_ids) + reply_ids


def pad_batch(seqs: Sequence[list[int]], labels: Sequence[list[int]], pad_id: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad ids/labels; return input_ids, attention_mask, labels."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    lab = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (seq, seq_labels) in enumerate(zip(seqs, labels, strict=True)):
        ids[i, : len(seq)] = torch.tensor(seq)
        lab[i, : len(seq_labels)] = torch.tensor(seq_labels)
        mask[i, : len(seq)] = 1
    return ids.to(device), mask.to(device), lab.to(device)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-prob of each next label token (0 where ignored); shape (batch, seq-1)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    # Flattened to (tokens, vocab): a softmax over the contiguous last dim. Cross-entropy on the
    # (batch, vocab, seq) transpose strides across memory: 1.2 s more per 19 s pair-scoring pass on CPU.
    nll = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.clamp(min=0).reshape(-1),
                          reduction="none").view(shift_labels.shape)
    return -nll * (shift_labels != IGNORE)


def reply_token_logprobs(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor,
                         labels: torch.Tensor) -> torch.Tensor:
    """Log-probs of the label tokens, computing the LM head only from the first reply position on.

    The vocabulary projection is a large share of a small model's FLOPs; prompt positions never need it.
    """
    has_label = labels != IGNORE
    first = int(torch.where(has_label.any(dim=1), has_label.float().argmax(dim=1), labels.shape[1]).min())
    keep_from = max(first - 1, 0)
    with contiguous_head_input(model):
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=ids.shape[1] - keep_from).logits
    return token_logprobs(logits, labels[:, keep_from:])


@contextmanager
def contiguous_head_input(model: PreTrainedModel) -> Iterator[None]:
    """Hand the LM head a contiguous input. `logits_to_keep` slices the hidden states (batch, kept, d)
    out of (batch, seq, d); under autograd, F.linear on that strided slice broadcasts the (vocab, d) head
    weight to every row and runs a bmm: a (4, 576, 49152) copy and a slow bmm, 2.1 s of a 3.3 s training
    micro-batch of SmolLM2 on one CPU core, vs 0.35 s as one matmul on a contiguous copy (torch 2.13)."""
    head = model.get_output_embeddings()
    if head is None:
        yield
        return
    handle = head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]), prepend=True)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class ReplyScores:
    logprob_sum: torch.Tensor  # (n,)
    n_tokens: torch.Tensor  # (n,)

    @property
    def logprob_mean(self) -> torch.Tensor:
        return self.logprob_sum / self.n_tokens.clamp(min=1)


@torch.no_grad()
def score_replies(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                  replies: Sequence[str], batch_size: int, max_length: int = 512,
                  prompt_formats: Sequence[str] | None = None) -> ReplyScores:
    """Log-prob of each reply given its prompt, batched; sequences sorted by length to save padding."""
    formats = list(prompt_formats) if prompt_formats else ["chat"] * len(prompts)
    encoded = [encode_reply(tokenizer, p, r, max_length, f) for p, r, f in zip(prompts, replies, formats, strict=True)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    sums = torch.zeros(len(encoded))
    counts = torch.zeros(len(encoded))
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask, labels = pad_batch([encoded[i][0] for i in idx], [encoded[i][1] for i in idx],
                                      tokenizer.pad_token_id, device)
        lp = reply_token_logprobs(model, ids, mask, labels)
        sums[idx] = lp.sum(dim=1).cpu()
        counts[idx] = (labels[:, 1:] != IGNORE).sum(dim=1).float().cpu()
    return ReplyScores(sums, counts)


def _left_pad(rows: Sequence[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, seq in enumerate(rows):  # left padding: every prompt ends at the same column
        out[i, width - len(seq):] = torch.tensor(seq)
        mask[i, width - len(seq):] = 1
    return out.to(device), mask.to(device)


def _prefix_groups(rows: Sequence[list[int]], min_shared: int) -> list[tuple[int, list[int]]]:
    """Rows grouped by a shared leading token run: [(prefix length, row positions)], every row once.

    Rows are sorted by their tokens so those with a common prefix are neighbours; a group keeps
    growing while its common prefix stays >= `min_shared`. The prefix stops one token short of the
    shortest member, so every row keeps at least one token of its own (its last, where the reply starts).
    """
    order = sorted(range(len(rows)), key=lambda i: rows[i])
    groups: list[tuple[int, list[int]]] = []
    for i in order:
        if groups:
            length, members = groups[-1]
            first = rows[members[0]]
            shared = min(length if len(members) > 1 else len(first) - 1, len(rows[i]) - 1)
            common = next((k for k in range(shared) if first[k] != rows[i][k]), shared)
            # Join while the prefix stays long: a row sharing only the system prompt with a group that
            # shares a whole shot context starts its own group instead of shrinking that one.
            if common >= min_shared and (len(members) == 1 or 2 * common >= length):
                groups[-1] = (common, members + [i])
                continue
        groups.append((0, [i]))
    return groups


@torch.no_grad()
def _prefill(model: PreTrainedModel, rows: Sequence[list[int]], pad: int, device: torch.device, layers: Sequence[int],
             prefix_kv: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]],
             min_shared: int) -> tuple[torch.Tensor, dict[int, torch.Tensor], Any, torch.Tensor]:
    """One forward pass over a batch of prompts: last-position logits, hidden states at `layers` there,
    the KV cache and the attention mask.

    Without a shared prefix (>= `min_shared` tokens) the prompts are left-padded and encoded whole. With
    one, each shared prefix is encoded once (and remembered in `prefix_kv` across batches), its keys and
    values are placed in front of its rows, and only the rest of each prompt is encoded: row layout
    [pad][shared prefix][pad][own tokens], positions counting real tokens only, so every token sees
    exactly the context (and position) it has in the whole prompt.
    """
    groups = _prefix_groups(rows, min_shared) if min_shared > 0 else []
    if not any(length for length, _ in groups):
        ids, mask = _left_pad(rows, pad, device)
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    use_cache=True, logits_to_keep=1, output_hidden_states=bool(layers))
        hidden = {layer: out.hidden_states[layer + 1][:, -1] for layer in layers}
        return out.logits[:, -1].float(), hidden, out.past_key_values, mask
    # A row that shares no prefix is encoded alone up to its last token, like a prefix of its own:
    # otherwise its whole prompt would set the width (and the padded compute) of the batch's second pass.
    groups = [(len(rows[m[0]]) - 1, m) if length == 0 and len(m) == 1 and len(rows[m[0]]) > 1 else (length, m)
              for length, m in groups]
    groups = [(length, m) for length, m in groups if length > 0]
    shared = [0] * len(rows)
    for length, members in groups:
        for i in members:
            shared[i] = length
    head = max(shared)
    own_ids, own_mask = _left_pad([row[n:] for row, n in zip(rows, shared, strict=True)], pad, device)
    head_mask = torch.zeros((len(rows), head), dtype=torch.long, device=device)
    kv: list[tuple[torch.Tensor, torch.Tensor]] = []
    for length, members in groups:
        key = tuple(rows[members[0]][:length])
        if key not in prefix_kv:
            cache = model(input_ids=torch.tensor([key], device=device), use_cache=True).past_key_values
            prefix_kv[key] = [(layer.keys, layer.values) for layer in cache.layers]
        if not kv:
            kv = [(k.new_zeros((len(rows), *k.shape[1:2], head, k.shape[-1])),
                   v.new_zeros((len(rows), *v.shape[1:2], head, v.shape[-1]))) for k, v in prefix_kv[key]]
        for (k_all, v_all), (k, v) in zip(kv, prefix_kv[key], strict=True):
            k_all[members, :, head - length:] = k
            v_all[members, :, head - length:] = v
        head_mask[members, head - length:] = 1
    mask = torch.cat([head_mask, own_mask], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, head:]
    out = model(input_ids=own_ids, attention_mask=mask, position_ids=positions, past_key_values=DynamicCache(kv),
                use_cache=True, logits_to_keep=1, output_hidden_states=bool(layers))
    hidden = {layer: out.hidden_states[layer + 1][:, -1] for layer in layers}
    return out.logits[:, -1].float(), hidden, out.past_key_values, mask


@dataclass
class ProbeResult:
    next_token_logprobs: torch.Tensor  # (n, vocab) at the last prompt position
    hidden: dict[int, torch.Tensor]  # layer -> (n, d) residual stream after that decoder block


@dataclass
class Samples:
    replies: list[list[str]]  # replies[i]: the n replies to prompt i
    probe: ProbeResult  # what the model does at the end of each prompt (from the same forward pass)
    new_tokens: int  # tokens generated, for throughput figures


def _balanced_batches(order: list[int], per_batch: int) -> list[list[int]]:
    """Split `order` into the fewest batches of at most `per_batch`, all of nearly equal size.

    22 prompts at 21 per batch become 11 + 11, not 21 + 1: a batch of one decodes as many steps as a
    full one at a fraction of the throughput.
    """
    n_batches = -(-len(order) // per_batch)
    size = -(-len(order) // max(n_batches, 1))
    return [order[i : i + size] for i in range(0, len(order), size)]


def _sample_token(last: torch.Tensor, temperature: float | None, generator: torch.Generator) -> torch.Tensor:
    """Next token per row: greedy, or drawn from softmax(last / temperature) by inverting its CDF.

    Overwrites `last`. One uniform draw per row and a binary search; `torch.multinomial` draws an
    exponential per vocabulary entry, which cost 43 ms per step for 66 rows x 49k tokens on this CPU.
    In place, because fresh (rows x vocab) temporaries per step cost more in allocation than in math.
    """
    if not temperature:
        return last.argmax(dim=-1)
    last.sub_(last.max(dim=-1, keepdim=True).values).div_(temperature).exp_()  # unnormalised softmax
    cdf = last.cumsum_(dim=-1)
    u = torch.rand((len(last), 1), generator=generator, device=last.device) * cdf[:, -1:]
    # right=True: the first entry whose CDF exceeds u, so a zero-probability token is never drawn.
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp(max=last.shape[-1] - 1)


@contextmanager
def continued(cache: Any, width: int, croppable: bool) -> Iterator[Any]:
    """A prompt's KV cache to run more tokens on, prompt-only again after the block: the cache itself,
    cropped back to `width` positions (fast path), or a copy of it where a layer cannot be cropped (a
    sliding-window layer has dropped the states a crop would need)."""
    if not croppable:
        yield copy.deepcopy(cache)
        return
    try:
        yield cache
    finally:
        cache.crop(width)


@torch.no_grad()
def _score_from_cache(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cache: Any,
                      mask: torch.Tensor, last_logp: torch.Tensor, replies: Sequence[str],
                      formats: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob sums and token counts of one reply per cached prompt; the cache is left prompt-only."""
    device = mask.device
    reply_ids = [tokenizer(("" if f == "chat" else " ") + r + reply_suffix(tokenizer, f),
                           add_special_tokens=False).input_ids for r, f in zip(replies, formats, strict=True)]
    r_ids, r_mask, r_labels = pad_batch(reply_ids, reply_ids, tokenizer.pad_token_id, device)
    width = mask.shape[1]
    positions = mask.sum(dim=1, keepdim=True) + torch.arange(r_ids.shape[1], device=device)[None, :]
    with continued(cache, width, announce(model, "cache_crop")) as past:  # the cache stays prompt-only
        logits = model(input_ids=r_ids, attention_mask=torch.cat([mask, r_mask], dim=1), position_ids=positions,
                       past_key_values=past, use_cache=True).logits
    first = last_logp.gather(1, r_ids[:, :1]).squeeze(1)  # the first reply token, predicted by the prompt
    rest = token_logprobs(logits, r_labels).sum(dim=1)
    return (first + rest).cpu(), r_mask.sum(dim=1).float().cpu()


class _PreallocatedLayer(DynamicLayer):  # type: ignore[misc]
    """A KV cache layer with room for `extra` more positions: each step writes in place, no concatenation.

    `keys`/`values` are views of the filled part, so attention reads exactly what a growing cache holds.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, extra: int):
        super().__init__()
        batch, heads, length, dim = keys.shape
        self._keys = keys.new_empty((batch, heads, length + extra, dim))
        self._values = values.new_empty((batch, heads, length + extra, values.shape[-1]))
        self._keys[:, :, :length], self._values[:, :, :length] = keys, values
        self.length, self.dtype, self.device, self.is_initialized = length, keys.dtype, keys.device, True
        self.keys, self.values = self._keys[:, :, :length], self._values[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
               cache_kwargs: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + key_states.shape[-2]
        self._keys[:, :, self.length:end] = key_states
        self._values[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values


def preallocate(cache: Any, extra: int) -> None:
    """Give every layer of a DynamicCache room for `extra` more positions (see `_PreallocatedLayer`)."""
    cache.layers = [_PreallocatedLayer(layer.keys, layer.values, extra) for layer in cache.layers]


@torch.no_grad()
def _decode(model: PreTrainedModel, cache: Any, mask: torch.Tensor, last: torch.Tensor, max_new_tokens: int,
            temperature: float | None, generator: torch.Generator, eos: int, pad: int) -> list[list[int]]:
    """Token ids of one reply per row, continuing from a prompt cache; stops at EOS."""
    position = mask.sum(dim=1, keepdim=True)
    done = torch.zeros(len(mask), dtype=torch.bool, device=mask.device)
    tokens = []
    if STATIC_DECODE_CACHE and max_new_tokens > 1 and announce(model, "decode_cache"):
        preallocate(cache, max_new_tokens - 1)
    for _ in range(max_new_tokens):
        token = _sample_token(last, temperature, generator).masked_fill_(done, pad)
        tokens.append(token)
        done |= token == eos
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        last = model(input_ids=token[:, None], attention_mask=mask, position_ids=position,
                     past_key_values=cache, use_cache=True).logits[:, -1].float()
        position = position + 1
    rows = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in range(len(mask))]
    return [row[: row.index(eos)] if eos in row else row for row in rows]


@torch.no_grad()
def score_and_sample(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                     reply_lists: Sequence[Sequence[str]] = (), n: int = 0, max_new_tokens: int = 0,
                     batch_size: int = 64, temperature: float | None = None, seed: int = 0,
                     layers: Sequence[int] = (), prompt_formats: Sequence[str] | None = None,
                     ) -> tuple[list[ReplyScores], Samples]:
    """Everything a prompt is needed for, from one encoding of it: the evaluator's inner loop.

    Per batch of prompts, one forward pass with a KV cache yields the probe (next-token log-probs and
    hidden states at `layers` where the reply starts); each reply list is then scored on that cache
    (`reply_lists[j][i]` is the j-th reply to prompt i), and finally the cache is copied n times and
    n replies per prompt are decoded (sampled at `temperature`, greedy if None). HF `generate` would
    re-encode a prompt per returned sequence, and scoring separately would encode it once more.

    Prompts are batched by length (less left padding), at most `batch_size` decoded rows per batch.
    Each batch has its own seeded generator, so the same inputs give the same replies.
    """
    formats = list(prompt_formats) if prompt_formats else ["chat"] * len(prompts)
    device = next(model.parameters()).device
    if not prompts:
        return [ReplyScores(torch.zeros(0), torch.zeros(0)) for _ in reply_lists], \
            Samples([], ProbeResult(torch.zeros(0), {layer: torch.zeros(0) for layer in layers}), 0)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    encoded = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    per_batch = max(1, batch_size // max(n, 1))
    if reply_lists and n == 0:  # scoring only: batch by whole length (see SCORE_ROWS)
        longest = [max(len(r[i]) for r in reply_lists) for i in range(len(prompts))]  # characters: an order only
        order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]) + longest[i] / 4, i))
        per_batch = min(per_batch, SCORE_ROWS)
    else:
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    scores = [ReplyScores(torch.zeros(len(prompts)), torch.zeros(len(prompts))) for _ in reply_lists]
    replies: list[list[str]] = [[] for _ in prompts]
    logps: list[torch.Tensor | None] = [None] * len(prompts)
    hidden: dict[int, list[torch.Tensor | None]] = {layer: [None] * len(prompts) for layer in layers}
    new_tokens = 0
    prefix_kv: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}  # shared prefixes, encoded once
    # Only into a plain cache: the prefix's KV is placed as a `DynamicCache`, with a gap of padding that a
    # sliding window would count.
    min_shared = MIN_SHARED_PREFIX if MIN_SHARED_PREFIX and announce(model, "shared_prefix_kv") else 0
    for batch_no, idx in enumerate(_balanced_batches(order, per_batch)):
        last, last_hidden, cache, mask = _prefill(model, [encoded[i] for i in idx], pad, device, layers, prefix_kv,
                                                  min_shared)
        last_logp = torch.log_softmax(last, dim=-1)
        for row, i in enumerate(idx):
            logps[i] = last_logp[row].cpu()
            for layer in layers:  # hidden_states[0] is the embedding output; block L's output is [L + 1]
                hidden[layer][i] = last_hidden[layer][row].float().cpu()
        for j, reply_list in enumerate(reply_lists):
            sums, counts = _score_from_cache(model, tokenizer, cache, mask, last_logp,
                                             [reply_list[i] for i in idx], [formats[i] for i in idx])
            scores[j].logprob_sum[idx], scores[j].n_tokens[idx] = sums, counts
        if n == 0:
            continue
        cache.batch_repeat_interleave(n)
        generator = torch.Generator(device=device).manual_seed(seed + batch_no)
        rows = _decode(model, cache, mask.repeat_interleave(n, dim=0), last.repeat_interleave(n, dim=0),
                       max_new_tokens, temperature, generator, eos, pad)
        new_tokens += sum(len(r) for r in rows)
        for k, i in enumerate(idx):
            replies[i] = [tokenizer.decode(r, skip_special_tokens=True).strip() for r in rows[k * n : (k + 1) * n]]
    probe_result = ProbeResult(torch.stack([t for t in logps if t is not None]),
                               {k: torch.stack([t for t in v if t is not None]) for k, v in hidden.items()})
    return scores, Samples(replies, probe_result, new_tokens)


def score_reply_pairs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                      replies: Sequence[Sequence[str]], batch_size: int,
                      prompt_formats: Sequence[str] | None = None) -> list[ReplyScores]:
    """Score several replies per prompt (`replies[j][i]`: the j-th reply to prompt i), encoding each
    prompt once. Equal to `score_replies` per reply list, at a fraction of the cost."""
    return score_and_sample(model, tokenizer, prompts, replies, batch_size=batch_size,
                            prompt_formats=prompt_formats)[0]


def sample_replies(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], n: int,
                   max_new_tokens: int, batch_size: int, temperature: float | None = None, seed: int = 0,
                   layers: Sequence[int] = ()) -> Samples:
    """n replies per prompt (sampled at `temperature`, greedy if None), plus the probe of each prompt."""
    return score_and_sample(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            temperature=temperature, seed=seed, layers=layers)[1]


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
             max_new_tokens: int, batch_size: int, temperature: float | None = None,
             seed: int = 0) -> list[str]:
    """One reply per prompt: greedy when temperature is None, else sampled with a fixed seed."""
    samples = sample_replies(model, tokenizer, prompts, 1, max_new_tokens, batch_size, temperature, seed)
    return [r[0] for r in samples.replies]


def probe(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
          batch_size: int, layers: Sequence[int] = ()) -> ProbeResult:
    """Next-token distribution and hidden states where the reply would start."""
    return score_and_sample(model, tokenizer, prompts, batch_size=batch_size, layers=layers)[1].probe


@torch.no_grad()
def text_logprobs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                  batch_size: int, max_length: int = 128) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per text: next-token log-prob tables (positions, vocab) and the observed tokens' log-probs."""
    device = next(model.parameters()).device
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        ids = [tokenizer(t, add_special_tokens=False).input_ids[:max_length] for t in chunk]
        input_ids, mask, labels = pad_batch(ids, ids, tokenizer.pad_token_id, device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
        table = torch.log_softmax(logits[:, :-1], dim=-1)
        observed = token_logprobs(logits, labels)
        for i, seq in enumerate(ids):
            n = len(seq) - 1
            out.append((table[i, :n].cpu(), observed[i, :n].cpu()))
    return out
