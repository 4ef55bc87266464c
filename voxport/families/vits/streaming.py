"""Exact chunked decoding for VITS: which frames a chunk of audio depends on, derived from the network.

After the text encoder and the durations, VITS turns a per-frame prior sample z_p into audio through
the flow (coupling layers of dilated convolutions) and HiFi-GAN (convolutions and transposed
convolutions). Every one of those layers is local: an output position depends on a fixed number of
input positions on each side, fixed by its kernel, dilation, padding and stride. So the audio of frames
[a, b) depends only on z_p over a wider window, and decoding that window alone gives the same samples
as decoding the whole utterance, provided every intermediate result is cut back to the positions the
next layer needs before it would use a value computed from the window's (zero-padded) edge.

`WindowSpec` reads those numbers off the modules (never guessed), `plan` walks the network backwards
from the wanted audio to the z_p window and the crop after every stage, and the decoder_window graph
(graphs.DecoderWindowGraph) runs the forward pass with those crops. Cropping after each stage, rather
than decoding the window and cutting the audio at the end, is what keeps chunking nearly free: the
flow's reach is ~30 frames but it is cheap, while the expensive late HiFi-GAN stages need under one
frame of context, so they decode almost nothing twice.

The spec is plain numbers, stored in the exported graph's metadata, so an artifact streams without
the torch model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from voxport.errors import BadInput
from voxport.runtime.base import Runner

#: the graphs that decode a window of frames: the reverse flow and HiFi-GAN (graphs.FlowWindowGraph,
#: graphs.VocoderWindowGraph)
FLOW_GRAPH, VOCODER_GRAPH = "flow", "vocoder"
#: each flow call reaches this many times further than the frames already flowed
FLOW_AHEAD = 8
#: default chunk schedule, in frames (hop_length samples each): the first chunk is small so the first
#: audio comes early, then each chunk doubles up to the largest, which keeps the per-chunk overhead
#: (each stage's context decoded twice, one runtime call) a few percent of the work
FIRST_CHUNK_FRAMES = 16
MAX_CHUNK_FRAMES = 128
#: a chunk size no sentence reaches: the whole sentence in one window
WHOLE = 1 << 30


@dataclass(frozen=True)
class Span:
    """Positions [start, stop) of a sequence at one stage's rate."""

    start: int
    stop: int

    def widen(self, left: int, right: int, length: int) -> Span:
        """The positions an op with this reach reads to produce this span, inside the sequence."""
        return Span(max(0, self.start - left), min(length, self.stop + right))


@dataclass(frozen=True)
class Upsample:
    """One HiFi-GAN stage: a transposed convolution then residual blocks (their widest reach)."""

    stride: int
    kernel: int
    padding: int
    #: positions each side the stage's residual blocks read, at the upsampled rate
    blocks_left: int
    blocks_right: int


@dataclass(frozen=True)
class WindowSpec:
    """The reach of every stage of VITS's flow + HiFi-GAN, in each stage's own positions."""

    #: frames each side the reverse flow reads (all coupling layers' dilated convolutions in series)
    flow_left: int
    flow_right: int
    #: HiFi-GAN's conv_pre, at frame rate
    pre_left: int
    pre_right: int
    stages: tuple[Upsample, ...]
    #: conv_post, at the sample rate
    post_left: int
    post_right: int

    @property
    def hop_length(self) -> int:
        return math.prod(s.stride for s in self.stages)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WindowSpec:
        data = json.loads(text)
        data["stages"] = tuple(Upsample(**s) for s in data["stages"])
        return cls(**data)

    def crop_count(self) -> int:
        """Crop points of HiFi-GAN's forward pass (VocoderPlan.crops)."""
        return 2 + 2 * len(self.stages)


@dataclass(frozen=True)
class FlowPlan:
    """What the reverse flow needs to give z for frames [first, last): the z_p frames to feed and the
    local [start, stop) of its output to keep."""

    frames: Span
    crop: tuple[int, int]


@dataclass(frozen=True)
class VocoderPlan:
    """What HiFi-GAN needs to give the audio of frames [first, last): the z frames to feed and, per
    crop point (after conv_pre, after each stage's transposed convolution and after its residual
    blocks, and the audio), the local [start, stop) to keep, relative to what that point computed."""

    frames: Span
    crops: tuple[tuple[int, int], ...]


def conv_reach(kernel: int, dilation: int, padding: int) -> tuple[int, int]:
    """Input positions left and right of an output position that a stride-1 convolution reads."""
    return padding, (kernel - 1) * dilation - padding


