"""The format registry: the one list of formats, from which the recipe, verify, inspect and the
manifest's tool versions are derived; and a format added from outside (tests/extending/)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml
from gguf import GGUFReader

from voxport import pipeline
from voxport.errors import BadInput
from voxport.export.gguf.adapter import GgufExportConfig
from voxport.export.gguf.types import GGML_TYPE_NAMES
from voxport.export.gguf.writer import write_gguf
from voxport.export.registry import (
    ExportEntry,
    FormatAdapter,
    format_for_path,
    formats,
    get_format,
    unregister,
)
from voxport.families import FamilyModel
from voxport.inspect import inspect_path
from voxport.io import path_size
from voxport.manifest import tool_packages, tool_versions
from voxport.quantize.stage import quantize_model
from voxport.recipe import Recipe, load_recipe, recipe_json_schema
from voxport.verify import check_file, verify_dir

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = ("onnx", "gguf", "coreml")


def make_recipe(model_dir: Path, **overrides: Any) -> Recipe:
    data: dict[str, Any] = {
        "name": "tiny",
        "model": str(model_dir),
        "formats": list(BUILTIN),
        "precisions": ["int8"],
        "validate": {"texts": ["hello world."]},
    }
    return Recipe.from_mapping({**data, **overrides}, model_dir)


# --- the registry ---------------------------------------------------------------------------------------
def test_registry_round_trip() -> None:
    known = formats()
    assert tuple(known)[:3] == BUILTIN  # built-ins first, in the recipe's export: order
    for name, cls in known.items():
        adapter = get_format(name)
        assert isinstance(adapter, cls) and adapter.name == name
        assert format_for_path(Path(f"out/x.int8{cls.suffix}")).name == name  # type: ignore[union-attr]
    assert format_for_path(Path("x.int8.onnx.json")) is None
    assert format_for_path(Path("checkpoint/model.safetensors")) is None
    with pytest.raises(BadInput, match=r"unknown format 'tflite' \(known: onnx, gguf, coreml"):
        get_format("tflite")


def test_a_second_format_of_the_same_name_is_refused() -> None:
    with pytest.raises(TypeError, match="format 'onnx' is registered twice"):

        class Other(FormatAdapter[Any, None], name="onnx"):  # noqa: F841
            suffix = ".onnx"
            Options = GgufExportConfig

    assert get_format("onnx").Options.__name__ == "OnnxExportConfig"


def test_export_entry_json_keeps_the_export_index_shape() -> None:
    """The JSON of an entry is the export index's object, keys in the order export.json had them."""
    data = {
        "format": "gguf",
        "precision": "int4",
        "path": "gguf/x.int4.gguf",
        "files": {"gguf": "gguf/x.int4.gguf", "mmproj": "gguf/x.int4.mmproj.gguf"},
        "layout": "llama.cpp pockettts",
        "bits_per_weight": 4.5,
        "skipped_weights": [{"name": "a", "requested": "int4", "stored": "F16", "reason": "r"}],
        "tensor_types": {"Q4_0": 3, "F32": 2},
        "export_seconds": 1.25,
        "sha256": {"gguf/x.int4.gguf": "0" * 64},
    }
    entry = ExportEntry.from_json(data)
    assert entry.details == {"tensor_types": {"Q4_0": 3, "F32": 2}} and entry.sidecars is None
    assert list(entry.to_json().items()) == list(data.items())
    onnx = {
        "format": "onnx",
        "precision": "fp32",
        "path": "onnx/x.fp32.onnx",
        "files": {"tts": "onnx/x.fp32.onnx"},
        "sidecars": {},  # ONNX always records its sidecars, none or some
        "bits_per_weight": 32.0,
        "skipped_weights": [],
        "export_seconds": 0.5,
        "sha256": {"onnx/x.fp32.onnx": "1" * 64},
    }
    assert list(ExportEntry.from_json(onnx).to_json().items()) == list(onnx.items())


