"""Exact streaming for VITS (issue 15): a sentence decoded in chunks of frames gives the samples of the
whole-utterance decode, in torch and in the exported ONNX artifact, because each chunk's window is
derived from the network's own receptive field (voxport/families/vits/streaming.py).

The derivation is checked against autograd: each stage's reach read off its modules equals the support
of the gradient of one output position. The loop is checked end to end: chunks of 1, 7 and the default
schedule join into the whole-utterance audio (same length, SNR far above the 60 dB the issue asks), each
chunk holds exactly its frames' samples (no gap, no repeated sample), and the artifact, opened as users
open it (`voxport.load`), streams the same audio as its own whole-utterance graphs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import voxport
from voxport.errors import BadInput
from voxport.export.onnx.exporter import export_onnx
from voxport.families.base import FamilyModel
from voxport.families.vits import VitsSettings
from voxport.families.vits.graphs import window_spec
from voxport.families.vits.streaming import (
    FIRST_CHUNK_FRAMES,
    MAX_CHUNK_FRAMES,
    chunk_spans,
    vocoder_plan,
)
from voxport.quantize.stage import quantize_model
from voxport.runtime.ort import OrtRunner
from voxport.validate.metrics import waveform_snr_db

#: the issue's bar for "the same samples"; what is measured is ~110 dB (float rounding, different
#: summation order in a shorter convolution), so 60 dB holds on any CPU with a wide margin
EXACT_SNR_DB = 60.0
SENTENCE = "the quick brown fox jumps over the lazy dog and keeps on running far away"


def _support(grad: torch.Tensor) -> tuple[int, int]:
    nonzero = torch.nonzero(grad.abs().sum(dim=(0, 1))).flatten()
    return int(nonzero.min()), int(nonzero.max())


def _measured_reach(module: torch.nn.Module, channels: int, length: int = 121) -> tuple[int, int]:
    """Input positions left and right of the middle output position that its gradient reaches."""
    x = torch.randn(1, channels, length, dtype=torch.float64, requires_grad=True)
    module(x)[0, :, length // 2].sum().backward()
    assert x.grad is not None
    lo, hi = _support(x.grad)
    return length // 2 - lo, hi - length // 2


def test_derived_reach_equals_the_receptive_field(tiny_vits: FamilyModel) -> None:
    """The reach of every stage, read off its kernels, dilations and paddings, is exactly the support
    of the gradient of one output position: derived, neither guessed nor padded."""
    # a float64 copy: no gradient underflows to zero inside the support
    model = copy.deepcopy(tiny_vits.model).double()  # type: ignore[attr-defined]
    spec = window_spec(model)
    decoder = model.decoder
    flow_channels = model.config.flow_size

    class Flow(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return model.flow(x, torch.ones_like(x[:, :1]), None, reverse=True)

    torch.manual_seed(0)
    assert _measured_reach(Flow(), flow_channels) == (spec.flow_left, spec.flow_right)
    assert _measured_reach(decoder.conv_pre, flow_channels) == (spec.pre_left, spec.pre_right)
    kernels = decoder.num_kernels
    for i, stage in enumerate(spec.stages):
        blocks = decoder.resblocks[i * kernels : (i + 1) * kernels]
        channels = (
            blocks[0].convs1[0].in_channels
            if hasattr(blocks[0], "convs1")
            else blocks[0].convs[0].in_channels
        )
        reaches = [_measured_reach(block, channels, length=301) for block in blocks]
        assert (max(r[0] for r in reaches), max(r[1] for r in reaches)) == (
            stage.blocks_left,
            stage.blocks_right,
        )
    assert _measured_reach(decoder.conv_post, decoder.conv_post.in_channels) == (
        spec.post_left,
        spec.post_right,
    )


def test_chunk_plans_tile_the_utterance(tiny_vits: FamilyModel) -> None:
    """Every schedule cuts the frames into consecutive spans, and each span's plan keeps exactly its
    frames' samples: no gap and no overlap by construction, before any audio is made."""
    spec = tiny_vits.window_spec()  # type: ignore[attr-defined]
    for total in (1, 5, 17, 300):
        for first, largest in ((1, 1), (7, 7), (FIRST_CHUNK_FRAMES, MAX_CHUNK_FRAMES)):
            spans = list(chunk_spans(total, first, largest))
            assert spans[0].start == 0 and spans[-1].stop == total
            assert all(a.stop == b.start for a, b in zip(spans, spans[1:], strict=False))
            for span in spans:
                plan = vocoder_plan(spec, total, span.start, span.stop)
                assert len(plan.crops) == spec.crop_count()
                keep = plan.crops[-1]
                assert keep[1] - keep[0] == (span.stop - span.start) * spec.hop_length
                assert 0 <= plan.frames.start <= span.start and span.stop <= plan.frames.stop <= total
    sizes = [s.stop - s.start for s in chunk_spans(1000)]
    assert sizes[:4] == [
        FIRST_CHUNK_FRAMES,
        2 * FIRST_CHUNK_FRAMES,
        4 * FIRST_CHUNK_FRAMES,
        8 * FIRST_CHUNK_FRAMES,
    ]
    assert max(sizes) == MAX_CHUNK_FRAMES


