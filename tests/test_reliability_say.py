"""`voxport say` faults (issue 12): every bad id or setting is one `error:` line and exit 2, on a
checkpoint, an exported VITS ONNX and an exported Pocket TTS ONNX alike; long text is spoken piece by
piece in bounded memory; a one-sentence input gives exactly the audio it gave before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxport.export.onnx.exporter import export_onnx
from voxport.families import FamilyModel, SynthesisSettings, load_model
from voxport.families.pocket_tts.frontend import POCKET_CHUNK_TOKENS
from voxport.families.pocket_tts.synthetic import make_checkpoint, named_config
from voxport.families.vits.frontend import VITS_PIECE_IDS
from voxport.pieces import bisect_to_fit, split_sentences, text_rank
from voxport.quantize import quantize
from voxport.say import open_voice

VOXPORT = str(Path(sys.executable).with_name("voxport"))
SENTENCE = "hello world, this is voxport."


def _export(model: FamilyModel, out_dir: Path, precision: str) -> Path:
    """The model's graphs as an exported artifact (int8: kernels quantized, the rest as stored)."""
    quantizable = model.quantizable()
    weights = {
        name: quantize(t.numpy(), precision if precision != "int8" or name in quantizable else "fp32")
        for name, t in model.state_dict().items()
    }
    files = export_onnx(model, weights, out_dir, stem="v", precision=precision, metadata={"recipe": "t"})
    return next(f.path for f in files if f.primary)


@pytest.fixture(scope="module")
def vits_onnx(tiny_vits: FamilyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tiny_vits, tmp_path_factory.mktemp("vits-onnx"), "int8")


@pytest.fixture(scope="module")
def pocket_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("pocket") / "ck", named_config("tiny"), seed=0)


@pytest.fixture(scope="module")
def pocket_onnx(pocket_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(load_model(pocket_checkpoint), tmp_path_factory.mktemp("pocket-onnx"), "fp32")


def _say(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VOXPORT, "say", *map(str, args)], capture_output=True, text=True, timeout=300)


def _assert_one_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


#: (arguments after the source, words the one error line must contain); the demo vocabulary has 35
#: ids, the tiny Pocket TTS model's has n_bins + 1 = 4001
VITS_FAULTS = [
    (["--ids", "1,2,35"], ["input id 35", "0..34"]),
    (["--ids", "1,-2,3"], ["input id -2", "0..34"]),
    (["--ids", "12345678901234567890"], ["input id 12345678901234567890", "out of range"]),
    (["--ids", "1,2", "--length-scale", "nan"], ["length scale", "nan"]),
    (["--ids", "1,2", "--length-scale", "100000"], ["length scale", "(0, 10]"]),
    (["--ids", "1,2", "--speaker", "3"], ["speaker 3", "single speaker"]),
]
#: more settings no voice can honour, checked in-process (each subprocess costs a torch import)
MORE_FAULTS = [
    (["--length-scale", "0"], ["length scale"]),
    (["--length-scale", "-inf"], ["length scale"]),
    (["--noise-scale", "inf"], ["noise scale", "inf"]),
    (["--noise-w", "-1"], ["duration noise"]),
    (["--noise-w", "10"], ["duration noise", "[0, 2]"]),
    (["--temperature", "1e9"], ["temperature"]),
    (["--max-frames", "-3"], ["max frames"]),
    (["--seed", "-1"], ["seed"]),
    (["--ids", ""], ["empty input"]),
    (["--speed", "0"], ["speed must be a positive number"]),
    (["--speed", "0.01"], ["speed 0.01 gives length scale 100"]),
    (["--chunk-frames", "0"], ["chunk_frames must be a whole number"]),
]


def _say_in_process(source: Path, args: list[str], wav: Path) -> str:
    """The same command in this process (a subprocess costs a torch import: seconds each on CI)."""
    from typer.testing import CliRunner

    from voxport.cli import app

    result = CliRunner().invoke(app, ["say", str(source), *args, "-o", str(wav)])
    assert result.exit_code == 2 and not wav.exists(), result.output
    message = result.output.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    return message


@pytest.mark.parametrize(("args", "words"), VITS_FAULTS, ids=[" ".join(a) for a, _ in VITS_FAULTS])
def test_vits_checkpoint_faults_are_one_line(tiny_vits_dir: Path, tmp_path: Path, args, words) -> None:
    message = _say_in_process(tiny_vits_dir, args, tmp_path / "x.wav")
    assert all(word in message for word in words), message


@pytest.mark.parametrize(("args", "words"), VITS_FAULTS, ids=[" ".join(a) for a, _ in VITS_FAULTS])
def test_vits_onnx_faults_are_one_line(vits_onnx: Path, tmp_path: Path, args, words) -> None:
    message = _say_in_process(vits_onnx, args, tmp_path / "x.wav")
    assert all(word in message for word in words), message