def _transposed_need(need: Span, stage: Upsample, length: int) -> Span:
    """Input positions of a transposed convolution that produce output positions `need`.

    Output n sums input i with 0 <= n + padding - i * stride < kernel."""
    s, k, p = stage.stride, stage.kernel, stage.padding
    start = -((-(need.start + p - k + 1)) // s)  # ceil division
    stop = (need.stop - 1 + p) // s + 1
    return Span(max(0, start), min(length, stop))


def flow_plan(spec: WindowSpec, total_frames: int, first: int, last: int) -> FlowPlan:
    """The z_p window that gives exactly z of frames [first, last)."""
    _check_span(total_frames, first, last)
    window = Span(first, last).widen(spec.flow_left, spec.flow_right, total_frames)
    return FlowPlan(window, (first - window.start, last - window.start))


def vocoder_plan(spec: WindowSpec, total_frames: int, first: int, last: int) -> VocoderPlan:
    """The z window and crops that give exactly the audio samples of frames [first, last).

    Walks backwards from the wanted samples; at each op the positions it needs widen by its reach and
    are clipped to the sequence (at a true edge the window's zero padding is the utterance's own)."""
    _check_span(total_frames, first, last)
    rates = [1]
    for stage in spec.stages:
        rates.append(rates[-1] * stage.stride)
    lengths = [total_frames * r for r in rates]
    audio = Span(first * rates[-1], last * rates[-1])
    out = audio.widen(spec.post_left, spec.post_right, lengths[-1])
    stage_needs: list[tuple[Span, Span]] = []
    for i in reversed(range(len(spec.stages))):
        stage = spec.stages[i]
        blocks_in = out.widen(stage.blocks_left, stage.blocks_right, lengths[i + 1])
        stage_needs.append((blocks_in, out))
        out = _transposed_need(blocks_in, stage, lengths[i])
    stage_needs.reverse()
    window = out.widen(spec.pre_left, spec.pre_right, total_frames)

    # forward: conv_pre keeps its input's positions, then per stage the transposed convolution (kernel
    # - 2 * padding == stride maps [lo, hi) to [lo * stride, hi * stride)) and the residual blocks
    computed = window
    crops = [(out.start - computed.start, out.stop - computed.start)]
    computed = out
    for stage, (blocks_in, blocks_out) in zip(spec.stages, stage_needs, strict=True):
        computed = Span(computed.start * stage.stride, computed.stop * stage.stride)
        crops.append((blocks_in.start - computed.start, blocks_in.stop - computed.start))
        crops.append((blocks_out.start - blocks_in.start, blocks_out.stop - blocks_in.start))
        computed = blocks_out
    crops.append((audio.start - computed.start, audio.stop - computed.start))
    return VocoderPlan(window, tuple(crops))


def _check_span(total_frames: int, first: int, last: int) -> None:
    if not 0 <= first < last <= total_frames:
        raise ValueError(f"frames [{first}, {last}) outside an utterance of {total_frames} frames")


def chunk_spans(
    total_frames: int, first: int = FIRST_CHUNK_FRAMES, largest: int = MAX_CHUNK_FRAMES
) -> Iterator[Span]:
    """Frames in chunks that start at `first` and double up to `largest` (a fixed size if equal)."""
    if first < 1 or largest < first:
        raise ValueError(f"chunk sizes must satisfy 1 <= first <= largest, got {first}, {largest}")
    start, size = 0, first
    while start < total_frames:
        stop = min(total_frames, start + size)
        yield Span(start, stop)
        start, size = stop, min(largest, size * 2)


def prior_sample(m_p: np.ndarray, logs_p: np.ndarray, durations: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """z_p [1, C, frames]: each token's prior mean and scale repeated over its frames, plus noise.

    What the decoder graph computes with its one-hot alignment matmul (exact: one term per frame), done
    here once per utterance so each chunk's window is a slice of it."""
    counts = np.rint(durations.reshape(-1)).astype(np.int64)
    if counts.sum() == 0:  # no frames: the decoder graph renders one frame of its (zero) noise
        return np.zeros_like(noise)
    mean = np.repeat(m_p[0], counts, axis=1)
    scale = np.exp(np.repeat(logs_p[0], counts, axis=1))
    return (mean + noise[0] * scale)[None].astype(np.float32)


def chunk_sizes(chunk_frames: int | None, *, continuing: bool = False) -> dict[str, int]:
    """`decode_chunks`'s sizes: every chunk `chunk_frames` long; by default the doubling schedule, or,
    `continuing` a text whose earlier sentences are already playing, the whole sentence in one window:
    seconds of audio are queued ahead of it, so smaller chunks would only add calls and context."""
    if chunk_frames is None:
        if continuing:
            return {"first": WHOLE, "largest": WHOLE}
        return {"first": FIRST_CHUNK_FRAMES, "largest": MAX_CHUNK_FRAMES}
    if chunk_frames < 1:
        raise BadInput(f"chunk frames must be >= 1, got {chunk_frames}")
    return {"first": chunk_frames, "largest": chunk_frames}


def decode_chunks(
    runner: Runner,
    z_p: np.ndarray,
    spec: WindowSpec,
    extra: Mapping[str, np.ndarray],
    *,
    first: int = FIRST_CHUNK_FRAMES,
    largest: int = MAX_CHUNK_FRAMES,
) -> Iterator[np.ndarray]:
    """The utterance's audio chunk by chunk; the chunks joined are the whole-utterance audio (same
    samples, same length).

    The flow runs ahead of HiFi-GAN in its own, fast-growing chunks (each FLOW_AHEAD times further than
    the last): its reach is ~30 frames each side, so windows as small as HiFi-GAN's would decode the
    flow several times over, while HiFi-GAN's costly late stages reach under a frame."""
    total = z_p.shape[2]
    z = np.empty_like(z_p)
    ready = 0
    for span in chunk_spans(total, first, largest):
        vocoder = vocoder_plan(spec, total, span.start, span.stop)
        if vocoder.frames.stop > ready:
            target = min(total, max(vocoder.frames.stop, ready * FLOW_AHEAD))
            flow = flow_plan(spec, total, ready, target)
            window = z_p[:, :, flow.frames.start : flow.frames.stop]
            feed = {"z_p": np.ascontiguousarray(window), "crop": np.asarray(flow.crop, np.int64), **extra}
            z[:, :, ready:target] = runner.run(FLOW_GRAPH, feed)["z"]
            ready = target
        feed = {
            "z": np.ascontiguousarray(z[:, :, vocoder.frames.start : vocoder.frames.stop]),
            "crops": np.asarray(vocoder.crops, dtype=np.int64),
            **extra,
        }
        yield runner.run(VOCODER_GRAPH, feed)["waveform"].reshape(-1).astype(np.float32)
