"""The runtime API (`voxport.load`) on Pocket TTS and on the checks every family shares (issue 15).

VITS's chunked streaming and `speed` are tested in test_vits_streaming.py; here: a Pocket TTS
checkpoint and artifact stream one 80 ms frame per chunk, long text is spoken in Kyutai's chunks with
no gap between them, and what a family cannot do (a speed, chunk sizes) is one clear error at the call,
before any audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import voxport
from voxport.errors import BadInput
from voxport.export.onnx.exporter import export_onnx
from voxport.families import load_model
from voxport.families.pocket_tts.synthetic import make_checkpoint, named_config
from voxport.quantize.stage import quantize_model

LONG = " ".join(f"Sentence number {n} is here, and it goes on for a little while." for n in range(1, 9))


@pytest.fixture(scope="module")
def pocket(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("pocket") / "ck", named_config("tiny"), seed=0)


@pytest.fixture(scope="module")
def pocket_int8(pocket: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = load_model(pocket)
    out = tmp_path_factory.mktemp("pocket_onnx")
    files = export_onnx(
        model, quantize_model(model, "int8").weights, out, stem="p", precision="int8", metadata={}
    )
    for name, data in model.tokenizer_files.items():  # type: ignore[attr-defined]
        (out / f"p.{name}").write_bytes(data)
    return next(f.path for f in files if f.primary)


@pytest.mark.parametrize("source", ["checkpoint", "int8 artifact"])
def test_pocket_streams_frames_and_joins_them(pocket: Path, pocket_int8: Path, source: str) -> None:
    voice = voxport.load(pocket if source == "checkpoint" else pocket_int8)
    assert voice.family == "pocket_tts" and voice.sample_rate == 24000
    chunks = list(voice.stream("Hello there, small model.", max_frames=12, seed=2))
    frame = 1920  # 80 ms at 24 kHz
    assert 1 < len(chunks) <= 12 and all(c.size == frame for c in chunks)
    whole = voice.synthesize("Hello there, small model.", max_frames=12, seed=2)
    assert np.array_equal(whole, np.concatenate(chunks))


def test_long_text_is_spoken_chunk_after_chunk_without_a_gap(pocket_int8: Path) -> None:
    """Kyutai's chunks (at most 50 tokens, at sentence ends): the stream of the whole text is exactly
    each chunk's own audio, one after another: nothing dropped, repeated or inserted between them."""
    voice = voxport.load(pocket_int8)
    pieces = voice.pieces(LONG)
    assert len(pieces) > 1 and all(len(p) <= 50 for p in pieces)
    streamed = voice.synthesize(LONG, max_frames=8, seed=1)
    each = [voice.synthesize(ids=p, max_frames=8, seed=1) for p in pieces]
    assert np.array_equal(streamed, np.concatenate(each))


def test_what_a_family_cannot_do_is_refused_at_the_call(pocket: Path) -> None:
    voice = voxport.load(pocket)
    with pytest.raises(BadInput, match="pocket_tts: these voices have no speaking-rate control"):
        voice.stream("Hello.", speed=1.5)
    with pytest.raises(BadInput, match="does not decode in chunks"):
        voice.stream("Hello.", chunk_frames=4)
    with pytest.raises(BadInput, match="not both"):
        voice.stream("Hello.", ids=[1, 2])
    with pytest.raises(BadInput, match="has no setting 'noise_scale'"):
        voice.stream("Hello.", noise_scale=0.1)
    with pytest.raises(BadInput, match="out of range"):
        voice.stream(ids=[1, 10**9])
    with pytest.raises(BadInput, match="no such checkpoint"):
        voxport.load(pocket / "missing.onnx")