@pytest.mark.parametrize(("args", "words"), MORE_FAULTS, ids=[" ".join(a) for a, _ in MORE_FAULTS])
def test_absurd_settings_are_refused(vits_onnx: Path, tmp_path: Path, args, words) -> None:
    ids = [] if "--ids" in args else ["--ids", "1,2"]
    message = _say_in_process(vits_onnx, [*ids, *args], tmp_path / "x.wav")
    assert all(word in message for word in words), message


POCKET_FAULTS = [
    (["--ids", "1,2,4001"], ["input id 4001", "0..4000"]),
    (["--ids", "-1"], ["input id -1", "0..4000"]),
    (["--ids", "12345678901234567890"], ["input id 12345678901234567890", "out of range"]),
    (["--ids", "1,2", "--temperature", "nan"], ["temperature", "nan"]),
    (["--ids", "1,2", "--length-scale", "100000"], ["length scale"]),
    (["--ids", "1,2", "--max-frames", "0"], ["max frames"]),
    (["--ids", "1,2", "--speed", "1.5"], ["pocket_tts", "no speaking-rate control"]),
    (["--ids", "1,2", "--chunk-frames", "4"], ["does not decode in chunks"]),
]


@pytest.mark.parametrize(("args", "words"), POCKET_FAULTS, ids=[" ".join(a) for a, _ in POCKET_FAULTS])
def test_pocket_onnx_faults_are_one_line(pocket_onnx: Path, tmp_path: Path, args, words) -> None:
    message = _say_in_process(pocket_onnx, args, tmp_path / "x.wav")
    assert all(word in message for word in words), message


@pytest.mark.parametrize("source", ["checkpoint", "vits_onnx", "pocket_onnx"])
def test_faults_in_a_real_process_are_one_stderr_line(
    source: str, tiny_vits_dir: Path, vits_onnx: Path, pocket_onnx: Path, tmp_path: Path
) -> None:
    """What a user's shell sees: exit 2, one line on stderr, no traceback (in-process runs cannot show
    what the interpreter prints at exit)."""
    path = {"checkpoint": tiny_vits_dir, "vits_onnx": vits_onnx, "pocket_onnx": pocket_onnx}[source]
    wav = tmp_path / "x.wav"
    _assert_one_error(_say(path, "--ids", "1,12345678901234567890", "-o", wav), "out of range")
    assert not wav.exists()


def test_the_vits_onnx_knows_its_vocabulary_from_its_graph(vits_onnx: Path, tiny_vits: FamilyModel) -> None:
    voice = open_voice(vits_onnx)
    assert voice.vocab_size == tiny_vits.describe()["vocab_size"] == 35
    # the last id is accepted, one more is refused before ONNX Runtime sees it
    assert voice.speak([1, 34, 2], SynthesisSettings()).size > 0


def test_one_sentence_gives_the_same_audio_as_before(tiny_vits: FamilyModel, tiny_vits_dir: Path) -> None:
    """Splitting must not touch a one-sentence input: its one piece is text_to_ids(text), and the
    audio is the whole-utterance synthesis, bit for bit."""
    voice = open_voice(tiny_vits_dir)
    pieces = voice.text_pieces(SENTENCE)
    assert pieces == [tiny_vits.text_to_ids(SENTENCE)]
    settings = SynthesisSettings(seed=3)
    whole = tiny_vits.synthesize(tiny_vits.torch_runner(), tiny_vits.text_to_ids(SENTENCE), settings).audio
    np.testing.assert_array_equal(voice.speak(pieces[0], settings), whole)


def test_several_sentences_are_spoken_one_by_one(
    tiny_vits: FamilyModel, tiny_vits_dir: Path, tmp_path: Path
) -> None:
    text = "hello world. small models can still sound like big ones! the end?"
    voice = open_voice(tiny_vits_dir)
    pieces = voice.text_pieces(text)
    assert pieces == [tiny_vits.text_to_ids(s) for s in split_sentences(text)] and len(pieces) == 3
    wav = tmp_path / "three.wav"
    result = _say(tiny_vits_dir, text, "-o", wav, "--json", "--seed", "2")
    assert result.returncode == 0, result.stderr
    # each sentence is decoded in chunks of frames (at least one per sentence)
    assert json.loads(result.stdout)["chunks"] >= 3
    audio, _ = sf.read(str(wav), dtype="float32")
    want = np.concatenate([voice.speak(p, SynthesisSettings(seed=2)) for p in pieces])
    np.testing.assert_allclose(audio, np.clip(want, -1, 1), atol=1.5 / 32767)


