"""sglang-omni's Voxtral TTS modules (installed without its dependencies by `make setup`), the reference
voxport's Voxtral TTS is checked against.

`sglang_omni.models.voxtral_tts/__init__.py` imports the serving pipeline (sglang's scheduler, the
stage configs), which voxport does not install: the package is registered here as a bare namespace so
that its plain torch modules import without running that `__init__`:

- `acoustic_transformer` (the flow-matching head; needs `sglang_omni.models.weight_loader`, which
  needs only torch, transformers and huggingface_hub),
- `audio_tokenizer` (the codec's decoder; torch and einops),
- `voxtral_tts_audio_generation` (the backbone, for `interleave_qk_weight`; torch only).

`sglang_omni/__init__.py` and `sglang_omni/models/__init__.py` are light (lazy exports, empty) and run
as usual."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
import types
from typing import Any

_PACKAGE = "sglang_omni.models.voxtral_tts"


def _module(name: str) -> Any:
    if _PACKAGE not in sys.modules:
        importlib.import_module("sglang_omni.models")
        spec = importlib.util.find_spec("sglang_omni.models")
        assert spec is not None and spec.submodule_search_locations, (
            "make setup installs sglang-omni==0.1.9 (--no-deps)"
        )
        package = types.ModuleType(_PACKAGE)
        package.__path__ = [f"{p}/voxtral_tts" for p in spec.submodule_search_locations]
        sys.modules[_PACKAGE] = package
    return importlib.import_module(f"{_PACKAGE}.{name}")


_acoustic = _module("acoustic_transformer")
_codec = _module("audio_tokenizer")
_backbone = _module("voxtral_tts_audio_generation")

FlowMatchingAudioTransformer: Any = _acoustic.FlowMatchingAudioTransformer
AudioSpecialTokens: Any = _acoustic.AudioSpecialTokens
VoxtralTTSAudioTokenizer: Any = _codec.VoxtralTTSAudioTokenizer
interleave_qk_weight: Any = _backbone.interleave_qk_weight


def reference_head(params: dict[str, Any]) -> Any:
    """FlowMatchingAudioTransformer from a params.json dict (its constructor pops keys from the dict it
    is given, hence the copy), in eval mode."""
    audio_model_args = copy.deepcopy(params["multimodal"]["audio_model_args"])
    return FlowMatchingAudioTransformer(audio_model_args).eval()


def reference_codec(params: dict[str, Any]) -> Any:
    """VoxtralTTSAudioTokenizer (decoder only) built as sglang-omni's `load_audio_tokenizer` builds it:
    `audio_tokenizer_args` without the `voice` table, and the head's args as `audio_config` (unused by
    the constructor, passed for fidelity)."""
    mm = params["multimodal"]
    tokenizer_args = {k: v for k, v in copy.deepcopy(mm["audio_tokenizer_args"]).items() if k != "voice"}
    audio_config = {
        "audio_model_args": copy.deepcopy(mm["audio_model_args"].get("acoustic_transformer_args", {}))
    }
    return VoxtralTTSAudioTokenizer(audio_tokenizer_args=tokenizer_args, audio_config=audio_config).eval()
