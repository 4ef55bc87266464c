"""Voxtral TTS (Mistral's latent-audio TTS) as a voxport family model.

Loads Mistral's consolidated layout (params.json, consolidated.safetensors, tekken.json,
voice_embedding/) into the modules of modules.py, names the graphs an edge runtime runs (graphs.py)
and owns the synthesis loop (loop.py) over them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from voxport import pieces
from voxport.errors import BadInput
from voxport.families.base import (
    FamilyModel,
    GraphSpec,
    PrunableStack,
    Runner,
    Synthesis,
    SynthesisSettings,
    check_ids,
    kept_layers,
)
from voxport.families.voxtral_tts.checkpoint import PARAMS as PARAMS_NAME
from voxport.families.voxtral_tts.checkpoint import fold_tensors, unfold_tensors
from voxport.families.voxtral_tts.config import VoxtralConfig
from voxport.families.voxtral_tts.graphs import (
    BackboneCacheGraph,
    BackboneGraph,
    CodecGraph,
    HeadGraph,
)
from voxport.families.voxtral_tts.loop import (
    Generation,
    LoopSettings,
    LoopSpec,
    generate,
    stream,
)
from voxport.families.voxtral_tts.modules import VoxtralModules
from voxport.families.voxtral_tts.settings import VoxtralSettings
from voxport.families.voxtral_tts.voices import pick_voice

FAMILY = "voxtral_tts"
#: text tokens per piece `say` synthesizes at once (the prompt, and so the KV cache, follows it)
CHUNK_TOKENS = 120


class VoxtralAdapter(FamilyModel):
    family: ClassVar[str] = FAMILY

    def __init__(
        self,
        modules: VoxtralModules,
        *,
        tekken: bytes,
        voices: Mapping[str, np.ndarray],
        source: str,
    ) -> None:
        self.modules = modules.eval()
        self.tekken = tekken
        self.voices = dict(voices)
        self.source = source

    @property
    def cfg(self) -> VoxtralConfig:
        return self.modules.config

    @property
    def sample_rate(self) -> int:
        return self.cfg.codec.sample_rate

    def describe(self) -> dict[str, Any]:
        b, h, c = self.cfg.backbone, self.cfg.head, self.cfg.codec
        return {
            "family": FAMILY,
            "vocab_size": b.vocab_size,
            "backbone": {"dim": b.dim, "layers": b.n_layers, "heads": b.n_heads, "kv_heads": b.n_kv_heads},
            "acoustic_head": {"dim": h.dim, "layers": h.n_layers, "euler_steps": 7, "cfg_alpha": 1.2},
            "codec": {"dim": c.dim, "stages": list(c.transformer_lengths), "windows": c.windows()},
            "sample_rate": self.sample_rate,
            "frame_rate": c.frame_rate,
            "voices": sorted(self.voices),
            "parameters": self.parameters(),
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.modules.state_dict().items()}

    def quantizable(self) -> set[str]:
        """The Linear weights of the backbone, the head and the codec transformer, plus the codec's
        convolutions. Left float: the two embedding tables (a row gather; a dequantizing gather of
        the 131,072-row text table would expand it whole on every call in ONNX Runtime), the VQ
        codebook, and `time_projection`, whose input is a constant: converters fold it with the
        float weight, so quantizing it would change nothing but the file's claim."""
        out = set()
        for name, module in self.modules.named_modules():
            if isinstance(module, nn.Linear) and not name.endswith("time_projection"):
                out.add(f"{name}.weight")
        for name in self.state_dict():
            if name.endswith("conv.weight"):
                out.add(name)
        return out

    @cached_property
    def loop_spec(self) -> LoopSpec:
        c = self.cfg
        special = self.prompt.special_ids
        return LoopSpec(
            num_layers=c.backbone.n_layers,
            kv_heads=c.backbone.n_kv_heads,
            head_dim=c.backbone.head_dim,
            dim=c.backbone.dim,
            vocab_size=c.backbone.vocab_size,
            n_codes=1 + c.n_acoustic,
            n_acoustic=c.n_acoustic,
            sample_rate=c.codec.sample_rate,
            frame_rate=c.codec.frame_rate,
            frame_size=c.codec.frame_size,
            bos_id=special.bos,
            audio_id=special.audio,
            begin_audio_id=special.begin_audio,
            text_to_audio_id=special.text_to_audio,
            audio_to_text_id=special.audio_to_text,
            codec_state=self.modules.audio_tokenizer.state_shapes(),
        )

    # --- transformations -----------------------------------------------------------------------------
    def prunable_stacks(self) -> list[PrunableStack]:
        return [
            PrunableStack("backbone", self.cfg.backbone.n_layers, "decoder layers of the Mistral backbone")
        ]

    def pruned(self, stack: str, drop: Sequence[int]) -> VoxtralAdapter:
        keep = kept_layers(self, stack, drop)
        raw = copy.deepcopy(self.cfg.raw)
        raw["n_layers"] = len(keep)
        modules = VoxtralModules(VoxtralConfig(raw))
        state = self.state_dict()
        renamed = {}
        for name, value in state.items():
            if name.startswith("layers."):
                index, rest = name.split(".", 2)[1:]
                if int(index) in keep:
                    renamed[f"layers.{keep.index(int(index))}.{rest}"] = value
            else:
                renamed[name] = value
        modules.load_state_dict(renamed, strict=True)
        return self._like(modules)

    def with_weights(self, weights: Mapping[str, torch.Tensor]) -> VoxtralAdapter:
        modules = copy.deepcopy(self.modules)
        modules.load_state_dict({k: v.to(torch.float32) for k, v in weights.items()}, strict=True)
        return self._like(modules)

    def _like(self, modules: VoxtralModules) -> VoxtralAdapter:
        return VoxtralAdapter(modules, tekken=self.tekken, voices=self.voices, source=self.source)

    # --- graphs ----------------------------------------------------------------------------------------
    def graphs(self) -> list[GraphSpec]:
        c, spec = self.cfg, self.loop_spec
        b = c.backbone
        past_names = [f"past_{kv}_{i}" for i in range(b.n_layers) for kv in ("key", "value")]
        present_names = [f"present_{kv}_{i}" for i in range(b.n_layers) for kv in ("key", "value")]
        seq, past = 3, 2  # traced with seq >= 2 and past >= 2 so no axis is specialised to 1
        g = torch.Generator().manual_seed(0)
        meta = {"sample_rate": str(self.sample_rate), FAMILY: spec.to_json()}
        backbone = GraphSpec(
            name="backbone",
            module=BackboneGraph(self.modules),
            input_names=["token_ids", "audio_codes", "voice", "kind", "position", *past_names],
            output_names=["hidden", *present_names],
            example_inputs=(
                torch.tensor([[5, 7, 9]], dtype=torch.int64),
                torch.full((1, seq, spec.n_codes), 3, dtype=torch.int64),
                torch.randn(1, seq, b.dim, generator=g),
                torch.tensor([[0, 1, 2]], dtype=torch.int64),
                torch.tensor([past], dtype=torch.int64),
                *[torch.randn(1, b.n_kv_heads, past, b.head_dim, generator=g) for _ in past_names],
            ),
            dynamic_axes={
                "token_ids": {1: "seq"},
                "audio_codes": {1: "seq"},
                "voice": {1: "seq"},
                "kind": {1: "seq"},
                "hidden": {1: "seq"},
                **{n: {2: "past"} for n in past_names},
                **{n: {2: "total"} for n in present_names},
            },
            metadata=meta,
            primary=True,
            state=dict(zip(present_names, past_names, strict=True)),
        )
        head = GraphSpec(
            name="acoustic_head",
            module=HeadGraph(self.modules),
            input_names=["hidden", "noise"],
            output_names=["semantic", "acoustic", "codes"],
            example_inputs=(torch.randn(1, b.dim, generator=g), torch.randn(1, c.n_acoustic, generator=g)),
            dynamic_axes={},
            metadata=meta,
            discrete_outputs=frozenset({"semantic", "codes"}),
        )
        codec_module = CodecGraph(self.modules)
        state_in = [f"st_{n}" for n in codec_module.state_names]
        codec = GraphSpec(
            name="codec",
            module=codec_module,
            input_names=["codes", "position", *state_in],
            output_names=["audio", *[f"{n}_out" for n in state_in]],
            example_inputs=(
                torch.full((1, spec.n_codes), 5, dtype=torch.int64),
                torch.tensor([4], dtype=torch.int64),
                *[torch.randn(s, generator=g) for s in spec.codec_state.values()],
            ),
            dynamic_axes={},
            metadata=meta,
            state={f"{n}_out": n for n in state_in},
        )
        return [backbone, head, codec]

    def bounded_graphs(self, capacity: int) -> list[GraphSpec]:
        """Core ML's graphs: `backbone_cache` (per-layer caches of `capacity` positions written at
        `position`) instead of the growing-cache `backbone`; head and codec as they are."""
        graphs = self.graphs()
        backbone = graphs[0]
        b = self.cfg.backbone
        needed = int(backbone.example_inputs[4][0]) + int(backbone.example_inputs[0].shape[1])
        if capacity < needed:
            raise BadInput(f"export.coreml.kv_capacity {capacity} is below the {needed} traced positions")
        names_in = [f"{kv}_cache_{i}" for i in range(b.n_layers) for kv in ("key", "value")]
        names_out = [f"{n}_out" for n in names_in]
        g = torch.Generator().manual_seed(1)
        caches = [torch.randn(1, b.n_kv_heads, capacity, b.head_dim, generator=g) for _ in names_in]
        bounded = GraphSpec(
            name="backbone_cache",
            module=BackboneCacheGraph(self.modules),
            input_names=[*backbone.input_names[:5], *names_in],
            output_names=["hidden", *names_out],
            example_inputs=(*backbone.example_inputs[:5], *caches),
            dynamic_axes={
                n: backbone.dynamic_axes[n] for n in ("token_ids", "audio_codes", "voice", "kind", "hidden")
            },
            metadata={**backbone.metadata, "voxtral_tts_kv_capacity": str(capacity)},
            primary=True,
            state=dict(zip(names_out, names_in, strict=True)),
        )
        return [bounded, *graphs[1:]]

    def embedded_metadata(self) -> dict[str, Any]:
        return {"params_json": json.dumps(self.cfg.raw, sort_keys=True), "tokenizer.tekken_json": self.tekken}

    def gguf_layout(self) -> Any:
        """llama.cpp's `llama` names for the backbone's text model, voxport's names for the rest
        (gguf.py)."""
        from voxport.families.voxtral_tts.gguf import VoxtralGgufLayout

        return VoxtralGgufLayout(self.cfg, self.tekken)

    def write_sidecars(self, primary: Path) -> dict[str, Path]:
        """The tokenizer and the voice presets beside the artifact, so `voxport say` on it speaks text."""
        from voxport.families.voxtral_tts.voices import write_voices
        from voxport.io import atomic_write_bytes

        stem = primary.name.split(".")[0]
        tokenizer = primary.with_name(f"{stem}.tekken.json")
        atomic_write_bytes(tokenizer, self.tekken)
        voices = primary.with_name(f"{stem}.voices.npz")
        write_voices(voices, self.voices)
        return {"tokenizer": tokenizer, "voices": voices}

    # --- text and voice ------------------------------------------------------------------------------
    @cached_property
    def prompt(self) -> Any:
        from voxport.families.voxtral_tts.frontend import SpeechPrompt

        return SpeechPrompt.from_bytes(self.tekken, self.source)

    def text_to_ids(self, text: str) -> list[int]:
        """The Tekken ids of `text` alone: the loop adds the speech prompt's specials and the voice."""
        return list(self.prompt.text_ids(text))

    def text_pieces(self, text: str) -> list[list[int]]:
        return pieces.text_pieces(text, self.text_to_ids, CHUNK_TOKENS, group=True)

    def id_pieces(self, ids: Sequence[int]) -> list[list[int]]:
        return pieces.id_pieces(ids, CHUNK_TOKENS)

    def voice_rows(self, voice: str | None) -> np.ndarray:
        return pick_voice(voice, self.voices, dim=self.cfg.backbone.dim)

    # --- synthesis -------------------------------------------------------------------------------------
    def loop_settings(self, settings: SynthesisSettings) -> LoopSettings:
        s = VoxtralSettings.of(settings)
        return LoopSettings(seed=s.seed, noise_scale=s.noise_scale, max_frames=s.max_frames)

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        return check_ids(ids, self.cfg.backbone.vocab_size)

    def synthesize(
        self,
        runner: Runner,
        ids: Sequence[int],
        settings: SynthesisSettings,
        *,
        forced: Synthesis | None = None,
    ) -> Synthesis:
        run = generate(
            runner,
            self.loop_spec,
            self._check_ids(ids),
            self.voice_rows(VoxtralSettings.of(settings).voice),
            self.loop_settings(settings),
            forced=None
            if forced is None
            else (forced.tensors["codes"].astype(np.int64), len(forced.tensors["hidden"])),
        )
        return synthesis_of(run, self.sample_rate)

    def stream(self, runner: Runner, ids: Sequence[int], settings: SynthesisSettings) -> Iterator[np.ndarray]:
        return stream(
            runner,
            self.loop_spec,
            self._check_ids(ids),
            self.voice_rows(VoxtralSettings.of(settings).voice),
            self.loop_settings(settings),
        )

    def synthesize_primary(
        self, runner: Runner, ids: Sequence[int], settings: SynthesisSettings
    ) -> Synthesis:
        """Noise off: the flow integrates from zero, the output a user gets without sampling."""
        return self.synthesize(
            runner, ids, VoxtralSettings.of(settings).model_copy(update={"noise_scale": 0.0})
        )

    # --- persistence -----------------------------------------------------------------------------------
    def save(self, out_dir: Path) -> None:
        """Mistral's layout again (weight norm unfolded, BF16 → here float32), the voices as safetensors
        so reading them back needs no pickle; `voxport.json` last."""
        from safetensors.torch import save

        from voxport.families.voxtral_tts.voices import save_voice_presets
        from voxport.io import atomic_write_bytes, atomic_write_json

        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in unfold_tensors(self.state_dict()).items()}
        atomic_write_bytes(out_dir / "consolidated.safetensors", save(tensors, metadata={"format": "pt"}))
        atomic_write_bytes(out_dir / "params.json", json.dumps(self.cfg.raw, indent=2).encode())
        atomic_write_bytes(out_dir / "tekken.json", self.tekken)
        save_voice_presets(out_dir / "voice_embedding", self.voices)
        atomic_write_json(
            out_dir / "voxport.json", {"family": FAMILY, "layout": "consolidated", "source": self.source}
        )


