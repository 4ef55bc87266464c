"""The Pocket TTS synthesis loop, written once against a runner.

Prompt → backbone prefill → per frame: end-of-speech rule, flow head (recorded noise), streaming
codec, backbone step on the new latent. The fp32 torch reference, ONNX Runtime, the GGUF tensors and
Core ML all run this same code; only the runner differs. The loop needs no torch weights (`LoopSpec`
is plain numbers, stored in the exported graphs' metadata), so an artifact speaks on its own.

Conventions, matching Kyutai's generation (`TTSModel._autoregressive_generation`):
- prompt order: [bos_before_voice] [voice latents] [text] [audio BOS], one backbone call (with a
  cached `VoiceState` the voice part comes from the cache and the call runs [text] [audio BOS]);
- the end-of-speech logit of the state that produces frame f decides at f ≥ 6; the EOS frame and
  `frames_after_eos` more are kept (transformers' count; Kyutai's `frames_after_eos` is one more);
- latents fed back are in the flow head's normalized space; the codec denormalizes;
- the first 5 ms of audio are faded in (a fresh codec state clicks, Kyutai does the same).
Teacher forcing (`forced_latents`) feeds the reference's latent back at every step and runs exactly
the reference's frame count, so per-step figures compare like with like.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from voxport.errors import BadInput
from voxport.families.base import Runner
from voxport.families.pocket_tts.graphs import (
    KIND_AUDIO_BOS,
    KIND_BOS_BEFORE_VOICE,
    KIND_LATENT,
    KIND_TEXT,
    KIND_VOICE,
)
from voxport.runtime.base import runs_graph

#: Kyutai's `_MIN_FRAMES_BEFORE_EOS`
MIN_FRAMES_BEFORE_EOS = 6
DEFAULT_FRAMES_AFTER_EOS = 2
#: Kyutai's estimate of the longest output: 3 tokens per second plus 2 s
TOKENS_PER_SECOND, EXTRA_SECONDS = 3.0, 2.0


@dataclass(frozen=True)
class LoopSpec:
    """Everything the loop needs to know about a model: shapes and generation defaults."""

    num_layers: int
    kv_heads: int
    head_dim: int
    latent_dim: int
    condition_dim: int
    sample_rate: int
    frame_rate: float
    frame_size: int
    codec_steps: int
    insert_bos_before_voice: bool
    temperature: float
    eos_threshold: float
    codec_state: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LoopSpec:
        data = json.loads(text)
        data["codec_state"] = {k: tuple(v) for k, v in data["codec_state"].items()}
        return cls(**data)


@dataclass
class Generation:
    """One run of the loop: audio plus the per-step tensors parity compares."""

    audio: np.ndarray
    prompt_hidden: np.ndarray  # (prompt positions, C)
    hidden: np.ndarray  # (frames, C): the state each frame was sampled from
    eos_logits: np.ndarray  # (frames,)
    latents: np.ndarray  # (frames, latent)
    eos_frame: int | None
    #: seconds from the start of the call to the first audio frame
    first_audio_seconds: float | None = None


@dataclass(frozen=True)
class LoopSettings:
    seed: int = 0
    temperature: float = 0.0
    max_frames: int | None = None
    frames_after_eos: int = DEFAULT_FRAMES_AFTER_EOS


def frame_noise(seed: int, frame: int, latent_dim: int, temperature: float) -> np.ndarray:
    """Noise of one frame, its own stream per frame: a runner that stops earlier or later consumes
    the same values for the frames both produce. `temperature` is the variance, as in Kyutai."""
    if temperature <= 0:
        return np.zeros((1, latent_dim), np.float32)
    z = np.random.default_rng([seed, 7, frame]).standard_normal((1, latent_dim))
    return (z * math.sqrt(temperature)).astype(np.float32)


def max_frames_for(tokens: int, frame_rate: float) -> int:
    return math.ceil((tokens / TOKENS_PER_SECOND + EXTRA_SECONDS) * frame_rate)


def voice_prompt_inputs(spec: LoopSpec, voice: np.ndarray) -> dict[str, np.ndarray]:
    """The voice part of the prompt: [bos_before_voice] + the voice latents."""
    if voice.ndim != 2 or voice.shape[1] != spec.latent_dim:
        raise BadInput(f"voice prompt latents must be (frames, {spec.latent_dim}), got {voice.shape}")
    zeros = np.zeros((1, spec.latent_dim), np.float32)
    bos = spec.insert_bos_before_voice
    kinds = [KIND_BOS_BEFORE_VOICE] * bos + [KIND_VOICE] * len(voice)
    rows = np.concatenate([zeros] * bos + [voice.astype(np.float32)])
    return {
        "token_ids": np.zeros((1, len(kinds)), np.int64),
        "latents": rows[None],
        "kind": np.asarray([kinds], np.int64),
    }


def prompt_inputs(
    spec: LoopSpec, ids: Sequence[int], voice: np.ndarray | None, *, with_voice_prefix: bool = True
) -> dict[str, np.ndarray]:
    """[voice prompt] [text] [audio BOS]; without `with_voice_prefix` the text part only (the voice's
    keys/values then come from a `VoiceState`)."""
    zeros = np.zeros((1, spec.latent_dim), np.float32)
    text = {
        "token_ids": np.asarray([[*ids, 0]], np.int64),
        "latents": np.concatenate([zeros] * (len(ids) + 1))[None],
        "kind": np.asarray([[KIND_TEXT] * len(ids) + [KIND_AUDIO_BOS]], np.int64),
    }
    if voice is None or not with_voice_prefix:
        return text
    prefix = voice_prompt_inputs(spec, voice)
    return {k: np.concatenate([prefix[k], text[k]], axis=1) for k in text}


def step_inputs(latent: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "token_ids": np.zeros((1, 1), np.int64),
        "latents": latent.reshape(1, 1, -1).astype(np.float32),
        "kind": np.full((1, 1), KIND_LATENT, np.int64),
    }


def fade_in(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    n = min(sample_rate // 200, audio.shape[-1])
    out = audio.copy()
    out[..., :n] *= np.linspace(0.0, 1.0, sample_rate // 200, dtype=np.float32)[:n]
    return out


def run_backbone(runner: Runner, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`backbone` on `runner`, or its fixed-capacity twin `backbone_cache` where only that exists
    (Core ML, see bounded.py): the growing past is padded into the fixed cache, the call writes at
    position P, and the caches come back cut to present (P + S), so the loop sees one contract."""
    from voxport.families.pocket_tts.bounded import GRAPH

    if runs_graph(runner, "backbone") or not runs_graph(runner, GRAPH):
        return runner.run("backbone", inputs)
    capacity = int(runner.input_shapes(GRAPH)["key_cache_0"][2])  # type: ignore[attr-defined]
    past, new = inputs["past_key_0"].shape[2], inputs["kind"].shape[1]
    if past + new > capacity:
        raise BadInput(
            f"{past + new} positions exceed the backbone's KV capacity of {capacity} "
            "(recipe export.coreml.kv_capacity): use a shorter prompt, fewer frames or a larger cache"
        )
    layers = sum(n.startswith("past_key_") for n in inputs)
    pairs = [(i, kv) for i in range(layers) for kv in ("key", "value")]
    feed = {k: v for k, v in inputs.items() if not k.startswith("past_")}
    feed["position"] = np.array([past], np.int64)
    for i, kv in pairs:
        p = inputs[f"past_{kv}_{i}"]
        feed[f"{kv}_cache_{i}"] = np.zeros((*p.shape[:2], capacity, p.shape[3]), np.float32)
        feed[f"{kv}_cache_{i}"][:, :, :past] = p
    out = runner.run(GRAPH, feed)
    present = {f"present_{kv}_{i}": out[f"{kv}_cache_{i}_out"][:, :, : past + new] for i, kv in pairs}
    return {"hidden": out["hidden"], "eos_logit": out["eos_logit"], **present}


