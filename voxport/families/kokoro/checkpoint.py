"""Kokoro's weight layouts: KModel's (weight norm as weight_g/weight_v) and voxport's folded one.

KModel applies `weight_norm(dim=0)`: weight = g · v / ‖v‖, the norm taken over every axis but the first.
Folding computes that once; unfolding stores v = weight and g = ‖weight‖, which folds back to the same
weight to within a rounding step, and which KModel loads strictly.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

#: written last into a checkpoint voxport saved: its presence means the directory is complete
MARKER = "voxport.json"


def _norm(v: torch.Tensor) -> torch.Tensor:
    flat = v.to(torch.float64).reshape(v.shape[0], -1)
    return flat.norm(dim=1).reshape([-1] + [1] * (v.dim() - 1))


def fold(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """weight_g/weight_v pairs → `weight`; every other tensor as it is (a `module.` prefix, which some
    of hexgrad's files carry, removed)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        name = name.removeprefix("module.")
        if name.endswith(".weight_g"):
            continue
        if name.endswith(".weight_v"):
            base = name[: -len(".weight_v")]
            g = weights.get(base + ".weight_g", weights.get("module." + base + ".weight_g"))
            if g is None:
                raise KeyError(f"{base}.weight_v without {base}.weight_g")
            norm = _norm(tensor)
            folded = g.to(torch.float64) * tensor.to(torch.float64) / torch.where(norm > 0, norm, 1.0)
            out[base + ".weight"] = folded.to(torch.float32)
        else:
            out[name] = tensor
    return out


#: the modules KModel wraps in weight_norm (its convolutions but not the predictor's two projections,
#: the generator's noise convolutions or the source's linear layer)
def weight_normed(name: str) -> bool:
    if not name.endswith(".weight"):
        return False
    base = name[: -len(".weight")]
    if base.startswith("text_encoder.cnn.") and base.endswith(".0"):
        return True
    if base.startswith(("predictor.F0.", "predictor.N.")):
        return base.rsplit(".", 1)[-1] in ("conv1", "conv2", "conv1x1", "pool")
    if base.startswith("decoder."):
        if ".noise_convs." in base or ".m_source." in base or base.endswith((".fc",)):
            return False
        leaf = base.rsplit(".", 1)[-1]
        return (
            leaf.isdigit()
            and (".convs1." in base or ".convs2." in base or ".ups." in base or base.endswith("asr_res.0"))
            or leaf in ("conv1", "conv2", "conv1x1", "pool", "F0_conv", "N_conv", "conv_post")
        )
    return False


def unfold(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Folded weights → KModel's layout (v = weight, g = ‖weight‖; an all-zero kernel row gets v = 1,
    g = 0, since v = 0 would make KModel divide by zero)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        if not weight_normed(name):
            out[name] = tensor
            continue
        base = name[: -len(".weight")]
        norm = _norm(tensor)
        v = tensor.clone()
        zero = norm.reshape(-1) == 0
        if bool(zero.any()):
            v[zero] = 1.0
        out[base + ".weight_g"] = norm.to(torch.float32)
        out[base + ".weight_v"] = v
    return out