def synthesis_of(run: Generation, sample_rate: int) -> Synthesis:
    return Synthesis(
        audio=run.audio,
        sample_rate=sample_rate,
        durations=np.array([len(run.codes)], dtype=np.int64),
        graph_outputs={
            "backbone": {"prompt_hidden": run.prompt_hidden, "hidden": run.hidden},
            "acoustic_head": {"acoustic": run.acoustic, "codes": run.codes},
            "codec": {"audio": run.audio},
        },
        tensors={"hidden": run.hidden, "acoustic": run.acoustic, "codes": run.codes.astype(np.float32)},
    )


def build_modules(cfg: VoxtralConfig, tensors: Mapping[str, torch.Tensor], source: str) -> VoxtralModules:
    modules = VoxtralModules(cfg)
    folded = dict(tensors)
    expected = modules.state_dict()
    missing = sorted(set(expected) - set(folded))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise BadInput(f"{source}: tensors missing from the checkpoint: {', '.join(missing[:3])}{more}")
    for name, value in expected.items():
        if tuple(folded[name].shape) != tuple(value.shape):
            raise BadInput(
                f"{source}: {name} has shape {tuple(folded[name].shape)}, "
                f"params.json implies {tuple(value.shape)}"
            )
    modules.load_state_dict({k: folded[k].to(torch.float32) for k in expected}, strict=True)
    return modules


