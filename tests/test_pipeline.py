"""The whole pipeline on the tiny VITS checkpoint: recipe in, artifacts + manifest + report out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from voxport import pipeline
from voxport.errors import BadInput
from voxport.export.registry import formats, get_format
from voxport.families import SynthesisSettings, load_model
from voxport.io import sha256_file
from voxport.manifest import read_manifest, verify_files
from voxport.recipe import Recipe
from voxport.runtime.ort import OrtRunner

TEXTS = ["hello world, this is voxport.", "small models can still sound like big ones."]


def make_recipe(model_dir: Path, **overrides: object) -> Recipe:
    data: dict[str, object] = {
        "name": "tiny",
        "model": str(model_dir),
        "formats": ["onnx"],
        "precisions": ["fp32", "int8", "int4"],
        "quantize": {"method": "rtn", "overrides": {"decoder.conv_post*": "fp16"}},
        "validate": {"texts": TEXTS, "thresholds": {"forced_snr_db": 3, "logmel_dtw_db": 15}},
    }
    data.update(overrides)
    return Recipe.from_mapping(data, model_dir)


@pytest.fixture(scope="module")
def built(tiny_vits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Recipe]:
    out = tmp_path_factory.mktemp("build")
    recipe = make_recipe(tiny_vits_dir)
    pipeline.build(recipe, out)
    return out, recipe


def test_manifest_lists_every_artifact_with_hashes_and_parity(built: tuple[Path, Recipe]) -> None:
    out, _ = built
    manifest = read_manifest(out)
    assert manifest.passed
    assert manifest.model.family == "vits"
    assert manifest.model.parameters > 400_000
    assert [a.precision for a in manifest.artifacts] == ["fp32", "int8", "int4"]
    assert verify_files(out, manifest) == []
    for artifact in manifest.artifacts:
        assert artifact.sha256 == sha256_file(out / artifact.path)
        assert {f.graph for f in artifact.files} == {"encoder", "decoder", "flow", "vocoder", "tts"}
        for key in ("snr_db", "logmel_dtw_db", "mcd_db", "duration_match", "length_ratio"):
            assert key in artifact.parity.metrics
    bits = {a.precision: a.bits_per_weight for a in manifest.artifacts}
    assert bits["fp32"] == pytest.approx(32.0, abs=0.01)
    assert 8 < bits["int8"] < 10 and 4 < bits["int4"] < bits["int8"]
    # conv_post was kept at fp16 by the recipe's override, so it is listed as skipped with the reason
    skipped = {s["name"]: s for s in manifest.artifacts[2].skipped_weights}
    assert "override" in skipped["decoder.conv_post.weight"]["reason"]


def test_parity_figures_are_real_and_ordered(built: tuple[Path, Recipe]) -> None:
    out, _ = built
    metrics = {a.precision: a.parity.metrics for a in read_manifest(out).artifacts}
    # fp32 ONNX reproduces the torch reference; quantization costs SNR, int4 more than int8
    assert metrics["fp32"]["forced_snr_db"] > 60
    assert metrics["fp32"]["duration_match"] == 1.0
    assert metrics["fp32"]["logmel_dtw_db"] < 0.1
    assert (
        metrics["fp32"]["forced_snr_db"] > metrics["int8"]["forced_snr_db"] > metrics["int4"]["forced_snr_db"]
    )
    assert metrics["int8"]["forced_snr_db"] > 15


def test_report_has_per_sentence_and_per_graph_figures(built: tuple[Path, Recipe]) -> None:
    out, _ = built
    report = json.loads((out / "report.json").read_text())
    assert len(report["artifacts"]) == 3
    sentences = report["artifacts"][1]["sentences"]
    assert [s["input"] for s in sentences] == TEXTS
    graphs = sentences[0]["graphs"]
    assert set(graphs) == {"encoder", "decoder"}
    assert "durations" not in graphs["encoder"]  # discrete: reported as duration agreement instead
    assert graphs["decoder"]["waveform"]["snr_db"] == pytest.approx(sentences[0]["metrics"]["forced_snr_db"])
    # the audio behind every figure is kept for people: reference and exported, one wav per sentence
    assert [r["audio"] for r in report["reference"]] == [
        "report/audio/reference/0.wav",
        "report/audio/reference/1.wav",
    ]
    assert sentences[1]["audio"] == "report/audio/onnx-int8/1.wav" and (out / sentences[1]["audio"]).is_file()
    html = (out / "report.html").read_text()
    assert html.count('<section class="artifact"') == 3 and html.count("<audio") == 12


def test_artifacts_speak_in_onnx_runtime_with_metadata(
    built: tuple[Path, Recipe], tiny_vits_dir: Path
) -> None:
    out, _ = built
    artifact = read_manifest(out).artifacts[1]
    proto = onnx.load(str(out / artifact.path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["family"] == "vits" and meta["precision"] == "int8" and meta["recipe"] == "tiny"
    assert meta["sample_rate"] == "16000"
    model = load_model(tiny_vits_dir)
    runner = OrtRunner({f.graph: out / f.path for f in artifact.files})
    audio = model.synthesize_primary(runner, model.text_to_ids("testing"), SynthesisSettings()).audio
    assert audio.size > 1000 and np.isfinite(audio).all() and np.abs(audio).max() > 0.01


def test_no_temporary_files_left(built: tuple[Path, Recipe]) -> None:
    out, _ = built
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_stages_run_one_by_one_give_the_same_artifacts(built: tuple[Path, Recipe], tmp_path: Path) -> None:
    out, recipe = built
    pipeline.convert(recipe, tmp_path)
    pipeline.quantize(recipe, tmp_path)
    pipeline.export(recipe, tmp_path)
    manifest = pipeline.validate(recipe, tmp_path)
    # Deterministic export: the same inputs give byte-identical artifacts.
    assert [a.sha256 for a in manifest.artifacts] == [a.sha256 for a in read_manifest(out).artifacts]


def test_missed_threshold_fails_and_names_it(tiny_vits_dir: Path, tmp_path: Path) -> None:
    recipe = make_recipe(
        tiny_vits_dir, precisions=["int4"], validate={"texts": TEXTS[:1], "thresholds": {"forced_snr_db": 60}}
    )
    manifest = pipeline.build(recipe, tmp_path)
    assert not manifest.passed
    [failure] = manifest.artifacts[0].parity.failures
    assert failure.startswith("forced_snr_db = ") and "needs ≥ 60" in failure


def test_pruning_costs_parity_against_the_unpruned_reference(tiny_vits_dir: Path, tmp_path: Path) -> None:
    recipe = make_recipe(
        tiny_vits_dir,
        precisions=["fp32"],
        prune=[{"stack": "text_encoder", "layers": [1, 3]}],
        validate={"texts": TEXTS[:1], "thresholds": {}},
    )
    manifest = pipeline.build(recipe, tmp_path)
    assert load_model(tmp_path / "stages" / "checkpoint").describe()["text_encoder_layers"] == 2
    metrics = manifest.artifacts[0].parity.metrics
    # the fp32 export of the pruned model no longer matches the full model: that is pruning's cost
    assert metrics["logmel_dtw_db"] > 0.1
    assert manifest.model.parameters < load_model(tiny_vits_dir).parameters()


#: Core ML's export takes ~30 s on 2 cores: slow here, covered fast by
#: test_pipeline_coreml.py::test_verify_loads_every_package
FORMAT_CASES = [pytest.param(f, marks=pytest.mark.slow) if f == "coreml" else f for f in formats()]


@pytest.mark.parametrize("fmt", FORMAT_CASES)
def test_every_registered_format_exports_files_that_load(
    fmt: str, tiny_vits_dir: Path, tmp_path: Path
) -> None:
    """Each format the registry knows exports the tiny model, and every model file of its entry opens
    in the format's runtime (`verify_load`, what `voxport verify` runs)."""
    recipe = make_recipe(tiny_vits_dir, formats=[fmt], precisions=["int8"])
    with pipeline.Build(recipe, tmp_path) as run:
        (entry,) = run.export()
    adapter = get_format(fmt)
    model_files = [rel for rel in entry.files.values() if rel.endswith(adapter.suffix)]
    assert (entry.format, entry.precision) == (fmt, "int8")
    assert entry.path in model_files and set(entry.sha256) >= set(entry.files.values())
    for rel in model_files:
        adapter.verify_load(tmp_path / rel)


def test_recipe_opset_is_honoured_and_int4_needs_21(tiny_vits_dir: Path, tmp_path: Path) -> None:
    recipe = make_recipe(
        tiny_vits_dir, precisions=["int8"], export={"onnx": {"opset": 17}}, validate={"texts": TEXTS[:1]}
    )
    manifest = pipeline.build(recipe, tmp_path / "a")
    proto = onnx.load(str(tmp_path / "a" / manifest.artifacts[0].path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert manifest.artifacts[0].parity.metrics["forced_snr_db"] > 15  # and it runs in ORT
    recipe = make_recipe(tiny_vits_dir, precisions=["int4"], export={"onnx": {"opset": 17}})
    with pytest.raises(BadInput, match="opset >= 21"):
        pipeline.build(recipe, tmp_path / "b")
