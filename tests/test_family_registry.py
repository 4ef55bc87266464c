"""The family registry and the per-family synthesis settings.

Families are found by name (built-ins plus `voxport.families` entry points); each declares its own typed
settings, and the recipe, the pipeline and `voxport say` check a setting against the family that runs it:
a VITS knob on a Pocket TTS recipe is an error at its file and line, not a silently ignored value.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from voxport.cli import app
from voxport.errors import BadInput
from voxport.families import SynthesisSettings, families
from voxport.families.pocket_tts import PocketSettings, PocketTTSFamily
from voxport.families.registry import detect_family, register
from voxport.families.vits import VitsFamily, VitsSettings
from voxport.recipe import load_recipe

runner = CliRunner()


def test_builtins_are_registered_by_name() -> None:
    known = families()
    assert known["vits"] is VitsFamily and known["pocket_tts"] is PocketTTSFamily
    assert list(known)[:2] == ["vits", "pocket_tts"]  # built-ins first, in BUILTIN order
    assert VitsFamily.settings is VitsSettings and PocketTTSFamily.settings is PocketSettings


def test_same_named_settings_mean_the_same_in_every_family() -> None:
    """The recipe checks one flat key against every family: a key must have one type and range."""
    seen: dict[str, tuple[str, object, tuple[object, ...]]] = {}
    for family in families().values():
        for name, field in family.settings.model_fields.items():
            here = (family.name, field.annotation, tuple(type(m) for m in field.metadata))
            if name in seen:
                assert seen[name][1:] == here[1:], f"{name}: {seen[name]} vs {here}"
            seen[name] = here
    assert "seed" in seen and "noise_scale" in seen and "temperature" in seen


def test_vits_defaults_are_pipers() -> None:
    s = VitsSettings()
    assert (s.seed, s.noise_scale, s.noise_scale_duration, s.length_scale, s.speaker_id) == (
        0,
        0.667,
        0.8,
        1.0,
        None,
    )
    p = PocketSettings()
    assert (p.temperature, p.max_frames, p.frames_after_eos, p.voice) == (None, None, None, None)


def test_a_bare_seed_becomes_the_familys_defaults() -> None:
    assert VitsSettings.of(SynthesisSettings(seed=3)) == VitsSettings(seed=3)
    with pytest.raises(BadInput, match=r"VitsSettings has no setting 'temperature'"):
        VitsSettings.of(PocketSettings(temperature=0.5))


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        ({"noise_scale": float("nan")}, r"noise scale must be a number in \[0, 2\]"),
        ({"length_scale": 0}, r"length scale must be in \(0, 10\]"),
        ({"speaker_id": -1}, r"speaker id must be >= 0, got -1"),
        ({"seed": -2}, r"seed must be >= 0, got -2"),
    ],
)
def test_out_of_range_settings_are_one_line_bad_input(values: dict[str, float], pattern: str) -> None:
    with pytest.raises(BadInput, match=pattern):
        VitsSettings(**values)


def test_register_refuses_a_second_family_of_a_known_name() -> None:
    class Impostor(VitsFamily):
        name = "vits"

    with pytest.raises(BadInput, match=r"family 'vits' is already provided by voxport \(built in\)"):
        register(Impostor)
    assert families()["vits"] is VitsFamily


def test_unknown_family_lists_the_known_ones(tmp_path: Path) -> None:
    known = r"unknown family 'nope' \(known: kokoro, pocket_tts, vits, voxtral_tts"
    with pytest.raises(BadInput, match=known):
        detect_family(tmp_path, "nope")
    (tmp_path / "x.bin").write_bytes(b"\0" * 8)
    with pytest.raises(BadInput, match=r"unknown architecture .*expected e\.g\. a transformers VitsModel"):
        detect_family(tmp_path / "x.bin")


# --- recipes -----------------------------------------------------------------------------------------------


def _recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_pocket_phrases_take_temperature_frames_and_a_voice(tmp_path: Path) -> None:
    (tmp_path / "voices").mkdir()
    path = _recipe(
        tmp_path,
        """\
        name: p
        model: ckpt
        family: pocket_tts
        phrases:
          texts: ["Battery low."]
          seed: 4
          temperature: 0.3
          max_frames: 40
          voice: voices/v.npy
        """,
    )
    settings = load_recipe(path).synthesis_settings("phrases", PocketTTSFamily)
    assert settings == PocketSettings(
        seed=4, temperature=0.3, max_frames=40, voice=str((tmp_path / "voices/v.npy").resolve())
    )


def test_vits_setting_on_a_pocket_recipe_names_file_and_line(tmp_path: Path) -> None:
    path = _recipe(
        tmp_path,
        """\
        name: p
        model: ckpt
        family: pocket_tts
        validate:
          texts: ["Hello."]
          noise_scale: 0.3
        """,
    )
    with pytest.raises(BadInput) as info:
        load_recipe(path)
    want = f"{path}:6: validate.noise_scale: pocket_tts has no setting 'noise_scale'"
    assert str(info.value).startswith(want), info.value


def test_without_family_the_detected_family_checks_at_build(tmp_path: Path) -> None:
    """No `family:`: the key is a known setting (of VITS), so the recipe loads; asking for Pocket TTS's
    settings (what the build does once it has detected the checkpoint) names the file and line."""
    path = _recipe(
        tmp_path,
        """\
        name: p
        model: ckpt
        phrases:
          texts: ["Hello."]
          length_scale: 1.2
        """,
    )
    recipe = load_recipe(path)
    assert recipe.synthesis_settings("phrases", VitsFamily) == VitsSettings(length_scale=1.2)
    with pytest.raises(BadInput, match=rf"^{path}:5: phrases\.length_scale: pocket_tts has no setting"):
        recipe.synthesis_settings("phrases", PocketTTSFamily)


def test_resolved_recipe_records_the_familys_settings(tmp_path: Path) -> None:
    """The manifest's recipe: every setting the build used, defaults filled in, for its family only."""
    path = _recipe(tmp_path, "name: p\nmodel: ckpt\nvalidate:\n  texts: [a]\n  noise_scale: 0.1\n")
    recipe = load_recipe(path)
    assert recipe.resolved()["validate"]["noise_scale"] == 0.1
    assert "length_scale" not in recipe.resolved()["validate"]
    resolved = recipe.resolved(VitsFamily)["validate"]
    settings = {k: v for k, v in resolved.items() if k in VitsSettings.model_fields}
    assert settings == {
        "seed": 0,
        "noise_scale": 0.1,
        "noise_scale_duration": 0.8,
        "length_scale": 1.0,
        "speaker_id": None,
    }
    assert "temperature" not in recipe.resolved(VitsFamily)["validate"]


