"""The Voxtral TTS synthesis loop, written once against a runner.

Prompt → backbone prefill → per 80 ms frame: acoustic head (semantic argmax + guided flow from the
recorded noise), stop at [END_AUDIO], streaming codec, backbone step on the frame's 37 codes. The
torch reference, ONNX Runtime, the GGUF tensors and Core ML all run this code; only the runner
differs. The loop needs no torch weights (`LoopSpec` is plain numbers stored in the graphs'
metadata), so an artifact speaks on its own.

Conventions, matching sglang-omni's Voxtral runner and mistral-common's `encode_speech_request`:
- prompt: [BOS] [BEGIN_AUDIO] [AUDIO] × voice frames [TEXT_TO_AUDIO] text [AUDIO_TO_TEXT]
  [BEGIN_AUDIO], the voice preset's rows written over the [AUDIO] positions;
- each generated frame's codes are fed back as the sum of their 37 codebook embeddings;
- the frame whose semantic code is [END_AUDIO] ends the utterance and is neither decoded nor fed back.
Teacher forcing (`forced_codes`) feeds the reference's codes to the backbone and the codec at every
step and runs exactly the reference's frame count, so per-step figures compare like with like.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from voxport.errors import BadInput
from voxport.families.base import Runner
from voxport.families.voxtral_tts.config import END_AUDIO
from voxport.families.voxtral_tts.graphs import KIND_AUDIO, KIND_TEXT, KIND_VOICE
from voxport.runtime.base import runs_graph

#: the fixed-capacity backbone (Core ML), used where a runner has no growing-cache `backbone`
CACHE_GRAPH = "backbone_cache"
#: a frame limit from the text: ~3 text tokens per second of speech plus 2 s (Pocket TTS's rule)
TOKENS_PER_SECOND, EXTRA_SECONDS = 3.0, 2.0


@dataclass(frozen=True)
class LoopSpec:
    """Everything the loop needs to know about a model: shapes, special ids and the codec's state."""

    num_layers: int
    kv_heads: int
    head_dim: int
    dim: int
    vocab_size: int
    n_codes: int
    n_acoustic: int
    sample_rate: int
    frame_rate: float
    frame_size: int
    bos_id: int
    audio_id: int
    begin_audio_id: int
    text_to_audio_id: int
    audio_to_text_id: int
    codec_state: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LoopSpec:
        data = json.loads(text)
        data["codec_state"] = {k: tuple(v) for k, v in data["codec_state"].items()}
        return cls(**data)


@dataclass(frozen=True)
class LoopSettings:
    seed: int = 0
    noise_scale: float = 1.0
    max_frames: int | None = None


@dataclass
class Generation:
    """One run of the loop: audio plus the per-step tensors parity compares."""

    audio: np.ndarray
    prompt_hidden: np.ndarray  # (prompt positions, D)
    hidden: np.ndarray  # (frames, D): the state each frame came from
    acoustic: np.ndarray  # (frames, 36): the head's integrated values, clamped
    codes: np.ndarray  # (frames, 37) int64, the [END_AUDIO] frame excluded
    end_frame: int | None  # the frame that said [END_AUDIO], if any


def frame_noise(seed: int, frame: int, width: int, scale: float) -> np.ndarray:
    """The flow's start point for one frame, its own stream per frame: a runner that stops earlier or
    later consumes the same values for the frames both produce. Reference: `randn · noise_scale`."""
    if scale <= 0:
        return np.zeros((1, width), np.float32)
    z = np.random.default_rng([seed, 17, frame]).standard_normal((1, width))
    return (z * scale).astype(np.float32)


def max_frames_for(tokens: int, frame_rate: float) -> int:
    return math.ceil((tokens / TOKENS_PER_SECOND + EXTRA_SECONDS) * frame_rate)


def prompt_ids(spec: LoopSpec, text_ids: Sequence[int], voice_frames: int) -> list[int]:
    """mistral-common's speech prompt around `text_ids` for a voice of `voice_frames` rows."""
    return [
        spec.bos_id,
        spec.begin_audio_id,
        *[spec.audio_id] * voice_frames,
        spec.text_to_audio_id,
        *text_ids,
        spec.audio_to_text_id,
        spec.begin_audio_id,
    ]


def prompt_inputs(spec: LoopSpec, text_ids: Sequence[int], voice: np.ndarray) -> dict[str, np.ndarray]:
    if voice.ndim != 2 or voice.shape[1] != spec.dim or len(voice) == 0:
        raise BadInput(f"a voice preset must be (frames, {spec.dim}) rows, got {voice.shape}")
    ids = prompt_ids(spec, text_ids, len(voice))
    kind = np.full((1, len(ids)), KIND_TEXT, np.int64)
    rows = np.zeros((1, len(ids), spec.dim), np.float32)
    first = 2  # after [BOS] [BEGIN_AUDIO]
    kind[0, first : first + len(voice)] = KIND_VOICE
    rows[0, first : first + len(voice)] = voice
    return {
        "token_ids": np.asarray([ids], np.int64),
        "audio_codes": np.zeros((1, len(ids), spec.n_codes), np.int64),
        "voice": rows,
        "kind": kind,
    }


def step_inputs(spec: LoopSpec, codes: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "token_ids": np.zeros((1, 1), np.int64),
        "audio_codes": codes.reshape(1, 1, spec.n_codes).astype(np.int64),
        "voice": np.zeros((1, 1, spec.dim), np.float32),
        "kind": np.full((1, 1), KIND_AUDIO, np.int64),
    }


