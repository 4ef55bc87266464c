"""The three graphs an edge runtime runs for Pocket TTS, as traceable torch modules.

- `backbone`: one graph for the prompt prefill and every decode step. The KV cache is explicit
  (`past_key_i`/`past_value_i` in, `present_key_i`/`present_value_i` out, growing by the new
  positions) and `position` is the number of cached positions. Each position says what it holds
  (`kind`), so the voice prompt, text, audio BOS and generated latents all enter through one graph:
  the embedding table and the latent projections live inside it, as in llama.cpp's layout.
- `flow_head`: condition + noise → next latent, the flow steps unrolled; noise is an input so every
  runtime consumes the same recorded noise.
- `codec`: one latent frame → `frame_size` samples, the streaming decoder's state (conv tails,
  transposed-conv overlaps, sliding attention window) in and out with fixed shapes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from voxport.families.pocket_tts.modules import (
    FlowLM,
    PocketModules,
    backbone_step,
    codec_state_shapes,
    codec_step,
    sample_latent,
)

#: what each prompt position holds (the `kind` input of the backbone graph)
KIND_TEXT, KIND_VOICE, KIND_LATENT, KIND_BOS_BEFORE_VOICE, KIND_AUDIO_BOS = 0, 1, 2, 3, 4


#: one (keys, values) pair per layer
Pairs = list[tuple[torch.Tensor, torch.Tensor]]
BackboneStep = Callable[[FlowLM, torch.Tensor, torch.Tensor, Pairs], tuple[torch.Tensor, torch.Tensor, Pairs]]


class BackboneGraph(nn.Module):
    #: the flow LM call over (flow_lm, embeds, position, one (keys, values) pair per layer) →
    #: (hidden, eos, the pairs to carry on); the cache variants (bounded.py, kvcache.py) change only this
    step: BackboneStep = staticmethod(backbone_step)

    def __init__(self, modules: PocketModules) -> None:
        super().__init__()
        self.model = modules
        self.num_layers = modules.cfg.num_layers

    def embed(self, token_ids: torch.Tensor, latents: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        """Every position's embedding by its kind. The audio BOS is `bos_emb` sent through the
        latents' own `input_linear` call, not a separate `input_linear(bos_emb)`: that one is a
        weight-only constant which converters fold with the *float* weight, so in a quantized artifact
        that row would come from other weights than every other latent (Core ML measured 43 dB at the
        BOS position against > 110 dB elsewhere)."""
        f = self.model.flow_lm
        k = kind.unsqueeze(-1)
        text = f.conditioner(token_ids.clamp(0, f.conditioner.embed.num_embeddings - 1))
        voice = latents @ f.speaker_proj_weight.t()
        latent = f.input_linear(torch.where(k == KIND_AUDIO_BOS, f.bos_emb, latents))
        x = torch.where(k == KIND_TEXT, text, latent)
        x = torch.where(k == KIND_VOICE, voice, x)
        if hasattr(f, "bos_before_voice"):
            x = torch.where(k == KIND_BOS_BEFORE_VOICE, f.bos_before_voice.reshape(-1), x)
        return x

    def forward(
        self,
        token_ids: torch.Tensor,
        latents: torch.Tensor,
        kind: torch.Tensor,
        position: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)]
        hidden, eos, present = self.step(
            self.model.flow_lm, self.embed(token_ids, latents, kind), position, pairs
        )
        return (hidden, eos, *[t for pair in present for t in pair])


class FlowHeadGraph(nn.Module):
    def __init__(self, modules: PocketModules, steps: int) -> None:
        super().__init__()
        self.model = modules
        self.steps = steps

    def forward(self, condition: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The head runs on (1, 1, C) rather than (1, C): a Linear on a 2-D input traces as `Gemm`,
        which ONNX Runtime neither folds nor fuses behind `DequantizeLinear`, so a quantized head
        was dequantized on every call (54 ms per frame at ~100M int4); on 3-D inputs it traces as
        Transpose → MatMul, which the exporter stores pre-transposed and ORT fuses into MatMulNBits
        (0.9 ms). Same values either way."""
        latent = sample_latent(
            self.model.flow_lm.flow_net,
            self.model.cfg.flow_type,
            condition.unsqueeze(1),
            noise.unsqueeze(1),
            self.steps,
        )
        return latent.squeeze(1)


class CodecGraph(nn.Module):
    def __init__(self, modules: PocketModules) -> None:
        super().__init__()
        self.model = modules
        self.state_names = list(codec_state_shapes(modules.mimi))

    def forward(
        self, latent: torch.Tensor, position: torch.Tensor, *state: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        f = self.model.flow_lm
        audio, new = codec_step(
            self.model.mimi,
            f.emb_std,
            f.emb_mean,
            latent,
            position,
            dict(zip(self.state_names, state, strict=True)),
        )
        return (audio, *[new[n] for n in self.state_names])