def test_a_key_no_family_has_is_unknown(tmp_path: Path) -> None:
    path = _recipe(tmp_path, "name: p\nmodel: ckpt\nvalidate:\n  texts: [a]\n  nosie_scale: 1\n")
    pattern = rf"^{path}:5: validate\.nosie_scale: unknown key \(allowed: .*noise_scale"
    with pytest.raises(BadInput, match=pattern):
        load_recipe(path)


def test_setting_values_are_checked_strictly_at_their_line(tmp_path: Path) -> None:
    path = _recipe(tmp_path, "name: p\nmodel: ckpt\nvalidate:\n  texts: [a]\n  temperature: 9\n")
    with pytest.raises(BadInput, match=rf"^{path}:5: validate\.temperature: temperature must be a number in"):
        load_recipe(path)


# --- say ---------------------------------------------------------------------------------------------------


def test_say_temperature_on_vits_is_an_error_naming_it(tiny_vits_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.wav"
    result = runner.invoke(app, ["say", str(tiny_vits_dir), "hello", "-o", str(out), "--temperature", "0.5"])
    assert result.exit_code == 2, result.output
    assert "--temperature: vits voices have no temperature setting" in result.output
    assert not out.exists()


def test_say_flags_of_the_voices_family_are_used(tiny_vits_dir: Path, tmp_path: Path) -> None:
    slow, normal = tmp_path / "slow.wav", tmp_path / "normal.wav"
    for path, pace in ((slow, "2.0"), (normal, "1.0")):
        args = ["say", str(tiny_vits_dir), "hello world", "-o", str(path), "--length-scale", pace]
        result = runner.invoke(app, [*args, "--noise-w", "0"])
        assert result.exit_code == 0, result.output
    # ignored, the pace would give equal lengths; honoured, each token's duration is ceil(d * 2): measured
    # 1.31x on the tiny random voice (its durations are ~1 frame, so ceil keeps it well under 2x)
    ratio = slow.stat().st_size / normal.stat().st_size
    assert 1.15 < ratio <= 2.0, ratio
