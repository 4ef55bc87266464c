"""A Tekken tokenizer file (`tekken.json`) for random Voxtral TTS checkpoints, in the format mistral-common
reads.

A demo checkpoint needs a tokenizer the real toolchain accepts: `MistralTokenizer.from_file` must load it
and `encode_speech_request` must lay out the speech prompt with the same special ids the model's
params.json names ([AUDIO] = 24, [BEGIN_AUDIO] = 25). Mistral's file cannot be shipped (and its 150,000
merges are not needed to test a port), so this module writes one of the same shape:

- special tokens first, numbered by their position in the list (mistral-common takes an id from the
  entry's place: `rank` must equal the index), at the ids Mistral's Voxtral files use for the tokens the
  speech path reads; the others are `<SPECIAL_i>` fillers, as mistral-common names missing ones;
- then the byte-level BPE vocabulary, ids offset by the number of specials: the 256 single bytes (rank i
  must be byte i), merges learned by plain BPE from a fixed English text (so English takes fewer tokens
  than bytes), then merges synthesized from a seeded generator until the vocabulary is exactly
  `vocab_size` ids;
- the `audio` section: the codec's rate and the number of audio frames of each preset voice
  (`voice_num_audio_tokens`: how many [AUDIO] placeholders the prompt carries for that voice).

Everything is deterministic (same bytes for the same arguments, any machine) and takes a few seconds at
the released size (131,072 ids). Nothing here imports mistral-common: writing needs only the standard
library; reading it back is `frontend.SpeechPrompt`'s job.
"""

from __future__ import annotations

import base64
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

from voxport.errors import BadInput

#: Mistral's Tekken files reserve 1000 ids for special tokens; a vocabulary too small for that (the tiny
#: demo's 1280) reserves SMALL_NUM_SPECIAL, which still holds every id below
MISTRAL_NUM_SPECIAL = 1000
SMALL_NUM_SPECIAL = 64
#: the fewest text ids beside the 1000 specials before the small reservation is used instead
_MIN_TEXT_IDS_FOR_MISTRAL_LAYOUT = 4096

#: special tokens at the ids of Mistral's Voxtral Tekken files. 0-19 are every v7 Tekken file's (the
#: instruct tokenizer looks several up by name when it loads); 24-26 and 35-36 are the speech path's
#: (24/25 are params.json's `audio_token_id`/`begin_audio_token_id`); 32-34 are what a v7/v11 tokenizer
#: with an audio section also requires ([TRANSCRIBE] for v7's non-streaming audio). Unlisted ids below the
#: reservation are `<SPECIAL_{id}>`.
NAMED_SPECIALS: dict[int, str] = {
    0: "<unk>",
    1: "<s>",
    2: "</s>",
    3: "[INST]",
    4: "[/INST]",
    5: "[AVAILABLE_TOOLS]",
    6: "[/AVAILABLE_TOOLS]",
    7: "[TOOL_RESULTS]",
    8: "[/TOOL_RESULTS]",
    9: "[TOOL_CALLS]",
    10: "[IMG]",
    11: "<pad>",
    12: "[IMG_BREAK]",
    13: "[IMG_END]",
    14: "[PREFIX]",
    15: "[MIDDLE]",
    16: "[SUFFIX]",
    17: "[SYSTEM_PROMPT]",
    18: "[/SYSTEM_PROMPT]",
    19: "[TOOL_CONTENT]",
    24: "[AUDIO]",
    25: "[BEGIN_AUDIO]",
    26: "[OUTPUT_AUDIO]",
    32: "[ARGS]",
    33: "[CALL_ID]",
    34: "[TRANSCRIBE]",
    35: "[REPEAT_AUDIO_TEXT]",
    36: "[NEXT_AUDIO_TEXT]",
}
AUDIO_TOKEN_ID, BEGIN_AUDIO_TOKEN_ID = 24, 25

#: the tokenizer version written: v7 is the first whose instruct tokenizer takes an audio section and
#: encodes speech requests
VERSION = "v7"
#: Tekken's pre-tokenization regex (Mistral's, in every published Tekken file)
PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: the audio section's spectrogram settings: mistral-common requires them, speech requests with a preset
#: voice never use them (Mistral's values)
_ENCODING_CONFIG = {"num_mel_bins": 128, "hop_length": 160, "window_size": 400}

