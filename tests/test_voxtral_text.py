"""Voxtral TTS's text side: the Tekken file voxport writes for random checkpoints, read back by mistral-common
(the library every Voxtral runtime uses), the speech prompt it lays out, and the reference modules
(sglang-omni's head and codec) the family is checked against, importable and running on the CPU."""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import voxtral_reference as ref
from mistral_common.protocol.speech.request import SpeechRequest

from voxport.errors import BadInput
from voxport.families.voxtral_tts.config import NAMED_PARAMS, VoxtralConfig, tensor_shapes
from voxport.families.voxtral_tts.frontend import SpeechPrompt
from voxport.families.voxtral_tts.tekken import read_voice_frames, write_tekken

#: two of the released model's preset voices, with their frame counts (tekken.json's voice_num_audio_tokens)
VOICES = {"casual_male": 147, "neutral_female": 218}
#: a sentence that is not in the text the merges are learned from
SENTENCE = "She said that the weather would be better in the afternoon, so we waited."
#: the tiny file's sha256: same bytes on any machine and Python (BPE ties and the seeded filler are ordered)
TINY_SHA256 = "82e4dee847bd0fc1008471f6c7a79e3a7cae03e7b3759adfc7de26a7962db8b1"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Written:
    name: str
    path: Path
    prompt: SpeechPrompt  # loaded once per file: mistral-common takes ~1.5 s to load the full vocabulary

    @property
    def inner(self) -> Any:
        """mistral-common's Tekkenizer."""
        return self.prompt.tokenizer.instruct_tokenizer.tokenizer


def _write(name: str, directory: Path) -> Written:
    path = directory / "tekken.json"
    write_tekken(path, vocab_size=VoxtralConfig(NAMED_PARAMS[name]).backbone.vocab_size, voices=VOICES)
    return Written(name, path, SpeechPrompt.from_file(path))


