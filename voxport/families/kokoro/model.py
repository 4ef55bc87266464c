"""Kokoro-82M as a voxport family model: weights, voices, graphs and the synthesis loop.

A checkpoint directory holds `config.json` (Kokoro's config with its phoneme vocabulary),
`model.safetensors` in KModel's layout (weight norm as `weight_g`/`weight_v`, so hexgrad's `KModel`
loads it strictly), `voices.npz` (style presets, kokoro-onnx's format: [510, 1, 256] per voice, one row
per input length) and `voxport.json`. In memory weight norm is folded (`checkpoint.py`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

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
from voxport.families.kokoro.checkpoint import MARKER, fold, unfold
from voxport.families.kokoro.frontend import MAX_PIECE_IDS
from voxport.families.kokoro.graphs import HARMONICS, DecoderGraph, EncoderGraph, TtsGraph
from voxport.families.kokoro.modules import KokoroNet
from voxport.families.kokoro.settings import KokoroSettings
from voxport.io import atomic_write_bytes, atomic_write_json

SAMPLE_RATE = 24_000


class KokoroModel(FamilyModel):
    family: ClassVar[str] = "kokoro"

    def __init__(
        self,
        net: KokoroNet,
        config: dict[str, Any],
        voices: dict[str, np.ndarray],
        *,
        source: str,
        provenance: str = "",
    ) -> None:
        if not voices:
            raise BadInput(f"{source}: a Kokoro checkpoint needs at least one voice (voices.npz)")
        self.net = net.eval()
        self.config = config
        self.voices = voices
        self.source = source
        #: where the weights came from when that changes what "fp32" means (dequantized int8)
        self.provenance = provenance

    # --- description ------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def vocab(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.config["vocab"].items()}

    @property
    def vocab_size(self) -> int:
        return int(self.config["n_token"])

    @property
    def samples_per_frame(self) -> int:
        return int(self.net.decoder.generator.upsample_scale * 2)

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            "family": self.family,
            "sample_rate": SAMPLE_RATE,
            "vocab_size": self.vocab_size,
            "hidden_dim": c["hidden_dim"],
            "style_dim": c["style_dim"],
            "albert_layers": self.net.bert.config.num_hidden_layers,
            "voices": sorted(self.voices),
            "samples_per_frame": self.samples_per_frame,
            **({"provenance": self.provenance} if self.provenance else {}),
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.net.state_dict().items()}

    def quantizable(self) -> set[str]:
        """Linear and convolution kernels, and the LSTMs' input and recurrent matrices (13 % of the
        weights: a 4-bit budget cannot leave them at 16 bits)."""
        names: set[str] = set()
        for prefix, module in self.net.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.ConvTranspose1d)):
                names.add(f"{prefix}.weight")
            elif isinstance(module, nn.LSTM):
                names |= {f"{prefix}.{n}" for n, _ in module.named_parameters() if n.startswith("weight_")}
        return names

    # --- transformations --------------------------------------------------------------------------
    def prunable_stacks(self) -> list[PrunableStack]:
        n = int(self.net.bert.config.num_hidden_layers)
        return [PrunableStack("bert", n, "repetitions of ALBERT's one shared transformer layer")]

    def pruned(self, stack: str, drop: Sequence[int]) -> KokoroModel:
        keep = len(kept_layers(self, stack, drop))
        net = copy.deepcopy(self.net)
        net.bert.config.num_hidden_layers = keep  # the layer is shared: dropping any k is dropping k passes
        config = {**self.config, "plbert": {**self.config["plbert"], "num_hidden_layers": keep}}
        return KokoroModel(net, config, self.voices, source=self.source, provenance=self.provenance)

    def with_weights(self, weights: Mapping[str, torch.Tensor]) -> KokoroModel:
        net = copy.deepcopy(self.net)
        net.load_state_dict({k: v.to(torch.float32) for k, v in weights.items()}, strict=True)
        return KokoroModel(net, self.config, self.voices, source=self.source, provenance=self.provenance)

    # --- graphs -----------------------------------------------------------------------------------
    def _metadata(self) -> dict[str, str]:
        return {
            "sample_rate": str(SAMPLE_RATE),
            "vocab_size": str(self.vocab_size),
            "n_speakers": str(len(self.voices)),
            "samples_per_frame": str(self.samples_per_frame),
        }

    def graphs(self) -> list[GraphSpec]:
        tokens = torch.tensor([[0, 50, 83, 54, 156, 57, 135, 0]], dtype=torch.int64) % self.vocab_size
        t = tokens.shape[1]
        style = torch.zeros(1, 2 * self.net.style_dim)
        speed = torch.ones(1)
        meta = self._metadata()
        d_dim = int(self.config["hidden_dim"]) + self.net.style_dim
        enc = GraphSpec(
            name="encoder",
            module=EncoderGraph(self.net),
            input_names=["tokens", "style", "speed"],
            output_names=["durations", "d", "t_en"],
            example_inputs=(tokens, style, speed),
            dynamic_axes={
                "tokens": {1: "tokens"},
                "durations": {1: "tokens"},
                "d": {1: "tokens"},
                "t_en": {2: "tokens"},
            },
            metadata=meta,
            discrete_outputs=frozenset({"durations"}),
        )
        durations = torch.tensor([[1.0, 2.0, 1.0, 3.0, 1.0, 2.0, 1.0, 1.0]])
        frames = int(durations.sum())
        dec = GraphSpec(
            name="decoder",
            module=DecoderGraph(self.net),
            input_names=["d", "t_en", "durations", "style", "noise"],
            output_names=["audio"],
            example_inputs=(
                torch.zeros(1, t, d_dim),
                torch.zeros(1, int(self.config["hidden_dim"]), t),
                durations,
                style,
                torch.zeros(1, frames, self.samples_per_frame * HARMONICS),
            ),
            dynamic_axes={
                "d": {1: "tokens"},
                "t_en": {2: "tokens"},
                "durations": {1: "tokens"},
                "noise": {1: "frames"},
                "audio": {1: "samples"},
            },
            metadata=meta,
        )
        tts = GraphSpec(
            name="tts",
            module=TtsGraph(self.net),
            input_names=["tokens", "style", "speed"],
            output_names=["audio"],
            example_inputs=(tokens, style, speed),
            dynamic_axes={"tokens": {1: "tokens"}, "audio": {0: "samples"}},
            metadata={**meta, **self._runtime_metadata()},
            primary=True,
            value_dependent_shapes=True,
        )
        return [enc, dec, tts]

    def bounded_graphs(self, capacity: int) -> list[GraphSpec]:
        """The encoder and decoder (tts sizes its audio by predicted durations), the decoder's harmonic
        source resampling without F.interpolate, which Core ML cannot take (see HarmonicSource)."""
        net = _explicit_resample(self.net)
        specs = []
        for spec in self.graphs():
            if spec.value_dependent_shapes:
                continue
            spec.module = type(spec.module)(net)
            specs.append(spec)
        return specs

    def _runtime_metadata(self) -> dict[str, str]:
        """What sherpa-onnx (speakers, style table) and kokoro-onnx (the vocabulary) read from the graph."""
        from voxport.families.kokoro.runtimes import kokoro_onnx_metadata, sherpa_metadata_for

        return {**sherpa_metadata_for(self.voices), **kokoro_onnx_metadata(self.config)}

    def write_sidecars(self, primary: Path) -> dict[str, Path]:
        """The voices (kokoro-onnx's .npz) and sherpa-onnx's tokens.txt and voices.bin beside the graph."""
        from voxport.families.kokoro.runtimes import write_kokoro_onnx_files, write_sherpa_files

        files = dict(write_kokoro_onnx_files(primary, self.voices))
        files.update(write_sherpa_files(primary, self.voices, self.vocab))
        return files

    def embedded_metadata(self) -> dict[str, Any]:
        return {
            "config_json": json.dumps(self.config, sort_keys=True),
            "voices": sorted(self.voices),
            "general.license": "Apache-2.0",
        }

    # --- text ------------------------------------------------------------------------------------
    def text_to_ids(self, text: str) -> list[int]:
        """kokoro-onnx's phonemes (espeak-ng, American English), without Kokoro's 0 pads."""
        from voxport.families.kokoro.frontend import text_to_ids

        ids = text_to_ids(text)
        if not ids:
            raise BadInput(f"text {text!r} has nothing Kokoro can say (no phonemes); give a sentence")
        return ids

    def text_pieces(self, text: str) -> list[list[int]]:
        """Sentences, and a sentence over MAX_PIECE_IDS ids cut by kokoro-onnx's own chunker."""
        from voxport.families.kokoro.frontend import text_pieces

        found = text_pieces(text)
        if not found:
            raise BadInput(f"text {text!r} has nothing Kokoro can say (no phonemes); give a sentence")
        return found

    def id_pieces(self, ids: Sequence[int]) -> list[list[int]]:
        from voxport.families.kokoro.frontend import id_pieces

        return id_pieces(ids, self.vocab)

    # --- synthesis -------------------------------------------------------------------------------
    def style(self, settings: KokoroSettings, n_ids: int) -> np.ndarray:
        """The voice's style row for an input of `n_ids` phonemes (KModel's pipeline: `pack[len - 1]`)."""
        from voxport.families.kokoro.source import pick_voice

        pack = pick_voice(settings.voice, self.voices)
        return np.asarray(pack[min(n_ids, len(pack)) - 1], dtype=np.float32).reshape(1, -1)

    def _tokens(self, ids: Sequence[int]) -> np.ndarray:
        checked = check_ids(ids, self.vocab_size)
        if len(checked) > MAX_PIECE_IDS:
            raise BadInput(
                f"{len(checked)} ids is more than the {MAX_PIECE_IDS} Kokoro takes at once; split the input "
                "(text is split into sentences for you)"
            )
        return np.asarray([[0, *checked, 0]], dtype=np.int64)

    def synthesize(
        self,
        runner: Runner,
        ids: Sequence[int],
        settings: SynthesisSettings,
        *,
        forced: Synthesis | None = None,
    ) -> Synthesis:
        """Encoder, then decoder on the (reference's, when forced) durations, with seeded source noise."""
        settings = KokoroSettings.of(settings)
        tokens = self._tokens(ids)
        style = self.style(settings, tokens.shape[1] - 2)
        speed = np.array([settings.speed], dtype=np.float32)
        enc = runner.run("encoder", {"tokens": tokens, "style": style, "speed": speed})
        durations = enc["durations"].astype(np.float32)
        if forced is not None and forced.durations is not None:
            durations = forced.durations[None].astype(np.float32)
        samples = int(durations.sum()) * self.samples_per_frame
        rng = np.random.default_rng(settings.seed)
        noise = (rng.standard_normal((1, samples, HARMONICS)) * settings.noise_scale).astype(np.float32)
        noise = noise.reshape(1, -1, self.samples_per_frame * HARMONICS)  # the same draw, per frame
        dec = runner.run(
            "decoder",
            {"d": enc["d"], "t_en": enc["t_en"], "durations": durations, "style": style, "noise": noise},
        )
        return Synthesis(
            audio=dec["audio"].reshape(-1).astype(np.float32),
            sample_rate=SAMPLE_RATE,
            durations=np.rint(enc["durations"][0]).astype(np.int64),
            graph_outputs={"encoder": enc, "decoder": dec},
        )

    def synthesize_primary(
        self, runner: Runner, ids: Sequence[int], settings: SynthesisSettings
    ) -> Synthesis:
        settings = KokoroSettings.of(settings)
        tokens = self._tokens(ids)
        out = runner.run(
            "tts",
            {
                "tokens": tokens,
                "style": self.style(settings, tokens.shape[1] - 2),
                "speed": np.array([settings.speed], dtype=np.float32),
            },
        )
        return Synthesis(
            audio=out["audio"].reshape(-1).astype(np.float32),
            sample_rate=SAMPLE_RATE,
            graph_outputs={"tts": out},
        )

    # --- persistence ------------------------------------------------------------------------------
    def save(self, out_dir: Path) -> None:
        """KModel's layout (weight norm unfolded), so the saved weights load into hexgrad's KModel too."""
        import io

        from safetensors.torch import save

        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in unfold(self.state_dict()).items()}
        atomic_write_bytes(out_dir / "model.safetensors", save(tensors, metadata={"format": "pt"}))
        atomic_write_json(out_dir / "config.json", self.config)
        buffer = io.BytesIO()
        tables = {k: np.asarray(v, dtype=np.float32) for k, v in self.voices.items()}
        np.savez(buffer, **tables)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
        atomic_write_bytes(out_dir / "voices.npz", buffer.getvalue())
        marker = {"family": self.family, "layout": "kmodel", "source": self.source}
        if self.provenance:
            marker["provenance"] = self.provenance
        atomic_write_json(out_dir / MARKER, marker)


