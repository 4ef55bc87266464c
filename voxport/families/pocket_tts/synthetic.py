"""Random-weight Pocket TTS checkpoints in Kyutai's layout, for tests, the demo and benchmarks.

No model hub is reachable, so weights are random; the configs are Kyutai's schema (a release YAML
from the `pocket-tts` package, or the tiny one below for fast tests). Every norm, scale and bias is
randomised: fresh all-ones norms would hide normalisation bugs from parity, and identical-valued
tensors get merged by the ONNX exporter. The text tokenizer is a small unigram sentencepiece model
trained here on a fixed English text (llama.cpp's pockettts reader wants a unigram model too).
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import torch

from voxport.families.pocket_tts.config import PocketConfig
from voxport.families.pocket_tts.model import PocketTTSAdapter
from voxport.families.pocket_tts.modules import PocketModules

_SEANET = {
    "channels": 1,
    "n_residual_layers": 1,
    "ratios": [6, 5, 4],
    "residual_kernel_size": 3,
    "last_kernel_size": 3,
    "dilation_base": 2,
    "pad_mode": "constant",
    "compress": 2,
}

#: a tiny model in Kyutai's config schema: every feature of the small releases (GQA with
#: attn_dim != d_model, low-rank text table, z_proj) on an LSD head, in a few seconds of CPU
TINY_CONFIG: dict[str, Any] = {
    "default_temperature": 0.3,
    "default_eos_threshold": -4.0,
    "flow_lm": {
        "dtype": "float32",
        "insert_bos_before_voice": True,
        "flow": {"dim": 48, "depth": 2, "type": "lsd"},
        "transformer": {
            "d_model": 64,
            "hidden_scale": 2,
            "max_period": 10000,
            "num_heads": 4,
            "num_layers": 2,
            "attn_dim": 96,
            "num_kv_heads": 2,
        },
        "lookup_table": {
            "dim": 64,
            "n_bins": 4000,
            "tokenizer": "sentencepiece",
            "tokenizer_path": "tokenizer.model",
            "rank": 16,
        },
        "z_dim": 32,
    },
    "mimi": {
        "dtype": "float32",
        "sample_rate": 24000,
        "channels": 1,
        "frame_rate": 12.5,
        "inner_dim": 32,
        "outer_dim": 32,
        "seanet": {**_SEANET, "dimension": 32, "n_filters": 4, "kernel_size": 5},
        "transformer": {
            "d_model": 32,
            "num_heads": 2,
            "num_layers": 1,
            "layer_scale": 0.01,
            "context": 20,
            "dim_feedforward": 64,
            "input_dimension": 32,
            "output_dimensions": [32],
        },
        "quantizer": {"dimension": 32, "output_dimension": 32},
        "decoder_seanet": {**_SEANET, "dimension": 32, "n_filters": 8, "kernel_size": 3},
        "decoder_transformer": {
            "d_model": 32,
            "num_heads": 2,
            "num_layers": 2,
            "layer_scale": 0.01,
            "context": 20,
            "dim_feedforward": 64,
            "input_dimension": 32,
            "output_dimensions": [32],
        },
    },
}

CORPUS = """The quick brown fox jumps over the lazy dog.
A watch can speak the time without a network.
Private speech on a small device, offline and fast.
She sells sea shells by the sea shore.
How much wood would a woodchuck chuck if a woodchuck could chuck wood?
Turn left at the next corner, then continue for two hundred meters.
Your battery is low. Please connect the charger.
Good morning! The weather today is sunny with a light breeze.
Numbers like one, two, three and four are easy to say.
Peter Piper picked a peck of pickled peppers.
The meeting starts at nine and ends before noon.
Every small model should still sound like the big one.
"""


def train_tokenizer(vocab_size: int = 200) -> bytes:
    """A unigram sentencepiece model over `CORPUS` (deterministic: one thread, fixed seed sentences)."""
    import sentencepiece as spm

    out = io.BytesIO()
    lines = [line for line in CORPUS.splitlines() if line.strip()] * 4
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        vocab_size=vocab_size,
        model_type="unigram",
        num_threads=1,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return out.getvalue()


def randomize(modules: torch.nn.Module, seed: int) -> None:
    """Give every tensor distinct, realistic values (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in modules.state_dict().items():
            leaf = name.rsplit(".", 1)[-1]
            shape = tensor.shape
            if name.endswith("emb_std"):
                value = torch.rand(shape, generator=g) + 0.5
            elif name.endswith("emb_mean"):
                value = torch.randn(shape, generator=g) * 0.2
            elif name.endswith("freqs"):
                continue
            elif leaf in ("alpha", "scale") or (leaf == "weight" and tensor.ndim == 1):
                value = torch.rand(shape, generator=g) + 0.5
            elif leaf == "bias":
                value = torch.randn(shape, generator=g) * 0.05
            elif name.endswith(("bos_emb", "bos_before_voice")):
                value = torch.randn(shape, generator=g)
            elif tensor.ndim >= 2:
                fan_in = tensor[0].numel()
                value = torch.randn(shape, generator=g) / fan_in**0.5
            else:
                continue
            tensor.copy_(value)


def random_model(
    raw: dict[str, Any] | None = None, *, seed: int = 0, with_encoder: bool = True
) -> PocketTTSAdapter:
    cfg = PocketConfig(copy.deepcopy(raw or TINY_CONFIG))
    modules = PocketModules(cfg, with_encoder=with_encoder)
    randomize(modules, seed)
    # random SEANet weights give ±10 audio; scale the last conv so the waveform sits well inside ±1
    last = modules.mimi.decoder.model[-1].conv
    with torch.no_grad():
        last.weight.mul_(0.05)
        last.bias.zero_()
    return PocketTTSAdapter(
        modules.eval(),
        source="random",
        tokenizer_files={"tokenizer.model": train_tokenizer()},
        layout="kyutai",
    )


def named_config(name: str) -> dict[str, Any]:
    """'tiny', a path to a Kyutai config YAML, or a release name shipped in the `pocket-tts` package."""
    import yaml

    from voxport.errors import BadInput

    if name == "tiny":
        return copy.deepcopy(TINY_CONFIG)
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise BadInput(f"config not found: {path}")
        return yaml.safe_load(path.read_text())
    from voxport.families.pocket_tts.kyutai import release_config

    return release_config(name)


def make_checkpoint(out_dir: Path, raw: dict[str, Any] | None = None, *, seed: int = 0) -> Path:
    """Write a random checkpoint in Kyutai's layout (model.safetensors, config.yaml, tokenizer.model)."""
    random_model(raw, seed=seed).save(out_dir)
    return out_dir
