"""`extends:` lets a device recipe build on another; errors still name the right file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxport.errors import BadInput
from voxport.recipe import load_recipe, recipe_json_schema

BASE = """\
name: base
model: ckpt
formats: [onnx, gguf]
precisions: [fp32, int8]
quantize:
  method: mse
  overrides:
    "decoder.*": fp16
validate:
  texts: ["hello"]
  thresholds:
    logmel_dtw_db: 1.5
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_child_merges_over_base_and_keeps_base_relative_paths(tmp_path: Path) -> None:
    write(tmp_path / "base" / "base.yaml", BASE)
    child = write(
        tmp_path / "devices" / "watch.yaml",
        "extends: ../base/base.yaml\nname: watch\nprecisions: [int4]\n"
        "quantize:\n  block_size: 64\nvalidate:\n  thresholds:\n    mcd_db: 2.0\n",
    )
    recipe = load_recipe(child)
    assert recipe.name == "watch"
    assert recipe.model == tmp_path / "base" / "ckpt"  # relative to the file that wrote it
    assert recipe.formats == ["onnx", "gguf"]  # inherited
    assert recipe.precisions == ["int4"]  # lists are replaced, not appended
    assert recipe.quantize.method == "mse" and recipe.quantize.block_size == 64  # mappings merge
    assert recipe.quantize.overrides == {"decoder.*": "fp16"}
    assert recipe.validation is not None and recipe.validation.texts == ["hello"]
    assert set(recipe.validation.thresholds) == {"logmel_dtw_db", "mcd_db"}
    assert recipe.extends == "../base/base.yaml"


def test_chains_and_child_model_override(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", BASE)
    write(tmp_path / "b.yaml", "extends: a.yaml\nname: b\nformats: [onnx]\n")
    c = write(tmp_path / "sub" / "c.yaml", "extends: ../b.yaml\nname: c\nmodel: mine\n")
    recipe = load_recipe(c)
    assert (recipe.name, recipe.formats, recipe.model) == ("c", ["onnx"], tmp_path / "sub" / "mine")


def test_error_in_inherited_key_names_the_base_file_and_line(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yaml", BASE.replace("method: mse", "method: no-such"))
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nname: child\n")
    with pytest.raises(BadInput) as exc:
        load_recipe(child)
    assert str(exc.value).startswith(
        f"{base}:6: quantize.method: 'no-such' is not one of rtn, mse, gptq, imatrix"
    )


def test_error_in_child_names_the_child(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nname: child\nprecisions: [int3]\n")
    with pytest.raises(BadInput, match=rf"^{child}:3: precisions\[0\]: 'int3' is not one of"):
        load_recipe(child)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a.yaml": "extends: missing.yaml\nname: a\n"}, r"a.yaml:1: extends: missing.yaml not found"),
        ({"a.yaml": "extends: b.yaml\nname: a\n", "b.yaml": "extends: a.yaml\nname: b\n"}, r"forms a cycle"),
        ({"a.yaml": "extends: [b.yaml]\nname: a\n"}, r"a.yaml:1: extends: expected a recipe file path"),
    ],
)
def test_bad_extends(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(BadInput, match=message):
        load_recipe(tmp_path / "a.yaml")


def test_schema_knows_the_new_sections() -> None:
    schema = recipe_json_schema()
    props = schema["properties"]
    assert {"extends", "phrases", "export"} <= set(props)
    defs = schema["$defs"]
    assert set(defs["CoremlExportConfig"]["properties"]) >= {"target", "compute_precision", "palettize"}
    assert "watchOS11" in str(defs["CoremlExportConfig"]["properties"]["target"])


DEVICES = {
    "iphone-15-pro": (["coreml"], ["int4"], "iOS18"),
    "apple-watch-ultra-2": (["coreml"], ["int4"], "watchOS11"),
    "pixel-8": (["onnx", "gguf"], ["int8", "int4"], None),
    "wear-os-watch": (["onnx"], ["int8"], None),
    "raspberry-pi-5": (["onnx", "gguf"], ["int8"], None),
    "desktop-x86": (["onnx", "gguf", "coreml"], ["fp16", "int8"], "macOS15"),
}


@pytest.mark.parametrize("device", sorted(DEVICES))
def test_device_recipes_build_on_the_bundled_voice_and_say_why(device: str) -> None:
    path = Path(__file__).parents[1] / "recipes" / f"{device}.yaml"
    assert path.read_text().startswith("# "), "a device recipe opens with a comment saying why"
    recipe = load_recipe(path)
    formats, precisions, target = DEVICES[device]
    assert (recipe.name, recipe.formats, recipe.precisions) == (device, formats, precisions)
    assert recipe.model.name == "joe-checkpoint" and recipe.extends == "joe-medium.yaml"
    assert recipe.validation is not None and len(recipe.validation.texts) == 3  # inherited sentences
    if target is not None:
        assert recipe.export.coreml.target == target
    if "watch" in device:
        assert recipe.phrases is not None and recipe.prune, "watches prune and pre-render phrases"