def load_checkpoint(path: Path, *, trust_pickle: bool = False) -> VoxtralAdapter:
    """A consolidated-layout directory (or its consolidated.safetensors): params.json, the weights,
    tekken.json and the voice presets, all required (the model speaks only through a preset)."""
    from voxport.families.voxtral_tts.checkpoint import (
        IGNORED_PREFIXES,
        TEKKEN,
        VOICES,
        WEIGHTS,
        checkpoint_dir,
        read_marker,
        read_params,
        read_tensors,
    )
    from voxport.families.voxtral_tts.voices import read_presets

    directory = checkpoint_dir(path)
    cfg = read_params(directory)
    tensors = read_tensors(directory / WEIGHTS)
    modules = VoxtralModules(cfg)
    expected = set(modules.state_dict())
    folded = fold_tensors(tensors)
    unknown = sorted(n for n in set(folded) - expected if not n.startswith(IGNORED_PREFIXES))
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise BadInput(
            f"{directory / WEIGHTS}: tensors Voxtral TTS does not have: {', '.join(unknown[:3])}{more} "
            "(is params.json the one that came with these weights?)"
        )
    modules = build_modules(cfg, {k: v for k, v in folded.items() if k in expected}, str(directory))
    tekken_file = directory / TEKKEN
    if not tekken_file.is_file():
        raise BadInput(
            f"{directory}: no {TEKKEN} (the Tekken tokenizer the checkpoint ships); "
            f"copy it beside {PARAMS_NAME}"
        )
    voices = read_presets(directory / VOICES, dim=cfg.backbone.dim, trust_pickle=trust_pickle)
    source = str(read_marker(directory).get("source", directory))
    return VoxtralAdapter(modules, tekken=tekken_file.read_bytes(), voices=voices, source=source)
