"""Long input in bounded pieces: text split into sentences, oversized ones cut at pauses and words.

A VITS voice renders a whole utterance at once, and its memory grows with it (the text encoder's
attention with the square of the ids, the vocoder with the audio): 20,000 characters in one piece
took 22.5 GB. An autoregressive voice (Pocket TTS) keeps a KV cache that grows with prompt and frames.
Both were trained on single sentences, so `say` speaks one sentence at a time, as Piper does (and
Pocket TTS groups sentences into chunks of at most 50 tokens, as Kyutai does), and writes each piece's
audio before starting the next: peak memory depends on the longest piece, never on the text's length.

A sentence (or a run of ids without sentence punctuation) longer than a piece may be is halved at
the best boundary nearest its middle, recursively: a clause pause (`, ; :`) before a word space, a
word space before anything else. Input that already fits is never touched, so a one-sentence text
gives exactly the ids the voice's `text_to_ids` gives.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar, cast

#: sentence end: terminal punctuation and any closing quotes or brackets, before whitespace
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]\u00bb]*(?=\s)")
#: characters after which a cut is a pause (rank 2) or a word boundary (rank 1)
_PAUSES = frozenset(",;:\u2013\u2014")
#: symbols that end a clause or a word in a phoneme map / character vocabulary
PAUSE_SYMBOLS = (",", ";", ":", ".", "!", "?")
WORD_SYMBOLS = (" ",)

T = TypeVar("T")
S = TypeVar("S", bound=Sequence[Any])


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` at terminal punctuation followed by whitespace; text without any is one."""
    cuts = [0, *(m.end() for m in _SENTENCE_END.finditer(text)), len(text)]
    sentences = [text[a:b].strip() for a, b in zip(cuts, cuts[1:], strict=False)]
    return [s for s in sentences if s] or [text]


def bisect_to_fit(seq: S, size: Callable[[S], int], limit: int, rank: Callable[[S, int], int]) -> list[S]:
    """`seq` cut into consecutive parts with `size(part) <= limit` where a cut can achieve it.

    Each cut falls at the highest-ranked position nearest the middle (`rank(seq, i)` ranks a cut
    between `seq[i - 1]` and `seq[i]`), so parts stay balanced and end at pauses or word boundaries.
    A single element larger than `limit` is returned as it is (the caller's own check reports it)."""
    if len(seq) <= 1 or size(seq) <= limit:
        return [seq]
    middle = len(seq) / 2
    cut = max(range(1, len(seq)), key=lambda i: (rank(seq, i), -abs(i - middle)))
    # a slice of a str, list or tuple has the type of the whole (Sequence's own __getitem__ says less)
    head, tail = cast(S, seq[:cut]), cast(S, seq[cut:])
    return bisect_to_fit(head, size, limit, rank) + bisect_to_fit(tail, size, limit, rank)


def text_rank(text: str, i: int) -> int:
    """Cut quality in text: after a pause and its space 3, after a pause 2, at a space 1, else 0."""
    before = text[i - 1]
    if before.isspace() and i >= 2 and text[i - 2] in _PAUSES:
        return 3
    return 2 if before in _PAUSES else 1 if before.isspace() else 0


def id_rank(pauses: Collection[int], words: Collection[int]) -> Callable[[Sequence[int], int], int]:
    """Cut quality in an id run: after a pause id 2, after a word-boundary id 1, else 0."""

    def rank(ids: Sequence[int], i: int) -> int:
        return 2 if ids[i - 1] in pauses else 1 if ids[i - 1] in words else 0

    return rank


def text_pieces(
    text: str, encode: Callable[[str], list[int]], limit: int, *, group: bool = False
) -> list[list[int]]:
    """Ids per piece of `text`: one per sentence (`group`: consecutive sentences packed while they fit
    `limit` together, Kyutai's chunking), oversized sentences cut with `bisect_to_fit`."""
    sentences = split_sentences(text)
    if len(sentences) == 1:
        sentences = [text]  # untouched: the ids of a one-sentence text are text_to_ids(text)

    def count(part: str) -> int:
        return len(encode(part))

    parts = [p.strip() for s in sentences for p in bisect_to_fit(s, count, limit, text_rank)]
    parts = [p for p in parts if p] or [text]
    if group:
        parts = _pack(parts, count, limit)
    return [encode(p) for p in parts]


def _pack(parts: list[str], count: Callable[[str], int], limit: int) -> list[str]:
    """Consecutive parts joined with a space while their token counts sum to at most `limit`."""
    packed: list[str] = []
    total = 0
    for part in parts:
        n = count(part)
        if packed and total + n <= limit:
            packed[-1] += " " + part
            total += n
        else:
            packed.append(part)
            total = n
    return packed


def id_pieces(
    ids: Sequence[int], limit: int, *, pauses: Collection[int] = (), words: Collection[int] = ()
) -> list[list[int]]:
    """A run of ids cut into pieces of at most `limit` ids, at pause ids, else word ids, else anywhere."""
    return [list(p) for p in bisect_to_fit(list(ids), len, limit, id_rank(pauses, words))]


def symbol_ids(id_map: dict[str, object], symbols: Sequence[str]) -> frozenset[int]:
    """Ids of `symbols` in a phoneme map (symbol -> [ids]) or a character vocabulary (symbol -> id)."""
    found: set[int] = set()
    for symbol in symbols:
        value = id_map.get(symbol)
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, int))
    return frozenset(found)
