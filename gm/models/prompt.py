"""A1111 prompt syntax: emphasis weights, BREAK, and prompts longer than one 77-token window.

Syntax (the same rules as A1111's `parse_prompt_attention`):
* `(text)` multiplies the weight of text by 1.1, `[text]` divides it by 1.1; brackets nest and
  multiply; `(text:1.3)` sets the factor to 1.3. A bracket left open applies to the end of the prompt.
* `\\(` `\\)` `\\[` `\\]` `\\\\` are the literal characters.
* `BREAK` (upper case, as a word) ends the current 75-token chunk; the rest starts a new one.
* `<lora:name:w>` is taken out of the image commands' prompt before it gets here (gm.lora); what remains
  (`<lyco:...>`, `<hypernet:...>`, a tag in the negative prompt) is an error pointing to --lora.

Encoding (`tokenize_prompts`): each fragment is BPE-tokenised on its own and every token carries its
fragment's weight; tokens fill chunks of 75, each chunk is wrapped as <start> tokens <end> pad...
(77 ids). The text encoders run once per chunk, concatenate the chunks along the sequence axis and
take the pooled vector from the first chunk; per sample and chunk, the hidden states are multiplied
by the token weights and rescaled to their original mean (`apply_weights`). Unlike A1111 the mean is
restored per sample (not over the whole batch), so a prompt's result does not depend on its batch
mates, and a full chunk is not split back at its last comma.

A prompt with no syntax and at most 75 tokens is one unweighted chunk: exactly the ids and embedding
of the plain tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gm.errors import UsageError
from gm.models.tokenizer import CONTEXT_LENGTH, END_ID, START_ID, Style, body_ids

EMPHASIS = 1.1
BREAK = ("BREAK", -1.0)  # the chunk separator in a parsed prompt

_TOKEN = re.compile(
    r"""\\[()\[\]\\]           # an escaped bracket or backslash
      | \\                     # a lone backslash (literal)
      | [(\[]                  # an opening bracket
      | :\s*([+-]?[.\d]+)\s*\) # an explicit weight closing a round bracket
      | [)\]]                  # a closing bracket
      | [^\\()\[\]:]+          # plain text
      | :                      # a colon that is not a weight
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_EXTRA_NETWORK = re.compile(r"<(lora|lyco|hypernet):([^>]*)>", re.I)


def check_prompt(text: str) -> None:
    """Reject what gm would otherwise encode as literal text: A1111's <lora:...> tags."""
    match = _EXTRA_NETWORK.search(text)
    if match:
        name = match.group(2).split(":")[0]
        raise UsageError(f"the text contains {match.group(0)}, a tag gm reads only as <lora:NAME:W> in the prompt "
                         "of txt2img / refine / turbo", hint=f"remove it, or load the LoRA with --lora {name or 'NAME'}")


def parse_prompt(text: str) -> list[tuple[str, float]]:
    """`text` -> [(fragment, weight)], neighbours of equal weight merged; BREAK is ("BREAK", -1)."""
    parts: list[list] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] *= factor

    for m in _TOKEN.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            parts.append([token[1:], 1.0])  # a lone backslash vanishes, as in A1111
        elif token in ("(", "["):
            (open_round if token == "(" else open_square).append(len(parts))
        elif weight is not None and open_round:
            try:
                factor = float(weight)
            except ValueError:
                raise UsageError(f"prompt weight {weight!r} is not a number", hint="write e.g. (word:1.3)") from None
            scale(open_round.pop(), factor)
        elif token == ")" and open_round:
            scale(open_round.pop(), EMPHASIS)
        elif token == "]" and open_square:
            scale(open_square.pop(), 1 / EMPHASIS)
        else:
            for k, piece in enumerate(_BREAK.split(token)):
                if k:
                    parts.append(list(BREAK))
                parts.append([piece, 1.0])
    for start in open_round:
        scale(start, EMPHASIS)
    for start in open_square:
        scale(start, 1 / EMPHASIS)
    merged: list[list] = []
    for part in parts or [["", 1.0]]:
        if merged and merged[-1][1] == part[1] and part[1] != BREAK[1]:
            merged[-1][0] += part[0]
        else:
            merged.append(part)
    return [(t, w) for t, w in merged]


@dataclass(frozen=True)
class PromptTokens:
    """The token table of a batch of prompts: `chunks` windows of 77 per prompt.

    ids (B, chunks * 77) int64, weights (B, chunks * 77) float32 (1 at <start>, <end>, padding)."""

    ids: torch.Tensor
    weights: torch.Tensor
    chunks: int

    @property
    def weighted(self) -> bool:
        return bool((self.weights != 1.0).any())