#: the text BPE merges are learned from (written for voxport; any English prose would do)
ENGLISH_TEXT = """\
The quick brown fox jumps over the lazy dog, and the dog does not seem to mind at all. A voice is a
sound that carries words from one person to another. When we speak, the air from our lungs passes
through the throat, and the shape of the mouth turns that sound into the letters of a language. Speech
that is made by a machine has to do the same thing with numbers instead of muscles.

A text to speech model reads a sentence and writes a sound wave. First it turns the text into tokens,
small pieces of words that it has seen many times before. Then it predicts, one frame after another,
how the sound should change over time. Each frame is a short slice of audio, about eighty milliseconds
long, and the model decides what comes next by looking at everything that came before it. At the end,
a decoder turns those frames into samples that a speaker can play.

There are many ways to make this faster. The weights of the network can be stored with fewer bits,
the program can run on a phone instead of a large server, and the work can be split into parts that
start as soon as the first words are ready. Each of these changes must be checked with care: a model
that is small and quick but sounds wrong is of no use to anyone. So we compare the new output with the
old one, we listen to it, and we measure how close the two are.

It was a cold morning in the middle of November. The train left the station at seven, and by eight it
was running along the river, past fields, farms and small towns with old stone churches. Most of the
people in the carriage were reading or looking out of the window; a child was counting the trees,
and a woman near the door was speaking quietly on the phone. Nobody seemed to be in a hurry.

Would you like some tea, or would you rather have coffee? I think there is still some bread in the
kitchen, and we could make a few sandwiches for the journey. Please remember to close the windows
before you leave, and do not forget your keys again. Thank you, that is very kind of you!

Numbers are read in different ways: 1, 2, 3 and 4 are simple, but 1999, 2024 or 3.14 need a little
more thought. Dates such as the 5th of May, times like 10:30, and prices like 12 dollars and 50 cents
all have their own rules. Good systems learn these rules from examples, and better ones learn where
the rules do not hold.

The history of the field is long. Early machines used recordings of single sounds and joined them
together, which made the speech clear but strange. Later systems learned from hours of recorded
reading, and today a model can speak in many voices and languages, with feeling, pauses and breath.
What matters most is still the same as it always was: that the listener understands every word, and
that the voice is pleasant to hear for a long time.
"""

#: pieces learning splits the text into (an ASCII approximation of PATTERN: words with their leading
#: space or mark, single digits, runs of punctuation, runs of white space), so that learned merges stay
#: inside the pieces tiktoken will see
_LEARN_PIECES = re.compile(r"[^\r\n A-Za-z0-9]?[A-Za-z]+| ?[A-Za-z]+|[0-9]| ?[^\sA-Za-z0-9]+|\s+")
#: synthesized merges are word-like: a word start (letters, maybe after a space) plus lower-case letters
_HEAD = re.compile(rb" ?[A-Za-z]+")
_TAIL = re.compile(rb"[a-z]+")
_SYNTH_PART_MAX = 8


def num_special_tokens(vocab_size: int) -> int:
    """Mistral's 1000 reserved ids when the vocabulary is large enough to keep a useful text vocabulary
    beside them, else SMALL_NUM_SPECIAL (still above every named special's id)."""
    if vocab_size - MISTRAL_NUM_SPECIAL >= _MIN_TEXT_IDS_FOR_MISTRAL_LAYOUT:
        return MISTRAL_NUM_SPECIAL
    return SMALL_NUM_SPECIAL


def special_tokens(count: int) -> list[str]:
    """The special tokens' strings in id order (the file's `special_tokens`, whose ranks are these
    indices)."""
    return [NAMED_SPECIALS.get(i, f"<SPECIAL_{i}>") for i in range(count)]


def learn_merges(text: str, limit: int) -> list[bytes]:
    """Byte-level BPE on `text`: the merged tokens in the order learned, at most `limit`, stopping when no
    pair occurs twice. Ties between equally frequent pairs go to the smaller pair (bytes order), so the
    result depends on the text alone. Two merges can make the same bytes ("a"+"bc", "ab"+"c"): the
    second is applied but not listed again (a Tekken vocabulary holds each byte string once)."""
    words: Counter[tuple[bytes, ...]] = Counter(
        tuple(bytes([b]) for b in piece.encode("utf-8")) for piece in _LEARN_PIECES.findall(text)
    )
    merges: list[bytes] = []
    seen: set[bytes] = set()
    while len(merges) < limit:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, n in words.items():
            for a, b in zip(word, word[1:], strict=False):
                pairs[(a, b)] += n
        if not pairs:
            break
        (a, b), count = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        if count < 2:
            break
        merged = a + b
        if merged not in seen:
            seen.add(merged)
            merges.append(merged)
        new_words: Counter[tuple[bytes, ...]] = Counter()
        for word, n in words.items():
            out: list[bytes] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += n
        words = new_words
    return merges


