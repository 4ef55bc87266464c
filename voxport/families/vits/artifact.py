"""Speaking with an exported VITS artifact in ONNX Runtime.

An artifact voxport exported has its split graphs beside the primary one-graph file
(`<name>.<p>.encoder.onnx`, `.flow.onnx`, `.vocoder.onnx`): the voice then speaks through them, in
chunks within a sentence (streaming.py), with the same explicit, seeded noise as the checkpoint. A
file alone (a Piper voice, or an artifact copied without its siblings) speaks through its one graph,
Piper's interface, one whole sentence at a time.

Text goes through the same frontend as the checkpoint: the Piper voice config written beside the
artifact (`<name>.onnx.json`) when there is one; otherwise the caller gives ids. The artifact checks
its inputs as the checkpoint does (`check_ids` against the vocabulary its own graph embeds, the
speaker against its `n_speakers`), so a bad id is one clear error and not an ONNX Runtime traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from voxport.errors import BadInput
from voxport.families.base import Runner, SynthesisSettings, check_ids
from voxport.families.vits.frontend import VITS_PIECE_IDS, PiperFrontend
from voxport.families.vits.loop import stream_audio, whole_audio
from voxport.families.vits.settings import VitsSettings
from voxport.families.vits.streaming import FLOW_GRAPH, VOCODER_GRAPH, WindowSpec
from voxport.pieces import id_pieces
from voxport.runtime.ort import OrtRunner, graph_metadata, ort_session

#: the graph input that carries the token ids (Piper's interface)
IDS_INPUT = "input"
#: ops that pass an embedding table through unchanged in shape[0] (quantized and cast tables)
_TABLE_OPS = {"DequantizeLinear", "Cast", "Identity"}


class _PiperVoice:
    """What both artifact voices share: Piper's text frontend (when its config was found) and the
    checks of ids and speaker against the artifact's own vocabulary and speaker count."""

    path: Path
    frontend: PiperFrontend | None
    vocab_size: int
    num_speakers: int
    #: what to say when text is given but no Piper config was found
    missing_frontend: ClassVar[str]

    def _text_frontend(self) -> PiperFrontend:
        if self.frontend is None:
            raise BadInput(f"{self.path}: {self.missing_frontend}; give ids with --ids")
        return self.frontend

    def text_to_ids(self, text: str) -> list[int]:
        return self._text_frontend().text_to_ids(text)

    def text_pieces(self, text: str) -> list[list[int]]:
        return self._text_frontend().sentence_ids(text, VITS_PIECE_IDS)

    def id_pieces(self, ids: Sequence[int]) -> list[list[int]]:
        pauses, words = self.frontend.boundary_ids() if self.frontend is not None else ((), ())
        return id_pieces(ids, VITS_PIECE_IDS, pauses=pauses, words=words)

    def _checked(
        self, ids: Sequence[int], settings: SynthesisSettings
    ) -> tuple[list[int], VitsSettings, dict[str, np.ndarray]]:
        """The ids, the settings as VITS's, and the graphs' speaker input (none for one speaker)."""
        checked = check_ids(ids, self.vocab_size)
        vits = VitsSettings.of(settings)
        speaker = vits.speaker_id or 0
        if not 0 <= speaker < self.num_speakers:
            raise BadInput(f"speaker id {speaker} out of range 0..{self.num_speakers - 1}")
        extra = {"sid": np.asarray([speaker], np.int64)} if self.num_speakers > 1 else {}
        return checked, vits, extra


