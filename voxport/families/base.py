"""The contract every model architecture implements, and the registry that finds the right one.

Everything architecture-specific lives behind `Family` and `FamilyModel`: the pipeline, exporters
and validator only talk to these interfaces, so adding an architecture means adding one adapter.
The synthesis loop is written once per family against a `Runner`, which is how reference audio and
exported audio come out of the same code with the same explicit noise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from voxport.errors import BadInput


class Runner(Protocol):
    """Calls one named graph with numpy inputs; implemented by torch, ONNX Runtime, ... runners."""

    name: str

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass
class GraphSpec:
    """One graph an edge runtime runs: the torch module that computes it and how to export it."""

    name: str
    module: torch.nn.Module
    input_names: list[str]
    output_names: list[str]
    example_inputs: tuple[torch.Tensor, ...]
    dynamic_axes: dict[str, dict[int, str]]
    #: extra ONNX metadata_props a runtime needs to drive this graph (sample rate, phoneme map, ...)
    metadata: dict[str, str] = field(default_factory=dict)
    #: the graph a user loads on its own (e.g. Piper's one-graph form) is the artifact's primary file
    primary: bool = False
    #: outputs holding decisions (rounded durations, token ids) rather than values: parity reports
    #: their agreement separately, so they are left out of the max-abs-error figure
    discrete_outputs: frozenset[str] = frozenset()
    #: output shapes depend on input *values* (Piper's one graph sizes its audio by the durations it
    #: predicts): formats that need static shape functions (Core ML) export the other graphs only
    value_dependent_shapes: bool = False
    #: recurrent state: output name -> the input it feeds on the next call (an explicit KV cache,
    #: a streaming codec's conv tails); runtimes and benchmarks loop these back
    state: dict[str, str] = field(default_factory=dict)


@dataclass
class SynthesisSettings:
    """Everything that makes a synthesis run reproducible; noise is derived from `seed` explicitly."""

    seed: int = 0
    noise_scale: float = 0.667
    noise_scale_duration: float = 0.8
    length_scale: float = 1.0
    speaker_id: int | None = None
    #: autoregressive families: variance of the sampling noise (None: the model's default)
    temperature: float | None = None
    #: autoregressive families: stop after this many frames (None: the family's length rule)
    max_frames: int | None = None
    #: autoregressive families: frames kept after the end-of-speech frame (None: family default)
    frames_after_eos: int | None = None
    #: voice prompt (a WAV file or saved latents) for families that clone a voice
    voice: str | None = None


@dataclass
class Synthesis:
    """Audio plus the intermediate figures parity needs (durations, per-graph outputs)."""

    audio: np.ndarray
    sample_rate: int
    durations: np.ndarray | None = None
    graph_outputs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    #: per-step tensors whose agreement is a parity metric (`<name>_snr_db`, e.g. the hidden state
    #: and latent of each autoregressive step under teacher forcing)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class PrunableStack:
    """A stack of identical layers that may lose some of its layers."""

    name: str
    num_layers: int
    description: str


class FamilyModel(ABC):
    """A loaded full-precision model of one family: what every stage asks of an architecture."""

    family: ClassVar[str]

    @property
    @abstractmethod
    def sample_rate(self) -> int: ...

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Inference weights, weight-norm folded: the names the recipe globs and manifest use."""

    @abstractmethod
    def quantizable(self) -> set[str]:
        """Names of weights that weight-only quantization may touch (Linear/Conv kernels)."""

    @abstractmethod
    def prunable_stacks(self) -> list[PrunableStack]: ...

    @abstractmethod
    def pruned(self, stack: str, drop: Sequence[int]) -> FamilyModel:
        """A new model without the given layers of `stack`."""

    @abstractmethod
    def with_weights(self, weights: Mapping[str, torch.Tensor]) -> FamilyModel:
        """A copy whose weights are replaced (used to run dequantized weights in torch)."""

    @abstractmethod
    def graphs(self) -> list[GraphSpec]:
        """The graphs an edge runtime runs, ready for export."""

    @abstractmethod
    def text_to_ids(self, text: str) -> list[int]:
        """Text frontend; raises BadInput when the checkpoint has none (use ids instead)."""

    @abstractmethod
    def synthesize(
        self,
        runner: Runner,
        ids: Sequence[int],
        settings: SynthesisSettings,
        *,
        forced: Synthesis | None = None,
    ) -> Synthesis:
        """The synthesis loop over the split graphs, identical for every runner.

        `forced` is the reference's own synthesis to teacher-force with: the runner's graphs get the
        reference's discrete choices (durations, previous latents) so outputs align step by step."""

    def stream(self, runner: Runner, ids: Sequence[int], settings: SynthesisSettings) -> Iterator[np.ndarray]:
        """Audio in the pieces the loop produces them (autoregressive families: one frame at a time);
        families that render whole utterances yield once."""
        yield self.synthesize(runner, ids, settings).audio

    @abstractmethod
    def synthesize_primary(
        self, runner: Runner, ids: Sequence[int], settings: SynthesisSettings
    ) -> Synthesis:
        """Run the primary (user-facing) graph with noise off, for its own parity figure."""

    @abstractmethod
    def save(self, out_dir: Path) -> None:
        """Write a full-precision checkpoint this family's `load` reads back (stage output)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Hyperparameters for `inspect`, the manifest and format metadata."""

    def bounded_graphs(self, capacity: int) -> list[GraphSpec]:
        """Graphs for runtimes that need bounded shapes (Core ML): no value-dependent output sizes,
        and recurrent state that grows (a KV cache) in a fixed-capacity form of `capacity` positions.
        By default, the graphs whose output shapes already follow from their input shapes."""
        return [g for g in self.graphs() if not g.value_dependent_shapes]

    def embedded_metadata(self) -> dict[str, Any]:
        """Key/values a single-file format (GGUF) embeds so the model can be rebuilt and driven from
        the file alone: config, text-frontend files, license. Keys under `general.` are kept as is;
        others are namespaced by the family."""
        return {}

    def gguf_layout(self) -> Any:
        """None: GGUF export writes voxport's own one-file layout (export/gguf/writer.py). A family whose
        models a GGUF runtime already runs under its own names and file split (llama.cpp's pockettts
        text model + mmproj) returns a `voxport.export.gguf.split.GgufLayout` describing that layout,
        so the files load there; the format adapter never needs to know which family it is."""
        return None

    def write_sidecars(self, primary: Path, weights: Mapping[str, Any] | None = None) -> dict[str, Path]:
        """Files a runtime needs beside the primary graph (e.g. a Piper voice config, or graphs in
        another runtime's layout, which get the precision's stored `weights`); none by default."""
        return {}

    def torch_runner(self) -> Runner:
        """The fp32 reference runner over this model's own graph modules."""
        from voxport.validate.runners import TorchRunner

        return TorchRunner(self.graphs())

    def parameters(self) -> int:
        return int(sum(t.numel() for t in self.state_dict().values()))


