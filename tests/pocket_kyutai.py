"""Kyutai's own Pocket TTS classes (PyPI `pocket-tts`, a dev dependency) as the oracle for voxport.

`kyutai_model(raw, state_dict)` (voxport/families/pocket_tts/kyutai.py, shared with the benchmark)
builds Kyutai's TTSModel from a config mapping with voxport's weights loaded strictly;
`kyutai_generate` runs Kyutai's own loop over it with voxport's recorded noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from voxport.families.pocket_tts.kyutai import kyutai_model, release_config

__all__ = ["kyutai_generate", "kyutai_model", "release_config"]


@torch.no_grad()
def kyutai_generate(
    model: Any, ids: list[int], frames: int, voice: np.ndarray | None = None, noise: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Kyutai's own prefill + autoregressive loop + streaming Mimi decode for exactly `frames` frames
    (latents, audio with Kyutai's 5 ms fade-in). `noise` (frames, 32) replaces Kyutai's sampler draws
    for the generated frames (its prefills draw too; those values are discarded, so zeros serve)."""
    from pocket_tts.modules.stateful_module import increment_steps, init_states

    queue = [] if noise is None else [torch.from_numpy(n.reshape(1, -1)) for n in noise]
    original = torch.nn.init.normal_

    def recorded(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
        if queue and tensor.shape == queue[0].shape and recorded.generating:
            return tensor.copy_(queue.pop(0))
        return tensor.zero_()

    recorded.generating = False  # type: ignore[attr-defined]
    torch.nn.init.normal_ = recorded
    try:
        flow = model.flow_lm
        state = init_states(flow, batch_size=1, sequence_length=len(ids) + frames + 400)
        if voice is not None:
            prompt = torch.nn.functional.linear(torch.from_numpy(voice)[None], flow.speaker_proj_weight)
            if flow.insert_bos_before_voice:
                prompt = torch.cat([flow.bos_before_voice, prompt], dim=1)
            model._run_flow_lm_and_increment_step(model_state=state, audio_conditioning=prompt)
        model._run_flow_lm_and_increment_step(model_state=state, text_tokens=torch.tensor([ids]))
        recorded.generating = True  # type: ignore[attr-defined]
        x = torch.full((1, 1, flow.ldim), float("nan"))
        latents = []
        for _ in range(frames):
            x, _eos = model._run_flow_lm_and_increment_step(model_state=state, backbone_input_latents=x)
            latents.append(x[0, 0])
    finally:
        torch.nn.init.normal_ = original
    lat = torch.stack(latents)
    mimi_state = init_states(model.mimi, batch_size=1, sequence_length=16 * frames + 16)
    audio = []
    for f in range(frames):
        a = model.mimi.decode_from_latent(lat[f : f + 1][None] * flow.emb_std + flow.emb_mean, mimi_state)
        increment_steps(model.mimi, mimi_state, increment=16)
        audio.append(a.reshape(-1))
    wave = torch.cat(audio).numpy()
    wave[:120] *= np.linspace(0, 1, 120, dtype=np.float32)
    return lat.numpy(), wave
