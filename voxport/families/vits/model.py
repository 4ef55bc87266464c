"""VITS (transformers `VitsModel`, the MMS-TTS layout) as a voxport family."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from transformers import VitsConfig, VitsModel

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
from voxport.families.vits.architecture import (
    TRAINING_ONLY_PREFIXES,
    build_inference_model,
    fold_weight_norm,
    load_exact,
    resblock_variant,
)
from voxport.families.vits.frontend import PIPER_CONFIG, VITS_PIECE_IDS, PiperFrontend
from voxport.families.vits.graphs import (
    DecoderGraph,
    EncoderGraph,
    FlowWindowGraph,
    PiperGraph,
    VocoderWindowGraph,
    window_spec,
)
from voxport.families.vits.loop import frame_noise, run_encoder, stream_audio
from voxport.families.vits.settings import VitsSettings
from voxport.families.vits.streaming import (
    FLOW_GRAPH,
    VOCODER_GRAPH,
    WindowSpec,
    flow_plan,
    vocoder_plan,
)
from voxport.io import atomic_write_bytes, atomic_write_json
from voxport.runtime.base import runs_graph

#: written beside a checkpoint that voxport itself saved (weight-norm folded, inference weights only)
MARKER = "voxport.json"
#: text-frontend files carried through load/save/prune unchanged; piper.json is a Piper voice's .onnx.json,
#: MODEL_CARD a Piper voice package's card (its license goes into GGUF's general.license)
TOKENIZER_FILES = (
    "vocab.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    PIPER_CONFIG,
    "MODEL_CARD",
)


class VitsModelAdapter(FamilyModel):
    family: ClassVar[str] = "vits"

    def __init__(self, model: VitsModel, *, source: str, tokenizer_files: dict[str, bytes]) -> None:
        self.model = model.eval()
        self.source = source
        self.tokenizer_files = tokenizer_files
        self._tokenizer: Any = None
        self._piper: PiperFrontend | None = None

    # --- description -------------------------------------------------------------------------
    @property
    def config(self) -> VitsConfig:
        return self.model.config

    @property
    def sample_rate(self) -> int:
        return int(self.config.sampling_rate)

    @property
    def hop_length(self) -> int:
        return int(np.prod(self.config.upsample_rates))

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            "family": self.family,
            "sample_rate": self.sample_rate,
            "hidden_size": c.hidden_size,
            "text_encoder_layers": c.num_hidden_layers,
            "flow_size": c.flow_size,
            "vocab_size": c.vocab_size,
            "num_speakers": c.num_speakers,
            "hop_length": self.hop_length,
            "stochastic_duration": bool(c.use_stochastic_duration_prediction),
            "resblock": resblock_variant(c),
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.model.state_dict().items()}

    def quantizable(self) -> set[str]:
        return {
            f"{name}.weight"
            for name, module in self.model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.ConvTranspose1d))
        }

    # --- transformations ------------------------------------------------------------------------
    def prunable_stacks(self) -> list[PrunableStack]:
        return [
            PrunableStack(
                "text_encoder",
                self.config.num_hidden_layers,
                "transformer layers of the text encoder (relative-position attention + conv FFN)",
            )
        ]

    def pruned(self, stack: str, drop: Sequence[int]) -> VitsModelAdapter:
        keep = kept_layers(self, stack, drop)
        model = copy.deepcopy(self.model)
        layers = model.text_encoder.encoder.layers
        model.text_encoder.encoder.layers = nn.ModuleList([layers[i] for i in keep])
        model.config.num_hidden_layers = len(keep)
        return VitsModelAdapter(model, source=self.source, tokenizer_files=self.tokenizer_files)

    def with_weights(self, weights: Mapping[str, torch.Tensor]) -> VitsModelAdapter:
        model = copy.deepcopy(self.model)
        model.load_state_dict({k: v.to(torch.float32) for k, v in weights.items()}, strict=True)
        return VitsModelAdapter(model, source=self.source, tokenizer_files=self.tokenizer_files)

    # --- graphs ------------------------------------------------------------------------------------
    def _multi_speaker(self) -> bool:
        return self.config.num_speakers > 1

    def graphs(self) -> list[GraphSpec]:
        c = self.config
        ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]], dtype=torch.int64) % c.vocab_size
        t = ids.shape[1]
        sid = (torch.tensor([0], dtype=torch.int64),) if self._multi_speaker() else ()
        sid_names = ["sid"] if self._multi_speaker() else []
        meta = {
            "sample_rate": str(self.sample_rate),
            "hop_length": str(self.hop_length),
            # what an artifact voice checks ids and speakers against, in every graph's file
            "vocab_size": str(c.vocab_size),
            "n_speakers": str(c.num_speakers),
        }
        enc = GraphSpec(
            name="encoder",
            module=EncoderGraph(self.model),
            input_names=["input_ids", "noise_w", "length_scale", *sid_names],
            output_names=["durations", "m_p", "logs_p"],
            example_inputs=(ids, torch.zeros(1, 2, t), torch.ones(1), *sid),
            dynamic_axes={
                "input_ids": {1: "tokens"},
                "noise_w": {2: "tokens"},
                "durations": {1: "tokens"},
                "m_p": {2: "tokens"},
                "logs_p": {2: "tokens"},
            },
            metadata=meta,
            discrete_outputs=frozenset({"durations"}),
        )
        frames = 12
        dec = GraphSpec(
            name="decoder",
            module=DecoderGraph(self.model),
            input_names=["m_p", "logs_p", "durations", "noise", *sid_names],
            output_names=["waveform"],
            example_inputs=(
                torch.zeros(1, c.flow_size, t),
                torch.zeros(1, c.flow_size, t),
                torch.tensor([[1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0]]),
                torch.zeros(1, c.flow_size, frames),
                *sid,
            ),
            dynamic_axes={
                "m_p": {2: "tokens"},
                "logs_p": {2: "tokens"},
                "durations": {1: "tokens"},
                "noise": {2: "frames"},
                "waveform": {1: "samples"},
            },
            metadata=meta,
        )
        tts = GraphSpec(
            name="tts",
            module=PiperGraph(self.model),
            input_names=["input", "input_lengths", "scales", *sid_names],
            output_names=["output"],
            example_inputs=(
                ids,
                torch.tensor([t], dtype=torch.int64),
                torch.tensor([0.667, 1.0, 0.8], dtype=torch.float32),
                *sid,
            ),
            # Piper's own export: batch dynamic on every per-item input and the output
            dynamic_axes={
                "input": {0: "batch_size", 1: "phonemes"},
                "input_lengths": {0: "batch_size"},
                **({"sid": {0: "batch_size"}} if sid_names else {}),
                "output": {0: "batch_size", 3: "time"},
            },
            metadata={**meta, "model_type": "vits", "n_speakers": str(c.num_speakers), **self._piper_meta()},
            primary=True,
            value_dependent_shapes=True,
        )
        spec = window_spec(self.model)
        window_meta = {**meta, "window_spec": spec.to_json()}
        flow = GraphSpec(
            name=FLOW_GRAPH,
            module=FlowWindowGraph(self.model),
            input_names=["z_p", "crop", *sid_names],
            output_names=["z"],
            example_inputs=(
                torch.zeros(1, c.flow_size, frames),
                torch.tensor(flow_plan(spec, frames, 2, 7).crop, dtype=torch.int64),
                *sid,
            ),
            dynamic_axes={"z_p": {2: "window"}, "z": {2: "frames"}},
            metadata=window_meta,
            value_dependent_shapes=True,  # the frames kept depend on the crop's values
        )
        vocoder = GraphSpec(
            name=VOCODER_GRAPH,
            module=VocoderWindowGraph(self.model),
            input_names=["z", "crops", *sid_names],
            output_names=["waveform"],
            example_inputs=(
                torch.zeros(1, c.flow_size, frames),
                torch.tensor(vocoder_plan(spec, frames, 2, 7).crops, dtype=torch.int64),
                *sid,
            ),
            dynamic_axes={"z": {2: "window"}, "waveform": {1: "samples"}},
            metadata=window_meta,
            value_dependent_shapes=True,
        )
        return [enc, dec, flow, vocoder, tts]

    def _piper_meta(self) -> dict[str, str]:
        """sherpa-onnx's Piper metadata for the tts graph, when this checkpoint is a Piper voice."""
        if PIPER_CONFIG not in self.tokenizer_files:
            return {}
        from voxport.families.vits.piper_files import piper_onnx_metadata

        return piper_onnx_metadata(
            self.piper_frontend().config, sample_rate=self.sample_rate, n_speakers=self.config.num_speakers
        )

    def embedded_metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"config_json": json.dumps(self.config.to_dict(), sort_keys=True, default=str)}
        for name, data in self.tokenizer_files.items():
            meta[f"tokenizer.{name}"] = data.decode("utf-8")
        if PIPER_CONFIG in self.tokenizer_files:
            license_ = json.loads(self.tokenizer_files[PIPER_CONFIG]).get("license")
            if isinstance(license_, str):
                meta["general.license"] = license_
        return meta

    def declared_metadata(self) -> dict[str, Any]:
        """What a Piper voice's JSON says about the voice: license, language code, dataset (its name)."""
        try:
            voice = (
                json.loads(self.tokenizer_files[PIPER_CONFIG]) if PIPER_CONFIG in self.tokenizer_files else {}
            )
        except ValueError:
            return {}
        if not isinstance(voice, dict):
            return {}
        out: dict[str, Any] = {}
        if isinstance(voice.get("license"), str):
            out["general.license"] = voice["license"]
        language = voice.get("language")
        if isinstance(language, dict) and isinstance(language.get("code"), str):
            out["general.languages"] = [language["code"]]
        if isinstance(voice.get("dataset"), str):
            out["general.basename"] = voice["dataset"]
            audio = voice.get("audio")
            quality = audio.get("quality") if isinstance(audio, dict) else None
            out["general.description"] = f"Piper voice {voice['dataset']}" + (
                f" ({quality})" if quality else ""
            )
        return out

    def write_sidecars(self, primary: Path) -> dict[str, Path]:
        """A Piper voice's `.onnx.json` and sherpa-onnx's `tokens.txt`, so Piper and sherpa load it."""
        if PIPER_CONFIG not in self.tokenizer_files:
            return {}
        from voxport.families.vits.piper_files import write_piper_sidecars

        config_path, tokens_path = write_piper_sidecars(
            primary,
            json.loads(self.tokenizer_files[PIPER_CONFIG]),
            sample_rate=self.sample_rate,
            n_speakers=self.config.num_speakers,
        )
        return {"piper-config": config_path, "tokens": tokens_path}

    def piper_frontend(self) -> PiperFrontend:
        """The Piper text frontend of a checkpoint that carries piper.json (BadInput otherwise).

        Public for callers that want Piper's per-sentence ids (`sentence_ids`) rather than one utterance."""
        if PIPER_CONFIG not in self.tokenizer_files:
            raise BadInput(f"{self.source}: not a Piper voice (no {PIPER_CONFIG} in the checkpoint)")
        if self._piper is None:
            self._piper = PiperFrontend.from_bytes(
                self.tokenizer_files[PIPER_CONFIG], source=f"{self.source}: {PIPER_CONFIG}"
            )
        return self._piper

    # --- synthesis ----------------------------------------------------------------------------------
    def text_to_ids(self, text: str) -> list[int]:
        if not text.strip():
            raise BadInput("empty text: give a sentence with at least one letter")
        if PIPER_CONFIG in self.tokenizer_files:
            # Piper's espeak-ng frontend; one utterance (see frontend.py for multi-sentence text)
            return self.piper_frontend().text_to_ids(text)
        if "vocab.json" not in self.tokenizer_files:
            raise BadInput(
                "this checkpoint has no text frontend (no vocab.json or piper.json); give input ids instead "
                "(recipe validate.ids, or --ids)"
            )
        ids = self._tokenizer_instance()(text)["input_ids"]
        if not ids:
            raise BadInput(f"text {text!r} maps to no tokens of this voice's vocabulary")
        return [int(i) for i in ids]

    def text_pieces(self, text: str) -> list[list[int]]:
        """Sentences (a run-on one cut at pauses and words), each at most VITS_PIECE_IDS ids."""
        if PIPER_CONFIG in self.tokenizer_files:
            return self.piper_frontend().sentence_ids(text, VITS_PIECE_IDS)
        return pieces.text_pieces(text, self.text_to_ids, VITS_PIECE_IDS)

    def id_pieces(self, ids: Sequence[int]) -> list[list[int]]:
        if PIPER_CONFIG in self.tokenizer_files:
            pauses, words = self.piper_frontend().boundary_ids()
        else:
            vocab = _json_map(self.tokenizer_files.get("vocab.json"))
            pauses = pieces.symbol_ids(vocab, pieces.PAUSE_SYMBOLS)
            words = pieces.symbol_ids(vocab, pieces.WORD_SYMBOLS)
        return pieces.id_pieces(ids, VITS_PIECE_IDS, pauses=pauses, words=words)

    def _tokenizer_instance(self) -> Any:
        if self._tokenizer is None:
            import tempfile

            from transformers import VitsTokenizer

            with tempfile.TemporaryDirectory() as tmp:
                for name, data in self.tokenizer_files.items():
                    Path(tmp, name).write_bytes(data)
                self._tokenizer = VitsTokenizer.from_pretrained(tmp)
        return self._tokenizer

    def _common_inputs(self, settings: VitsSettings) -> dict[str, np.ndarray]:
        if not self._multi_speaker():
            return {}
        sid = settings.speaker_id or 0
        if not 0 <= sid < self.config.num_speakers:
            raise BadInput(f"speaker id {sid} out of range 0..{self.config.num_speakers - 1}")
        return {"sid": np.array([sid], dtype=np.int64)}

    def _check_ids(self, ids: Sequence[int]) -> np.ndarray:
        return np.asarray(check_ids(ids, self.config.vocab_size), dtype=np.int64)[None, :]

    def synthesize(
        self,
        runner: Runner,
        ids: Sequence[int],
        settings: SynthesisSettings,
        *,
        forced: Synthesis | None = None,
        forced_durations: np.ndarray | None = None,
    ) -> Synthesis:
        """`forced` teacher-forces the reference's durations; `forced_durations` gives any (1, T)."""
        if forced is not None and forced.durations is not None:
            forced_durations = forced.durations[None].astype(np.float32)
        input_ids = self._check_ids(ids)
        settings = VitsSettings.of(settings)
        extra = self._common_inputs(settings)
        enc = run_encoder(runner, input_ids, settings, extra)
        durations = enc["durations"] if forced_durations is None else forced_durations.astype(np.float32)
        noise = frame_noise(np.rint(durations[0]).astype(np.int64), self.config.flow_size, settings)
        dec = runner.run(
            "decoder",
            {
                "m_p": enc["m_p"],
                "logs_p": enc["logs_p"],
                "durations": durations,
                "noise": noise.astype(np.float32),
                **extra,
            },
        )
        return Synthesis(
            audio=dec["waveform"][0].astype(np.float32),
            sample_rate=self.sample_rate,
            durations=np.rint(enc["durations"][0]).astype(np.int64),
            graph_outputs={"encoder": enc, "decoder": dec},
        )

    def stream(
        self,
        runner: Runner,
        ids: Sequence[int],
        settings: SynthesisSettings,
        *,
        chunk_frames: int | None = None,
        continuing: bool = False,
    ) -> Iterator[np.ndarray]:
        """The utterance's audio in chunks of frames, the same samples as `synthesize` (streaming.py):
        chunks double from FIRST_CHUNK_FRAMES up to MAX_CHUNK_FRAMES (`continuing` a text already
        playing: the whole sentence in one window), or are all `chunk_frames` long.
        A runner without the flow and vocoder graphs (an older artifact) yields the whole utterance once."""
        if not (runs_graph(runner, FLOW_GRAPH) and runs_graph(runner, VOCODER_GRAPH)):
            yield self.synthesize(runner, ids, settings).audio
            return
        settings = VitsSettings.of(settings)
        extra = self._common_inputs(settings)
        input_ids = self._check_ids(ids)
        spec = self.window_spec()
        yield from stream_audio(
            runner, input_ids, settings, extra, spec, chunk_frames=chunk_frames, continuing=continuing
        )

    def window_spec(self) -> WindowSpec:
        """How far each decoder stage reaches, for chunked decoding (streaming.py)."""
        return window_spec(self.model)

    def synthesize_primary(
        self, runner: Runner, ids: Sequence[int], settings: SynthesisSettings
    ) -> Synthesis:
        input_ids = self._check_ids(ids)
        settings = VitsSettings.of(settings)
        out = runner.run(
            "tts",
            {
                "input": input_ids,
                "input_lengths": np.array([input_ids.shape[1]], dtype=np.int64),
                "scales": np.array([0.0, settings.length_scale, 0.0], dtype=np.float32),
                **self._common_inputs(settings),
            },
        )
        return Synthesis(
            audio=out["output"].reshape(-1).astype(np.float32),
            sample_rate=self.sample_rate,
            graph_outputs={"tts": out},
        )

    # --- persistence -------------------------------------------------------------------------------
    def save(self, out_dir: Path) -> None:
        from safetensors.torch import save

        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(out_dir / "model.safetensors", save(tensors, metadata={"format": "pt"}))
        atomic_write_json(out_dir / "config.json", self.config.to_dict())
        for name, data in self.tokenizer_files.items():
            atomic_write_bytes(out_dir / name, data)
        atomic_write_json(
            out_dir / MARKER, {"family": self.family, "layout": "folded", "source": self.source}
        )


