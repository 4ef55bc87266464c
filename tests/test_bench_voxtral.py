"""benchmarks/bench_voxtral.py: its held-out sentences are held out, its byte counts are the pipeline's own
(checked where both exist: the tiny checkpoint's ONNX and GGUF builds), the full-size figures follow
from the encodings, and its core runs one mix end to end into a table and JSON (the full run, 11 mixes ×
2 checkpoints, is the lead's: minutes)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from voxport import pipeline
from voxport.recipe import Recipe

REPO = Path(__file__).resolve().parents[1]


def _load_bench() -> ModuleType:
    """The script is not a package module: load it from its file."""
    spec = importlib.util.spec_from_file_location("bench_voxtral", REPO / "benchmarks" / "bench_voxtral.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_voxtral"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[argparse.Namespace, Any]:
    out = tmp_path_factory.mktemp("bench-voxtral")
    args = bench.parse_args(
        [
            "--seeds",
            "0",
            "--voices",
            "ava",
            "--mixes",
            "field split,only codec int4",
            "--max-frames",
            "2",
            "--out",
            str(out),
        ]  # fmt: skip
    )
    return args, bench.run(args, lambda _: None)


def test_held_out_sentences_are_in_no_recipe_and_not_in_the_calibration_set() -> None:
    assert len(bench.HELD_OUT) >= 5
    bench.check_held_out(bench.HELD_OUT, bench.held_out_sources())  # SystemExit on any overlap


def test_a_mix_is_an_exact_recipe_mix_even_below_the_artifact_precision() -> None:
    """Plain `overrides` only keep a part above the artifact's precision; "fp16 with an int4 codec" needs
    `precision_overrides`, and the planner gets the same globs the pipeline gives it."""
    precision, section = bench.quantize_section(bench.MIXES["only codec int4"])
    assert precision == "fp16"
    assert section["precision_overrides"] == {
        "fp16": {"acoustic_transformer.*": "fp16", "audio_tokenizer.*": "int4"}
    }
    _, globs = bench.plan_overrides(bench.MIXES["field split"])
    assert globs == {
        "acoustic_transformer.*": "int8",
        "audio_tokenizer.*": "fp16",
        "mm_audio_embeddings.*": "fp16",
    }


def test_full_size_bytes_follow_the_encodings(tiny_run: tuple[argparse.Namespace, Any]) -> None:
    args, _ = tiny_run
    tekken = (args.out / "checkpoint-seed0" / "tekken.json").read_bytes()
    full = bench.FullSize.build(tekken, "full")
    assert 3.9e9 < sum(math.prod(s) for s in full.shapes.values()) < 4.1e9  # the released 4.0B shape
    fp16 = bench.full_size_bytes(full, bench.MIXES["all fp16"])
    assert fp16.onnx_bits_per_weight == 16.0  # every tensor fp16, no scales
    int4 = bench.full_size_bytes(full, bench.MIXES["all int4"])
    # every backbone Linear has a multiple of 32 columns: 4 bits + one fp16 scale per 32 = 4.5 bits/w,
    # plus the fp32 norms (53 vectors of 3072)
    backbone = [n for n in full.shapes if bench.part_of(n) == "backbone"]
    linear = sum(math.prod(full.shapes[n]) for n in backbone if n in full.quantizable)
    norms = sum(math.prod(full.shapes[n]) for n in backbone if n not in full.quantizable)
    assert int4.onnx_part_bytes["backbone"] == pytest.approx(linear * 4.5 / 8 + norms * 4, rel=1e-12)
    field = bench.full_size_bytes(full, bench.MIXES["field split"])
    int8 = bench.full_size_bytes(full, bench.MIXES["all int8"])
    assert int4.onnx_bytes < field.onnx_bytes < int8.onnx_bytes < fp16.onnx_bytes
    # GGUF Q4_0 is 18 bytes per 32 weights, like ONNX's int4; Q8_0 (34 per 32) exceeds per-row int8
    assert int8.gguf_bytes > int8.onnx_bytes


def test_the_tiny_counts_equal_what_the_pipeline_records(
    tiny_run: tuple[argparse.Namespace, Any], tmp_path: Path
) -> None:
    """The same counting on the tiny checkpoint's shapes gives the bits per weight the real ONNX and GGUF
    builds of that checkpoint record in their manifest."""
    args, result = tiny_run
    ckpt = args.out / "checkpoint-seed0"
    tiny = bench.FullSize.build((ckpt / "tekken.json").read_bytes(), "tiny")
    for row in result.results:
        counted = bench.full_size_bytes(tiny, bench.MIXES[row.mix])
        assert row.parity.tiny_bits_per_weight == [pytest.approx(counted.onnx_bits_per_weight, abs=1e-9)]
    assert result.results[1].parity.tiny_bits_per_weight[0] < 15  # the int4 codec is really int4
    counted = bench.full_size_bytes(tiny, bench.MIXES["field split"])
    precision, section = bench.quantize_section(bench.MIXES["field split"])
    recipe = Recipe.from_mapping(
        {
            "name": "gguf-count",
            "model": str(ckpt),
            "trust_pickle": True,
            "formats": ["gguf"],
            "precisions": [precision],
            "quantize": section,
        },
        base_dir=tmp_path,
    )
    with pipeline.Build(recipe, tmp_path / "gguf", lambda _: None, cache_dir=args.out / "cache") as build:
        (entry,) = [e for e in build.export() if e.format == "gguf"]
    assert entry.bits_per_weight == pytest.approx(counted.gguf_bits_per_weight, abs=1e-9)


def test_the_core_writes_a_table_and_json(tiny_run: tuple[argparse.Namespace, Any], tmp_path: Path) -> None:
    args, result = tiny_run
    row, codec_int4 = result.results
    runs = len(bench.HELD_OUT)  # 1 seed × 1 voice
    for key in ("hidden_snr_db", "acoustic_snr_db", "forced_snr_db", "forced_logmel_db", "free_logmel_db"):
        assert len(getattr(row.parity, key)) == runs, key
    # int4 backbone on random weights: clearly rounded, clearly not broken (measured ~15 dB worst step;
    # bounds wide for any CPU's float order)
    assert 5 < row.worst("hidden_snr_db") < 40
    # the codec at fp16 under teacher forcing: fp16 rounding of the folded convolutions only (~66 dB)
    assert row.worst("forced_snr_db") > 40
    # an int4 codec is the only rounded part of its mix: the backbone untouched (fp16 holds the demo's
    # BF16 weights exactly, so > 80 dB), its forced audio clearly below the fp16 codec's
    assert codec_int4.worst("hidden_snr_db") > 80
    assert codec_int4.mean("forced_snr_db") < row.mean("forced_snr_db") - 10
    lines = bench.report(result, ["--mixes", "field split,only codec int4"], "abc", ["0.1", "0.2"])
    header = next(line for line in lines if line.startswith("| mix |"))
    body = [line for line in lines if line.startswith(("| field split |", "| only codec int4 |"))]
    assert len(body) == 2 and {b.count("|") for b in body} == {header.count("|")} == {10}
    assert "predict nothing" in lines[0]
    payload = json.loads(json.dumps(asdict(result)))
    assert payload["results"][0]["full"]["onnx_bytes"] == pytest.approx(row.full.onnx_bytes)
    doc = tmp_path / "benchmarks.md"
    bench.write_section(doc, lines, begin=bench.BEGIN, end=bench.END, section=bench.SECTION)
    bench.write_section(doc, lines, begin=bench.BEGIN, end=bench.END, section=bench.SECTION)
    assert doc.read_text().count(bench.SECTION) == 1