def offers(runner: Runner, graph: str) -> bool:
    """Whether `runner` explicitly lists `graph` (`graph_names`, or a torch runner's `graphs`). Unlike
    `runs_graph`, a runner that lists nothing does not count: the torch reference runs the adapter's
    graphs and knows no `backbone_kv`."""
    names = getattr(runner, "graph_names", None)
    if names is None:
        names = getattr(runner, "graphs", None) or ()
    return graph in names


@dataclass(frozen=True)
class VoiceState:
    """The backbone's keys/values after a voice prompt ([bos_before_voice] + voice latents).

    Computed once per voice and runner (`voice_state`), then every call prefills only its text and
    audio BOS, as Kyutai does with the voice states it ships. The voice comes first in the prompt and
    attention is causal, so the cached keys/values are those the whole-prompt prefill computes (up to
    the rounding of a matmul over fewer rows). `save`/`load` ship it beside an artifact (.npz)."""

    past: dict[str, np.ndarray]

    @property
    def positions(self) -> int:
        return int(self.past["past_key_0"].shape[2])

    def save(self, path: str) -> None:
        np.savez(path, allow_pickle=False, **self.past)

    @classmethod
    def load(cls, path: str) -> VoiceState:
        with np.load(path) as data:
            return cls({k: np.ascontiguousarray(data[k], np.float32) for k in data.files})