def _explicit_resample(net: KokoroNet) -> KokoroNet:
    """`net` with its harmonic source set to `explicit_resample`, sharing every weight: only the modules
    on the path to the source are copied (a deep copy would double 330 MB for one flag)."""
    path = ["decoder", "generator", "m_source"]
    top = copy.copy(net)
    parent: nn.Module = top
    for name in path:
        parent._modules = dict(parent._modules)  # the copy's own child table, the original's untouched
        child = copy.copy(parent._modules[name])
        assert child is not None
        parent._modules[name] = child
        parent = child
    setattr(parent, "explicit_resample", True)  # noqa: B010 - a plain attribute, not a submodule
    return top


def build(
    config: dict[str, Any],
    weights: Mapping[str, torch.Tensor],
    voices: dict[str, np.ndarray],
    *,
    source: str,
    provenance: str = "",
) -> KokoroModel:
    """A model from KModel-layout weights (weight_g/weight_v, or already folded), loaded strictly."""
    try:
        net = KokoroNet(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInput(f"{source}: not a Kokoro config ({type(exc).__name__}: {exc})") from None
    folded = fold(weights)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(folded))
    unexpected = sorted(set(folded) - set(expected))
    if missing or unexpected:
        raise BadInput(
            f"{source}: weights do not match Kokoro's layout ({len(missing)} missing, e.g. "
            f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    wrong = [k for k, v in folded.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise BadInput(
            f"{source}: {k} has shape {tuple(folded[k].shape)}, the config gives {tuple(expected[k].shape)}"
        )
    net.load_state_dict({k: v.to(torch.float32) for k, v in folded.items()}, strict=True)
    return KokoroModel(net, config, voices, source=source, provenance=provenance)
