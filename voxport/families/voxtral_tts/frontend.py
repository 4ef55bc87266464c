"""Voxtral TTS's text frontend: text and a preset voice -> the backbone's prompt ids, as Mistral makes them.

The prompt is mistral-common's `encode_speech_request` on the checkpoint's tekken.json, not a copy of it:
the layout (which markers, in which order, how many [AUDIO] placeholders a voice takes) is Mistral's to
define, and their library is what every other Voxtral runtime calls. For a preset voice it is

    <s> [BEGIN_AUDIO] [AUDIO] * frames(voice) [NEXT_AUDIO_TEXT] text... [REPEAT_AUDIO_TEXT] [BEGIN_AUDIO]

where the model replaces the [AUDIO] rows with the voice's embedding and starts generating audio frames
after the final [BEGIN_AUDIO]. mistral-common names [NEXT_AUDIO_TEXT] `text_to_audio` and
[REPEAT_AUDIO_TEXT] `audio_to_text`; `SpecialIds` keeps its names.

mistral-common is imported on first use (`pip install 'voxport[voxtral]'`), so `import voxport` stays
light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxport.errors import BadInput

_INSTALL_HINT = "pip install 'voxport[voxtral]'"


@dataclass(frozen=True)
class SpecialIds:
    """The speech prompt's marker ids in a Tekken tokenizer (24, 25, 36, 35 and 1 in Mistral's)."""

    bos: int
    audio: int
    begin_audio: int
    text_to_audio: int
    audio_to_text: int


def _mistral_common() -> tuple[Any, Any]:
    """mistral-common's MistralTokenizer and SpeechRequest, or a BadInput saying how to install it."""
    try:
        from mistral_common.protocol.speech.request import SpeechRequest
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    except ImportError as exc:
        raise BadInput(
            f"Voxtral TTS text needs mistral-common ({exc}); install it with: {_INSTALL_HINT}"
        ) from exc
    return MistralTokenizer, SpeechRequest


class SpeechPrompt:
    """A checkpoint's tekken.json, loaded by mistral-common, turning text and a voice into prompt ids."""

    def __init__(self, tokenizer: Any, speech_request: Any, path: Path) -> None:
        #: mistral-common's MistralTokenizer on the file (`.instruct_tokenizer.tokenizer` is the Tekkenizer)
        self.tokenizer = tokenizer
        self._speech_request = speech_request
        self.path = path
        inner = tokenizer.instruct_tokenizer
        encoder = inner.audio_encoder
        ids = encoder.special_ids if encoder is not None else None
        markers = (
            (ids.audio, ids.begin_audio, ids.text_to_audio, ids.audio_to_text) if ids is not None else (None,)
        )
        voices = encoder.audio_config.voice_num_audio_tokens if encoder is not None else None
        if ids is None or any(m is None for m in markers) or not voices:
            raise BadInput(
                f"{path}: not a Voxtral TTS tokenizer (it needs an audio section with preset voices and the "
                "[AUDIO], [BEGIN_AUDIO], [NEXT_AUDIO_TEXT] and [REPEAT_AUDIO_TEXT] tokens); "
                "give the tekken.json that came with the Voxtral TTS checkpoint"
            )
        self._voices: dict[str, int] = {str(k): int(v) for k, v in voices.items()}
        self.special_ids = SpecialIds(
            bos=int(inner.tokenizer.bos_id),
            audio=int(ids.audio),
            begin_audio=int(ids.begin_audio),
            text_to_audio=int(ids.text_to_audio),
            audio_to_text=int(ids.audio_to_text),
        )
        #: ids in the vocabulary, special tokens included (params.json's `vocab_size` must match)
        self.vocab_size = int(inner.tokenizer.n_words)

    @classmethod
    def from_file(cls, path: Path | str) -> SpeechPrompt:
        """Load a tekken.json; BadInput if it is missing, unreadable, or not a Voxtral TTS tokenizer."""
        path = Path(path)
        mistral_tokenizer, speech_request = _mistral_common()
        if not path.is_file():
            raise BadInput(
                f"{path}: no such tokenizer file; give the tekken.json of a Voxtral TTS checkpoint"
            )
        if "tekken" not in path.name or path.suffix != ".json":
            # mistral-common tells a Tekken file from a SentencePiece model by its name alone
            raise BadInput(f"{path}: mistral-common reads only Tekken files named *tekken*.json; rename it")
        try:
            tokenizer = mistral_tokenizer.from_file(str(path))
        except Exception as exc:  # mistral-common reports a bad file with assert/ValueError/KeyError/...
            detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise BadInput(
                f"{path}: mistral-common cannot read this tokenizer ({detail}); "
                "give the tekken.json that came with the Voxtral TTS checkpoint"
            ) from exc
        return cls(tokenizer, speech_request, path)

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> SpeechPrompt:
        """A tokenizer held in memory (a loaded checkpoint's, a GGUF's embedded copy): mistral-common
        reads only files, and only files named *tekken*.json, hence the temporary one."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "tekken.json"
            path.write_bytes(data)
            prompt = cls.from_file(path)
        prompt.path = Path(source) / "tekken.json"
        return prompt

    def text_ids(self, text: str) -> list[int]:
        """The ids of `text` alone, cut from mistral-common's own speech prompt (between
        [NEXT_AUDIO_TEXT] and the last [REPEAT_AUDIO_TEXT]), so they are the ids it would use."""
        ids = self.encode(text, self.voices[0])
        s = self.special_ids
        start = ids.index(s.text_to_audio) + 1
        end = len(ids) - 1 - ids[::-1].index(s.audio_to_text)
        return ids[start:end]

    @property
    def voices(self) -> list[str]:
        """The preset voices' names, in the file's order."""
        return list(self._voices)

    def frames(self, voice: str) -> int:
        """How many [AUDIO] placeholders (rows of the voice's embedding) `voice` puts in the prompt."""
        self._check_voice(voice)
        return self._voices[voice]

    def encode(self, text: str, voice: str) -> list[int]:
        """The prompt ids for saying `text` in preset `voice` (mistral-common's `encode_speech_request`)."""
        if not text or not text.strip():
            raise BadInput("the text is empty: give some text to say")
        self._check_voice(voice)
        request = self._speech_request(input=text, voice=voice)
        return [int(t) for t in self.tokenizer.encode_speech_request(request).tokens]

    def _check_voice(self, voice: str) -> None:
        if voice not in self._voices:
            raise BadInput(
                f"unknown voice {voice!r}; this checkpoint's voices are: {', '.join(self._voices)}"
            )