# --- the recipe is generated from the registry ------------------------------------------------------------
def test_recipe_schema_lists_the_registered_formats_and_their_options() -> None:
    schema = recipe_json_schema()
    assert schema["properties"]["formats"]["items"]["enum"] == list(formats())
    section = schema["$defs"]["ExportConfig"]["properties"]
    assert list(section) == list(formats())
    for name, cls in formats().items():
        assert section[name]["$ref"] == f"#/$defs/{cls.Options.__name__}"
    gguf_types = schema["$defs"]["GgufExportConfig"]["properties"]["types"]
    assert gguf_types["additionalProperties"]["additionalProperties"]["enum"] == list(GGML_TYPE_NAMES)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\nmodel: {tmp_path}\n{text}")
    return path


def test_export_options_come_from_the_adapters(tmp_path: Path) -> None:
    recipe = load_recipe(_write(tmp_path, "formats: [gguf]\nexport:\n  gguf:\n    fallback: F32\n"))
    options = recipe.export_options("gguf")
    assert isinstance(options, get_format("gguf").Options) and options.fallback == "F32"
    assert recipe.export_options("onnx") == get_format("onnx").Options()  # defaults when not given


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("formats: [onnx, tflite]\n", "r.yaml:3: formats[1]: 'tflite' is not one of onnx, gguf, coreml"),
        ("export:\n  onnx:\n    opset: 12\n", "r.yaml:5: export.onnx.opset: must be ≥ 17, got 12"),
        (
            "export:\n  gguf:\n    types: {int4: {'*': Q3_X}}\n",
            "r.yaml:5: export.gguf.types.int4['*']: 'Q3_X' is not one of F32, F16, BF16,",
        ),
        (
            "export:\n  coreml:\n    kv_cap: 9\n",
            "r.yaml:5: export.coreml.kv_cap: unknown key (allowed: target,",
        ),
        ("export:\n  npz: {}\n", "r.yaml:4: export.npz: unknown key (allowed: onnx, gguf, coreml)"),
        (  # the adapter's own check, on its own options and the recipe's precisions
            "formats: [coreml]\nprecisions: [int4]\nexport:\n  coreml:\n    target: iOS17\n",
            "int4 blockwise needs iOS18/macOS15/watchOS11",
        ),
    ],
)
def test_a_bad_format_or_option_names_file_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(BadInput) as info:
        load_recipe(_write(tmp_path, text))
    assert message in str(info.value)


# --- GGML types, once: BF16 -------------------------------------------------------------------------------
def test_bf16_is_accepted_by_recipes_and_written(tiny_vits: FamilyModel, tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, formats=["gguf"], export={"gguf": {"types": {"fp32": {"*": "BF16"}}}})
    types = recipe.export_options("gguf").types["fp32"]
    assert types == {"*": "BF16"}
    qm = quantize_model(tiny_vits, "fp32")
    written = write_gguf(tiny_vits, qm, tmp_path / "bf16.gguf", name="bf16", types=types)
    reader = GGUFReader(written.path)
    stored = {t.name: t.tensor_type.name for t in reader.tensors}
    kernels = [n for n, t in stored.items() if t == "BF16"]
    # every 2-D+ quantizable kernel is BF16 (BF16 has no blocks, so nothing falls back); the rest F32
    assert written.fallbacks == [] and len(kernels) == len(tiny_vits.quantizable()) > 10
    assert set(stored.values()) == {"BF16", "F32"} and written.file_type == "MOSTLY_BF16"
    assert written.bits_per_weight < 17  # 16-bit kernels, a few small F32 vectors
    # the values read back are the weights rounded to bfloat16 (8 mantissa bits: relative error ≤ 2^-8)
    from voxport.export.gguf.reader import read_gguf

    _, tensors = read_gguf(written.path, tiny_vits)
    state = tiny_vits.state_dict()
    for name in tiny_vits.quantizable():
        w = state[name].numpy().reshape(tensors[name].shape)
        assert np.all(np.abs(tensors[name] - w) <= np.abs(w) * 2.0**-8), name


# --- verify and inspect dispatch through the registry --------------------------------------------------
@pytest.fixture(scope="module")
def exported(tiny_vits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ExportEntry]]:
    out = tmp_path_factory.mktemp("all-formats")
    with pipeline.Build(make_recipe(tiny_vits_dir), out) as run:
        return out, run.export()


