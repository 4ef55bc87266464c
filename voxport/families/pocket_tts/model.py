"""Pocket TTS (Kyutai's latent autoregressive TTS) as a voxport family.

Loads either layout (see layouts.py) into voxport's own Kyutai-named modules, names the three graphs
an edge runtime runs, and owns the synthesis loop (loop.py) over them.
"""

from __future__ import annotations

import copy
import json
import weakref
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import yaml
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
from voxport.families.checkpoint import PICKLE_SUFFIXES, find_weights_file, load_tensors
from voxport.families.layouts.onnx import OnnxLayout
from voxport.families.pocket_tts import layouts
from voxport.families.pocket_tts.config import PocketConfig, infer_config
from voxport.families.pocket_tts.frontend import (
    POCKET_CHUNK_TOKENS,
    TOKENIZER_FILES,
    Tokenizer,
    frames_after_eos_for,
    prepare_text,
)
from voxport.families.pocket_tts.graphs import BackboneGraph, CodecGraph, FlowHeadGraph
from voxport.families.pocket_tts.loop import (
    DEFAULT_FRAMES_AFTER_EOS,
    Generation,
    LoopSettings,
    LoopSpec,
    VoiceState,
    generate,
    stream,
    voice_state,
)
from voxport.families.pocket_tts.modules import PocketModules, codec_state_shapes
from voxport.families.pocket_tts.settings import PocketSettings
from voxport.families.pocket_tts.voice import load_voice
from voxport.io import atomic_write_bytes, atomic_write_json

MARKER = "voxport.json"
CONFIG_FILE = "config.yaml"
FAMILY = "pocket_tts"
#: Kyutai tensors a release may carry that inference never reads
IGNORED_PREFIXES = ("flow_lm.latent_stats", "flow_lm.loss_weighting")


