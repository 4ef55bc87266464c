"""The rational-quadratic spline of VITS's stochastic duration predictor, written for export.

transformers' version selects the in-range elements with boolean-mask indexing and writes results
back in place; the exporter turns that into NonZero/ScatterND, and two ONNX Runtime runs of the
exported graph then disagree. Here every element goes through the spline (inputs clamped into
range) and `torch.where` picks the identity outside the tail bound: same values, static shapes.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _edges(cum: torch.Tensor, lower: float, upper: float) -> torch.Tensor:
    """Scale cumulative bin sizes to [lower, upper] with the ends pinned exactly (no in-place writes)."""
    cum = (upper - lower) * cum + lower
    first = torch.full_like(cum[..., :1], lower)
    last = torch.full_like(cum[..., :1], upper)
    return torch.cat([first, cum[..., 1:-1], last], dim=-1)


def rational_quadratic_spline(
    inputs: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    *,
    reverse: bool,
    tail_bound: float,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> torch.Tensor:
    """Monotone spline inside [-tail_bound, tail_bound], identity outside; returns outputs only
    (inference never needs the log-determinant)."""
    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    x = torch.clamp(inputs, -tail_bound, tail_bound)

    constant = math.log(math.exp(1 - min_derivative) - 1)
    pad = torch.full_like(unnormalized_derivatives[..., :1], constant)
    unnormalized_derivatives = torch.cat([pad, unnormalized_derivatives, pad], dim=-1)

    num_bins = unnormalized_widths.shape[-1]
    widths = nn.functional.softmax(unnormalized_widths, dim=-1)
    widths = min_bin_width + (1 - min_bin_width * num_bins) * widths
    cumwidths = nn.functional.pad(torch.cumsum(widths, dim=-1), pad=(1, 0), mode="constant", value=0.0)
    cumwidths = _edges(cumwidths, -tail_bound, tail_bound)
    widths = cumwidths[..., 1:] - cumwidths[..., :-1]

    derivatives = min_derivative + nn.functional.softplus(unnormalized_derivatives)

    heights = nn.functional.softmax(unnormalized_heights, dim=-1)
    heights = min_bin_height + (1 - min_bin_height * num_bins) * heights
    cumheights = nn.functional.pad(torch.cumsum(heights, dim=-1), pad=(1, 0), mode="constant", value=0.0)
    cumheights = _edges(cumheights, -tail_bound, tail_bound)
    heights = cumheights[..., 1:] - cumheights[..., :-1]

    locations = cumheights if reverse else cumwidths
    locations = torch.cat([locations[..., :-1], locations[..., -1:] + 1e-6], dim=-1)
    bin_idx = (torch.sum((x[..., None] >= locations).to(torch.int64), dim=-1) - 1)[..., None]
    bin_idx = torch.clamp(bin_idx, 0, num_bins - 1)

    input_cumwidths = cumwidths.gather(-1, bin_idx)[..., 0]
    input_bin_widths = widths.gather(-1, bin_idx)[..., 0]
    input_cumheights = cumheights.gather(-1, bin_idx)[..., 0]
    delta = heights / widths
    input_delta = delta.gather(-1, bin_idx)[..., 0]
    input_derivatives = derivatives.gather(-1, bin_idx)[..., 0]
    input_derivatives_plus_one = derivatives[..., 1:].gather(-1, bin_idx)[..., 0]
    input_heights = heights.gather(-1, bin_idx)[..., 0]

    intermediate1 = input_derivatives + input_derivatives_plus_one - 2 * input_delta
    if not reverse:
        theta = (x - input_cumwidths) / input_bin_widths
        theta_one_minus_theta = theta * (1 - theta)
        numerator = input_heights * (input_delta * theta.pow(2) + input_derivatives * theta_one_minus_theta)
        denominator = input_delta + intermediate1 * theta_one_minus_theta
        spline = input_cumheights + numerator / denominator
    else:
        intermediate2 = x - input_cumheights
        intermediate3 = intermediate2 * intermediate1
        a = input_heights * (input_delta - input_derivatives) + intermediate3
        b = input_heights * input_derivatives - intermediate3
        c = -input_delta * intermediate2
        discriminant = torch.clamp(b.pow(2) - 4 * a * c, min=0.0)
        root = (2 * c) / (-b - torch.sqrt(discriminant))
        spline = root * input_bin_widths + input_cumwidths
    return torch.where(inside, spline, inputs)
