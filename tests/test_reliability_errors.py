"""Every fault a user can cause ends in one `error:` line and exit 2, never a traceback (issue 12).

The faults are real: a 1 MiB tmpfs that fills up (where this machine lets us mount one), a file size
limit (RLIMIT_FSIZE) that makes a write fail half-way, a read-only mount, a file where a directory
should be, /dev/zero and a FIFO as recipes, a real Core ML package with its weights removed. Commands
run as the console script in a child process, so the exit code and the last stderr line are what a
CI log shows.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from voxport.cli import app
from voxport.errors import BadInput, explain_os_error
from voxport.families.checkpoint import load_tensors
from voxport.inspect import inspect_path, not_a_voice
from voxport.recipe import MAX_RECIPE_BYTES, load_recipe

VOXPORT = str(Path(sys.executable).with_name("voxport"))
runner = CliRunner()


def voxport(
    *args: str, cwd: Path | None = None, preexec_fn: Callable[[], None] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VOXPORT, *args], capture_output=True, text=True, cwd=cwd, preexec_fn=preexec_fn, timeout=timeout
    )


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 2, no traceback, and the final stderr line is the error (nothing printed after it)."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = last_line(result.stderr)
    assert line.startswith("error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in line, line
    return line


def temporaries(root: Path) -> list[Path]:
    """Names `voxport.io.atomic_path` gives its temporaries; none may outlive a failed write."""
    return [p for p in root.rglob(".*") if re.search(r"\.(tmp|old)-[0-9a-f]{12}", p.name)]


def write_recipe(path: Path, model: Path, extra: str = "") -> Path:
    path.write_text(
        f"name: faults\nmodel: {model}\nformats: [onnx]\nprecisions: [fp32]\n"
        f'validate:\n  texts: ["hello."]\n  thresholds:\n    forced_snr_db: 3\n{extra}'
    )
    return path


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "1m") -> Iterator[bool]:
    """A small tmpfs at `where` when this machine lets us mount one (root, no seccomp filter), else
    yields False; always unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def file_size_limit(limit: int) -> Callable[[], None]:
    """preexec_fn: writes beyond `limit` bytes fail with EFBIG. SIGXFSZ (which kills by default) is
    ignored so the write raises OSError, which is what a file system quota looks like to Python."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.fixture(scope="module")
def built(tiny_vits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished build with an int8 ONNX and an int8 GGUF artifact (in-process: torch is loaded)."""
    tmp = tmp_path_factory.mktemp("built")
    recipe = tmp / "r.yaml"
    recipe.write_text(
        f"name: said\nmodel: {tiny_vits_dir}\nformats: [onnx, gguf]\nprecisions: [int8]\n"
        'validate:\n  texts: ["hello."]\n  thresholds:\n    forced_snr_db: -100\n'
    )
    result = runner.invoke(app, ["build", str(recipe), "--out", str(tmp / "out"), "-q"])
    assert result.exit_code == 0, result.output
    return tmp / "out"


# --- --cache-dir checked before any work ------------------------------------------------------------


def test_cache_dir_that_is_a_file_fails_before_any_work(tiny_vits_dir: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_vits_dir)
    cache = tmp_path / "cache"
    cache.write_text("not a directory\n")
    out = tmp_path / "out"
    for cache_arg in (cache, cache / "sub"):  # the file itself, and a path through it
        result = voxport("build", str(recipe), "--out", str(out), "--cache-dir", str(cache_arg), "--json")
        line = assert_one_line_error(result, f"cache directory {cache_arg}", "choose another --cache-dir")
        assert json.loads(result.stdout) == {"error": line.removeprefix("error: "), "exit_code": 2}
        assert not out.exists()  # refused before the output directory was even created
    assert cache.read_text() == "not a directory\n"


