"""Kyutai's own Pocket TTS classes over voxport's weights: the oracle tests check voxport against and
the baseline benchmarks time (the optional `pocket-tts` package, extra `[pocket]`).

`pocket-tts` ships the model code and every release config but no weights, and its tokenizer loader
downloads from the Hub; callers feed token ids, so the loader is replaced. The state dict loads with
`strict=True`, which is itself the check that voxport's names are Kyutai's release names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import yaml

from voxport.errors import BadInput


def _require() -> None:
    try:
        import pocket_tts  # noqa: F401
    except ImportError:
        message = "Kyutai's classes need the pocket-tts package: pip install 'voxport[pocket]'"
        raise BadInput(message) from None


def release_config(name: str) -> dict[str, Any]:
    """A release YAML shipped inside the `pocket-tts` package (e.g. english_18m_2026-10)."""
    _require()
    from pocket_tts.utils.config import CONFIGS_DIR

    release = CONFIGS_DIR / f"{name}.yaml"
    if not release.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
        raise BadInput(f"no release config {name!r} in pocket-tts (known: {known})")
    return yaml.safe_load(release.read_text())


def kyutai_model(raw: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> Any:
    """Kyutai's `TTSModel` built from a config mapping, holding `state_dict` (strict)."""
    _require()
    import pocket_tts.modules.text_conditioner as tc
    from pocket_tts.models.mimi import build_mimi
    from pocket_tts.models.tts_model import TTSModel, stamp_state_names
    from pocket_tts.utils.config import Config

    def no_tokenizer(nbins: int, path: str, kind: str = "sentencepiece") -> None:
        return None  # ids are fed directly; the real loader downloads from the Hub

    tc.build_tokenizer = no_tokenizer
    cfg = Config(**raw)
    model = TTSModel._from_pydantic_config(
        cfg,
        temp=0.0,
        sampler_decode_steps=1,
        noise_clamp=None,
        eos_threshold=cfg.default_eos_threshold,
        origin=None,
    )
    speaker = state_dict["flow_lm.speaker_proj_weight"]
    model.flow_lm.speaker_proj_weight = torch.nn.Parameter(torch.zeros_like(speaker))
    model.mimi = build_mimi(cfg.mimi)
    model.load_state_dict(dict(state_dict), strict=True)
    model.eval()
    stamp_state_names(model)
    return model
