"""Pocket TTS through the whole pipeline and `voxport say`: demo checkpoint → ONNX at every
precision → parity (teacher-forced per step + free-running) → streamed speech from the artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
from typer.testing import CliRunner

from voxport import pipeline
from voxport.cli import app
from voxport.families import load_model
from voxport.families.pocket_tts import PocketSettings
from voxport.manifest import read_manifest, verify_files
from voxport.recipe import load_recipe
from voxport.runtime.ort import OrtRunner
from voxport.say import open_voice

cli = CliRunner()
RECIPE = Path(__file__).parent.parent / "recipes" / "demo-pocket-tts.yaml"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pocket") / "checkpoint"
    result = cli.invoke(app, ["demo", str(out), "--family", "pocket_tts", "--quiet"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def built(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    recipe = load_recipe(RECIPE).model_copy(update={"model": checkpoint})
    out = tmp_path_factory.mktemp("pocket-build")
    pipeline.build(recipe, out)
    return out


def test_every_precision_is_exported_as_three_graphs_and_verified(built: Path) -> None:
    manifest = read_manifest(built)
    assert manifest.model.family == "pocket_tts"
    own = [a for a in manifest.artifacts if a.layout is None]
    assert [a.precision for a in own] == ["fp32", "fp16", "int8", "int4"]
    # sherpa-onnx's layout of each precision is its own artifact (test_runtime_layouts.py)
    layouts = [(a.precision, a.layout) for a in manifest.artifacts if a.layout is not None]
    assert layouts == [(p, "sherpa-onnx") for p in ("fp32", "fp16", "int8", "int4")]
    assert verify_files(built, manifest) == []
    for artifact in own:
        graphs = {f.graph for f in artifact.files}
        assert {"backbone", "flow_head", "codec", "tokenizer"} <= graphs
        backbone = onnx.load(str(built / artifact.path), load_external_data=False)
        meta = {p.key: p.value for p in backbone.metadata_props}
        spec = json.loads(meta["pocket_tts"])
        assert meta["graph"] == "backbone" and spec["frame_size"] == 1920
        # the KV cache is explicit: one past/present pair per layer, growing on the sequence axis
        inputs = [i.name for i in backbone.graph.input]
        assert inputs[:4] == ["token_ids", "latents", "kind", "position"]
        assert sum(n.startswith("past_") for n in inputs) == 2 * spec["num_layers"]


def test_a_layout_without_a_voice_prompt_is_written_not_measured_and_says_why(built: Path) -> None:
    """The demo recipe has no validate.voice, and sherpa-onnx always prompts with one: the layout's rows
    pass with no figures and a note (they are measured in tests/test_runtime_layouts.py)."""
    report = json.loads((built / "report.json").read_text(encoding="utf-8"))
    rows = [r for r in report["artifacts"] if r.get("layout")]
    assert len(rows) == 4
    for row in rows:
        assert row["passed"] and row["sentences"] == []
        assert all(v is None for v in row["metrics"].values())
        assert "set validate.voice to a WAV file" in row["note"]
    assert (built / "report.html").read_text(encoding="utf-8").count("Not measured: sherpa-onnx") == 4


def test_parity_reports_per_step_and_free_running_figures_ordered_by_precision(built: Path) -> None:
    manifest = read_manifest(built)
    figures = {a.precision: a.parity.metrics for a in manifest.artifacts if a.layout is None}
    # fp32 ONNX vs torch: float round-off only, step by step and in the waveform
    assert figures["fp32"]["hidden_snr_db"] > 100
    assert figures["fp32"]["latent_snr_db"] > 90
    assert figures["fp32"]["forced_snr_db"] > 90
    # each precision loses fidelity against the one above it, in the backbone state and the latent
    for metric in ("hidden_snr_db", "latent_snr_db", "forced_snr_db"):
        values = [figures[p][metric] for p in ("fp32", "fp16", "int8", "int4")]
        assert values == sorted(values, reverse=True), (metric, values)
    assert figures["int8"]["latent_snr_db"] > 15
    assert all(figures[p]["duration_match"] is not None for p in figures)
    report = json.loads((built / "report.json").read_text())
    graphs = report["artifacts"][0]["sentences"][0]["graphs"]
    assert {"backbone", "flow_head", "codec"} <= set(graphs)


def test_onnx_loop_matches_the_torch_reference_with_recorded_noise(checkpoint: Path, built: Path) -> None:
    model = load_model(checkpoint)
    manifest = read_manifest(built)
    fp32 = next(a for a in manifest.artifacts if a.precision == "fp32" and a.layout is None)
    graphs = ("backbone", "flow_head", "codec")
    runner = OrtRunner({f.graph: built / f.path for f in fp32.files if f.graph in graphs})
    ids = model.text_to_ids("Hello there.")
    settings = PocketSettings(seed=4, temperature=0.3, max_frames=12)
    ref = model.synthesize(model.torch_runner(), ids, settings)
    test = model.synthesize(runner, ids, settings)
    assert ref.durations.tolist() == test.durations.tolist()
    err = np.abs(ref.audio - test.audio).max()
    assert err < 1e-4 * max(np.abs(ref.audio).max(), 1e-3)
    # a different seed is different noise: the comparison above is not trivially equal
    other = model.synthesize(
        model.torch_runner(), ids, PocketSettings(seed=5, temperature=0.3, max_frames=12)
    )
    assert np.abs(other.audio[: ref.audio.size] - ref.audio[: other.audio.size]).max() > 100 * err


def test_say_streams_frames_from_the_artifact_and_reports_time_to_first_audio(
    built: Path, tmp_path: Path
) -> None:
    primary = built / "onnx" / "demo-pocket-tts.int8.onnx"
    wav = tmp_path / "hello.wav"
    result = cli.invoke(app, ["say", str(primary), "Hello there, small model.", "-o", str(wav), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    audio, rate = sf.read(str(wav))
    assert rate == 24000 and audio.size == info["chunks"] * 1920
    assert info["chunks"] > 1 and 0 < info["first_audio_ms"] < 1000 * info["seconds"]
    # raw PCM on stdout is the same audio the artifact voice renders in one piece
    voice = open_voice(primary)
    pcm = cli.invoke(app, ["say", str(primary), "--ids", "5,9,13", "--max-frames", "8", "-o", "-"])
    assert pcm.exit_code == 0
    samples = np.frombuffer(pcm.stdout_bytes, dtype="<i2")
    spoken = voice.speak([5, 9, 13], PocketSettings(max_frames=8))
    assert samples.size == spoken.size and samples.size % 1920 == 0
    np.testing.assert_allclose(samples / 32767, np.clip(spoken, -1, 1), atol=1.5 / 32767)


def test_say_refuses_a_non_primary_graph_and_stdout_with_json(built: Path) -> None:
    flow = built / "onnx" / "demo-pocket-tts.int8.flow_head.onnx"
    result = cli.invoke(app, ["say", str(flow), "hi", "-o", "x.wav"])
    assert result.exit_code == 2 and "backbone" in result.output
    primary = built / "onnx" / "demo-pocket-tts.int8.onnx"
    result = cli.invoke(app, ["say", str(primary), "hi", "-o", "-", "--json"])
    assert result.exit_code != 0 and "stdout" in result.output


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_onnx_runtime_fuses_every_quantized_linear(built: Path, tmp_path: Path, precision: str) -> None:
    """Every quantized weight feeding a matmul reaches ONNX Runtime as MatMulNBits: none is left as a
    DequantizeLinear that would run on every call (the flow head's 2-D Gemm once was: 54 ms/frame)."""
    import onnxruntime as ort

    for graph in ("backbone", "flow_head", "codec"):
        stem = f"demo-pocket-tts.{precision}" + ("" if graph == "backbone" else f".{graph}")
        source = built / "onnx" / f"{stem}.onnx"
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{graph}.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(tmp_path / f"{graph}.onnx"))
        ops = [n.op_type for n in optimized.graph.node]
        original = onnx.load(str(source))
        quantized = sum(n.op_type == "DequantizeLinear" for n in original.graph.node)
        assert quantized > 0, graph
        assert ops.count("MatMulNBits") == quantized, (graph, quantized, ops.count("MatMulNBits"))
        assert "DequantizeLinear" not in ops, graph


def test_the_build_table_shows_the_familys_step_metrics(built: Path) -> None:
    """The hidden/latent columns come from the family's MetricSpecs (Family.metrics), not a CLI list."""
    from voxport.cli import _print_manifest, metric_columns, out

    manifest = read_manifest(built)
    columns = metric_columns(manifest.model.family, [a.parity.metrics for a in manifest.artifacts])
    assert columns[-2:] == [("hidden SNR dB", "hidden_snr_db", 1), ("latent SNR dB", "latent_snr_db", 1)]
    with out.capture() as captured:
        _print_manifest(manifest, built)
    table = captured.get()  # headers wrap in a 160-column table: look for their first words
    assert "hidden" in table and "latent" in table and "log-mel" in table