def test_read_only_cache_dir_fails_before_any_work(tiny_vits_dir: Path, tmp_path: Path) -> None:
    """Permission bits do not stop root, so the directory is a tmpfs remounted read-only where this
    machine allows mounting, and a chmod 0o500 directory for a non-root user."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_vits_dir)
    cache = tmp_path / "ro-cache"
    with tmpfs(cache) as mounted:
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(cache)], check=True)
        elif os.geteuid() != 0:
            cache.chmod(0o500)
        else:
            pytest.skip("root without mount permission: nothing makes a directory read-only for root here")
        result = voxport(
            "build", str(recipe), "--out", str(tmp_path / "out"), "--cache-dir", str(cache), "-q"
        )
        assert_one_line_error(
            result, f"cache directory {cache} is not writable", "choose another --cache-dir"
        )
        assert not (tmp_path / "out").exists()


# --- full disk and file size limits under --out ------------------------------------------------------


def test_full_disk_under_out_is_one_line_naming_the_file(tiny_vits_dir: Path, tmp_path: Path) -> None:
    """A 1 MiB tmpfs as --out: the 1.7 MB converted checkpoint cannot fit (ENOSPC half-way through)."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_vits_dir)
    disk = tmp_path / "disk"
    with tmpfs(disk, "1m") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here; the RLIMIT_FSIZE tests cover the same path")
        out = disk / "out"
        result = voxport(
            "build", str(recipe), "--out", str(out), "--cache-dir", str(tmp_path / "c"), "--json"
        )
        line = assert_one_line_error(
            result,
            f"no space left on device writing {out}/stages/checkpoint/model.safetensors",
            "free space there or choose another --out",
        )
        assert json.loads(result.stdout) == {"error": line.removeprefix("error: "), "exit_code": 2}
        assert not (out / "stages" / "checkpoint" / "model.safetensors").exists()
        assert temporaries(disk) == []


def test_write_over_the_file_size_limit_is_one_line(tiny_vits_dir: Path, tmp_path: Path) -> None:
    """RLIMIT_FSIZE 1 MiB: the first write past it (the 1.7 MB converted checkpoint) fails with EFBIG
    mid-file; the error names the file and the temporary it was going into is gone."""
    write_recipe(tmp_path / "r.yaml", tiny_vits_dir)
    result = voxport("build", "r.yaml", "--out", "out", cwd=tmp_path, preexec_fn=file_size_limit(1 << 20))
    assert_one_line_error(
        result, "file too large writing out/stages/checkpoint/model.safetensors", "choose another --out"
    )
    assert "convert:" in result.stderr  # progress lines came first; the error is still the last line
    assert not (tmp_path / "out" / "stages" / "checkpoint" / "model.safetensors").exists()
    assert temporaries(tmp_path) == []


