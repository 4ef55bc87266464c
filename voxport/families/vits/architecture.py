"""The inference-time VITS network: transformers' `VitsModel` plus what Piper voices need.

Two things differ from `VitsModel(config)`:

- HiFi-GAN's residual block comes in two variants. transformers implements ResBlock1 (two convs per
  dilation); Piper's "medium" and "high" voices use ResBlock2 (one conv per dilation). The config key
  `resblock` ("1" or "2", as in Piper's configs) selects it.
- Parts that only training uses are removed, not invented: the posterior encoder, the duration
  predictor's posterior flows, and its first conv flow (VITS skips it at inference). A checkpoint that
  lacks them (a Piper ONNX voice) loads as well as one that has them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import VitsConfig, VitsModel

from voxport.errors import BadInput
from voxport.families.vits.attention import install as install_windowed_attention

#: parts of the stochastic duration predictor that only the training loss uses
DP_TRAINING_ONLY = ("post_conv_pre", "post_conv_proj", "post_conv_dds", "post_flows")
#: prefixes of checkpoint tensors that inference never reads
TRAINING_ONLY_PREFIXES = (
    "posterior_encoder.",
    *(f"duration_predictor.{name}." for name in DP_TRAINING_ONLY),
    "duration_predictor.flows.1.",
)


class HifiGanResidualBlock2(nn.Module):
    """HiFi-GAN's ResBlock2: for each dilation, leaky ReLU → dilated conv → residual add."""

    def __init__(
        self, channels: int, kernel_size: int, dilation: tuple[int, ...], leaky_relu_slope: float
    ) -> None:
        super().__init__()
        self.leaky_relu_slope = leaky_relu_slope
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2)
            for d in dilation
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            residual = hidden_states
            hidden_states = conv(nn.functional.leaky_relu(hidden_states, self.leaky_relu_slope))
            hidden_states = hidden_states + residual
        return hidden_states


def resblock_variant(config: VitsConfig) -> str:
    variant = str(getattr(config, "resblock", "1"))
    if variant not in ("1", "2"):
        raise ValueError(f"resblock must be '1' or '2', got {variant!r}")
    return variant


def fold_weight_norm(model: nn.Module) -> None:
    """Replace weight-norm parametrizations by the plain weight they compute.

    Exporters and quantizers must see the weight that is actually used, not its (g, v) factors."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def build_inference_model(config: VitsConfig) -> VitsModel:
    """A `VitsModel` with the configured residual block and no training-only parts (weights random)."""
    with torch.device("cpu"):
        model = VitsModel(config)
    model.posterior_encoder = None
    if config.use_stochastic_duration_prediction:
        dp = model.duration_predictor
        for name in DP_TRAINING_ONLY:
            setattr(dp, name, None)
        dp.flows[1] = nn.Identity()  # keeps the other flows' indices
    if resblock_variant(config) == "2":
        decoder = model.decoder
        blocks = []
        for i in range(len(config.upsample_rates)):
            channels = config.upsample_initial_channel // (2 ** (i + 1))
            for kernel, dilation in zip(
                config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True
            ):
                blocks.append(
                    HifiGanResidualBlock2(channels, kernel, tuple(dilation), config.leaky_relu_slope)
                )
        decoder.resblocks = nn.ModuleList(blocks)
    install_windowed_attention(model)  # exact rewrite without length-dependent pads (CoreML export)
    return model.eval()


def listing(names: list[str], limit: int = 6) -> str:
    names = sorted(names)
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def load_exact(model: nn.Module, tensors: dict[str, torch.Tensor], source: str, what: str) -> None:
    """Load `tensors` into `model` only if names and shapes match exactly; else say what differs.

    A partial load would export a half-random voice that still looks finished, so a missing or
    unexpected tensor is an error that names them, never `strict=False`."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = [f"missing {listing(missing)}"] if missing else []
        parts += [f"unexpected {listing(unexpected)}"] if unexpected else []
        raise BadInput(f"{source}: {what}: {'; '.join(parts)}")
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
        for k, v in tensors.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        raise BadInput(f"{source}: {what}: tensor shapes differ: {listing(wrong, 3)}")
    model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=True)