class Backbone:
    """The backbone's KV cache over one call, in whichever form the runner has:
    `backbone_kv` (kvcache.py: caches of `capacity` positions preallocated here, written in place by a
    binding runner) when the runner lists it, else the growing-cache `backbone` (or Core ML's
    `backbone_cache` behind `run_backbone`). `start` seeds the cache with a voice state."""

    def __init__(self, runner: Runner, spec: LoopSpec, capacity: int, start: VoiceState | None) -> None:
        from voxport.families.pocket_tts.kvcache import GRAPH

        self.runner, self.graph = runner, GRAPH
        self.in_place = offers(runner, GRAPH)
        self.position = 0 if start is None else start.positions
        self.capacity = capacity
        pairs = [(i, kv) for i in range(spec.num_layers) for kv in ("key", "value")]
        if self.in_place:
            self.cache = {}
            for i, kv in pairs:
                buffer = np.zeros((1, spec.kv_heads, capacity, spec.head_dim), np.float32)
                if start is not None:
                    buffer[:, :, : self.position] = start.past[f"past_{kv}_{i}"]
                self.cache[f"{kv}_cache_{i}"] = buffer
        else:
            empty = np.zeros((1, spec.kv_heads, 0, spec.head_dim), np.float32)
            self.past = {f"past_{kv}_{i}": empty for i, kv in pairs} if start is None else dict(start.past)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the new positions `inputs` (token_ids, latents, kind); returns hidden and eos_logit."""
        new = inputs["kind"].shape[1]
        position = np.array([self.position], np.int64)
        if self.in_place:
            if self.position + new > self.capacity:  # the loop sizes it as prompt + frame limit
                raise RuntimeError(f"{self.position + new} positions exceed the KV capacity {self.capacity}")
            out = self.runner.run(self.graph, {**inputs, "position": position, **self.cache})
            self.cache = {name: out[f"{name}_out"] for name in self.cache}
        else:
            out = run_backbone(self.runner, {**inputs, "position": position, **self.past})
            self.past = {name: out[name.replace("past_", "present_")] for name in self.past}
        self.position += new
        return out

    def state(self) -> VoiceState:
        """The cache so far as a `VoiceState` (copies: the in-place buffers keep changing)."""
        if self.in_place:
            cut = {
                f"past_{name.replace('_cache_', '_')}": b[:, :, : self.position]
                for name, b in self.cache.items()
            }
            return VoiceState({name: b.copy() for name, b in cut.items()})
        return VoiceState(dict(self.past))


def voice_state(runner: Runner, spec: LoopSpec, voice: np.ndarray) -> VoiceState:
    """The voice prompt's keys/values on `runner`: the once-per-voice part of the prefill."""
    prompt = voice_prompt_inputs(spec, voice)
    backbone = Backbone(runner, spec, prompt["kind"].shape[1], None)
    backbone(prompt)
    return backbone.state()


