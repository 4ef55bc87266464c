"""The Pocket TTS backbone with a preallocated KV cache written in place, for ONNX Runtime.

The `backbone` graph's cache grows by the new positions at every call: each layer Concats past and
new keys/values into a fresh tensor, so every step copies the whole cache (~30 MB per step near 660
positions at ~100M) and hands it back to Python. Core ML's `backbone_cache` (bounded.py) has fixed
shapes but still writes the whole cache through `where` at every step.

`backbone_kv` takes per layer a cache of any capacity C (`key_cache_i`/`value_cache_i`, (1, Hkv, C,
hd), C a free axis chosen by the caller: prompt + frames) plus `position` = the slots in use, and
writes the new keys/values with one `ScatterElements` at [position, position + S). ONNX Runtime's
scatter skips its input → output copy when both are the same buffer, so a runner that binds the
output to the input's own OrtValue (`OrtBindingRunner`, told so by the `voxport_inplace` metadata)
updates the cache in place: per step only S rows are written and nothing crosses back to Python.

Exactness: queries attend over all C slots with slot c visible to query i iff c ≤ position + i. The
unwritten slots hold zeros (finite), so they add exact zeros to the softmax and to the weighted sum;
the visible keys and their RoPE angles are those of `backbone_step`. Same values up to the order
of float additions in the attention matmuls (≥ 100 dB on the tiny model, see the tests).
"""

from __future__ import annotations

import json
from typing import cast

import torch

from voxport.errors import BadInput
from voxport.families.base import GraphSpec
from voxport.families.pocket_tts.bounded import cache_backbone_spec, cache_names
from voxport.families.pocket_tts.graphs import BackboneGraph
from voxport.families.pocket_tts.modules import (
    FlowLM,
    TransformerLayer,
    layer_attend,
    layer_qkv,
    output_heads,
    rope_table,
)
from voxport.runtime.ort import INPLACE_KEY

#: name of the in-place KV cache backbone graph (the loop prefers it when a runner has it)
GRAPH = "backbone_kv"


def backbone_kv_step(
    flow_lm: FlowLM,
    embeds: torch.Tensor,
    position: torch.Tensor,
    cache: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """`backbone_step` over preallocated caches: (hidden, eos, caches with [position, +S) written)."""
    t = flow_lm.transformer
    s, capacity = embeds.shape[1], cache[0][0].shape[2]
    heads, head_dim = cache[0][0].shape[1], cache[0][0].shape[3]
    start = position.to(torch.int64).reshape(1)
    written = start + torch.arange(s, dtype=torch.int64)
    slots = torch.arange(capacity, dtype=torch.int64)
    mask = torch.where(slots.reshape(1, -1) <= written.reshape(-1, 1), 0.0, float("-inf"))
    index = written.reshape(1, 1, s, 1).expand(1, heads, s, head_dim)
    table = rope_table(written.to(torch.float32), int(head_dim), t.max_period)
    x, updated = embeds, []
    for module, (ck, cv) in zip(t.layers, cache, strict=True):
        layer = cast(TransformerLayer, module)
        q, k, v = layer_qkv(layer, x, table)
        keys, values = ck.scatter(2, index, k), cv.scatter(2, index, v)
        x = layer_attend(layer, x, q, keys, values, mask)
        updated.append((keys, values))
    return (*output_heads(flow_lm, x), updated)


class BackboneKvGraph(BackboneGraph):
    """`BackboneGraph`'s inputs and embedding, with preallocated caches written in place."""

    step = staticmethod(backbone_kv_step)


def backbone_kv_graph(backbone: GraphSpec) -> GraphSpec:
    """The in-place twin of the adapter's `backbone` GraphSpec (same embedding inputs and metadata;
    `seq` and the cache's `capacity` are the variable axes)."""
    if not isinstance(backbone.module, BackboneGraph):
        raise BadInput(f"expected the pocket_tts backbone graph, got {type(backbone.module).__name__}")
    module = BackboneKvGraph(backbone.module.model)
    token_ids, position = backbone.example_inputs[0], backbone.example_inputs[3]
    capacity = int(position[0]) + int(token_ids.shape[1]) + 3  # > the written slots: no axis specialises
    names_in, names_out = cache_names(module.num_layers)
    inplace = json.dumps(dict(zip(names_out, names_in, strict=True)), sort_keys=True)
    return cache_backbone_spec(backbone, module, GRAPH, capacity, {INPLACE_KEY: inplace}, "capacity")


def kv_graphs(graphs: list[GraphSpec]) -> list[GraphSpec]:
    """`graphs` (the adapter's) with `backbone` replaced by `backbone_kv`."""
    return [backbone_kv_graph(g) if g.name == "backbone" else g for g in graphs]
