"""The phrase cache: frequent phrases rendered once by the full-precision model and shipped as audio."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxport import pipeline
from voxport.families import SynthesisSettings, load_model
from voxport.manifest import read_manifest, verify_files
from voxport.recipe import Recipe

PHRASES = ["Battery low", "Timer done.", "Battery low!"]


@pytest.fixture(scope="module")
def built(tiny_vits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phrases")
    recipe = Recipe.from_mapping(
        {
            "name": "watch",
            "model": str(tiny_vits_dir),
            "formats": ["gguf"],
            "precisions": ["int8"],
            "prune": [{"stack": "text_encoder", "layers": [1]}],
            "validate": {"texts": ["hello"]},
            "phrases": {"texts": PHRASES, "seed": 3},
        },
        tiny_vits_dir,
    )
    pipeline.build(recipe, out)
    return out


def test_index_maps_each_text_to_a_playable_file(built: Path) -> None:
    index = json.loads((built / "phrases" / "index.json").read_text())
    assert [p["text"] for p in index["phrases"]] == PHRASES
    names = [p["file"] for p in index["phrases"]]
    assert names == ["00-battery-low.wav", "01-timer-done.wav", "02-battery-low.wav"]  # unique, readable
    for entry in index["phrases"]:
        audio, rate = sf.read(built / "phrases" / entry["file"])
        assert rate == index["sample_rate"] == 16000
        assert audio.size / rate == pytest.approx(entry["seconds"], abs=1e-3)
        assert np.abs(audio).max() > 0.01


def test_rendered_by_the_unpruned_full_precision_model(built: Path, tiny_vits_dir: Path) -> None:
    """Phrases are what the best model says, not the pruned int8 artifact: compare with a fresh render."""
    source = load_model(tiny_vits_dir)
    settings = SynthesisSettings(seed=3)
    expected = source.synthesize(source.torch_runner(), source.text_to_ids(PHRASES[0]), settings).audio
    audio, _ = sf.read(built / "phrases" / "00-battery-low.wav", dtype="float32")
    assert audio.size == expected.size
    assert np.abs(audio - np.clip(expected, -1, 1)).max() <= 1.0 / 32767 + 1e-6  # PCM16 rounding only


def test_manifest_lists_phrase_files_and_verify_catches_tampering(built: Path) -> None:
    manifest = read_manifest(built)
    assert [f.graph for f in manifest.phrases] == [*PHRASES, "index"]
    assert verify_files(built, manifest) == []
    report = json.loads((built / "report.json").read_text())
    assert [p["text"] for p in report["phrases"]] == PHRASES
    wav = built / "phrases" / "01-timer-done.wav"
    data = bytearray(wav.read_bytes())
    data[-1] ^= 0xFF
    wav.write_bytes(bytes(data))
    [problem] = verify_files(built, manifest)
    assert problem.startswith("phrases/01-timer-done.wav: sha256")


def test_empty_phrase_list_is_a_recipe_error(tiny_vits_dir: Path) -> None:
    from voxport.errors import BadInput

    with pytest.raises(BadInput, match="phrases.texts: must not be empty"):
        Recipe.from_mapping(
            {"name": "w", "model": str(tiny_vits_dir), "phrases": {"texts": []}}, tiny_vits_dir
        )
