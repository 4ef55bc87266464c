"""The contract every model architecture implements, and the registry that finds the right one.

Everything architecture-specific lives behind `Family` and `FamilyModel`: the pipeline, exporters
and validator only talk to these interfaces, so adding an architecture means adding one adapter.
The synthesis loop is written once per family against a `Runner`, which is how reference audio and
exported audio come out of the same code with the same explicit noise.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch

from voxport.errors import BadInput
from voxport.runtime.base import Runner
from voxport.runtime.torch import TorchRunner

if TYPE_CHECKING:
    from voxport.families.layouts.onnx import OnnxLayout


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

    def __post_init__(self) -> None:
        """Refuse settings no voice can honour, before any runtime sees them: NaN reaches ONNX Runtime
        as a traceback, and a length scale of 1e5 asks the vocoder for gigabytes of audio."""
        for name, value, low, high in (
            ("noise scale", self.noise_scale, 0.0, MAX_NOISE_SCALE),
            ("duration noise (noise_w)", self.noise_scale_duration, 0.0, MAX_NOISE_SCALE),
            ("temperature", self.temperature, 0.0, MAX_TEMPERATURE),
        ):
            if value is not None and not (math.isfinite(value) and low <= value <= high):
                raise BadInput(f"{name} must be a number in [{low:g}, {high:g}] (0 = no noise), got {value}")
        ls = self.length_scale
        if not (math.isfinite(ls) and 0 < ls <= MAX_LENGTH_SCALE):
            raise BadInput(
                f"length scale must be in (0, {MAX_LENGTH_SCALE:g}] (1 = the voice's own pace, 2 = twice "
                f"as slow), got {ls}"
            )
        if self.max_frames is not None and not 1 <= self.max_frames <= MAX_FRAMES:
            raise BadInput(f"max frames must be in 1..{MAX_FRAMES}, got {self.max_frames}")
        if self.frames_after_eos is not None and not 0 <= self.frames_after_eos <= MAX_FRAMES:
            raise BadInput(
                f"frames after end of speech must be in 0..{MAX_FRAMES}, got {self.frames_after_eos}"
            )
        if self.seed < 0:
            raise BadInput(f"seed must be >= 0, got {self.seed}")
        if self.speaker_id is not None and self.speaker_id < 0:
            raise BadInput(f"speaker id must be >= 0, got {self.speaker_id}")


#: Upper bound of `length_scale`. It multiplies every predicted duration: Piper voices ship 0.8-1.2,
#: 2 is already a drawl, and 10 (ten times slower than trained) is far past intelligible speech. Beyond
#: that the only effect is memory: audio, and the vocoder's activations with it, grow linearly (1e5 asked
#: a tiny voice for a 3.7 GB allocation).
MAX_LENGTH_SCALE = 10.0
#: Upper bound of VITS's noise scales. Voices ship defaults under 1 (Piper 0.667 and 0.8), and the
#: duration noise (noise_w) goes through exp() into the durations: on the demo voice 2 already triples
#: the length of a sentence, 3 made it 7x longer and 10 asked for 137M frames (a 32.7 GiB array).
MAX_NOISE_SCALE = 2.0
#: Upper bound of an autoregressive model's sampling temperature (the variance of its flow noise;
#: Kyutai's default is 0.7). It does not change lengths, so the bound is only "still a variance a model
#: could have been trained near": at 5 the audio is noise.
MAX_TEMPERATURE = 5.0
#: Upper bound of `max_frames` per synthesis piece: an autoregressive model's KV cache and its
#: attention grow with every frame. 20,000 frames is 26 minutes at Pocket TTS's 12.5 Hz, where Kyutai's
#: own length rule for a 50-token chunk stops after ~230.
MAX_FRAMES = 20_000


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
class CalibrationSet:
    """What a calibrated quantization method runs the model on: token ids per sentence, and the
    settings (seed, noise) that make the run reproducible."""

    ids: tuple[tuple[int, ...], ...]
    settings: SynthesisSettings


@dataclass(frozen=True)
class WeightInputs:
    """The activations one quantizable weight saw during calibration, in the weight's own 2-D view.

    `x` is (n, cols) float32 with columns aligned to the axis quantization blocks run along
    (`reduction_axis` 1: Linear and Conv1d, unfolded as in_channels*kernel; 0: ConvTranspose1d, whose
    rows are the input channels), which is what GPTQ's Hessian (XᵀX) and AWQ's per-column |x| need."""

    name: str
    x: np.ndarray
    reduction_axis: Literal[0, 1]


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


class Family(ABC):
    """Recognises and loads one architecture's checkpoints."""

    name: ClassVar[str]
    #: parity metrics only this family produces (per-step tensor SNRs); see MetricSpec
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()
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
    """A checkpoint as its family's model, refused if any weight is NaN or infinite.

    Every stage (convert, `say`, `inspect`) loads through here, so a damaged checkpoint is stopped before
    anything is written, with the tensor's name, instead of surfacing as NaN audio at parity time."""
    model = detect_family(path, family).load(path, trust_pickle=trust_pickle)
    check_finite_weights(model, path)
    return model


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
