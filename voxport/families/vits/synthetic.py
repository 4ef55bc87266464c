"""A small random-weight VITS checkpoint, built deterministically from a config.

No model hub is reachable from CI, so tests and the demo recipe build this model and load it back
through exactly the path a user's checkpoint takes (`save_pretrained` → `voxport` loader). Two
details keep parity figures honest: HiFi-GAN's last convolution is scaled down so random weights do
not saturate the output at ±1 (which would make every comparison look perfect), and every
parameter gets a little noise so no two tensors hold identical values (the ONNX exporter would
deduplicate them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import VitsConfig, VitsModel

from voxport.families.vits.architecture import build_inference_model, fold_weight_norm, resblock_variant

#: characters of the demo vocabulary; id 0 is the pad/blank token VitsTokenizer interleaves
DEMO_CHARACTERS = list(" abcdefghijklmnopqrstuvwxyz'.,?!-")

TINY_CONFIG: dict[str, Any] = {
    "vocab_size": len(DEMO_CHARACTERS) + 2,
    "hidden_size": 48,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "ffn_dim": 96,
    "flow_size": 32,
    "spectrogram_bins": 33,
    "upsample_initial_channel": 64,
    "upsample_rates": [8, 8, 4],
    "upsample_kernel_sizes": [16, 16, 8],
    "resblock_kernel_sizes": [3, 7],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "duration_predictor_filter_channels": 64,
    "duration_predictor_num_flows": 2,
    "prior_encoder_num_flows": 2,
    "prior_encoder_num_wavenet_layers": 2,
    "posterior_encoder_num_wavenet_layers": 2,
    "sampling_rate": 16000,
}


def make_vits_checkpoint(
    out_dir: Path, *, seed: int = 0, overrides: dict[str, Any] | None = None, output_gain: float = 0.05
) -> Path:
    """Write config.json, model.safetensors and a character tokenizer; return `out_dir`.

    The transformers layout (`save_pretrained`, weight norm unfolded) is written when transformers can
    represent the model; a ResBlock2 vocoder (`overrides={"resblock": "2"}`, as in Piper voices) only
    exists in voxport, so that checkpoint is written in voxport's own folded layout instead."""
    torch.manual_seed(seed)
    config = VitsConfig(**{**TINY_CONFIG, **(overrides or {})})
    transformers_layout = resblock_variant(config) == "1"
    model = VitsModel(config).eval() if transformers_layout else build_inference_model(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.01)
        model.decoder.conv_post.weight.mul_(output_gain)
        # Durations of 2–6 frames per token, like trained voices, instead of random ~1.
        if hasattr(model.duration_predictor, "flows"):
            model.duration_predictor.flows[0].translate.add_(1.2)
    out_dir.mkdir(parents=True, exist_ok=True)
    if transformers_layout:
        model.save_pretrained(str(out_dir), safe_serialization=True)
    else:
        from voxport.families.vits.model import VitsModelAdapter

        fold_weight_norm(model)
        VitsModelAdapter(model, source="synthetic", tokenizer_files={}).save(out_dir)
    vocab = {"<pad>": 0, "<unk>": 1, **{ch: i + 2 for i, ch in enumerate(DEMO_CHARACTERS)}}
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "VitsTokenizer",
                "add_blank": True,
                "normalize": True,
                "phonemize": False,
                "is_uroman": False,
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "language": None,
            }
        )
    )
    return out_dir