def test_verify_and_inspect_dispatch_per_format(
    exported: tuple[Path, list[ExportEntry]], tmp_path: Path
) -> None:
    out, index = exported
    assert [e.format for e in index] == list(BUILTIN)
    for entry in index:
        adapter = get_format(entry.format)
        described = inspect_path(out / entry.path)
        assert described["kind"] == entry.format and described["path"] == str(out / entry.path)
        for rel in (r for r in entry.files.values() if r.endswith(adapter.suffix)):
            sha = entry.sha256[rel]
            intact = check_file(out, rel, entry.format, "int8", "g", sha, path_size(out / rel))
            assert intact.ok and intact.loads_ok is True, intact.problems
            # the same file damaged (a copy, cut in half): the format's own load refuses it
            damaged = tmp_path / entry.format / rel
            _copy(out / rel, damaged)
            _truncate(damaged)
            check = check_file(tmp_path / entry.format, rel, entry.format, "int8", "g", sha, 0)
            assert check.loads_ok is False, (rel, check.problems)
            assert any(f"does not load as {entry.format}" in p for p in check.problems)


def test_inspect_numbers_per_format(exported: tuple[Path, list[ExportEntry]]) -> None:
    out, index = exported
    by_format = {e.format: inspect_path(out / e.path) for e in index}
    assert by_format["onnx"]["dequantize_nodes"] > 0 and 8 < by_format["onnx"]["bits_per_weight"] < 32
    assert "Q8_0" in by_format["gguf"]["tensor_types"]
    assert by_format["coreml"]["compressed_weight_ops"]  # int8 codes as constexpr ops


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def _truncate(path: Path) -> None:
    """Cut a file (or a package's largest file, its weights) to half its size."""
    target = (
        max((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        if path.is_dir()
        else path
    )
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])


def test_tool_versions_come_from_the_registered_formats() -> None:
    packages = tool_packages()
    for cls in formats().values():
        assert set(cls.tool_packages) <= set(packages), cls.name
    versions = tool_versions()
    assert {"onnx", "onnxruntime", "gguf", "coremltools", "torch", "numpy"} <= set(versions)


# --- a format from outside: tests/extending/format_example.py --------------------------------------------
@pytest.fixture
def npz_format() -> Iterator[ModuleType]:
    """The example module imported (which registers "npz"), and the format forgotten afterwards."""
    spec = importlib.util.spec_from_file_location(
        "format_example", ROOT / "tests/extending/format_example.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # as an installed package's module would be: pydantic resolves the options' annotations through it
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        unregister("npz")
        del sys.modules[spec.name]


def test_the_example_npz_format_builds_the_demo_recipe(
    npz_format: ModuleType, tiny_vits_dir: Path, tmp_path: Path
) -> None:
    """The demo recipe with `formats: [npz]`: exported, validated (its weights in the family's torch
    graphs), listed in the manifest with parity figures, verified and inspected."""
    assert "npz" in formats() and format_for_path(Path("x.npz")).name == "npz"  # type: ignore[union-attr]
    data = yaml.safe_load((ROOT / "recipes/demo-tiny-vits.yaml").read_text())
    data.update(model=str(tiny_vits_dir), formats=["npz"], precisions=["fp32", "int4"])
    recipe_file = tmp_path / "demo-npz.yaml"
    recipe_file.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    manifest = pipeline.build(load_recipe(recipe_file), out)
    assert [(a.format, a.precision, a.path) for a in manifest.artifacts] == [
        ("npz", "fp32", "npz/demo-tiny-vits.fp32.npz"),
        ("npz", "int4", "npz/demo-tiny-vits.int4.npz"),
    ]
    fp32, int4 = (a.parity.metrics for a in manifest.artifacts)
    # fp32 weights are the reference's own: the same torch graphs give the same audio
    assert fp32["snr_db"] > 100 and fp32["max_abs_error"] < 1e-4
    # int4 costs something, and the demo recipe's thresholds still hold
    assert 0 < int4["forced_snr_db"] < fp32["forced_snr_db"] and manifest.passed
    assert manifest.artifacts[1].bits_per_weight == 32  # dequantized: float32 on disk
    assert manifest.tool_versions["numpy"] == np.__version__
    assert verify_dir(out).ok
    assert inspect_path(out / manifest.artifacts[0].path)["kind"] == "npz"
    assert json.loads((out / "stages/export.json").read_text())[0]["files"] == {
        "weights": "npz/demo-tiny-vits.fp32.npz"
    }