@pytest.mark.parametrize("chunk_frames", [1, 7, None])
def test_torch_stream_equals_whole_utterance(tiny_vits: FamilyModel, chunk_frames: int | None) -> None:
    runner = tiny_vits.torch_runner()
    ids = tiny_vits.text_to_ids(SENTENCE)
    settings = VitsSettings(seed=3)
    whole = tiny_vits.synthesize(runner, ids, settings).audio
    chunks = list(tiny_vits.stream(runner, ids, settings, chunk_frames=chunk_frames))
    hop = tiny_vits.hop_length  # type: ignore[attr-defined]
    assert all(c.size % hop == 0 for c in chunks)
    if chunk_frames is not None:
        assert all(c.size == chunk_frames * hop for c in chunks[:-1])
    streamed = np.concatenate(chunks)
    assert streamed.shape == whole.shape
    assert waveform_snr_db(whole, streamed) > EXACT_SNR_DB


@pytest.fixture(scope="module")
def int8_artifact(tiny_vits: FamilyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny voice's int8 ONNX files, as the export stage writes them (primary + split graphs)."""
    out = tmp_path_factory.mktemp("stream_onnx")
    weights = quantize_model(tiny_vits, "int8").weights
    files = export_onnx(tiny_vits, weights, out, stem="tiny", precision="int8", metadata={"recipe": "test"})
    assert {f.graph for f in files} >= {"encoder", "decoder", "flow", "vocoder", "tts"}
    return next(f.path for f in files if f.primary)


def test_onnx_artifact_streams_its_own_whole_utterance(tiny_vits: FamilyModel, int8_artifact: Path) -> None:
    """In ONNX Runtime: the artifact's chunked stream equals the same artifact's whole-utterance split
    graphs (encoder + decoder), sample for sample."""
    ids = tiny_vits.text_to_ids(SENTENCE)
    settings = VitsSettings(seed=1)
    stem = int8_artifact.name[: -len(".onnx")]
    runner = OrtRunner({g: int8_artifact.with_name(f"{stem}.{g}.onnx") for g in ("encoder", "decoder")})
    whole = tiny_vits.synthesize(runner, ids, settings).audio
    voice = voxport.load(int8_artifact)
    for chunk_frames in (3, None):
        chunks = list(voice.stream(ids=ids, seed=1, chunk_frames=chunk_frames))
        assert len(chunks) > 1
        streamed = np.concatenate(chunks)
        assert streamed.shape == whole.shape
        assert waveform_snr_db(whole, streamed) > EXACT_SNR_DB
    assert np.array_equal(
        voice.synthesize(ids=ids, seed=1), np.concatenate(list(voice.stream(ids=ids, seed=1)))
    )


def test_artifact_without_split_graphs_speaks_whole_sentences(int8_artifact: Path, tmp_path: Path) -> None:
    """The primary file copied alone (as a Piper voice is) still speaks, one piece per sentence, and
    refuses chunk_frames with one clear line instead of ignoring it."""
    alone = tmp_path / int8_artifact.name
    alone.write_bytes(int8_artifact.read_bytes())
    voice = voxport.load(alone)
    ids = [3, 4, 5, 6, 7, 8]
    assert len(list(voice.stream(ids=ids))) == 1
    with pytest.raises(BadInput, match="does not decode in chunks"):
        voice.stream(ids=ids, chunk_frames=4)


def test_speed_maps_to_length_scale(tiny_vits_dir: Path) -> None:
    voice = voxport.load(tiny_vits_dir)
    normal = voice.synthesize(SENTENCE, noise_scale=0.0, noise_scale_duration=0.0)
    fast = voice.synthesize(SENTENCE, speed=2.0, noise_scale=0.0, noise_scale_duration=0.0)
    slow = voice.synthesize(SENTENCE, speed=0.5, noise_scale=0.0, noise_scale_duration=0.0)
    # speed s is Piper's length scale 1/s, exactly
    quiet = {"noise_scale": 0.0, "noise_scale_duration": 0.0}
    assert np.array_equal(fast, voice.synthesize(SENTENCE, length_scale=0.5, **quiet))
    assert np.array_equal(slow, voice.synthesize(SENTENCE, length_scale=2.0, **quiet))
    assert fast.size < normal.size < slow.size
    with pytest.raises(BadInput, match="speed 0.05 gives length scale 20"):
        voice.synthesize(SENTENCE, speed=0.05)
    with pytest.raises(BadInput, match="positive number"):
        voice.synthesize(SENTENCE, speed=float("nan"))


@pytest.mark.parametrize("source", ["checkpoint", "int8 artifact"])
def test_later_sentences_continue_in_one_window(
    tiny_vits_dir: Path, int8_artifact: Path, tiny_vits: FamilyModel, source: str
) -> None:
    """Only the first sentence's opening chunks decide the time to first audio: each later sentence of
    a text is decoded in one window, with the same samples as on its own."""
    voice = voxport.load(tiny_vits_dir if source == "checkpoint" else int8_artifact)
    pieces = [
        tiny_vits.text_to_ids(s) for s in ("the quick brown fox jumps over the lazy dog", "hello world")
    ]
    first = list(voice.stream(ids=pieces[0], seed=2))
    assert len(first) > 1
    chunks = list(voice.voice.stream(pieces[1], VitsSettings(seed=2), continuing=True))  # type: ignore[attr-defined]
    assert len(chunks) == 1
    alone = voice.synthesize(ids=pieces[1], seed=2)
    assert chunks[0].shape == alone.shape and waveform_snr_db(alone, chunks[0]) > EXACT_SNR_DB