def test_run_on_input_is_cut_at_pauses_then_words_into_bounded_pieces(
    tiny_vits: FamilyModel, tiny_vits_dir: Path
) -> None:
    voice = open_voice(tiny_vits_dir)
    run_on = " ".join(["small models, can sound like big ones"] * 60)  # no sentence end: one sentence
    pieces = voice.text_pieces(run_on)
    assert len(pieces) > 1 and all(len(p) <= VITS_PIECE_IDS for p in pieces)
    space = tiny_vits.text_to_ids("a b")[3]  # the demo tokenizer interleaves blanks: a _ ' ' _ b
    ids = [tiny_vits.text_to_ids("a")[1], space] * 1000
    id_pieces = voice.id_pieces(ids)
    assert sum(id_pieces, []) == ids and all(len(p) <= VITS_PIECE_IDS for p in id_pieces)
    assert all(p[-1] == space for p in id_pieces[:-1])  # cut after word boundaries
    assert bisect_to_fit("one, two three", len, 9, text_rank) == ["one, ", "two three"]


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_text(tiny_vits_dir: Path, tmp_path: Path) -> None:
    """Before: 2,000 characters took 1.15 GB and 20,000 were OOM-killed at 22.5 GB. Now each sentence
    is rendered and written on its own: 20x the text must stay within 1.5x + 100 MB of the peak of
    the short one (the margin absorbs allocator noise and the longest sentence of each text differing;
    a one-piece render of the long text measured ~1.2 GB against ~0.5 GB, far outside it)."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "small", "models"]
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(words, 12)) + "." for _ in range(60)]
    short, long = " ".join(sentences[:3]), " ".join(sentences)
    assert len(long) > 15 * len(short)
    # a fresh parent per child: RUSAGE_CHILDREN's maxrss is the largest of all children waited for
    probe = (
        "import resource, subprocess, sys; "
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
        "print(r.returncode, peak, r.stdout.replace(chr(10), ' '))"
    )
    figures = {}
    for name, text in (("short", short), ("long", long)):
        wav = tmp_path / f"{name}.wav"
        # length scale 0.2: a fifth of the audio (and of the time) for the same ids and pieces
        cmd = [VOXPORT, "say", str(tiny_vits_dir), text, "-o", str(wav), "--json", "--length-scale", "0.2"]
        out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, timeout=900)
        code, peak_kb, stdout = out.stdout.split(" ", 2)
        assert code == "0", out.stderr
        figures[name] = (int(peak_kb) / 1024, json.loads(stdout)["seconds"], json.loads(stdout)["chunks"])
    (short_mb, short_s, short_n), (long_mb, long_s, long_n) = figures["short"], figures["long"]
    # 3 and 60 sentences, each decoded in one chunk of frames or more
    assert short_n >= 3 and 60 <= long_n < 20 * short_n
    assert long_mb < 1.5 * short_mb + 100, figures
    assert 10 < long_s / short_s < 30, figures  # the audio grows with the text, ~20x


def test_pocket_text_is_chunked_at_sentence_ends_as_kyutai_does(pocket_checkpoint: Path) -> None:
    """Sentences packed into chunks of at most 50 tokens, so no prompt grows with the text; a short
    text stays one chunk with exactly its text_to_ids (and Kyutai's frames-after-EOS rule for it)."""
    voice = open_voice(pocket_checkpoint)
    assert voice.text_pieces("Hello there, small model.") == [voice.text_to_ids("Hello there, small model.")]
    long = " ".join(["The quick brown fox jumps over the lazy dog."] * 40)
    pieces = voice.text_pieces(long)
    assert len(pieces) > 3 and all(len(p) <= POCKET_CHUNK_TOKENS for p in pieces)
    ids = list(range(1, 200))
    cut = voice.id_pieces(ids)
    assert sum(cut, []) == ids and len(cut) > 3 and all(len(p) <= POCKET_CHUNK_TOKENS for p in cut)


def test_say_speed_and_chunks_in_json(vits_onnx: Path, tmp_path: Path) -> None:
    """`--speed 2` is the voice at length scale 0.5, and --json reports the chunks `say` wrote, the time
    to first audio and the real-time factor, all measured on this run."""
    from typer.testing import CliRunner

    from voxport.cli import app

    def said(*args: str) -> dict:
        wav = tmp_path / f"{len(args)}.wav"
        ids = "1,5,9,13,17,21,25,29,33,2,6,10,14,18,22,26,30"
        result = CliRunner().invoke(
            app, ["say", str(vits_onnx), "--ids", ids, "-o", str(wav), "--json", *args]
        )
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    normal, fast = said(), said("--speed", "2", "--noise-w", "0.8")
    same_as_fast = said("--length-scale", "0.5", "--noise-w", "0.8", "--seed", "0")
    assert fast["seconds"] == same_as_fast["seconds"] < normal["seconds"]
    for info in (normal, fast):
        assert info["chunks"] >= 1 and info["first_audio_ms"] > 0 and info["real_time_factor"] > 0
    one = said("--chunk-frames", "1")
    assert one["chunks"] == round(one["seconds"] * one["sample_rate"] / 256)  # hop 256: a chunk per frame