@pytest.fixture(scope="module", params=["tiny", "full"])
def tekken(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Written:
    """A tekken.json sized to the named params.json's vocabulary, and its SpeechPrompt."""
    return _write(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return _write("tiny", tmp_path_factory.mktemp("tiny"))


def test_mistral_common_reads_the_vocabulary_at_the_params_size(tekken: Written) -> None:
    cfg = VoxtralConfig(NAMED_PARAMS[tekken.name])
    inner = tekken.inner
    assert inner.n_words == cfg.backbone.vocab_size == {"tiny": 1280, "full": 131072}[tekken.name]
    assert len(inner.vocab()) == cfg.backbone.vocab_size
    assert inner.num_special_tokens == {"tiny": 64, "full": 1000}[tekken.name]
    doc = json.loads(tekken.path.read_text(encoding="utf-8"))
    assert len(doc["vocab"]) + len(doc["special_tokens"]) == cfg.backbone.vocab_size
    # every special is at the id of its place in the list (mistral-common reads ids that way)
    assert [t["rank"] for t in doc["special_tokens"]] == list(range(inner.num_special_tokens))


def test_the_speech_specials_are_at_the_ids_params_json_names(tekken: Written) -> None:
    cfg = VoxtralConfig(NAMED_PARAMS[tekken.name])
    inner = tekken.inner
    assert inner.get_special_token("[AUDIO]") == cfg.audio_token_id == 24
    assert inner.get_special_token("[BEGIN_AUDIO]") == cfg.begin_audio_token_id == 25
    ids = {s: inner.get_special_token(s) for s in ("<s>", "</s>", "[NEXT_AUDIO_TEXT]", "[REPEAT_AUDIO_TEXT]")}
    assert ids == {"<s>": 1, "</s>": 2, "[NEXT_AUDIO_TEXT]": 36, "[REPEAT_AUDIO_TEXT]": 35}
    prompt = tekken.prompt
    assert (prompt.special_ids.bos, prompt.special_ids.audio, prompt.special_ids.begin_audio) == (1, 24, 25)
    assert (prompt.special_ids.text_to_audio, prompt.special_ids.audio_to_text) == (36, 35)
    assert prompt.vocab_size == cfg.backbone.vocab_size
    assert prompt.voices == list(VOICES) and prompt.frames("neutral_female") == 218


def test_the_speech_prompt_layout(tekken: Written) -> None:
    """<s> [BEGIN_AUDIO] [AUDIO]*frames [NEXT_AUDIO_TEXT] text [REPEAT_AUDIO_TEXT] [BEGIN_AUDIO], as
    mistral-common's encode_speech_request lays it out, and SpeechPrompt.encode returns exactly that."""
    inner = tekken.inner
    request = SpeechRequest(input=SENTENCE, voice="casual_male")
    direct = tekken.prompt.tokenizer.encode_speech_request(request).tokens
    ids = tekken.prompt.encode(SENTENCE, "casual_male")
    assert ids == direct
    n = VOICES["casual_male"]
    assert ids[:2] == [1, 25] and ids[2 : 2 + n] == [24] * n and ids[2 + n] == 36 and ids[-2:] == [35, 25]
    text_ids = ids[3 + n : -2]
    assert text_ids == inner.encode(SENTENCE, bos=False, eos=False)
    assert all(inner.num_special_tokens <= t < inner.n_words for t in text_ids)
    assert inner.decode(text_ids) == SENTENCE
    # the learned merges compress English: 30 tokens for these 73 bytes (deterministic; 0.6 leaves margin)
    assert len(text_ids) < 0.6 * len(SENTENCE.encode("utf-8"))


def test_the_file_is_the_same_bytes_every_time(tekken: Written, tmp_path: Path) -> None:
    size = VoxtralConfig(NAMED_PARAMS[tekken.name]).backbone.vocab_size
    again = tmp_path / "tekken.json"
    write_tekken(again, vocab_size=size, voices=VOICES)
    assert sha256(again) == sha256(tekken.path)
    if tekken.name == "tiny":
        assert sha256(again) == TINY_SHA256
        write_tekken(again, vocab_size=size, voices=VOICES, seed=1)
        assert sha256(again) != TINY_SHA256  # the seed picks the synthesized merges


def test_voice_frames_read_back_without_mistral_common(tiny: Written, tmp_path: Path) -> None:
    assert read_voice_frames(tiny.path) == VOICES
    (tmp_path / "tekken.json").write_text("{}")
    with pytest.raises(BadInput, match="voice_num_audio_tokens"):
        read_voice_frames(tmp_path / "tekken.json")


def test_bad_arguments_to_the_writer(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="at least 320"):
        write_tekken(tmp_path / "tekken.json", vocab_size=300, voices=VOICES)
    with pytest.raises(BadInput, match="positive integer"):
        write_tekken(tmp_path / "tekken.json", vocab_size=1280, voices={"casual_male": 0})


def test_user_errors_are_one_line_saying_what_to_do(
    tiny: Written, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BadInput, match="unknown voice 'nobody'; this checkpoint's voices are: casual_male, "):
        tiny.prompt.encode("Hello.", "nobody")
    for empty in ("", "  \n"):
        with pytest.raises(BadInput, match="the text is empty"):
            tiny.prompt.encode(empty, "casual_male")

    with pytest.raises(BadInput, match="no such tokenizer file"):
        SpeechPrompt.from_file(tmp_path / "missing-tekken.json")
    (tmp_path / "broken-tekken.json").write_text("{not json")
    with pytest.raises(BadInput, match="mistral-common cannot read this tokenizer"):
        SpeechPrompt.from_file(tmp_path / "broken-tekken.json")
    doc = json.loads(tiny.path.read_text(encoding="utf-8"))
    del doc["audio"]
    (tmp_path / "text-only-tekken.json").write_text(json.dumps(doc))
    with pytest.raises(BadInput, match="not a Voxtral TTS tokenizer"):
        SpeechPrompt.from_file(tmp_path / "text-only-tekken.json")
    # mistral-common tells a Tekken file by its name
    (tmp_path / "tokenizer.json").write_bytes(tiny.path.read_bytes())
    with pytest.raises(BadInput, match=r"named \*tekken\*\.json"):
        SpeechPrompt.from_file(tmp_path / "tokenizer.json")

    # without mistral-common (a None in sys.modules makes its import fail as an absent package does)
    monkeypatch.setitem(sys.modules, "mistral_common.tokens.tokenizers.mistral", None)
    with pytest.raises(BadInput, match=r"install it with: pip install 'voxport\[voxtral\]'"):
        SpeechPrompt.from_file(tiny.path)


# -- the reference modules ------------------------------------------------------------------------


def _params_for_reference_forward() -> dict[str, Any]:
    """The tiny params with the head's width set to the backbone's. The reference's forward applies
    `semantic_codebook_output` (in_features = the head's dim) to the backbone's hidden state, so it runs
    only where the two widths agree, as they do in the released model (3072 and 3072)."""
    p = copy.deepcopy(NAMED_PARAMS["tiny"])
    head = p["multimodal"]["audio_model_args"]["acoustic_transformer_args"]
    head["dim"] = head["input_dim"]
    return p


def test_the_reference_modules_have_the_checkpoint_layout() -> None:
    """Every head and codec tensor config.tensor_shapes lists is the reference's, name for name and shape for
    shape (the head's `time_embedding.inv_freq` is a buffer the reference computes; no checkpoint tensor)."""
    p = NAMED_PARAMS["tiny"]
    shapes = tensor_shapes(VoxtralConfig(p))
    for prefix, module in (
        ("acoustic_transformer.", ref.reference_head(p)),
        ("audio_tokenizer.", ref.reference_codec(p)),
    ):
        theirs = {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}
        theirs.pop("acoustic_transformer.time_embedding.inv_freq", None)
        assert theirs == {k: v for k, v in shapes.items() if k.startswith(prefix)}


def test_the_reference_head_and_codec_run_on_the_cpu() -> None:
    assert ref.AudioSpecialTokens.id(ref.AudioSpecialTokens.empty_audio) == 0
    assert ref.AudioSpecialTokens.id(ref.AudioSpecialTokens.end_audio) == 1
    p = _params_for_reference_forward()
    cfg = VoxtralConfig(p)
    torch.manual_seed(0)
    head = ref.reference_head(p)
    with torch.no_grad():
        codes = head(torch.randn(3, cfg.backbone.dim))
    assert codes.shape == (3, 1 + cfg.n_acoustic)
    # semantic: a codebook entry or [END_AUDIO] (never [EMPTY_AUDIO], masked); acoustic: levels + 2 specials
    assert ((codes[:, 0] >= 1) & (codes[:, 0] < 2 + cfg.semantic_codebook_size)).all()
    assert ((codes[:, 1:] >= 2) & (codes[:, 1:] < 2 + cfg.acoustic_levels)).all()

    codec = ref.reference_codec(p)
    frames = 5
    with torch.no_grad():
        codec.quantizer.semantic_codebook.embedding_sum.normal_()
        semantic = torch.randint(0, cfg.semantic_codebook_size, (1, 1, frames))
        acoustic = torch.randint(0, cfg.acoustic_levels, (1, cfg.n_acoustic, frames))
        audio = codec.decode(torch.cat([semantic, acoustic], dim=1))
    assert audio.shape == (1, 1, frames * cfg.codec.frame_size) and torch.isfinite(audio).all()
    assert audio.abs().max() > 0

    w = torch.arange(16.0).view(8, 2)
    assert ref.interleave_qk_weight(w, 2, 4)[:4, 0].tolist() == [0.0, 4.0, 2.0, 6.0]