def synthesize_merges(known: list[bytes], count: int, seed: int) -> list[bytes]:
    """`count` new tokens, each a word start plus a lower-case piece already in the vocabulary (so each is
    a merge of two lower-ranked tokens, as BPE requires of a mergeable token), drawn by a generator
    seeded with `seed`: filler that makes the vocabulary its full size."""
    seen = set(known)
    heads = [t for t in known if _HEAD.fullmatch(t) and len(t) <= _SYNTH_PART_MAX]
    tails = [t for t in known if _TAIL.fullmatch(t) and len(t) <= _SYNTH_PART_MAX]
    rng = random.Random(seed)
    out: list[bytes] = []
    while len(out) < count:
        token = rng.choice(heads) + rng.choice(tails)
        if token in seen:
            continue
        seen.add(token)
        out.append(token)
        if len(token) <= _SYNTH_PART_MAX:
            heads.append(token)
            if _TAIL.fullmatch(token):
                tails.append(token)
    return out


def _token_entry(rank: int, token: bytes) -> dict[str, Any]:
    try:
        text: str | None = token.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {"rank": rank, "token_bytes": base64.b64encode(token).decode("ascii"), "token_str": text}


def tekken_document(
    *,
    vocab_size: int,
    voices: dict[str, int],
    seed: int = 0,
    sample_rate: int = 24000,
    frame_rate: float = 12.5,
) -> dict[str, Any]:
    """The tekken.json content `write_tekken` writes, as a dict."""
    n_special = num_special_tokens(vocab_size)
    n_text = vocab_size - n_special
    if n_text < 256:
        raise BadInput(
            f"vocab_size {vocab_size} leaves {n_text} text ids beside {n_special} special tokens; "
            f"a Tekken vocabulary needs at least {n_special + 256} (the 256 bytes)"
        )
    for name, frames in voices.items():
        if not name or not isinstance(frames, int) or frames < 1:
            raise BadInput(
                f"voice {name!r}: its number of audio frames must be a positive integer, got {frames!r}"
            )
    vocab = [bytes([i]) for i in range(256)]
    vocab += learn_merges(ENGLISH_TEXT, n_text - len(vocab))
    vocab += synthesize_merges(vocab, n_text - len(vocab), seed)
    return {
        "config": {
            "pattern": PATTERN,
            "num_vocab_tokens": n_text,
            "default_vocab_size": vocab_size,
            "default_num_special_tokens": n_special,
            "version": VERSION,
        },
        "special_tokens": [
            {"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(special_tokens(n_special))
        ],
        "audio": {
            "sampling_rate": sample_rate,
            "frame_rate": frame_rate,
            "audio_encoding_config": dict(_ENCODING_CONFIG),
            "chunk_length_s": 30.0,
            "voice_num_audio_tokens": dict(voices),
        },
        "vocab": [_token_entry(rank, token) for rank, token in enumerate(vocab)],
    }


def write_tekken(
    path: Path | str,
    *,
    vocab_size: int,
    voices: dict[str, int],
    seed: int = 0,
    sample_rate: int = 24000,
    frame_rate: float = 12.5,
) -> None:
    """Write a Tekken tokenizer of exactly `vocab_size` ids with the preset `voices` (name -> audio
    frames of its embedding) to `path`. `seed` picks the synthesized merges; the same arguments give the
    same bytes."""
    doc = tekken_document(
        vocab_size=vocab_size, voices=voices, seed=seed, sample_rate=sample_rate, frame_rate=frame_rate
    )
    Path(path).write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")


def read_voice_frames(path: Path | str) -> dict[str, int]:
    """The preset voices of a tekken.json (name -> audio frames), without mistral-common: what the
    checkpoint's voice embeddings must match row for row."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        voices = doc["audio"]["voice_num_audio_tokens"]
        return {str(name): int(frames) for name, frames in voices.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadInput(
            f"{path}: not a Tekken tokenizer with preset voices (audio.voice_num_audio_tokens): {exc}; "
            "give the tekken.json that came with the checkpoint"
        ) from exc