class BackboneCaller:
    """Runs `backbone` with a growing cache, or `backbone_cache` (fixed capacity, Core ML) where that
    is all the runner has; either way the caller sees (hidden, next position)."""

    def __init__(self, runner: Runner, spec: LoopSpec, capacity: int) -> None:
        self.runner, self.spec, self.position = runner, spec, 0
        self.fixed = not runs_graph(runner, "backbone") and runs_graph(runner, CACHE_GRAPH)
        if self.fixed:
            shapes = runner.input_shapes(CACHE_GRAPH)  # type: ignore[attr-defined]
            capacity = int(shapes["key_cache_0"][2])
            self.names = [f"{kv}_cache_{i}" for i in range(spec.num_layers) for kv in ("key", "value")]
            self.capacity = capacity
            empty = np.zeros((1, spec.kv_heads, capacity, spec.head_dim), np.float32)
            self.cache = {n: empty for n in self.names}
        else:
            self.names = [f"past_{kv}_{i}" for i in range(spec.num_layers) for kv in ("key", "value")]
            empty = np.zeros((1, spec.kv_heads, 0, spec.head_dim), np.float32)
            self.cache = {n: empty for n in self.names}

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        new = int(inputs["kind"].shape[1])
        feed = {**inputs, "position": np.asarray([self.position], np.int64), **self.cache}
        if self.fixed:
            if self.position + new > self.capacity:
                raise BadInput(
                    f"{self.position + new} positions exceed the backbone's KV capacity of {self.capacity} "
                    "(recipe export.coreml.kv_capacity): use a shorter text, fewer frames or a larger cache"
                )
            out = self.runner.run(CACHE_GRAPH, feed)
            self.cache = {n: out[f"{n}_out"] for n in self.names}
        else:
            out = self.runner.run("backbone", feed)
            self.cache = {n: out[n.replace("past_", "present_")] for n in self.names}
        self.position += new
        return np.asarray(out["hidden"], np.float32)


class CodecCaller:
    def __init__(self, runner: Runner, spec: LoopSpec) -> None:
        self.runner = runner
        self.state = {f"st_{n}": np.zeros(s, np.float32) for n, s in spec.codec_state.items()}

    def __call__(self, codes: np.ndarray, frame: int) -> np.ndarray:
        feed = {"codes": codes.reshape(1, -1).astype(np.int64), "position": np.asarray([frame], np.int64)}
        out = self.runner.run("codec", {**feed, **self.state})
        self.state = {n: out[f"{n}_out"] for n in self.state}
        return np.asarray(out["audio"], np.float32).reshape(-1)


def stream(
    runner: Runner,
    spec: LoopSpec,
    text_ids: Sequence[int],
    voice: np.ndarray,
    settings: LoopSettings,
    *,
    forced: tuple[np.ndarray, int] | None = None,
    record: Callable[[str, np.ndarray], None] | None = None,
) -> Iterator[np.ndarray]:
    """Audio frame by frame (1,920 samples each at 24 kHz). `forced`: the reference's codes and its
    step count (one more than its frames when it ended on [END_AUDIO], whose state is a step too)."""
    keep = record or (lambda name, value: None)
    limit = settings.max_frames or max_frames_for(len(text_ids), spec.frame_rate)
    forced_codes = None
    if forced is not None:
        forced_codes, limit = forced
    prompt = prompt_inputs(spec, text_ids, voice)
    backbone = BackboneCaller(runner, spec, capacity=prompt["kind"].shape[1] + limit)
    codec = CodecCaller(runner, spec)
    hidden = backbone(prompt)
    keep("prompt_hidden", hidden[0])
    for frame in range(limit):
        state = hidden[:, -1]
        noise = frame_noise(settings.seed, frame, spec.n_acoustic, settings.noise_scale)
        out = runner.run("acoustic_head", {"hidden": state, "noise": noise})
        keep("hidden", state[0])
        keep("acoustic", np.asarray(out["acoustic"], np.float32)[0])
        codes = np.asarray(out["codes"], np.int64).reshape(-1)
        if forced_codes is not None:
            if frame == len(forced_codes):  # the reference's [END_AUDIO] step
                return
            codes = forced_codes[frame]
        elif int(codes[0]) == END_AUDIO:
            keep("end_frame", np.asarray(frame))
            return
        keep("codes", codes)
        yield codec(codes, frame)
        if frame + 1 < limit:
            hidden = backbone(step_inputs(spec, codes))


def generate(
    runner: Runner,
    spec: LoopSpec,
    text_ids: Sequence[int],
    voice: np.ndarray,
    settings: LoopSettings,
    *,
    forced: tuple[np.ndarray, int] | None = None,
) -> Generation:
    records: dict[str, list[np.ndarray]] = {}

    def record(name: str, value: np.ndarray) -> None:
        records.setdefault(name, []).append(value)

    frames = list(stream(runner, spec, text_ids, voice, settings, forced=forced, record=record))

    def stacked(name: str, width: int, dtype: type = np.float32) -> np.ndarray:
        values = records.get(name, [])
        return np.stack(values).astype(dtype) if values else np.zeros((0, width), dtype)

    # the [END_AUDIO] frame's head outputs are recorded too: its state is a step like the others
    return Generation(
        audio=np.concatenate(frames).astype(np.float32) if frames else np.zeros(0, np.float32),
        prompt_hidden=records["prompt_hidden"][0],
        hidden=stacked("hidden", spec.dim),
        acoustic=stacked("acoustic", spec.n_acoustic),
        codes=stacked("codes", spec.n_codes, np.int64),
        end_frame=int(records["end_frame"][0]) if "end_frame" in records else None,
    )
