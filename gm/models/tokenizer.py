"""CLIP BPE tokenizer, context 77 (mirrors sgm's two text paths: HF `CLIPTokenizer` for CLIP-L,
`open_clip.tokenize` for OpenCLIP ViT-H / ViT-bigG).

Both paths share the OpenAI CLIP byte-level BPE (open_clip's bundled `bpe_simple_vocab_16e6.txt.gz`:
48894 merges, vocab 49408, <start> 49406, <end> 49407) and differ in three details that change ids
(see tests/golden/tokenizer/README.md):

* style "hf" (SDXL embedder 0): the literal strings `<|startoftext|>` / `<|endoftext|>` in a prompt
  are special tokens; each remaining piece goes through ftfy.fix_text -> whitespace collapse ->
  lower(), with NO html.unescape; padding repeats <end> (49407), as openai/clip-vit-large-patch14
  configures it.
* style "open_clip" (SDXL embedder 1, SD 2.x): ftfy.fix_text -> html.unescape twice -> whitespace
  collapse -> lower(); only `<start_of_text>` / `<end_of_text>` are special; padding is 0.

Both keep <start> + the first 75 BPE tokens + <end>; `tokenize` reports how many were dropped.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import ftfy
import regex
import torch

from gm.errors import GmError

Style = Literal["hf", "open_clip"]

CONTEXT_LENGTH = 77
START_ID = 49406
END_ID = 49407
NUM_MERGES = 48894  # lines 1..48894 of the gz file; line 0 is the '#version' header

_BODY_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_SPECIAL = {
    "hf": ("<|startoftext|>", "<|endoftext|>"),
    "open_clip": ("<start_of_text>", "<end_of_text>"),
}


@dataclass(frozen=True)
class Tokenized:
    """Token ids (B, context) int64 and, per prompt, how many BPE tokens were cut off."""

    ids: torch.Tensor
    dropped: tuple[int, ...]


def bpe_path() -> Path:
    """open_clip's bundled vocabulary, found without importing open_clip (and torch models)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise GmError("the CLIP tokenizer vocabulary is missing", "pip install open_clip_torch")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode map (printable bytes map to themselves)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


class BPE:
    """The CLIP byte-pair encoder: vocabulary, merge ranks and the two special tokens."""

    def __init__(self, path: Path) -> None:
        lines = gzip.open(path).read().decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        self.byte_encoder = bytes_to_unicode()
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}  # specials are 49406, 49407
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.cache: dict[str, list[int]] = {}

    def encode_word(self, word: str) -> list[int]:
        """One pre-tokenised word (already byte-mapped) -> BPE ids; merges lowest rank first."""
        if word in self.cache:
            return self.cache[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self.encoder[p] for p in parts]
        self.cache[word] = ids
        return ids


@functools.lru_cache(maxsize=1)
def _bpe() -> BPE:
    return BPE(bpe_path())


def _whitespace_clean(text: str) -> str:
    return regex.sub(r"\s+", " ", text).strip()


def body_ids(text: str, style: Style) -> list[int]:
    """BPE ids of a prompt without <start>/<end> or padding."""
    bpe = _bpe()
    start, end = _SPECIAL[style]
    special = {start: START_ID, end: END_ID}
    pattern = regex.compile(
        regex.escape(start) + "|" + regex.escape(end) + "|" + _BODY_PATTERN, regex.IGNORECASE
    )
    if style == "hf":
        # HF splits the raw text on its added tokens first and cleans each piece separately.
        pieces = regex.split("(" + regex.escape(start) + "|" + regex.escape(end) + ")", text)
        cleaned = [p if p in special else _whitespace_clean(ftfy.fix_text(p)).lower() for p in pieces]
    else:
        cleaned = [_whitespace_clean(html.unescape(html.unescape(ftfy.fix_text(text))).strip()).lower()]
    ids: list[int] = []
    for piece in cleaned:
        if piece in special:
            ids.append(special[piece])
            continue
        for word in pattern.findall(piece):
            if word in special:
                ids.append(special[word])
                continue
            ids.extend(bpe.encode_word("".join(bpe.byte_encoder[b] for b in word.encode("utf-8"))))
    return ids


def tokenize(texts: Sequence[str], style: Style, context_length: int = CONTEXT_LENGTH) -> Tokenized:
    """Prompts -> (B, context_length) ids: <start> body[:context-2] <end> padding.

    `style` picks the HF CLIP-L conventions ("hf", pad 49407) or open_clip's ("open_clip", pad 0).
    """
    if isinstance(texts, str):
        raise TypeError("tokenize expects a sequence of prompts, not a single string")
    pad = END_ID if style == "hf" else 0
    room = context_length - 2
    ids = torch.full((len(texts), context_length), pad, dtype=torch.int64)
    dropped = []
    for row, text in enumerate(texts):
        body = body_ids(text, style)
        dropped.append(max(0, len(body) - room))
        seq = [START_ID] + body[:room] + [END_ID]
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
    return Tokenized(ids=ids, dropped=tuple(dropped))