@pytest.mark.slow
def test_export_write_over_the_limit_leaves_no_artifact(tiny_vits_dir: Path, tmp_path: Path) -> None:
    """1.9 MB lets the checkpoint (1.73 MB) and quantized weights (1.78 MB) through and stops the
    fp32 ONNX artifact (2.10 MB) half-way: no file under the artifact's name, no temporary."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_vits_dir)
    result = voxport(
        "build", str(recipe), "--out", "out", cwd=tmp_path, preexec_fn=file_size_limit(1_900_000)
    )
    assert_one_line_error(result, "file too large writing out/onnx/faults.fp32.onnx", "choose another --out")
    assert not (tmp_path / "out" / "onnx" / "faults.fp32.onnx").exists()
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert temporaries(tmp_path) == []


def test_error_is_the_last_line_under_a_terminal_progress_display(
    tiny_vits_dir: Path, tmp_path: Path
) -> None:
    """On a terminal stderr gets rich's live bars; the error must come after their teardown (the
    cursor is shown again), not above a display that is then redrawn or erased."""
    import pty

    write_recipe(tmp_path / "r.yaml", tiny_vits_dir)
    master, slave = pty.openpty()
    child = subprocess.Popen(
        [VOXPORT, "build", "r.yaml", "--out", "out"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        preexec_fn=file_size_limit(1 << 20),
        env={**os.environ, "TERM": "xterm", "COLUMNS": "120"},
    )
    os.close(slave)
    raw = b""
    with contextlib.suppress(OSError):  # EIO once the child closed its end
        while chunk := os.read(master, 65536):
            raw += chunk
    os.close(master)
    assert child.wait(timeout=600) == 2
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.decode(errors="replace"))  # drop cursor/colour codes
    segments = [s for s in re.split(r"[\r\n]", text) if s.strip()]
    assert "loading the checkpoint" in text  # the live display really ran
    assert segments[-1].startswith("error: file too large writing out/stages/checkpoint/model.safetensors")


def test_atomic_write_past_the_limit_removes_its_temporary_and_names_the_target(tmp_path: Path) -> None:
    """The mechanism under the CLI: a real EFBIG from `write()` carries no file name; atomic_path
    deletes its temporary and names the file the caller asked for."""
    script = (
        "import sys\nfrom voxport.io import atomic_write_bytes\n"
        "try:\n    atomic_write_bytes(sys.argv[1], bytes(200_000))\n"
        "except OSError as exc:\n    print(exc.errno, exc.filename)\n"
    )
    target = tmp_path / "big.bin"
    result = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        capture_output=True,
        text=True,
        preexec_fn=file_size_limit(65_536),
        timeout=60,
    )
    assert result.stdout.split() == [str(__import__("errno").EFBIG), str(target)], result.stderr
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary


def test_os_errors_become_one_line_with_the_option_that_chose_the_place(tmp_path: Path) -> None:
    """Real errors from the OS, explained: which path, what happened, which option to change."""
    blocker = tmp_path / "out"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError) as not_dir:
        (blocker / "onnx").mkdir()
    message = str(explain_os_error(not_dir.value, [(tmp_path / "cache", "--cache-dir"), (blocker, "--out")]))
    assert (
        message
        == f"not a directory: {blocker}/onnx (a file is in the way); remove that file or choose another --out"
    )
    with pytest.raises(IsADirectoryError) as is_dir:
        open(tmp_path, "wb")  # noqa: SIM115
    message = str(explain_os_error(is_dir.value, [(tmp_path, "-o")]))
    assert (
        message
        == f"{tmp_path} is a directory where a file was expected; remove that directory or choose another -o"
    )
    # a path outside every place the user chose gets no option named
    assert str(
        explain_os_error(OSError(28, "No space left on device", "/elsewhere/x"), [(tmp_path, "--out")])
    ) == ("no space left on device writing /elsewhere/x; free space there or choose another location")


# --- the error is the last line ---------------------------------------------------------------------


@pytest.mark.slow
def test_parity_miss_ends_with_an_error_line(built: Path, tmp_path: Path) -> None:
    """Exit 1 too: after the progress lines, the table and the per-metric failures comes one verdict.
    The finished build is copied (its stage cache with it) and validated against a limit it misses."""
    import shutil

    out = shutil.copytree(built, tmp_path / "out", symlinks=True)
    recipe = tmp_path / "strict.yaml"
    recipe.write_text(
        (built.parent / "r.yaml").read_text().replace("forced_snr_db: -100", "forced_snr_db: 500")
    )
    result = voxport("validate", str(recipe), "--out", str(out))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "parity failed onnx int8: forced_snr_db" in result.stderr
    report = out / "report.html"
    assert (
        last_line(result.stderr)
        == f"error: 2 of 2 artifacts missed the recipe's parity thresholds; see {report}"
    )


# --- recipes: bounded reads ---------------------------------------------------------------------------


def test_recipes_check_dev_zero_exits_quickly(tmp_path: Path) -> None:
    """It used to read 7.2 GB in 15 s. The 60 s timeout is for a loaded 2-core CI machine; the check
    itself is a stat and takes no measurable time."""
    started = time.perf_counter()
    result = voxport("recipes", "check", "/dev/zero", timeout=60)
    assert time.perf_counter() - started < 60
    assert_one_line_error(result, "/dev/zero: is a character device, not a recipe file")


def test_recipe_fifo_big_file_and_extends_are_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # opening it to read would block until a writer came
    with pytest.raises(BadInput, match=r"pipe.yaml: is a named pipe \(FIFO\), not a recipe file"):
        load_recipe(fifo)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# padding\n" * (MAX_RECIPE_BYTES // 10 + 1))
    with pytest.raises(BadInput, match="is larger than 1 MiB"):
        load_recipe(big)
    for base in ("/dev/zero", str(fifo)):
        child = tmp_path / "child.yaml"
        child.write_text(f"extends: {base}\nname: x\n")
        with pytest.raises(
            BadInput, match=rf"child.yaml:1: extends: {re.escape(base)} is not a regular file"
        ):
            load_recipe(child)


# --- recipes: messages --------------------------------------------------------------------------------


def _threshold_error(tmp_path: Path, line: str) -> str:
    recipe = tmp_path / "t.yaml"
    recipe.write_text(
        'name: t\nmodel: ck\nvalidate:\n  texts: ["hello."]\n  thresholds:\n    forced_snr_db: 3\n'
        f"    {line}\n"
    )
    with pytest.raises(BadInput) as info:
        load_recipe(recipe)
    return str(info.value)


def test_nan_threshold_is_reported_at_its_own_key_and_line(tmp_path: Path) -> None:
    assert _threshold_error(tmp_path, "logmel_dtw_db: .nan") == (
        f"{tmp_path}/t.yaml:7: validate.thresholds.logmel_dtw_db: must be a finite number, got nan"
    )
    assert _threshold_error(tmp_path, "length_ratio: .inf").startswith(
        f"{tmp_path}/t.yaml:7: validate.thresholds.length_ratio: must be a finite number"
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("logmel_dtw_db: -5", "logmel_dtw_db: max -5 can never pass: logmel_dtw_db is never below 0"),
        ("mcd_db: {max: -0.5}", "mcd_db: max -0.5 can never pass: mcd_db is never below 0"),
        ("duration_match: 1.5", "duration_match: min 1.5 can never pass: duration_match is at most 1"),
        ("duration_match: -0.2", "duration_match: min -0.2 checks nothing: duration_match is never below 0"),
        ("length_ratio: {max: -1}", "length_ratio: max -1 can never pass: length_ratio is never below 0"),
    ],
)
def test_threshold_outside_the_metric_range_is_refused_at_its_line(
    tmp_path: Path, line: str, message: str
) -> None:
    assert _threshold_error(tmp_path, line).startswith(f"{tmp_path}/t.yaml:7: validate.thresholds.{message}")


def test_threshold_range_check_covers_precision_thresholds_and_allows_sane_limits(tmp_path: Path) -> None:
    recipe = tmp_path / "p.yaml"
    recipe.write_text(
        'name: t\nmodel: ck\nvalidate:\n  texts: ["hi."]\n  precision_thresholds:\n    int4:\n'
        "      logmel_dtw_db: -1\n"
    )
    with pytest.raises(
        BadInput, match=r"p.yaml:7: validate.precision_thresholds.int4.logmel_dtw_db: max -1 can"
    ):
        load_recipe(recipe)
    # SNRs may be negative; a length_ratio tolerance above 1 keeps a lower bound of 0; 0 is a real limit
    recipe.write_text(
        'name: t\nmodel: ck\nvalidate:\n  texts: ["hi."]\n  thresholds:\n'
        "    snr_db: -20\n    length_ratio: 2\n    logmel_dtw_db: 0\n    duration_match: 1\n"
    )
    limits = load_recipe(recipe).validation.thresholds  # type: ignore[union-attr]
    assert limits["length_ratio"].min == 0 and limits["length_ratio"].max == 3
    assert limits["snr_db"].min == -20 and limits["logmel_dtw_db"].max == 0


def test_pickle_refusal_names_the_remedy_of_each_command(tmp_path: Path) -> None:
    weights = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, weights)
    with pytest.raises(BadInput) as info:
        load_tensors(weights)
    message = str(info.value)
    assert "set `trust_pickle: true` in the recipe (build, convert)" in message
    assert "pass --trust-pickle (inspect, import piper)" in message


# --- inspect and say: what the thing is -------------------------------------------------------------


@pytest.fixture(scope="module")
def mlpackage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Core ML package (one 64×64 linear layer; its weights go to weights/weight.bin)."""
    import coremltools as ct

    layer = torch.nn.Linear(64, 64).eval()
    traced = torch.jit.trace(layer, torch.zeros(1, 64))
    model = ct.convert(
        traced,
        inputs=[ct.TensorType(name="x", shape=(1, 64))],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS18,
    )
    path = tmp_path_factory.mktemp("coreml") / "lin.mlpackage"
    model.save(str(path))
    assert (path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size > 64 * 64 * 2
    return path


def _copy_package(source: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(source, dest)
    return dest


def test_inspect_mlpackage_missing_or_damaged_weights_is_one_line(mlpackage: Path, tmp_path: Path) -> None:
    assert inspect_path(mlpackage)["kind"] == "coreml"
    missing = _copy_package(mlpackage, tmp_path / "missing.mlpackage")
    (missing / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").unlink()
    result = voxport("inspect", str(missing))
    assert_one_line_error(
        result, "incomplete Core ML package: Data/com.apple.CoreML/weights/weight.bin is missing"
    )
    damaged = _copy_package(mlpackage, tmp_path / "damaged.mlpackage")
    os.truncate(damaged / "Data" / "com.apple.CoreML" / "weights" / "weight.bin", 100)
    with pytest.raises(BadInput, match="damaged Core ML package: its weights do not read back"):
        inspect_path(damaged)
    (tmp_path / "hollow.mlpackage").mkdir()
    with pytest.raises(BadInput, match="not a Core ML package"):
        inspect_path(tmp_path / "hollow.mlpackage")


def test_inspect_empty_or_hollow_onnx_exits_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty.onnx"
    empty.touch()
    result = voxport("inspect", str(empty), "--json")
    line = assert_one_line_error(result, "not a valid ONNX model (0 bytes)")
    assert json.loads(result.stdout)["error"] == line.removeprefix("error: ")
    hollow = tmp_path / "hollow.onnx"
    hollow.write_bytes(b"\x08\x07")  # protobuf reads this as a ModelProto with ir_version 7 and no graph
    with pytest.raises(BadInput, match="not a valid ONNX model \\(no graph nodes\\)"):
        inspect_path(hollow)


def test_say_on_things_it_does_not_run_says_what_they_are(
    built: Path, mlpackage: Path, tmp_path: Path
) -> None:
    onnx = built / "onnx" / "said.int8.onnx"
    result = voxport("say", str(built / "gguf" / "said.int8.gguf"), "hi", "-o", str(tmp_path / "a.wav"))
    assert_one_line_error(
        result,
        "say runs ONNX artifacts and checkpoints; this is a GGUF file",
        f"use the .onnx artifact of the same build: {onnx}",
    )
    result = voxport("say", str(built), "hi", "-o", str(tmp_path / "a.wav"))
    assert_one_line_error(result, f"{built} is a build directory; pass one of its artifacts, e.g. {onnx}")
    assert "Core ML package" in (not_a_voice(mlpackage) or "")
    empty = tmp_path / "empty.onnx"
    empty.touch()
    assert "not a valid ONNX model (0 bytes)" in (not_a_voice(empty) or "")
    assert not (tmp_path / "a.wav").exists()
    # inspect describes a build directory rather than calling it an unknown architecture
    assert inspect_path(built)["kind"] == "build"


def test_say_onto_a_full_disk_or_a_directory_is_one_line(tiny_vits_dir: Path, tmp_path: Path) -> None:
    """`say -o` past a 10 kB file size limit (the WAV's first second is 32 kB), and onto an existing
    directory: one `error:` line naming -o, no WAV left behind (libsndfile used to raise its own
    "System error." traceback for the first)."""
    ids = ",".join(str(i) for i in range(1, 31))
    full = voxport(
        "say",
        str(tiny_vits_dir),
        "--ids",
        ids,
        "-o",
        "x.wav",
        cwd=tmp_path,
        preexec_fn=file_size_limit(10_000),
    )
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("error: file too large writing x.wav") and "-o" in last, last
    (tmp_path / "d").mkdir()
    onto_dir = voxport("say", str(tiny_vits_dir), "--ids", ids, "-o", "d", cwd=tmp_path)
    assert onto_dir.returncode == 2, onto_dir.stderr
    assert onto_dir.stderr.strip().splitlines()[-1].startswith("error: d is a directory"), onto_dir.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"] and not any((tmp_path / "d").iterdir())
