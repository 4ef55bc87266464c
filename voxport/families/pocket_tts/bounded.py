"""The Pocket TTS backbone with a fixed-capacity KV cache, for runtimes that need bounded shapes.

The `backbone` graph's cache grows by the new positions at every call (present = past + S), so its
past/present axes have no upper bound. Core ML wants every shape bounded and the output shapes to
follow from the input shapes, and a device app wants to keep one buffer per layer rather than
reallocate it every frame. `backbone_cache` therefore takes per layer a cache of `capacity`
positions (`key_cache_i`/`value_cache_i`, (1, Hkv, C, hd)) plus `position` = the number of slots in
use, and returns the whole cache with the new keys/values written at [position, position + S).

Static-shape formulation (no data-dependent slicing, which Core ML cannot express with a runtime
`position`): each layer runs `layer_step` itself over [cache (C slots) | new (S)], the cache slots
masked unless `slot < position`, the new keys causal among themselves. The keys a query sees and
their RoPE angles are exactly those of `backbone_step`; the masked slots add exact zeros to the
softmax sum and the weighted value sum (the slots must hold finite values: the loop passes zeros).
The write is a one-hot (C, S) matmul selected into the cache with `where`: every written element
is 1·k plus exact zeros, so the stored keys are bit-identical to the computed ones, in fp16 too.
Position arithmetic for masks and the one-hot is integer, so fp16 compute cannot blur slots.
"""

from __future__ import annotations

import torch

from voxport.errors import BadInput
from voxport.families.base import GraphSpec
from voxport.families.pocket_tts.graphs import BackboneGraph
from voxport.families.pocket_tts.modules import FlowLM, layer_step, output_heads, rope_table

#: name of the fixed-capacity backbone graph (the loop falls back to it when `backbone` is absent)
GRAPH = "backbone_cache"


def cache_names(num_layers: int) -> tuple[list[str], list[str]]:
    """Input and output names of the per-layer caches, key before value, layer by layer."""
    inputs = [f"{kv}_cache_{i}" for i in range(num_layers) for kv in ("key", "value")]
    return inputs, [f"{n}_out" for n in inputs]


def cache_masks(
    position: torch.Tensor, new: int, capacity: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The additive attention mask (S, C + S), the one-hot write matrix (C, S) and the written rows (C, 1).

    Cache slot c is visible to every new query iff c < position (filled by earlier calls); new key j
    is visible to new query i iff j <= i. All comparisons are on integers."""
    slots = torch.arange(capacity, dtype=torch.int64)
    steps = torch.arange(new, dtype=torch.int64)
    start = position.to(torch.int64).reshape(1)
    filled = (slots < start).reshape(1, capacity).expand(new, capacity)
    causal = steps.reshape(1, new) <= steps.reshape(new, 1)
    visible = torch.cat([filled, causal], dim=1)
    mask = torch.where(visible, 0.0, float("-inf"))
    hot = slots.reshape(capacity, 1) == (start + steps).reshape(1, new)
    written = (slots >= start) & (slots < start + new)
    return mask, hot.to(torch.float32), written.reshape(capacity, 1)


def backbone_cache_step(
    flow_lm: FlowLM,
    embeds: torch.Tensor,
    position: torch.Tensor,
    cache: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """`backbone_step` over a fixed cache: (hidden, eos, caches with the new positions written)."""
    t = flow_lm.transformer
    s, capacity = embeds.shape[1], cache[0][0].shape[2]
    positions = position.to(torch.float32) + torch.arange(s, dtype=torch.float32)
    mask, hot, written = cache_masks(position, s, capacity)
    table = rope_table(positions, t.layers[0].self_attn.head_dim, t.max_period)
    x, updated = embeds, []
    for layer, (ck, cv) in zip(t.layers, cache, strict=True):
        x, keys, values = layer_step(layer, x, table, ck, cv, mask)
        new_k, new_v = keys[:, :, capacity:], values[:, :, capacity:]
        updated.append((torch.where(written, hot @ new_k, ck), torch.where(written, hot @ new_v, cv)))
    return (*output_heads(flow_lm, x), updated)


class BackboneCacheGraph(BackboneGraph):
    """`BackboneGraph`'s inputs and embedding, with fixed caches in and out instead of past/present."""

    step = staticmethod(backbone_cache_step)


def backbone_cache_graph(backbone: GraphSpec, capacity: int) -> GraphSpec:
    """The fixed-capacity twin of the adapter's `backbone` GraphSpec (same embedding inputs and
    metadata; `seq` stays the only variable axis)."""
    if not isinstance(backbone.module, BackboneGraph):
        raise TypeError(f"expected the pocket_tts backbone graph, got {type(backbone.module).__name__}")
    needed = int(backbone.example_inputs[3][0]) + int(backbone.example_inputs[0].shape[1])
    if capacity < needed:
        raise BadInput(f"export.coreml.kv_capacity {capacity} is below the {needed} traced positions")
    module = BackboneCacheGraph(backbone.module.model)
    return cache_backbone_spec(backbone, module, GRAPH, capacity, {"pocket_tts_kv_capacity": str(capacity)})


def cache_backbone_spec(
    backbone: GraphSpec,
    module: BackboneGraph,
    name: str,
    capacity: int,
    metadata: dict[str, str],
    capacity_axis: str | None = None,
) -> GraphSpec:
    """The GraphSpec of a backbone that carries `capacity`-position caches in and out (this fixed one,
    kvcache.py's in-place one): `backbone`'s embedding inputs, outputs and metadata, plus the caches;
    `capacity_axis` names the cache length when it varies between calls."""
    names_in, names_out = cache_names(module.num_layers)
    token_ids, latents, kind, position, past = backbone.example_inputs[:5]  # past: one layer's keys
    heads, head_dim = int(past.shape[1]), int(past.shape[3])
    g = torch.Generator().manual_seed(1)
    # non-zero example caches, so tracing cannot specialise on an empty or all-zero cache
    caches = [torch.randn(1, heads, capacity, head_dim, generator=g) for _ in names_in]
    seq_axes = {n: backbone.dynamic_axes[n] for n in ("token_ids", "latents", "kind", "hidden", "eos_logit")}
    cache_axes = {n: {2: capacity_axis} for n in (*names_in, *names_out)} if capacity_axis else {}
    return GraphSpec(
        name=name,
        module=module,
        input_names=["token_ids", "latents", "kind", "position", *names_in],
        output_names=["hidden", "eos_logit", *names_out],
        example_inputs=(token_ids, latents, kind, position, *caches),
        dynamic_axes={**seq_axes, **cache_axes},
        metadata={**backbone.metadata, **metadata},
        primary=backbone.primary,
        discrete_outputs=backbone.discrete_outputs,
        state=dict(zip(names_out, names_in, strict=True)),
    )


def bounded_graphs(graphs: list[GraphSpec], capacity: int) -> list[GraphSpec]:
    """`graphs` (the adapter's) with `backbone` replaced by `backbone_cache` of `capacity` positions."""
    return [backbone_cache_graph(g, capacity) if g.name == "backbone" else g for g in graphs]