def _chunk_rows(text: str, style: Style) -> list[tuple[list[int], list[float]]]:
    """One prompt -> its chunks of at most 75 (token, weight) pairs (at least one chunk)."""
    check_prompt(text)
    room = CONTEXT_LENGTH - 2
    chunks: list[tuple[list[int], list[float]]] = [([], [])]
    for fragment, weight in parse_prompt(text):
        if (fragment, weight) == BREAK:
            chunks.append(([], []))
            continue
        for token in body_ids(fragment, style):
            if len(chunks[-1][0]) == room:
                chunks.append(([], []))
            chunks[-1][0].append(token)
            chunks[-1][1].append(weight)
    return chunks


def chunk_count(texts: Sequence[str], style: Style) -> int:
    """How many 77-token windows the longest of `texts` needs."""
    return max((len(_chunk_rows(t, style)) for t in texts), default=1)


def tokenize_prompts(texts: Sequence[str], style: Style, min_chunks: int = 1) -> PromptTokens:
    """Prompts (A1111 syntax) -> the padded token/weight table, with at least `min_chunks` windows
    per prompt (extra windows are empty prompts: <start> <end> padding)."""
    if isinstance(texts, str):
        raise TypeError("tokenize_prompts expects a sequence of prompts, not a single string")
    rows = [_chunk_rows(t, style) for t in texts]
    n = max([min_chunks] + [len(r) for r in rows])
    pad = END_ID if style == "hf" else 0
    ids = torch.full((len(texts), n * CONTEXT_LENGTH), pad, dtype=torch.int64)
    weights = torch.ones((len(texts), n * CONTEXT_LENGTH), dtype=torch.float32)
    for b, chunks in enumerate(rows):
        for c in range(n):
            tokens, w = chunks[c] if c < len(chunks) else ([], [])
            at = c * CONTEXT_LENGTH
            seq = [START_ID] + tokens + [END_ID]
            ids[b, at : at + len(seq)] = torch.tensor(seq, dtype=torch.int64)
            weights[b, at + 1 : at + 1 + len(w)] = torch.tensor(w, dtype=torch.float32)
    return PromptTokens(ids=ids, weights=weights, chunks=n)


def is_plain(text: str) -> bool:
    """True when `text` encodes exactly as the plain tokenizer does: no syntax, one chunk of <= 75."""
    parsed = parse_prompt(text)
    return len(parsed) == 1 and parsed[0] == (text, 1.0) and not _EXTRA_NETWORK.search(text) and (
        chunk_count([text], "open_clip") == 1 and chunk_count([text], "hf") == 1)


def apply_weights(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Multiply hidden states (B, chunks * 77, D) by per-token weights (B, chunks * 77), then rescale
    each sample's chunk so its mean over tokens and features is what it was (A1111's emphasis)."""
    if not bool((weights != 1.0).any()):
        return z
    b, length, d = z.shape
    chunks = length // CONTEXT_LENGTH
    z4 = z.reshape(b, chunks, CONTEXT_LENGTH, d)
    w4 = weights.to(z.device, z.dtype).reshape(b, chunks, CONTEXT_LENGTH, 1)
    before = z4.mean(dim=(2, 3), keepdim=True)
    scaled = z4 * w4
    after = scaled.mean(dim=(2, 3), keepdim=True)
    return (scaled * (before / after)).reshape(b, length, d)


Encode = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def encode_chunks(encode: Encode, ids: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run a text tower on every 77-id window of `ids` (B, k * 77) in one batch.

    `encode(ids (N, 77)) -> (hidden (N, 77, D), pooled (N, E) or None)`. Returns the hidden states
    concatenated along the sequence (B, k * 77, D), weighted when `weights` is given, and the pooled
    vector of each prompt's first window (B, E)."""
    b, length = ids.shape
    k = length // CONTEXT_LENGTH
    hidden, pooled = encode(ids.reshape(b * k, CONTEXT_LENGTH))
    hidden = hidden.reshape(b, k * CONTEXT_LENGTH, hidden.shape[-1])
    if pooled is not None:
        pooled = pooled.reshape(b, k, pooled.shape[-1])[:, 0]
    if weights is not None:
        hidden = apply_weights(hidden, weights)
    return hidden, pooled
