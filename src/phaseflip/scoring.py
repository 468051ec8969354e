"""Batched model computations shared by training, baselines and evaluation.

- `render_prompt`: chat turns -> prompt text (chat template, or plain text for `prompt_format: plain`)
- `encode_reply`: prompt + reply -> token ids with labels on the reply tokens only
- `score_replies`: per-reply log-prob sums and token counts, in padded batches
- `sample_replies`: n sampled (or greedy) replies per prompt from one shared prompt encoding, plus
  the `probe` (next-token log-probs and hidden states at the last prompt position) from that encoding
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from phaseflip.data import Example

IGNORE = -100


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
    nll = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels.clamp(min=0), reduction="none")
    return -nll * (shift_labels != IGNORE)


def reply_token_logprobs(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor,
                         labels: torch.Tensor) -> torch.Tensor:
    """Log-probs of the label tokens, computing the LM head only from the first reply position on.

    The vocabulary projection is a large share of a small model's FLOPs; prompt positions never need it.
    """
    has_label = labels != IGNORE
    first = int(torch.where(has_label.any(dim=1), has_label.float().argmax(dim=1), labels.shape[1]).min())
    keep_from = max(first - 1, 0)
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=ids.shape[1] - keep_from).logits
    return token_logprobs(logits, labels[:, keep_from:])


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


def _left_pad_ids(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    width = max(len(i) for i in ids)
    out = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):  # left padding: every prompt ends at the same column
        out[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    return out.to(device), mask.to(device)


@torch.no_grad()
def score_reply_pairs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                      replies: Sequence[Sequence[str]], batch_size: int,
                      prompt_formats: Sequence[str] | None = None) -> list[ReplyScores]:
    """Score several replies per prompt, encoding each prompt once and reusing its KV cache.

    `replies[j][i]` is the j-th reply to prompt i. Equal to `score_replies` per reply list, at a fraction
    of the cost when prompts are long (in-context examples) or several replies share a prompt.
    """
    formats = list(prompt_formats) if prompt_formats else ["chat"] * len(prompts)
    device = next(model.parameters()).device
    out = [ReplyScores(torch.zeros(len(prompts)), torch.zeros(len(prompts))) for _ in replies]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = _left_pad_ids(tokenizer, [prompts[i] for i in idx], device)
        width = ids.shape[1]
        prompt_out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                           use_cache=True, logits_to_keep=1)
        cache, last_logp = prompt_out.past_key_values, torch.log_softmax(prompt_out.logits[:, -1].float(), -1)
        lengths = mask.sum(dim=1, keepdim=True)
        for j, reply_list in enumerate(replies):
            sep = [("" if formats[i] == "chat" else " ") for i in idx]
            reply_ids = [tokenizer(s + reply_list[i] + reply_suffix(tokenizer, formats[i]),
                                   add_special_tokens=False).input_ids for s, i in zip(sep, idx, strict=True)]
            r_ids, r_mask, r_labels = pad_batch(reply_ids, reply_ids, tokenizer.pad_token_id, device)
            positions = lengths + torch.arange(r_ids.shape[1], device=device)[None, :]
            logits = model(input_ids=r_ids, attention_mask=torch.cat([mask, r_mask], dim=1), position_ids=positions,
                           past_key_values=cache, use_cache=True).logits
            cache.crop(width)  # back to the prompt-only cache for the next reply list
            first = last_logp.gather(1, r_ids[:, :1]).squeeze(1)  # the first reply token, from the prompt
            rest = token_logprobs(logits, r_labels).sum(dim=1)
            out[j].logprob_sum[idx] = (first + rest).cpu()
            out[j].n_tokens[idx] = r_mask.sum(dim=1).float().cpu()
    return out


@dataclass
class ProbeResult:
    next_token_logprobs: torch.Tensor  # (n, vocab) at the last prompt position
    hidden: dict[int, torch.Tensor]  # layer -> (n, d) residual stream after that decoder block


@dataclass
class Samples:
    replies: list[list[str]]  # replies[i]: the n replies to prompt i
    probe: ProbeResult  # what the model does at the end of each prompt (from the same forward pass)
    new_tokens: int  # tokens generated, for throughput figures


@torch.no_grad()
def sample_replies(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], n: int,
                   max_new_tokens: int, batch_size: int, temperature: float | None = None, seed: int = 0,
                   layers: Sequence[int] = ()) -> Samples:
    """n replies per prompt (sampled at `temperature`, greedy if None), plus the probe of each prompt.

    Each prompt is encoded once and its KV cache copied for its n samples (HF `generate` re-encodes a
    prompt per returned sequence), and that same forward pass yields the probe: next-token log-probs
    and hidden states where the reply starts. `batch_size` bounds the rows decoded together (prompts x n).
    Seeded per batch with its own generator, so the same config gives the same replies.
    """
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    per_batch = max(1, batch_size // n)
    replies: list[list[str]] = []
    logps: list[torch.Tensor] = []
    hidden: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    new_tokens = 0
    for start in range(0, len(prompts), per_batch):
        ids, mask = _left_pad_ids(tokenizer, prompts[start : start + per_batch], device)
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    use_cache=True, logits_to_keep=1, output_hidden_states=bool(layers))
        last = out.logits[:, -1].float()
        logps.append(torch.log_softmax(last, dim=-1).cpu())
        for layer in layers:  # hidden_states[0] is the embedding output; block L's output is [L + 1]
            hidden[layer].append(out.hidden_states[layer + 1][:, -1].float().cpu())
        cache = out.past_key_values
        cache.batch_repeat_interleave(n)
        mask, last = mask.repeat_interleave(n, dim=0), last.repeat_interleave(n, dim=0)
        position = mask.sum(dim=1, keepdim=True)
        generator = torch.Generator(device=device).manual_seed(seed + start)
        done = torch.zeros(len(mask), dtype=torch.bool, device=device)
        tokens = []
        for _ in range(max_new_tokens):
            if temperature:
                probs = torch.softmax(last / temperature, dim=-1)
                token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                token = last.argmax(dim=-1)
            token = torch.where(done, torch.full_like(token, pad), token)
            tokens.append(token)
            done |= token == eos
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            last = model(input_ids=token[:, None], attention_mask=mask, position_ids=position,
                         past_key_values=cache, use_cache=True).logits[:, -1].float()
            position = position + 1
        rows = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in range(len(mask))]
        texts = []
        for row in rows:
            row = row[: row.index(eos)] if eos in row else row
            new_tokens += len(row)
            texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
        replies += [texts[i * n : (i + 1) * n] for i in range(len(texts) // n)]
    probe_result = ProbeResult(torch.cat(logps), {k: torch.cat(v) for k, v in hidden.items()})
    return Samples(replies, probe_result, new_tokens)


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
             max_new_tokens: int, batch_size: int, temperature: float | None = None,
             seed: int = 0) -> list[str]:
    """One reply per prompt: greedy when temperature is None, else sampled with a fixed seed."""
    samples = sample_replies(model, tokenizer, prompts, 1, max_new_tokens, batch_size, temperature, seed)
    return [r[0] for r in samples.replies]


@torch.no_grad()
def probe(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
          batch_size: int, layers: Sequence[int] = ()) -> ProbeResult:
    """Next-token distribution and hidden states where the reply would start."""
    return sample_replies(model, tokenizer, prompts, 1, 0, batch_size, layers=layers).probe


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
