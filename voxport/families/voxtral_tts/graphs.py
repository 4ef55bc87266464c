"""The three graphs an edge runtime runs for Voxtral TTS, as traceable torch modules.

- `backbone`: the prompt prefill and every decode step. Each position says what it holds (`kind`):
  a text token, a row of a voice preset (the reference writes those over the `[AUDIO]` placeholder
  positions), or a generated frame's 37 codes, whose embeddings are summed inside the graph. The
  embedding tables live in the graph, so an artifact needs no side tables. The KV cache is explicit
  (`past_*` in, `present_*` out, grown by the new positions); `position` is the cached count.
- `backbone_cache`: the same with caches of a fixed capacity written at `position` (Core ML).
- `acoustic_head`: one frame from the backbone state: the semantic argmax and the guided Euler
  integration from `noise` (an input, so every runtime integrates from the same start), unrolled.
- `codec`: one frame of codes → 1,920 samples, the decoder's state in and out with fixed shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from voxport.families.voxtral_tts.modules import VoxtralModules

#: what each backbone position holds (the graph's `kind` input)
KIND_TEXT, KIND_VOICE, KIND_AUDIO = 0, 1, 2


class BackboneGraph(nn.Module):
    def __init__(self, modules: VoxtralModules) -> None:
        super().__init__()
        self.model = modules
        self.num_layers = len(modules.layers)

    def embed(
        self, token_ids: torch.Tensor, audio_codes: torch.Tensor, voice: torch.Tensor, kind: torch.Tensor
    ) -> torch.Tensor:
        m = self.model
        table = m.text_table
        text = table(token_ids.clamp(0, table.num_embeddings - 1))
        k = kind.unsqueeze(-1)
        x = torch.where(k == KIND_VOICE, voice, text)
        return torch.where(k == KIND_AUDIO, m.embed_audio(audio_codes), x)

    def forward(
        self,
        token_ids: torch.Tensor,
        audio_codes: torch.Tensor,
        voice: torch.Tensor,
        kind: torch.Tensor,
        position: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)]
        hidden, present = self.model(self.embed(token_ids, audio_codes, voice, kind), position, pairs)
        return (hidden, *[t for pair in present for t in pair])


def cache_masks(position: torch.Tensor, new: int, capacity: int) -> tuple[torch.Tensor, ...]:
    """Additive mask (S, C + S), one-hot write matrix (C, S) and written rows (C, 1) of a fixed cache.

    Slot c is visible to every new query iff c < position; new key j to new query i iff j <= i. The
    write is a one-hot matmul selected in with `where`, so stored keys are bit-identical to computed
    ones (no data-dependent slicing, which Core ML cannot express with a runtime position)."""
    slots = torch.arange(capacity, dtype=torch.int64)
    steps = torch.arange(new, dtype=torch.int64)
    start = position.to(torch.int64).reshape(1)
    filled = (slots < start).reshape(1, capacity).expand(new, capacity)
    causal = steps.reshape(1, new) <= steps.reshape(new, 1)
    mask = torch.where(torch.cat([filled, causal], dim=1), 0.0, float("-inf"))
    hot = (slots.reshape(capacity, 1) == (start + steps).reshape(1, new)).to(torch.float32)
    written = ((slots >= start) & (slots < start + new)).reshape(capacity, 1)
    return mask, hot, written


class BackboneCacheGraph(BackboneGraph):
    """`BackboneGraph` over caches of a fixed capacity (key_cache_i/value_cache_i in and out)."""

    def forward(
        self,
        token_ids: torch.Tensor,
        audio_codes: torch.Tensor,
        voice: torch.Tensor,
        kind: torch.Tensor,
        position: torch.Tensor,
        *cache: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        m = self.model
        x = self.embed(token_ids, audio_codes, voice, kind)
        s, capacity = x.shape[1], cache[0].shape[2]
        mask, hot, written = cache_masks(position, s, capacity)
        updated: list[torch.Tensor] = []
        angles = m.rope(position, s)
        for i, layer in enumerate(m.blocks()):
            ck, cv = cache[2 * i], cache[2 * i + 1]
            x, k, v = m.layer_step(layer, x, angles, ck, cv, mask)
            updated += [torch.where(written, hot @ k, ck), torch.where(written, hot @ v, cv)]
        return (m.norm(x), *updated)


class HeadGraph(nn.Module):
    def __init__(self, modules: VoxtralModules) -> None:
        super().__init__()
        self.model = modules

    def forward(self, hidden: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(1, D) state, (1, 36) noise → semantic (1,), acoustic (1, 36), codes (1, 37). The head
        runs on 3-D tensors inside: a Linear on a 2-D input traces as `Gemm`, which ONNX Runtime
        does not fuse behind a DequantizeLinear (see pocket_tts/graphs.py)."""
        semantic, acoustic, codes = self.model.acoustic_transformer(hidden.unsqueeze(1), noise.unsqueeze(1))
        return semantic, acoustic, codes


class CodecGraph(nn.Module):
    def __init__(self, modules: VoxtralModules) -> None:
        super().__init__()
        self.model = modules
        self.state_names = list(modules.audio_tokenizer.state_shapes())

    def forward(
        self, codes: torch.Tensor, position: torch.Tensor, *state: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        audio, new = self.model.audio_tokenizer(
            codes, position, dict(zip(self.state_names, state, strict=True))
        )
        return (audio, *[new[n] for n in self.state_names])