class VitsArtifactVoice(_PiperVoice):
    missing_frontend = "no text frontend beside this artifact"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.session = ort_session(path)
        meta = graph_metadata(self.session, path, "tts")
        self.sample_rate = int(meta.get("sample_rate", 22050))
        self.num_speakers = int(meta.get("n_speakers", 1))
        sidecar = path.with_name(path.name + ".json")
        self.frontend = (
            PiperFrontend.from_bytes(sidecar.read_bytes(), source=str(sidecar)) if sidecar.is_file() else None
        )
        self.vocab_size = embedding_rows(path) or self._vocab_from_frontend()
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.split = split_graphs(path)
        self.window = (
            WindowSpec.from_json(
                self.split.sessions[FLOW_GRAPH].get_modelmeta().custom_metadata_map["window_spec"]
            )
            if self.split is not None
            else None
        )
        #: chunks within a sentence (the split graphs are here), or one piece per sentence
        self.chunked = self.split is not None

    def _vocab_from_frontend(self) -> int:
        """The Piper config's `num_symbols`, for a graph whose embedding table could not be traced."""
        if self.frontend is None:
            raise BadInput(
                f"{self.path}: cannot tell this graph's vocabulary size (no embedding table feeding "
                f"'{IDS_INPUT}' and no {self.path.name}.json beside it); re-export it with voxport"
            )
        return int(self.frontend.config["num_symbols"])

    def stream(
        self,
        ids: Sequence[int],
        settings: SynthesisSettings,
        *,
        chunk_frames: int | None = None,
        continuing: bool = False,
    ) -> Iterator[np.ndarray]:
        """Audio chunk by chunk through the split graphs; without them, the one graph's whole sentence."""
        checked, vits, extra = self._checked(ids, settings)
        if self.split is None or self.window is None:
            yield self._one_graph(checked, vits)
            return
        feed = np.asarray([checked], dtype=np.int64)
        yield from stream_audio(
            self.split, feed, vits, extra, self.window, chunk_frames=chunk_frames, continuing=continuing
        )

    def speak(self, ids: Sequence[int], settings: SynthesisSettings) -> np.ndarray:
        """The whole utterance: the stream's chunks joined (the same samples as one window)."""
        return np.concatenate(list(self.stream(ids, settings)))

    def _one_graph(self, checked: list[int], settings: VitsSettings) -> np.ndarray:
        speaker = settings.speaker_id or 0
        feed = {
            IDS_INPUT: np.asarray([checked], dtype=np.int64),
            "input_lengths": np.asarray([len(checked)], dtype=np.int64),
            "scales": np.asarray(
                [settings.noise_scale, settings.length_scale, settings.noise_scale_duration], dtype=np.float32
            ),
        }
        if "sid" in self.inputs:
            feed["sid"] = np.asarray([speaker], dtype=np.int64)
        (audio,) = self.session.run(["output"], feed)
        return audio.reshape(-1).astype(np.float32)


#: the split graphs a streaming voice runs, beside the primary `<name>.<p>.onnx`
SPLIT_GRAPHS = ("encoder", FLOW_GRAPH, VOCODER_GRAPH)


def split_graphs(primary: Path) -> OrtRunner | None:
    """ONNX Runtime over the split graphs exported beside `primary`, or None when any is missing."""
    files = {g: primary.with_name(f"{primary.stem}.{g}.onnx") for g in SPLIT_GRAPHS}
    if not all(f.is_file() for f in files.values()):
        return None
    return OrtRunner(files)


def embedding_rows(path: Path) -> int | None:
    """Rows of the embedding table the graph gathers the ids from: the artifact's vocabulary size.

    Follows the table back through dequantize/cast nodes to its initializer (an int8/int4 artifact
    stores the quantized table); None when the graph has no such table (a foreign export)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    gather = next((n for n in graph.node if n.op_type == "Gather" and n.input[1] == IDS_INPUT), None)
    name = gather.input[0] if gather is not None else None
    while name is not None and name not in initializers:
        node = producers.get(name)
        name = node.input[0] if node is not None and node.op_type in _TABLE_OPS else None
    return int(initializers[name].dims[0]) if name is not None else None


class VitsCoremlVoice(_PiperVoice):
    """A Core ML artifact (`<name>.<p>.encoder.mlpackage` + `.decoder.mlpackage`) speaking through a
    Core ML runner: Core ML itself on macOS (`runtime.coreml.predict_runner`), or the MIL interpreter
    where a test wants the same code without a Mac. One whole sentence per chunk: Core ML's graphs
    need shapes that do not depend on input values, so the windowed graphs are not exported there.

    Text needs the Piper voice config, which the build writes beside its ONNX artifact
    (`../onnx/<name>.<p>.onnx.json`); without it, give ids."""

    chunked = False
    missing_frontend = "no Piper voice config in the build's onnx/ folder"

    def __init__(self, path: Path, runner_for: Callable[[Mapping[str, Path]], Runner]) -> None:
        from voxport.runtime.coreml import package_metadata, sibling_packages

        self.path = path
        files = sibling_packages(path, ("encoder", "decoder"))
        meta = package_metadata(files["encoder"])
        if "vocab_size" not in meta:
            raise BadInput(
                f"{path}: exported by an older voxport (no vocab_size in its metadata); re-export it"
            )
        self.sample_rate = int(meta["sample_rate"])
        self.vocab_size = int(meta["vocab_size"])
        self.num_speakers = int(meta.get("n_speakers", "1"))
        stem = files["encoder"].name[: -len(".encoder.mlpackage")]
        sidecar = path.parent.parent / "onnx" / f"{stem}.onnx.json"
        self.frontend = (
            PiperFrontend.from_bytes(sidecar.read_bytes(), source=str(sidecar)) if sidecar.is_file() else None
        )
        self.runner = runner_for(files)

    def speak(self, ids: Sequence[int], settings: SynthesisSettings) -> np.ndarray:
        checked, vits, extra = self._checked(ids, settings)
        return whole_audio(self.runner, np.asarray([checked], np.int64), vits, extra)
