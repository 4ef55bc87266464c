"""VITS relative-position attention as gathers over a fixed window, with no length-dependent padding.

transformers' `VitsAttention` turns relative logits into absolute ones (and back) with the "pad,
flatten, pad, reshape, slice" trick of the original VITS code, and pads the relative embedding table
by ``max(length - window - 1, 0)`` rows. Those pads have sizes computed from the sequence length, so:

- a tracer records Python ``max()`` on a traced size, which coremltools lowers to an ``int`` op it
  cannot convert under numpy 2, and a dynamic n-d pad that it cannot convert with a flexible length;
- the graph does O(L²) work on a (2L-1)-wide relative table even though only 2W+1 relative positions
  (W = ``window_size``) have non-zero embeddings.

Here the same quantity is computed directly. For query i and key j, with r = j - i:

    bias[i, j]   = q_i · emb_rel_k[r + W]            if |r| <= W else 0
    out_i       += Σ_j p[i, j] · emb_rel_v[r + W]     over |r| <= W

The first is a gather of the [L, 2W+1] logits ``q @ emb_rel_kᵀ`` at column ``j - i + W``; the second
gathers the probabilities at column ``i + k - W`` for each window slot k and multiplies by
``emb_rel_v``. Out-of-window entries are zeroed with ``where`` (in the original they are products with
zero padding rows, i.e. exactly 0 as well), so the result equals transformers' up to float summation
order. The index tensors come from ``arange(L)``, which every exporter keeps symbolic.

The parameter names (``q_proj``, ..., ``emb_rel_k``, ``emb_rel_v``) are unchanged, so checkpoints,
quantization globs and GGUF names do not notice the swap.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.vits.modeling_vits import VitsAttention


def _window_index(length: torch.Tensor | int, window: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Index grids over queries i and keys j / window slots k, built from a (traced) length.

    Out-of-range indices are replaced by 0 (always valid, L >= 1) and masked out by the callers; no
    Python arithmetic on the length, so tracers keep it symbolic."""
    positions = torch.arange(length, device=device)
    slots = torch.arange(2 * window + 1, device=device)
    zero = torch.zeros((), dtype=positions.dtype, device=device)
    # logits column for (i, j): j - i + W; valid when inside the 2W+1 table
    rel = positions[None, :] - positions[:, None] + window  # [L, L]
    rel_valid = (rel >= 0) & (rel <= 2 * window)
    rel = torch.where(rel_valid, rel, zero)
    # key for (i, k): i + k - W; valid when inside the sequence
    key = positions[:, None] + slots[None, :] - window  # [L, 2W+1]
    key_valid = (key >= 0) & (key <= positions[-1:][None])
    key = torch.where(key_valid, key, zero)
    return rel, rel_valid, key, key_valid


def relative_position_bias(logits: torch.Tensor, rel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[BH, L, 2W+1] relative logits → [BH, L, L] absolute bias (zero outside the window)."""
    return torch.where(valid[None], _pick(logits, rel), torch.zeros((), dtype=logits.dtype))


def relative_weights(probs: torch.Tensor, key: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[BH, L, L] attention probabilities → [BH, L, 2W+1] weights per relative position."""
    return torch.where(valid[None], _pick(probs, key), torch.zeros((), dtype=probs.dtype))


def _pick(values: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """out[b, i, k] = values[b, i, columns[i, k]], with no size of the batch*heads axis in the graph.

    An index expanded to `values.shape[0]` is traced as the example's constant (the exporter cannot
    infer that axis through the head split, so it takes the traced size), and a batch-2 input then
    fails in ONNX Runtime; indexing with the batch axis last leaves it free. Same selection, same
    values."""
    rows = torch.arange(columns.shape[0], device=columns.device)[:, None]
    return values.permute(1, 2, 0)[rows, columns].permute(2, 0, 1)


class WindowedRelativeAttention(VitsAttention):
    """`VitsAttention` with the relative-position terms computed by gathers (see the module docstring).

    Installed by swapping the class of existing `VitsAttention` instances (`install`), so parameters,
    their names and the module tree stay exactly as transformers built them."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if key_value_states is not None:
            raise ValueError("VITS attention is self-attention only")
        heads, head_dim = self.num_heads, self.head_dim

        # flatten/unflatten with constant factors only: `bsz * heads` on traced sizes becomes an `int`
        # op that coremltools 9 fails to fold under numpy 2 (see voxport.export.coreml.compat)
        def split(x: torch.Tensor) -> torch.Tensor:  # [B, L, E] → [B*H, L, D]
            return x.unflatten(-1, (heads, head_dim)).transpose(1, 2).flatten(0, 1)

        query = split(self.q_proj(hidden_states) * self.scaling)
        key = split(self.k_proj(hidden_states))
        value = split(self.v_proj(hidden_states))

        scores = torch.bmm(query, key.transpose(1, 2))
        if self.window_size is not None:
            rel, rel_valid, key_index, key_valid = _window_index(
                hidden_states.shape[1], self.window_size, hidden_states.device
            )
            logits = torch.matmul(query, self.emb_rel_k[0].transpose(0, 1))  # [BH, L, 2W+1]
            scores = scores + relative_position_bias(logits, rel, rel_valid)
        if attention_mask is not None:
            scores = (scores.unflatten(0, (-1, heads)) + attention_mask).flatten(0, 1)
        probs = nn.functional.softmax(scores, dim=-1)
        probs = nn.functional.dropout(probs, p=self.dropout, training=self.training)
        out = torch.bmm(probs, value)
        if self.window_size is not None:
            out = out + torch.matmul(relative_weights(probs, key_index, key_valid), self.emb_rel_v[0])
        out = out.unflatten(0, (-1, heads)).transpose(1, 2).flatten(2)
        weights = probs.unflatten(0, (-1, heads)) if output_attentions else None
        return self.out_proj(out), weights


def install(model: nn.Module) -> int:
    """Swap every `VitsAttention` in `model` for `WindowedRelativeAttention` in place; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is VitsAttention:
            module.__class__ = WindowedRelativeAttention
            count += 1
    return count
