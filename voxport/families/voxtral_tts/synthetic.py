"""Random-weight Voxtral TTS checkpoints in Mistral's consolidated layout, for tests, the demo and the
full-size conversion benchmark.

No model hub is reachable and the released weights are CC BY-NC, so every weight is random, in the real
files: `params.json`, `consolidated.safetensors` (BF16), `tekken.json`, `voice_embedding/<name>.pt`
(BF16 [frames, dim]). The values are chosen so that the tiny model makes sensible signals and parity
figures mean something:

- Linear and conv weights ~ N(0, 1/fan_in): activations keep unit scale through every layer.
- Norm weights 1 + 0.1·N(0,1), never all ones (all-ones norms hide normalisation bugs from parity, and
  identical tensors get merged by the ONNX exporter); the codec's layer scales 0.1·(1 + 0.1·N).
- Token embeddings N(0,1); the audio codebook table N(0,1)/√(codebooks), since the backbone sums one
  row per codebook (37 in the released model) and the sum should match a text embedding's scale.
- The semantic codebook as the codec stores it: `cluster_usage` uniform in [0.5, 2] and
  `embedding_sum` = N(0,1)·usage, so the codebook (sum / usage) is N(0,1).
- Weight-normed convs: `original1` (v) ~ N(0, 1/fan_in), `original0` (g) = ‖v‖ per dim-0 slice
  (output channel for Conv1d, input channel for ConvTranspose1d) times 1 + 0.1·N, so the folded
  weight keeps v's scale, perturbed.
- The codec's `output_proj` gain is scaled by OUTPUT_GAIN so that the waveform's RMS is ~0.1 for
  unit-scale activations: a random codec whose output saturates (or is huge) makes every parity
  figure look perfect.

Every tensor is a function of (seed, its name, its shape) alone — the generator is seeded from a hash
of both, and large tensors are drawn in fixed row chunks straight into BF16 — so the full-size writer
streams tensor by tensor with no global state (peak RSS about one BF16 tensor, 0.8 GB at full size).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from voxport.errors import BadInput
from voxport.families.voxtral_tts.config import (
    NAMED_PARAMS,
    VoxtralConfig,
    codec_block_indices,
    tensor_shapes,
)
from voxport.families.voxtral_tts.consolidated import TensorSpec, write_safetensors_stream
from voxport.io import atomic_path, atomic_write_text

PARAMS, WEIGHTS, TOKENIZER, VOICE_DIR = (
    "params.json",
    "consolidated.safetensors",
    "tekken.json",
    "voice_embedding",
)

#: voice presets written per named config: name -> frames (80 ms each)
VOICES: dict[str, dict[str, int]] = {
    "tiny": {"ava": 3, "leo": 5},
    "full": {"ava": 18, "leo": 20, "mia": 22},
}
#: voices for a config given as a dict (custom sizes)
DEFAULT_VOICES = VOICES["tiny"]
#: output_proj gain relative to a unit-gain conv: waveform RMS ~0.1 for unit-scale codec activations
OUTPUT_GAIN = 0.1
#: elements drawn per chunk: fixed, so a tensor's values do not depend on the machine or the caller
_CHUNK = 1 << 22
_NORMS = ("attention_norm.weight", "ffn_norm.weight", "q_norm.weight", "k_norm.weight")


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit generator seed for one tensor, from the checkpoint seed and the tensor's name."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _normal(shape: tuple[int, ...], std: float, mean: float, seed: int, name: str) -> torch.Tensor:
    """N(mean, std²) of `shape` in BF16, drawn in fixed chunks of rows (float32 only per chunk)."""
    gen = torch.Generator().manual_seed(tensor_seed(seed, name))
    out = torch.empty(shape, dtype=torch.bfloat16)
    flat = out.view(-1) if out.numel() else out
    cols = int(shape[-1]) if shape else 1
    rows_per = max(1, _CHUNK // max(cols, 1))
    step = rows_per * cols
    for start in range(0, out.numel(), step):
        n = min(step, out.numel() - start)
        chunk = torch.randn(n, generator=gen, dtype=torch.float32)
        if std != 1.0:
            chunk.mul_(std)
        if mean != 0.0:
            chunk.add_(mean)
        flat[start : start + n] = chunk
        del chunk
    return out


def _uniform(shape: tuple[int, ...], low: float, high: float, seed: int, name: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(tensor_seed(seed, name))
    return (torch.rand(shape, generator=gen, dtype=torch.float32) * (high - low) + low).to(torch.bfloat16)


class SyntheticWeights:
    """Every tensor of one config's checkpoint, computed on demand from (seed, name)."""

    def __init__(self, cfg: VoxtralConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = int(seed)
        self.shapes = tensor_shapes(cfg)
        stages, upsamplers = codec_block_indices(cfg.codec)
        #: decoder block index of each transposed conv -> its stride
        self._strides = {idx: cfg.codec.strides[n + 1] for n, idx in enumerate(upsamplers)}

    def specs(self) -> list[TensorSpec]:
        return [TensorSpec(name, shape, "BF16") for name, shape in self.shapes.items()]

    def _conv_v(self, v_name: str) -> torch.Tensor:
        shape = self.shapes[v_name]
        a, b, k = shape
        if ".decoder_blocks." in v_name and self._is_transposed(v_name):
            # ConvTranspose1d (in, out, k): each output sums in·k/stride products
            fan_in = a * k / self._stride(v_name)
        else:
            fan_in = b * k
        return _normal(shape, 1.0 / math.sqrt(fan_in), 0.0, self.seed, v_name)

    def _block(self, name: str) -> int:
        return int(name.split(".decoder_blocks.")[1].split(".")[0])

    def _is_transposed(self, name: str) -> bool:
        return self._block(name) in self._strides

    def _stride(self, name: str) -> int:
        return self._strides[self._block(name)]

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor (BF16, the checkpoint's shape)."""
        try:
            shape = self.shapes[name]
        except KeyError:
            raise BadInput(f"synthetic Voxtral checkpoint: no tensor named {name!r}") from None
        seed = self.seed
        if name.endswith("parametrizations.weight.original0"):
            v_name = name[: -len("0")] + "1"
            v = self._conv_v(v_name).float()
            norm = v.flatten(1).norm(dim=1).reshape(shape)
            gain = OUTPUT_GAIN if name.startswith("audio_tokenizer.output_proj.") else 1.0
            jitter = _normal(shape, 0.1, 1.0, seed, name).float()
            return (norm * jitter * gain).to(torch.bfloat16)
        if name.endswith("parametrizations.weight.original1"):
            return self._conv_v(name)
        if name.endswith(("attention_scale", "ffn_scale")):
            return (_normal(shape, 0.1, 1.0, seed, name).float() * 0.1).to(torch.bfloat16)
        if name.endswith(_NORMS) or name in ("norm.weight", "acoustic_transformer.norm.weight"):
            return _normal(shape, 0.1, 1.0, seed, name)
        if name.endswith("semantic_codebook.cluster_usage"):
            return _uniform(shape, 0.5, 2.0, seed, name)
        if name.endswith("semantic_codebook.embedding_sum"):
            usage = self.tensor(name.replace("embedding_sum", "cluster_usage")).float()
            return (_normal(shape, 1.0, 0.0, seed, name).float() * usage[:, None]).to(torch.bfloat16)
        if name == "mm_audio_embeddings.tok_embeddings.weight":
            return _normal(shape, 1.0, 0.0, seed, name)
        if name == "mm_audio_embeddings.audio_codebook_embeddings.embeddings.weight":
            return _normal(shape, 1.0 / math.sqrt(len(self.cfg.codebook_sizes)), 0.0, seed, name)
        if name.endswith(".bias"):
            return _normal(shape, 0.02, 0.0, seed, name)
        if len(shape) == 2:  # every other 2-D tensor is a Linear weight (out, in)
            return _normal(shape, 1.0 / math.sqrt(shape[1]), 0.0, seed, name)
        raise RuntimeError(f"synthetic Voxtral checkpoint: no initialiser for {name} {shape}")

    def voice(self, name: str, frames: int) -> torch.Tensor:
        """A voice preset: BF16 [frames, dim], on the scale of the backbone's input embeddings."""
        return _normal((int(frames), self.cfg.backbone.dim), 1.0, 0.0, self.seed, f"voice_embedding/{name}")


def _params(config: str | Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    if isinstance(config, str):
        if config not in NAMED_PARAMS:
            raise BadInput(f"unknown Voxtral TTS config {config!r}: use one of {', '.join(NAMED_PARAMS)}")
        return copy.deepcopy(NAMED_PARAMS[config]), dict(VOICES.get(config, DEFAULT_VOICES))
    return copy.deepcopy(dict(config)), dict(DEFAULT_VOICES)


def make_checkpoint(
    out_dir: str | Path,
    config: str | Mapping[str, Any],
    seed: int = 0,
    *,
    voices: Mapping[str, int] | None = None,
) -> Path:
    """Write a random-weight checkpoint in the consolidated layout under `out_dir`; returns `out_dir`.

    `config` is "tiny", "full" or a params.json dict. The weights stream to disk one tensor at a time
    (the full-size file is ~8 GB; peak RSS stays near one BF16 tensor). `voices` maps preset names to
    frame counts (default: 2 short voices for tiny and custom configs, 3 of ~20 frames for full)."""
    from voxport.families.voxtral_tts.tekken import write_tekken  # written beside this (tokenizer helper)

    raw, default_voices = _params(config)
    cfg = VoxtralConfig(raw)
    cfg.check("params.json")
    voices = dict(voices) if voices is not None else default_voices
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = SyntheticWeights(cfg, seed)
    atomic_write_text(out / PARAMS, json.dumps(raw, indent=2, sort_keys=True) + "\n")
    write_tekken(out / TOKENIZER, vocab_size=cfg.backbone.vocab_size, voices=voices, seed=seed)
    (out / VOICE_DIR).mkdir(exist_ok=True)
    for name, frames in voices.items():
        with atomic_path(out / VOICE_DIR / f"{name}.pt") as tmp:
            torch.save(weights.voice(name, frames), tmp)
    write_safetensors_stream(out / WEIGHTS, weights.specs(), weights.tensor)
    return out