class PocketTTSAdapter(FamilyModel):
    family: ClassVar[str] = FAMILY
    #: `stream` options the runtime API (`voxport.load`) turns on; see `stream`
    runtime_options: ClassVar[dict[str, bool]] = {"voice_cache": True, "codec_thread": True}

    def __init__(
        self, modules: PocketModules, *, source: str, tokenizer_files: Mapping[str, bytes], layout: str
    ) -> None:
        self.modules = modules.eval()
        self.cfg = modules.cfg
        self.source = source
        self.tokenizer_files = dict(tokenizer_files)
        self.layout = layout
        self._voices: dict[str, np.ndarray] = {}
        self._voice_states: weakref.WeakKeyDictionary[Runner, dict[str, VoiceState]] = (
            weakref.WeakKeyDictionary()
        )
        #: frames kept after end of speech for ids that came from text (Kyutai: more for short text)
        self._after_eos: dict[tuple[int, ...], int] = {}

    # --- description ---------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "layout": self.layout,
            **self.cfg.describe(),
            "vocab_size": self.cfg.n_bins + 1,
            "voice_encoder": self.modules.mimi.has_encoder,
            "tokenizer": next((n for n in TOKENIZER_FILES if n in self.tokenizer_files), None),
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.modules.state_dict().items()}

    def quantizable(self) -> set[str]:
        """Linear weights the graphs run: backbone, flow head, codec transformer. The embedding table,
        the voice encoder and the SEANet/resampling convolutions stay float (llama.cpp keeps the
        convolutions F16 too: ggml's conv_1d has no quantized path)."""
        out = set()
        for name, module in self.modules.named_modules():
            if isinstance(module, nn.Linear) and name.startswith(("flow_lm.", "mimi.decoder_transformer.")):
                out.add(f"{name}.weight")
        return out

    @cached_property
    def loop_spec(self) -> LoopSpec:
        c = self.cfg
        return LoopSpec(
            num_layers=c.num_layers,
            kv_heads=c.num_kv_heads,
            head_dim=c.head_dim,
            latent_dim=c.latent_dim,
            condition_dim=c.condition_dim,
            sample_rate=c.sample_rate,
            frame_rate=c.frame_rate,
            frame_size=c.frame_size,
            codec_steps=c.codec_steps,
            insert_bos_before_voice=c.insert_bos_before_voice,
            temperature=c.temperature,
            eos_threshold=c.eos_threshold,
            codec_state=codec_state_shapes(self.modules.mimi),
        )

    # --- transformations -------------------------------------------------------------------------
    def prunable_stacks(self) -> list[PrunableStack]:
        return [PrunableStack("backbone", self.cfg.num_layers, "transformer layers of the flow LM backbone")]

    def pruned(self, stack: str, drop: Sequence[int]) -> PocketTTSAdapter:
        keep = kept_layers(self, stack, drop)
        raw = copy.deepcopy(self.cfg.raw)
        raw["flow_lm"]["transformer"]["num_layers"] = len(keep)
        modules = copy.deepcopy(self.modules)
        layers = modules.flow_lm.transformer.layers
        modules.flow_lm.transformer.layers = nn.ModuleList([layers[i] for i in keep])
        modules.cfg = PocketConfig(raw)
        return self._like(modules)

    def with_weights(self, weights: Mapping[str, torch.Tensor]) -> PocketTTSAdapter:
        modules = copy.deepcopy(self.modules)
        modules.load_state_dict({k: v.to(torch.float32) for k, v in weights.items()}, strict=True)
        return self._like(modules)

    def _like(self, modules: PocketModules) -> PocketTTSAdapter:
        return PocketTTSAdapter(
            modules, source=self.source, tokenizer_files=self.tokenizer_files, layout=self.layout
        )

    # --- graphs ------------------------------------------------------------------------------------
    def graphs(self) -> list[GraphSpec]:
        c, spec = self.cfg, self.loop_spec
        layers = range(c.num_layers)
        past_names = [f"past_{kv}_{i}" for i in layers for kv in ("key", "value")]
        present_names = [f"present_{kv}_{i}" for i in layers for kv in ("key", "value")]
        seq, past = 2, 3  # traced with past >= 2 and seq >= 2 so no axis is specialised to 1
        meta = {
            "sample_rate": str(c.sample_rate),
            "pocket_tts": spec.to_json(),
            "pocket_tts_text": json.dumps(c.text_options, sort_keys=True),
            "pocket_tts_bins": str(c.n_bins),
        }
        backbone = GraphSpec(
            name="backbone",
            module=BackboneGraph(self.modules),
            input_names=["token_ids", "latents", "kind", "position", *past_names],
            output_names=["hidden", "eos_logit", *present_names],
            example_inputs=(
                torch.tensor([[5, 7]], dtype=torch.int64),
                torch.randn(1, seq, c.latent_dim, generator=torch.Generator().manual_seed(0)),
                torch.tensor([[0, 2]], dtype=torch.int64),
                torch.tensor([past], dtype=torch.int64),
                *[torch.zeros(1, c.num_kv_heads, past, c.head_dim) for _ in past_names],
            ),
            dynamic_axes={
                "token_ids": {1: "seq"},
                "latents": {1: "seq"},
                "kind": {1: "seq"},
                "hidden": {1: "seq"},
                "eos_logit": {1: "seq"},
                **{n: {2: "past"} for n in past_names},
                **{n: {2: "total"} for n in present_names},
            },
            metadata=meta,
            primary=True,
            state=dict(zip(present_names, past_names, strict=True)),
        )
        flow = GraphSpec(
            name="flow_head",
            module=FlowHeadGraph(self.modules, steps=1),
            input_names=["condition", "noise"],
            output_names=["latent"],
            example_inputs=(torch.zeros(1, c.condition_dim), torch.zeros(1, c.latent_dim)),
            dynamic_axes={},
            metadata=meta,
        )
        codec_module = CodecGraph(self.modules)
        state_in = [f"st_{n}" for n in codec_module.state_names]
        codec = GraphSpec(
            name="codec",
            module=codec_module,
            input_names=["latent", "position", *state_in],
            output_names=["audio", *[f"{n}_out" for n in state_in]],
            example_inputs=(
                torch.zeros(1, 1, c.latent_dim),
                torch.tensor([16], dtype=torch.int64),
                *[torch.zeros(s) for s in spec.codec_state.values()],
            ),
            dynamic_axes={},
            metadata=meta,
            state={f"{n}_out": n for n in state_in},
        )
        return [backbone, flow, codec]

    def bounded_graphs(self, capacity: int) -> list[GraphSpec]:
        """Core ML's graphs: `backbone_cache` (a fixed KV cache of `capacity` positions, written at
        `position`) instead of the growing-cache `backbone`; flow head and codec as they are."""
        from voxport.families.pocket_tts.bounded import bounded_graphs

        return bounded_graphs(self.graphs(), capacity)

    def kv_graphs(self) -> list[GraphSpec]:
        """ONNX Runtime's in-place form: `backbone_kv` (a preallocated KV cache written in place by
        `OrtBindingRunner`, see kvcache.py) instead of `backbone`; flow head and codec as they are."""
        from voxport.families.pocket_tts.kvcache import kv_graphs

        return kv_graphs(self.graphs())

    def embedded_metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"config_yaml": yaml.safe_dump(self.cfg.raw, sort_keys=True)}
        for name, data in self.tokenizer_files.items():
            meta[f"tokenizer.{name}"] = data
        return meta

    def gguf_layout(self) -> Any:
        """llama.cpp's pockettts layout (text model + mmproj), the GGUF runtime for this family;
        configs it cannot hold are refused at export with the reason (see gguf.py)."""
        from voxport.families.pocket_tts.gguf import PocketGgufLayout

        return PocketGgufLayout(self)

    def write_sidecars(self, primary: Path) -> dict[str, Path]:
        """The tokenizer beside the artifact, so `voxport say` on it can read text."""
        out = {}
        for name, data in self.tokenizer_files.items():
            path = primary.with_name(f"{primary.name.split('.')[0]}.{name}")
            atomic_write_bytes(path, data)
            out["tokenizer"] = path
        return out

    def runtime_layouts(self, format_name: str) -> list[OnnxLayout]:
        """ONNX: sherpa-onnx's Pocket TTS layout (see sherpa.py), since sherpa-onnx is a runtime users
        already ship; one object per model, so its graphs are traced once for every precision."""
        return [self._sherpa_layout] if format_name == "onnx" else []

    @cached_property
    def _sherpa_layout(self) -> OnnxLayout:
        from voxport.families.pocket_tts.sherpa import sherpa_layout

        return sherpa_layout(self)

    # --- text and voice ------------------------------------------------------------------------------
    @cached_property
    def tokenizer(self) -> Tokenizer | None:
        for name in TOKENIZER_FILES:
            if name in self.tokenizer_files:
                return Tokenizer(name, self.tokenizer_files[name], self.cfg.n_bins, source=self.source)
        return None

    def text_to_ids(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise BadInput(
                f"{self.source}: no tokenizer.model or tokenizer.json beside the weights; give input ids "
                "instead (recipe validate.ids, or --ids)"
            )
        ids = self.tokenizer.encode(prepare_text(text, self.cfg.text_options))
        self._after_eos[tuple(ids)] = frames_after_eos_for(text)
        if not ids:
            raise BadInput(f"text {text!r} maps to no tokens")
        return ids

    def text_pieces(self, text: str) -> list[list[int]]:
        """Kyutai's chunking: sentences packed into chunks of at most 50 tokens, each spoken on its own
        (with its own frames-after-EOS rule), so no prompt grows with the text."""
        return pieces.text_pieces(text, self.text_to_ids, POCKET_CHUNK_TOKENS, group=True)

    def id_pieces(self, ids: Sequence[int]) -> list[list[int]]:
        return pieces.id_pieces(ids, POCKET_CHUNK_TOKENS)

    def voice_latents(self, voice: str | None) -> np.ndarray | None:
        """Voice prompt latents (frames, 32) from a WAV file (encoded by the checkpoint's codec
        encoder) or a `.npy` of latents; None without a voice."""
        if voice is None:
            return None
        if voice not in self._voices:
            self._voices[voice] = load_voice(voice, self)
        return self._voices[voice]

    # --- synthesis ----------------------------------------------------------------------------------
    def loop_settings(self, settings: SynthesisSettings, ids: Sequence[int] = ()) -> LoopSettings:
        """Settings default to the model's: its temperature, and frames after end of speech by the
        length of the text the ids came from (Kyutai's rule), else 2."""
        settings = PocketSettings.of(settings)
        after = settings.frames_after_eos
        if after is None:
            after = self._after_eos.get(tuple(int(i) for i in ids), DEFAULT_FRAMES_AFTER_EOS)
        return LoopSettings(
            seed=settings.seed,
            temperature=self.cfg.temperature if settings.temperature is None else settings.temperature,
            max_frames=settings.max_frames,
            frames_after_eos=after,
        )

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        return check_ids(ids, self.cfg.n_bins + 1)  # n_bins + 1 rows: Kyutai's LUT has a padding row

    def synthesize(
        self,
        runner: Runner,
        ids: Sequence[int],
        settings: SynthesisSettings,
        *,
        forced: Synthesis | None = None,
    ) -> Synthesis:
        forced_latents = None if forced is None else forced.tensors["latent"]
        run = generate(
            runner,
            self.loop_spec,
            self._check_ids(ids),
            self.loop_settings(settings, ids),
            voice=self.voice_latents(PocketSettings.of(settings).voice),
            forced_latents=forced_latents,
        )
        return _synthesis(run, self.sample_rate)

    def stream(
        self,
        runner: Runner,
        ids: Sequence[int],
        settings: SynthesisSettings,
        *,
        voice_cache: bool = False,
        codec_thread: bool = False,
    ) -> Iterator[np.ndarray]:
        """Audio frame by frame. Both options are off by default so the frames concatenate to exactly
        `synthesize`'s audio (parity's path: full prefill, codec inline); a runtime turns them on.
        `voice_cache`: the voice prompt's keys/values are computed once per voice and runner and
        reused, so a call prefills only its text (the same audio up to float rounding: bit-identical
        in ONNX Runtime, ~120 dB in torch, whose matmuls round differently over fewer rows).
        `codec_thread`: decode each frame in a second thread while the next one is generated (the
        same samples either way; faster only where a second core is free)."""
        voice_name = PocketSettings.of(settings).voice
        voice = self.voice_latents(voice_name)
        cached = None
        if voice is not None and voice_cache and voice_name is not None:
            cached = self.voice_state(runner, voice_name, voice)
        return stream(
            runner,
            self.loop_spec,
            self._check_ids(ids),
            self.loop_settings(settings, ids),
            voice=None if cached is not None else voice,
            voice_cache=cached,
            codec_thread=codec_thread,
        )

    def voice_state(self, runner: Runner, name: str, voice: np.ndarray) -> VoiceState:
        """The voice prompt's keys/values on `runner`, computed on first use and kept while the
        runner lives (a runner's numerics differ, so the state is per runner)."""
        per_runner = self._voice_states.setdefault(runner, {})
        if name not in per_runner:
            per_runner[name] = voice_state(runner, self.loop_spec, voice)
        return per_runner[name]

    def synthesize_primary(
        self, runner: Runner, ids: Sequence[int], settings: SynthesisSettings
    ) -> Synthesis:
        """Noise off (temperature 0), free-running: the greedy output a user gets without sampling."""
        greedy = PocketSettings.of(settings).model_copy(update={"temperature": 0.0})
        return self.synthesize(runner, ids, greedy)

    # --- persistence -------------------------------------------------------------------------------
    def save(self, out_dir: Path) -> None:
        """Kyutai's layout: `model.safetensors` (flow_lm.*, mimi.*), its YAML, the tokenizer."""
        from safetensors.torch import save

        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(out_dir / "model.safetensors", save(tensors, metadata={"format": "pt"}))
        atomic_write_bytes(out_dir / CONFIG_FILE, yaml.safe_dump(self.cfg.raw, sort_keys=False).encode())
        for name, data in self.tokenizer_files.items():
            atomic_write_bytes(out_dir / name, data)
        atomic_write_json(
            out_dir / MARKER, {"family": self.family, "layout": "kyutai", "source": self.source}
        )


def _synthesis(run: Generation, sample_rate: int) -> Synthesis:
    return Synthesis(
        audio=run.audio,
        sample_rate=sample_rate,
        durations=np.array([len(run.latents)], dtype=np.int64),
        graph_outputs={
            "backbone": {
                "prompt_hidden": run.prompt_hidden,
                "hidden": run.hidden,
                "eos_logit": run.eos_logits,
            },
            "flow_head": {"latent": run.latents},
            "codec": {"audio": run.audio},
        },
        tensors={"hidden": run.hidden, "latent": run.latents},
    )


def _config_for(directory: Path, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The Kyutai YAML beside the weights (config.yaml, or the only *.yaml), else shapes."""
    candidates = (
        [directory / CONFIG_FILE] if (directory / CONFIG_FILE).is_file() else sorted(directory.glob("*.yaml"))
    )
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise BadInput(f"{directory}: several YAML configs ({names}); keep the model's one as {CONFIG_FILE}")
    if not candidates:
        return infer_config(tensors)
    try:
        data = yaml.safe_load(candidates[0].read_text())
    except yaml.YAMLError as exc:
        raise BadInput(f"{candidates[0]}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or "flow_lm" not in data or "mimi" not in data:
        raise BadInput(f"{candidates[0]}: not a Pocket TTS config (needs flow_lm: and mimi: sections)")
    return data


def build_modules(raw: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], source: str) -> PocketModules:
    cfg = PocketConfig(raw)
    with_encoder = "mimi.encoder.model.0.conv.weight" in tensors
    modules = PocketModules(cfg, with_encoder=with_encoder)
    tensors = {k: v for k, v in tensors.items() if not k.startswith(IGNORED_PREFIXES)}
    expected = modules.state_dict()
    if "flow_lm.speaker_proj_weight" not in tensors:  # released without voice cloning
        tensors = {**tensors, "flow_lm.speaker_proj_weight": expected["flow_lm.speaker_proj_weight"]}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:4])}{' …' if len(unexpected) > 4 else ''}")
        raise BadInput(f"{source}: weights do not match the config ({'; '.join(parts)})")
    wrong = [k for k, v in tensors.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise BadInput(
            f"{source}: {k} has shape {tuple(tensors[k].shape)}, "
            f"the config implies {tuple(expected[k].shape)}"
        )
    modules.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=True)
    return modules.eval()


def load_checkpoint(path: Path, *, trust_pickle: bool = False) -> PocketTTSAdapter:
    """Kyutai's layout (model.safetensors + its YAML) or transformers' (config.json + audio_tokenizer/)."""
    directory = path if path.is_dir() else path.parent
    tokenizer_files = {n: (directory / n).read_bytes() for n in TOKENIZER_FILES if (directory / n).is_file()}
    if (directory / "config.json").is_file():
        return _load_transformers(directory, tokenizer_files)
    weights = find_weights_file(directory) if path.is_dir() else path
    if weights.suffix.lower() in PICKLE_SUFFIXES and not trust_pickle:
        load_tensors(weights, trust_pickle=False)  # raises the pickle-policy error
    tensors = load_tensors(weights, trust_pickle=trust_pickle)
    raw = _config_for(directory, tensors)
    modules = build_modules(raw, tensors, str(weights))
    adapter = PocketTTSAdapter(modules, source=str(path), tokenizer_files=tokenizer_files, layout="kyutai")
    return _tokenizer_checked(adapter)


def _load_transformers(directory: Path, tokenizer_files: Mapping[str, bytes]) -> PocketTTSAdapter:
    codec_dir = directory / "audio_tokenizer"
    if not (codec_dir / "config.json").is_file():
        raise BadInput(
            f"{directory}: a transformers Pocket TTS model needs its audio tokenizer (the codec) as "
            f"{codec_dir.name}/ with config.json and model.safetensors"
        )
    model_cfg = json.loads((directory / "config.json").read_text())
    codec_cfg = json.loads((codec_dir / "config.json").read_text())
    raw = layouts.config_from_transformers(model_cfg, codec_cfg)
    cfg = PocketConfig(raw)
    model_tensors = load_tensors(find_weights_file(directory))
    codec_tensors = load_tensors(find_weights_file(codec_dir))
    names = set(PocketModules(cfg, with_encoder=True).state_dict())
    tensors = layouts.flow_lm_from_transformers(
        model_tensors,
        heads=cfg.num_heads,
        kv_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        n_bins=cfg.n_bins,
    )
    tensors.update(
        layouts.mimi_from_transformers(
            codec_tensors,
            names,
            heads=cfg.decoder_transformer.num_heads,
            head_dim=cfg.decoder_transformer.head_dim,
        )
    )
    modules = build_modules(raw, tensors, str(directory))
    adapter = PocketTTSAdapter(
        modules, source=str(directory), tokenizer_files=tokenizer_files, layout="transformers"
    )
    return _tokenizer_checked(adapter)


def _tokenizer_checked(adapter: PocketTTSAdapter) -> PocketTTSAdapter:
    """Parse the tokenizer file once at load (`convert` loads here): a corrupt one is a one-line error
    naming the checkpoint before any artifact exists, instead of a sentencepiece traceback from the
    sherpa-onnx sidecar after the fp32 graphs were written. Cheap: one protobuf parse."""
    _ = adapter.tokenizer  # the cached property parses the file and raises BadInput
    return adapter