class Family(ABC):
    """Recognises and loads one architecture's checkpoints."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def recognizes(cls, path: Path) -> bool:
        """Cheap check (config files, tensor names) without loading weights."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path, *, trust_pickle: bool = False) -> FamilyModel: ...

    @classmethod
    def open_artifact(cls, path: Path) -> Any:
        """A `voxport.say.Voice` over an exported artifact (its primary graph in its runtime)."""
        raise BadInput(f"{path}: speaking {cls.name} artifacts directly is not supported yet")


_REGISTRY: dict[str, type[Family]] = {}


def register(family: type[Family]) -> type[Family]:
    _REGISTRY[family.name] = family
    return family


def families() -> dict[str, type[Family]]:
    _load_builtin()
    return dict(_REGISTRY)


def _load_builtin() -> None:
    # Importing the adapters registers them; done lazily so `voxport --help` stays fast.
    import voxport.families.pocket_tts  # noqa: F401
    import voxport.families.vits  # noqa: F401


def detect_family(path: Path, forced: str | None = None) -> type[Family]:
    """The family for a checkpoint, or a BadInput naming what was found and what is supported."""
    known = families()
    if forced is not None:
        if forced not in known:
            raise BadInput(f"unknown family '{forced}' (known: {', '.join(sorted(known))})")
        return known[forced]
    if not path.exists():
        raise BadInput(f"checkpoint not found: {path}")
    for family in known.values():
        if family.recognizes(path):
            return family
    raise BadInput(
        f"{path}: unknown architecture (supported: {', '.join(sorted(known))}); "
        "expected e.g. a transformers VitsModel directory (config.json + model.safetensors), a Piper "
        "voice (.onnx + .onnx.json) or a Kyutai Pocket TTS directory (model.safetensors + its YAML)"
    )


def load_model(path: Path, *, family: str | None = None, trust_pickle: bool = False) -> FamilyModel:
    return detect_family(path, family).load(path, trust_pickle=trust_pickle)
