"""The VITS synthesis steps shared by a checkpoint and an exported artifact: the encoder call and the
per-token prior noise. Plain numpy over a `Runner`, so an artifact needs no torch model to speak."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from voxport.families.vits.settings import VitsSettings
from voxport.families.vits.streaming import WindowSpec, chunk_sizes, decode_chunks, prior_sample
from voxport.runtime.base import Runner


def run_encoder(
    runner: Runner, input_ids: np.ndarray, settings: VitsSettings, extra: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Durations and the per-token prior for ids [1, T], with duration noise drawn from the seed."""
    rng = np.random.default_rng(settings.seed)
    noise_w = (rng.standard_normal((1, 2, input_ids.shape[1])) * settings.noise_scale_duration).astype(
        np.float32
    )
    return runner.run(
        "encoder",
        {
            "input_ids": input_ids,
            "noise_w": noise_w,
            "length_scale": np.array([settings.length_scale], np.float32),
            **extra,
        },
    )


def frame_noise(durations: np.ndarray, channels: int, settings: VitsSettings) -> np.ndarray:
    """Prior noise drawn per token, so a token whose duration changed shifts no other token's noise.

    With one stream for the whole utterance, a single flipped duration would shift the noise under
    every later frame and free-running parity would measure that shift instead of the model."""
    blocks = [
        np.random.default_rng([settings.seed, 1, i]).standard_normal((channels, int(d)))
        for i, d in enumerate(durations)
        if d > 0
    ]
    noise = np.concatenate(blocks, axis=1) if blocks else np.zeros((channels, 1))
    return (noise[None] * settings.noise_scale).astype(np.float32)


def stream_audio(
    runner: Runner,
    input_ids: np.ndarray,
    settings: VitsSettings,
    extra: Mapping[str, np.ndarray],
    spec: WindowSpec,
    *,
    chunk_frames: int | None = None,
    continuing: bool = False,
) -> Iterator[np.ndarray]:
    """One utterance's audio in chunks (streaming.decode_chunks) over a runner that has the encoder,
    flow and vocoder graphs: a checkpoint's torch graphs or an artifact's ONNX files alike."""
    enc = run_encoder(runner, input_ids, settings, extra)
    durations = enc["durations"]
    channels = int(enc["m_p"].shape[1])
    noise = frame_noise(np.rint(durations[0]).astype(np.int64), channels, settings)
    z_p = prior_sample(enc["m_p"], enc["logs_p"], durations, noise)
    yield from decode_chunks(runner, z_p, spec, extra, **chunk_sizes(chunk_frames, continuing=continuing))


def whole_audio(
    runner: Runner, input_ids: np.ndarray, settings: VitsSettings, extra: Mapping[str, np.ndarray]
) -> np.ndarray:
    """One utterance through the encoder and decoder graphs, for a runner that has no windowed graphs
    (a Core ML artifact: its graphs need shapes that do not depend on input values)."""
    enc = run_encoder(runner, input_ids, settings, extra)
    durations = enc["durations"]
    channels = int(enc["m_p"].shape[1])
    noise = frame_noise(np.rint(durations[0]).astype(np.int64), channels, settings)
    feed = {"m_p": enc["m_p"], "logs_p": enc["logs_p"], "durations": durations, "noise": noise, **extra}
    return runner.run("decoder", feed)["waveform"].reshape(-1).astype(np.float32)