def _json_map(data: bytes | None) -> dict[str, object]:
    """A tokenizer's vocab.json (symbol -> id), or {} when absent or unreadable (no boundaries known)."""
    try:
        loaded = json.loads(data) if data else {}
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def load_checkpoint(path: Path, *, trust_pickle: bool = False) -> VitsModelAdapter:
    """A transformers VITS directory (or its weights file), voxport's own folded layout, or a Piper
    voice's .onnx (recovered in memory) as a model."""
    if path.suffix == ".onnx":
        return load_piper_onnx(path)
    directory = path if path.is_dir() else path.parent
    weights = find_weights_file(directory) if path.is_dir() else path
    try:
        config = VitsConfig.from_pretrained(str(directory))
    except (OSError, ValueError, TypeError) as exc:
        raise BadInput(f"{directory / 'config.json'}: not a valid VITS config ({exc})") from None
    if weights.suffix.lower() in PICKLE_SUFFIXES and not trust_pickle:
        load_tensors(weights, trust_pickle=False)  # raises the pickle-policy error
    tensors = load_tensors(weights, trust_pickle=trust_pickle)
    try:
        model = build_inference_model(config)
    except ValueError as exc:
        raise BadInput(f"{directory / 'config.json'}: {exc}") from None
    tensors = {k: v for k, v in tensors.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    if (directory / MARKER).is_file():
        fold_weight_norm(model)  # voxport's own layout stores the folded weights
        load_exact(model, tensors, str(weights), "weights do not match config.json")
    else:
        load_exact(model, _rename_weight_norm(tensors), str(weights), "weights do not match config.json")
        fold_weight_norm(model)
    tokenizer_files = {n: (directory / n).read_bytes() for n in TOKENIZER_FILES if (directory / n).is_file()}
    return VitsModelAdapter(model, source=str(path), tokenizer_files=tokenizer_files)


def _rename_weight_norm(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old checkpoints (MMS on the hub) store weight norm as weight_g/weight_v."""
    out = {}
    for name, tensor in tensors.items():
        if name.endswith(".weight_g"):
            name = name[: -len(".weight_g")] + ".parametrizations.weight.original0"
        elif name.endswith(".weight_v"):
            name = name[: -len(".weight_v")] + ".parametrizations.weight.original1"
        out[name] = tensor
    return out


def load_piper_onnx(onnx_path: Path, config_path: Path | None = None) -> VitsModelAdapter:
    """A Piper voice as an in-memory VITS model (no files written): lets a recipe name a voice's .onnx."""
    from voxport.families.vits.piper_import import _read_voice_json, build_model, read_piper_onnx

    onnx_path = Path(onnx_path)
    config_path = Path(config_path) if config_path else onnx_path.with_name(onnx_path.name + ".json")
    voice_bytes, voice = _read_voice_json(config_path)
    model = build_model(read_piper_onnx(onnx_path), voice, onnx_path)
    files = {"piper.json": voice_bytes}
    card = onnx_path.with_name("MODEL_CARD")
    if card.is_file():
        files["MODEL_CARD"] = card.read_bytes()
    return VitsModelAdapter(model, source=f"piper-onnx:{onnx_path}", tokenizer_files=files)