class CodecStream:
    """The streaming codec over one call: its state, the fade-in, and optionally its own thread.

    With `threaded`, frame f is decoded in one worker thread while the caller runs the backbone and
    flow head of frame f + 1 (Kyutai's `generate_audio_stream` does the same; ONNX Runtime and torch
    release the GIL while they compute). The first frame is waited for at once, so the time to first
    audio does not wait for the next backbone step. One worker decodes the frames in order with the
    same inputs, so the audio is identical to the unthreaded decode's."""

    def __init__(self, runner: Runner, spec: LoopSpec, *, threaded: bool) -> None:
        self.runner, self.spec = runner, spec
        self.state = {f"st_{name}": np.zeros(shape, np.float32) for name, shape in spec.codec_state.items()}
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="pocket-codec") if threaded else None
        self.pending: Future[np.ndarray] | None = None

    def decode(self, latent: np.ndarray, frame: int) -> np.ndarray:
        feed = {
            "latent": latent.reshape(1, 1, -1),
            "position": np.array([frame * self.spec.codec_steps], np.int64),
            **self.state,
        }
        decoded = self.runner.run("codec", feed)
        self.state = {name: decoded[f"{name}_out"] for name in self.state}
        audio = decoded["audio"].reshape(-1)
        return fade_in(audio, self.spec.sample_rate) if frame == 0 else audio

    def push(self, latent: np.ndarray, frame: int) -> Iterator[np.ndarray]:
        """Decode frame `frame`; yields the audio that is ready to hand out (threaded: the previous
        frame's, except for the first frame, which is waited for)."""
        if self.pool is None:
            yield self.decode(latent, frame)
            return
        future = self.pool.submit(self.decode, latent, frame)
        if self.pending is not None:
            yield self.pending.result()
        self.pending = None
        if frame == 0:
            yield future.result()
        else:
            self.pending = future

    def flush(self) -> Iterator[np.ndarray]:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            yield pending.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def stream(
    runner: Runner,
    spec: LoopSpec,
    ids: Sequence[int],
    settings: LoopSettings,
    *,
    voice: np.ndarray | None = None,
    voice_cache: VoiceState | None = None,
    forced_latents: np.ndarray | None = None,
    record: Callable[[str, np.ndarray], None] | None = None,
    codec_thread: bool = False,
) -> Iterator[np.ndarray]:
    """Yield audio one frame (`frame_size` samples) at a time; `record(name, value)` receives the
    per-step tensors (prompt_hidden, hidden, eos, latent, eos_frame).

    `voice_cache` (from `voice_state`) replaces `voice`: the call prefills only the text.
    `codec_thread` decodes each frame in a second thread (see `CodecStream`); same audio."""
    if not len(ids):
        raise BadInput("empty input: give at least one token id")
    if voice is not None and voice_cache is not None:
        raise ValueError("give the voice prompt either as latents (voice) or as its cache (voice_cache)")
    note = record or (lambda name, value: None)
    prompt = prompt_inputs(spec, ids, voice, with_voice_prefix=voice_cache is None)
    limit = (
        len(forced_latents)
        if forced_latents is not None
        else (settings.max_frames or max_frames_for(len(ids), spec.frame_rate))
    )
    start = 0 if voice_cache is None else voice_cache.positions
    backbone = Backbone(runner, spec, start + prompt["kind"].shape[1] + limit, voice_cache)
    out = backbone(prompt)
    note("prompt_hidden", out["hidden"][0])
    codec = CodecStream(runner, spec, threaded=codec_thread)
    eos_frame: int | None = None
    latent = np.zeros((1, spec.latent_dim), np.float32)
    try:
        for frame in range(limit):
            if frame > 0:
                fed = forced_latents[frame - 1] if forced_latents is not None else latent[0]
                out = backbone(step_inputs(fed))
            hidden = out["hidden"][:, -1]
            eos = float(out["eos_logit"][0, -1, 0])
            if forced_latents is None:
                if eos_frame is None and frame >= MIN_FRAMES_BEFORE_EOS and eos > spec.eos_threshold:
                    eos_frame = frame
                    note("eos_frame", np.array(frame))
                if eos_frame is not None and frame > eos_frame + settings.frames_after_eos:
                    break
            noise = frame_noise(settings.seed, frame, spec.latent_dim, settings.temperature)
            latent = runner.run("flow_head", {"condition": hidden, "noise": noise})["latent"]
            note("hidden", hidden[0])
            note("eos", np.array(eos, np.float32))
            note("latent", latent[0])
            yield from codec.push(latent, frame)
        yield from codec.flush()
    finally:
        codec.close()


def generate(
    runner: Runner,
    spec: LoopSpec,
    ids: Sequence[int],
    settings: LoopSettings,
    *,
    voice: np.ndarray | None = None,
    voice_cache: VoiceState | None = None,
    forced_latents: np.ndarray | None = None,
    codec_thread: bool = False,
) -> Generation:
    records: dict[str, list[np.ndarray]] = {}

    def record(name: str, value: np.ndarray) -> None:
        records.setdefault(name, []).append(value)

    started = time.perf_counter()
    first: float | None = None
    frames = []
    for audio in stream(
        runner,
        spec,
        ids,
        settings,
        voice=voice,
        voice_cache=voice_cache,
        forced_latents=forced_latents,
        record=record,
        codec_thread=codec_thread,
    ):
        if first is None:
            first = time.perf_counter() - started
        frames.append(audio)

    def stacked(name: str, width: int) -> np.ndarray:
        values = records.get(name, [])
        return np.stack(values).astype(np.float32) if values else np.zeros((0, width), np.float32)

    return Generation(
        audio=np.concatenate(frames).astype(np.float32) if frames else np.zeros(0, np.float32),
        prompt_hidden=records["prompt_hidden"][0],
        hidden=stacked("hidden", spec.condition_dim),
        eos_logits=np.asarray(records.get("eos", []), np.float32),
        latents=stacked("latent", spec.latent_dim),
        eos_frame=int(records["eos_frame"][0]) if "eos_frame" in records else None,
        first_audio_seconds=first,
    )


def codec_state_names(state: Mapping[str, tuple[int, ...]]) -> list[str]:
    return [f"st_{name}" for name in state]
