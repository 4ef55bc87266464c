"""The contract every model architecture implements (the registry that finds one is `families.registry`).

Everything architecture-specific lives behind `Family` and `FamilyModel`: the pipeline, exporters
and validator only talk to these interfaces, so adding an architecture means adding one adapter.
The synthesis loop is written once per family against a `Runner`, which is how reference audio and
exported audio come out of the same code with the same explicit noise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
import torch

from voxport.errors import BadInput
from voxport.families.calibration import CalibrationSet as CalibrationSet
from voxport.families.calibration import WeightInputs as WeightInputs
from voxport.families.layouts.gguf import GgufLayout
from voxport.families.settings import SynthesisSettings as SynthesisSettings
from voxport.runtime.base import Runner as Runner
from voxport.runtime.torch import TorchRunner

if TYPE_CHECKING:
    from voxport.families.layouts.onnx import OnnxLayout


@dataclass
class GraphSpec:
    """One graph an edge runtime runs: the torch module that computes it and how to export it."""

    name: str
    #: holds the family's weights under `model.` (`model.<state_dict name>`): the exporters find a
    #: quantized weight's initializer by that name
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


def check_ids(ids: Sequence[int], vocab_size: int) -> list[int]:
    """`ids` as Python ints in 0..vocab_size - 1, or BadInput naming the first bad one.

    The one check for checkpoints and exported artifacts alike: range-checked before any numpy
    conversion, so a 20-digit id is reported as out of range instead of raising OverflowError, and
    a negative id is refused instead of silently indexing from the end of an ONNX Gather."""
    checked = [int(i) for i in ids]
    if not checked:
        raise BadInput("empty input: give at least one token id")
    for position, token in enumerate(checked):
        if not 0 <= token < vocab_size:
            raise BadInput(
                f"input id {token} (position {position}) is out of range: this voice's ids lie in "
                f"0..{vocab_size - 1}; give ids from its own vocabulary or phoneme map, or text"
            )
    return checked


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
class MetricSpec:
    """A parity metric: its report.json name, which way is better, and how the CLI and report show it.

    The core metrics (SNR, log-mel distance, ...) are declared in `voxport.validate.thresholds`; a
    family adds the per-step tensor figures only it produces (`tensor` names a key of
    `Synthesis.tensors`, and the metric is that tensor's SNR between reference and artifact), so the
    validate layer, the recipe's threshold check and the report never name a family's tensors."""

    name: str
    direction: Literal["min", "max", "band"]
    label: str
    digits: int = 1
    tensor: str | None = None


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

    def text_pieces(self, text: str) -> list[list[int]]:
        """Ids per bounded piece of `text` (sentences, or chunks of them), which `say` synthesizes one
        after another so memory follows the longest piece, not the text. Default: one piece."""
        return [self.text_to_ids(text)]

    def id_pieces(self, ids: Sequence[int]) -> list[list[int]]:
        """A run of ids in bounded pieces (cut at pauses and word boundaries where the family knows
        them); ids that fit one piece stay one piece. Default: one piece."""
        return [list(ids)]

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
        """Write a full-precision checkpoint this family's `load` reads back (stage output), with
        `voxport.json` written last: the convert stage takes its presence to mean a complete checkpoint."""

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

    def declared_metadata(self) -> dict[str, Any]:
        """GGUF `general.*` keys (gguf-py `Keys.General`) that this family's own checkpoint files declare
        (a Piper voice's JSON: license, language, dataset), only where declared, never guessed. The GGUF
        writer also reads the generic sources (`embedded_metadata`'s `general.` keys, model cards);
        none by default."""
        return {}

    def gguf_layout(self) -> GgufLayout | None:
        """None: GGUF export writes voxport's own one-file layout (export/gguf/writer.py). A family whose
        models a GGUF runtime already runs under its own names and file split (llama.cpp's pockettts
        text model + mmproj) returns a `voxport.families.layouts.gguf.GgufLayout` describing that layout,
        so the files load there; the format adapter never needs to know which family it is."""
        return None

    def write_sidecars(self, primary: Path) -> dict[str, Path]:
        """Files a runtime needs beside the primary graph (e.g. a Piper voice config); none by default."""
        return {}

    def runtime_layouts(self, format_name: str) -> list[OnnxLayout]:
        """Other runtimes' layouts of this model in `format_name` (sherpa-onnx's Pocket TTS split), each
        its own artifact with its own parity figure (families/layouts/onnx.py); the names are those
        `Family.layouts` declares. None by default."""
        return []

    def torch_runner(self) -> Runner:
        """The fp32 reference runner over this model's own graph modules."""
        return TorchRunner(self.graphs())

    def calibration_inputs(self, batch: CalibrationSet, names: Sequence[str]) -> Iterator[WeightInputs]:
        """The inputs each named weight sees while this model speaks `batch` (the calibration hook).

        The default records them from the family's own synthesis loop (`families.calibration.record`),
        so a family gets calibrated quantization for free; one whose loop hides weights from
        torch's function dispatch overrides this."""
        from voxport.families.calibration import record

        return record(self, batch, names)

    def parameters(self) -> int:
        return int(sum(t.numel() for t in self.state_dict().values()))


@dataclass(frozen=True)
class StreamSource:
    """A checkpoint converted without ever being held in memory (a 4B model on a phone-sized build
    machine): the family's model over *weightless* parameters (stride-0 placeholders, so `graphs()`
    traces real shapes and ops at no memory cost; `state_dict()` values are placeholders, never data)
    and its weights, read from disk one at a time by `read`. The streaming exporters
    (`voxport.export.stream`) quantize and write each weight before reading the next."""

    model: FamilyModel
    #: one weight by its voxport name, float32, read on each call (nothing cached); `rows` reads only
    #: those rows of dim 0 (a 131,072-row embedding table is converted in pieces that way)
    read: Callable[[str, slice | None], torch.Tensor]
    #: every weight's voxport name and shape, in the order to write them
    shapes: Mapping[str, tuple[int, ...]]
    #: bytes of the checkpoint's weights on disk, and of its largest tensor there (the memory goals)
    checkpoint_bytes: int
    largest_tensor_bytes: int


def kept_layers(model: FamilyModel, stack: str, drop: Sequence[int]) -> list[int]:
    """The indices of `stack` that remain after dropping `drop`: the checks every `pruned` starts with
    (an unknown stack, an index out of range, dropping them all), each a one-line BadInput."""
    stacks = {s.name: s for s in model.prunable_stacks()}
    if stack not in stacks:
        raise BadInput(f"{model.family} has no prunable stack '{stack}' (prunable: {', '.join(stacks)})")
    n = stacks[stack].num_layers
    bad = [i for i in drop if not 0 <= i < n]
    if bad:
        raise BadInput(f"prune {stack}: layer indices {bad} out of range 0..{n - 1}")
    keep = [i for i in range(n) if i not in set(drop)]
    if not keep:
        raise BadInput(f"prune {stack}: cannot drop all {n} layers")
    return keep


class Voice(Protocol):
    """Something that speaks ids: a checkpoint's torch loop or an exported artifact in its runtime
    (what `Family.open_artifact` returns and `voxport say` drives)."""

    sample_rate: int
    #: ids lie in 0..vocab_size - 1
    vocab_size: int
    #: speaker ids lie in 0..num_speakers - 1 (1: a single-speaker voice)
    num_speakers: int

    def text_to_ids(self, text: str) -> list[int]: ...

    def text_pieces(self, text: str) -> list[list[int]]:
        """Ids per bounded piece of `text` (sentences, chunks); one piece for a one-sentence text."""
        ...

    def id_pieces(self, ids: Sequence[int]) -> list[list[int]]:
        """A run of ids in bounded pieces; ids that fit one piece stay one piece."""
        ...

    def speak(self, ids: Sequence[int], settings: SynthesisSettings) -> np.ndarray: ...


class StreamingVoice(Voice, Protocol):
    """A voice that produces audio in pieces (autoregressive families: one frame at a time)."""

    def stream(self, ids: Sequence[int], settings: SynthesisSettings) -> Iterator[np.ndarray]: ...


@dataclass(frozen=True)
class ImportRequest:
    """What `voxport import KIND SOURCE --out DIR [--config FILE] [--voices FILE] [--trust-pickle]` asks
    an importer. `voices`: style presets for models whose speakers are vectors (Kokoro)."""

    source: str
    out_dir: Path
    config: Path | None = None
    trust_pickle: bool = False
    voices: Path | None = None


@dataclass(frozen=True)
class Importer:
    """Brings a checkpoint from another toolchain in as a voxport checkpoint; returns the directory
    written. `help` is the one line `voxport import` lists it with."""

    help: str
    run: Callable[[ImportRequest], Path]
    #: reads `ImportRequest.voices`; `--voices` given to any other importer is refused, not ignored
    takes_voices: bool = False


class Family(ABC):
    """One architecture: recognises and loads its checkpoints, and declares everything the stages,
    the recipe and the CLI need to know about it, so none of them names a family."""

    name: ClassVar[str]
    #: the knobs its synthesis loop honours; `validate:`, `phrases:` and `voxport say` check against it
    settings: ClassVar[type[SynthesisSettings]] = SynthesisSettings
    #: parity metrics only this family produces (per-step tensor SNRs); see MetricSpec
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()
    #: PyPI packages whose versions the manifest records (runtimes this family's artifacts target)
    tool_packages: ClassVar[tuple[str, ...]] = ()
    #: `voxport import KIND ...` converters from other toolchains, by KIND
    importers: ClassVar[Mapping[str, Importer]] = {}
    #: what its checkpoints look like, for "unknown architecture" messages
    checkpoint_hint: ClassVar[str] = ""
    #: names of the runtime layouts its models give per format (`FamilyModel.runtime_layouts`), known
    #: without loading a checkpoint so a cached build enumerates its units without one
    layouts: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    @classmethod
    @abstractmethod
    def recognizes(cls, path: Path) -> bool:
        """Cheap check (config files, tensor names) without loading weights."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path, *, trust_pickle: bool = False) -> FamilyModel: ...

    @classmethod
    def stream_source(cls, path: Path, *, trust_pickle: bool = False) -> StreamSource:
        """The checkpoint at `path` for streaming conversion (see StreamSource), for families whose
        checkpoints outgrow memory."""
        raise BadInput(f"the {cls.name} family has no streaming conversion; build it with `voxport build`")

    @classmethod
    def demo(cls, out_dir: Path, *, seed: int = 0, config: str | None = None) -> Path:
        """Write a small deterministic random-weight checkpoint to `out_dir` (`voxport demo`); `config`
        picks a size or variant where the family has several."""
        raise BadInput(f"the {cls.name} family has no demo checkpoint")

    @classmethod
    def open_artifact(cls, path: Path) -> Voice:
        """A voice over an exported artifact (its primary graph in its runtime)."""
        raise BadInput(f"{path}: speaking {cls.name} artifacts directly is not supported yet")


def check_finite_weights(model: FamilyModel, source: Path) -> None:
    """BadInput naming the tensors that hold NaN or inf values.

    One sum per tensor: NaN and inf propagate into it, and a sum is ~30x faster than `isfinite(t).all()`
    (60 ms vs 1.8 s for 100M floats on one thread). Only a non-finite sum (damage, or an overflow of
    large finite weights) pays for the exact element count."""
    damaged: list[tuple[str, int]] = []
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point() or bool(torch.isfinite(tensor.sum())):
            continue
        count = int((~torch.isfinite(tensor)).sum())
        if count:
            damaged.append((name, count))
    if not damaged:
        return
    (name, count), *others = sorted(damaged)
    also = "".join(f", {n} in {other}" for other, n in others[:3])
    if len(others) > 3:
        also += f" and {len(others) - 3} more tensors"
    raise BadInput(
        f"checkpoint {source} has {count} NaN/inf values in {name}{also}; the checkpoint is damaged "
        "(re-export or re-download it)"
    )
