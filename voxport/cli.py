"""The `voxport` command: parse, call a stage, print a table (or JSON). Nothing else lives here.

Exit codes: 0 ok, 1 a parity threshold was missed, 2 bad input or usage.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from voxport import __version__
from voxport.errors import VoxportError

app = typer.Typer(
    name="voxport",
    help="Ship full-precision TTS checkpoints to edge devices: quantize, prune, export, prove parity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
recipes_app = typer.Typer(help="Validate recipes and print their JSON Schema.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")
import_app = typer.Typer(
    help="Bring checkpoints from other toolchains in as voxport checkpoints.", no_args_is_help=True
)
app.add_typer(import_app, name="import")

# Wide enough for the parity table when output is piped (rich falls back to 80 columns there).
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
OutOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="Output directory [default: build/<recipe name>].")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines on stderr.")]


def _fail(exc: VoxportError) -> None:
    err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def _run(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except VoxportError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def _log(quiet: bool) -> Callable[[str], None]:
    started = time.perf_counter()

    def log(message: str) -> None:
        if not quiet:
            err.print(f"[dim]{time.perf_counter() - started:6.1f}s[/dim] {message}", soft_wrap=True)

    return log


def _recipe_and_out(recipe_path: Path, out_dir: Path | None):  # noqa: ANN202
    from voxport.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    return recipe, out_dir if out_dir is not None else Path("build") / recipe.name


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _print_manifest(manifest: Any, out_dir: Path) -> None:
    table = Table(title=f"{manifest.recipe.get('name')} → {out_dir}", title_justify="left")
    for col in (
        "format",
        "precision",
        "MB",
        "bits/w",
        "forced SNR dB",
        "SNR dB",
        "log-mel dB",
        "MCD dB",
        "dur match",
        "len ratio",
        "parity",
        "file",
    ):
        table.add_column(
            col,
            justify="left" if col in ("format", "precision", "file", "parity") else "right",
            no_wrap=col == "file",
        )
    for a in manifest.artifacts:
        m = a.parity.metrics
        table.add_row(
            a.format,
            a.precision,
            f"{sum(f.bytes for f in a.files) / 1e6:.2f}",
            f"{a.bits_per_weight:.2f}",
            _fmt(m.get("forced_snr_db")),
            _fmt(m.get("snr_db")),
            _fmt(m.get("logmel_dtw_db"), 2),
            _fmt(m.get("mcd_db"), 2),
            _fmt(m.get("duration_match"), 3),
            _fmt(m.get("length_ratio"), 3),
            "[green]pass[/green]" if a.parity.passed else "[red]FAIL[/red]",
            a.path,
        )
    out.print(table)
    for a in manifest.artifacts:
        for failure in a.parity.failures:
            err.print(f"[red]parity failed[/red] {a.format} {a.precision}: {failure}", soft_wrap=True)


def _stage(stage: str, recipe: Path, out_dir: Path | None, quiet: bool) -> tuple[Any, Path]:
    """Load the recipe and run one pipeline function by name; every stage command is this call."""
    from voxport import pipeline

    r, o = _run(lambda: _recipe_and_out(recipe, out_dir))
    return _run(lambda: getattr(pipeline, stage)(r, o, _log(quiet))), o


def _finish(manifest: Any, out_dir: Path, as_json: bool) -> None:
    if as_json:
        out.print_json(manifest.model_dump_json())
    else:
        _print_manifest(manifest, out_dir)
    if not manifest.passed:
        raise typer.Exit(1)


@app.command()
def build(
    recipe: RecipeArg, out_dir: OutOpt = None, as_json: JsonOpt = False, quiet: QuietOpt = False
) -> None:
    """Run every stage of RECIPE: convert → quantize → export → validate.

    Example: voxport build recipes/demo-tiny-vits.yaml --out build/demo
    """
    manifest, o = _stage("build", recipe, out_dir, quiet)
    _finish(manifest, o, as_json)


@app.command()
def convert(recipe: RecipeArg, out_dir: OutOpt = None, quiet: QuietOpt = False) -> None:
    """Load the recipe's checkpoint (and prune it) into OUT/stages/checkpoint.

    Example: voxport convert recipes/demo-tiny-vits.yaml --out build/demo
    """
    _stage("convert", recipe, out_dir, quiet)


@app.command()
def quantize(recipe: RecipeArg, out_dir: OutOpt = None, quiet: QuietOpt = False) -> None:
    """Quantize the converted checkpoint once per precision into OUT/stages/quantized.

    Example: voxport quantize recipes/demo-tiny-vits.yaml --out build/demo
    """
    _stage("quantize", recipe, out_dir, quiet)


@app.command("export")
def export_cmd(recipe: RecipeArg, out_dir: OutOpt = None, quiet: QuietOpt = False) -> None:
    """Export every format × precision of the recipe from the quantized weights.

    Example: voxport export recipes/demo-tiny-vits.yaml --out build/demo
    """
    _stage("export", recipe, out_dir, quiet)


@app.command()
def validate(
    recipe: RecipeArg, out_dir: OutOpt = None, as_json: JsonOpt = False, quiet: QuietOpt = False
) -> None:
    """Measure parity of the exported artifacts; write report.json and manifest.json. Exit 1 on a miss.

    Example: voxport validate recipes/demo-tiny-vits.yaml --out build/demo
    """
    manifest, o = _stage("validate", recipe, out_dir, quiet)
    _finish(manifest, o, as_json)


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="Checkpoint dir/file, .onnx or .gguf artifact, or build dir.")],
    as_json: JsonOpt = False,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow pickled checkpoints.")] = False,
) -> None:
    """Describe a checkpoint or artifact: family, parameters, tensors by precision, bytes, bits per weight.

    Example: voxport inspect build/demo/onnx/demo-tiny-vits.int4.onnx
    """
    from voxport.inspect import inspect_path

    info = _run(lambda: inspect_path(path, trust_pickle=trust_pickle))
    if as_json:
        out.print_json(json.dumps(info))
        return
    table = Table(show_header=False, title=str(path), title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in info.items():
        if isinstance(value, dict | list):
            value = (
                json.dumps(value) if len(json.dumps(value)) < 200 else f"({len(value)} entries; see --json)"
            )
        table.add_row(key, str(value))
    out.print(table)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Argument(help="Where to write the checkpoint.")] = Path(
        "build/demo-checkpoint"
    ),
    seed: Annotated[int, typer.Option(help="Random seed of the weights.")] = 0,
) -> None:
    """Write the small random-weight VITS checkpoint the demo recipe uses (deterministic, no download).

    Example: voxport demo build/demo-checkpoint
    """
    from voxport.families.vits.synthetic import make_vits_checkpoint
    from voxport.io import ensure_writable_dir

    _run(lambda: make_vits_checkpoint(ensure_writable_dir(out_dir), seed=seed))
    err.print(f"wrote {out_dir}")


@import_app.command("piper")
def import_piper(
    voice: Annotated[
        str, typer.Argument(help="VOICE.onnx, a Piper training .ckpt, or an installed voice package.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint directory to write.")],
    config: Annotated[Path | None, typer.Option(help="The voice's JSON [default: VOICE.onnx.json].")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow a pickled .ckpt.")] = False,
) -> None:
    """Recover a full-precision checkpoint from a Piper voice (ONNX + JSON) or training checkpoint.

    Example: voxport import piper en_US-joe-medium.onnx --out checkpoints/joe
    """
    from voxport.convert import piper

    def run() -> Path:
        source = Path(voice)
        if source.suffix == ".ckpt":
            if config is None:
                raise VoxportError(
                    "a .ckpt needs --config VOICE.onnx.json (its phoneme map and audio settings)"
                )
            return piper.import_piper_checkpoint(source, config, out_dir, trust_pickle=trust_pickle)
        if source.exists():
            return piper.import_piper_onnx(source, config, out_dir)
        onnx_path, json_path = piper.resolve_voice_package(voice)
        return piper.import_piper_onnx(onnx_path, config or json_path, out_dir)

    written = _run(run)
    err.print(f"wrote {written}")


@app.command()
def say(
    source: Annotated[
        Path, typer.Argument(help="Checkpoint (dir, Piper .onnx) or exported <name>.<p>.onnx.")
    ],
    text: Annotated[str | None, typer.Argument(help="What to say.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="WAV file to write.")] = Path("say.wav"),
    ids: Annotated[str | None, typer.Option(help="Comma-separated input ids instead of text.")] = None,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    noise_scale: Annotated[float, typer.Option(help="Prior noise (0 = deterministic).")] = 0.667,
    noise_w: Annotated[float, typer.Option(help="Duration noise.")] = 0.8,
    length_scale: Annotated[float, typer.Option(help="> 1 speaks slower.")] = 1.0,
    speaker: Annotated[int | None, typer.Option(help="Speaker id of a multi-speaker voice.")] = None,
) -> None:
    """Synthesise TEXT with a checkpoint or an exported artifact and write a WAV file.

    Example: voxport say build/joe-medium/onnx/joe-medium.int8.onnx "Hello there." -o hello.wav
    """
    from voxport.families.base import SynthesisSettings
    from voxport.say import open_voice, write_wav

    def run() -> tuple[int, float]:
        if (text is None) == (ids is None):
            raise VoxportError("give the text to say, or --ids, but not both")
        voice = open_voice(source)
        if ids is not None:
            try:
                tokens = [int(t) for t in ids.split(",") if t.strip()]
            except ValueError:
                raise VoxportError(f"--ids must be comma-separated integers, got {ids!r}") from None
        else:
            tokens = voice.text_to_ids(text or "")
        settings = SynthesisSettings(
            seed=seed,
            noise_scale=noise_scale,
            noise_scale_duration=noise_w,
            length_scale=length_scale,
            speaker_id=speaker,
        )
        audio = voice.speak(tokens, settings)
        write_wav(output, audio, voice.sample_rate)
        return voice.sample_rate, audio.size / voice.sample_rate

    rate, seconds = _run(run)
    err.print(f"wrote {output} ({seconds:.2f} s at {rate} Hz)")


@recipes_app.command("check")
def recipes_check(files: Annotated[list[Path], typer.Argument(help="Recipe YAML files.")]) -> None:
    """Validate recipes; prints one line per file, exit 2 if any is invalid.

    Example: voxport recipes check recipes/*.yaml
    """
    from voxport.recipe import load_recipe

    bad = 0
    for file in files:
        try:
            r = load_recipe(file)
            out.print(f"ok  {file}: {r.name} ({', '.join(r.formats)} × {', '.join(r.precisions)})")
        except VoxportError as exc:
            bad += 1
            err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
    if bad:
        raise typer.Exit(2)


@recipes_app.command("schema")
def recipes_schema() -> None:
    """Print the recipe's JSON Schema (for editors).

    Example: voxport recipes schema > recipe.schema.json
    """
    from voxport.recipe import recipe_json_schema

    sys.stdout.write(json.dumps(recipe_json_schema(), indent=2) + "\n")


def _version(value: bool) -> None:
    if value:
        out.print(f"voxport {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """voxport: one recipe in, one folder of edge artifacts out, with proof they sound the same."""


def main() -> None:
    app()
