"""The `voxport` command: parse, call a stage, print a table (or JSON). Nothing else lives here.

Exit codes: 0 ok, 1 a parity threshold was missed (or `verify` found a mismatch), 2 bad input or usage.
Every command takes `--json` (exactly one JSON document on stdout, nothing else there; on an error
`{"error": ..., "exit_code": N}`) and `--quiet` (no progress or info lines on stderr; errors still go
there). Progress is rendered by a `voxport.progress.Progress` picked once per command: bars on a
terminal, timed lines in a CI log, nothing with `--quiet`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from voxport import __version__
from voxport.errors import BadInput, VoxportError, explain_os_error
from voxport.progress import LineProgress, NullProgress, Progress, RichProgress

if TYPE_CHECKING:  # the families load torch: imported where a command needs them
    from voxport.families.base import Family, SynthesisSettings

app = typer.Typer(
    name="voxport",
    help="Ship full-precision TTS checkpoints to edge devices: quantize, prune, export, prove parity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
recipes_app = typer.Typer(help="Validate recipes and print their JSON Schema.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")

# Wide enough for the parity table when output is piped (rich falls back to 80 columns there).
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
OutOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="Output directory [default: build/<recipe name>].")
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout (errors too) instead of a table.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or info lines on stderr.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Ignore the stage cache: recompute every stage.")]
PruneCacheOpt = Annotated[
    bool,
    typer.Option("--prune-cache", help="After the build, delete cache entries it did not use (CI caches)."),
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        envvar="VOXPORT_CACHE_DIR",
        help="Stage cache directory, shareable between builds [default: OUT/stages/cache].",
        show_default=False,
    ),
]


# --- output helpers -------------------------------------------------------------------------------------
#: set once a command printed its JSON document; `main` adds an error document only if none was printed
_emitted = False


def _emit_json(data: Any, *, indent: int | None = 2) -> None:
    """The one JSON document of a --json run; strict JSON (no NaN), so jq and `fromJSON` accept it."""
    from voxport.io import to_jsonable

    global _emitted
    _emitted = True
    sys.stdout.write(json.dumps(to_jsonable(data), indent=indent, allow_nan=False) + "\n")
    sys.stdout.flush()


def _info(message: str, quiet: bool) -> None:
    """A human note on stderr ("wrote X"); stdout is kept for the result."""
    if not quiet:
        err.print(escape(message), soft_wrap=True)


def _fail(exc: VoxportError, as_json: bool = False) -> None:
    err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
    if as_json:
        _emit_json({"error": str(exc), "exit_code": exc.exit_code})
    raise typer.Exit(exc.exit_code)


#: (directory, option) pairs the user chose on the command line, for `explain_os_error`'s hint
Places = Sequence[tuple[Path | None, str]]


def _run(fn: Callable[[], Any], as_json: bool = False, places: Places = ()) -> Any:
    """Call a command's work; a user-facing failure becomes one `error:` line (and the JSON error
    document) with its exit code, never a traceback.

    File system errors (a full disk, a read-only mount, a file where a directory should be) are the
    user's to fix, so an `OSError` gets the same treatment, naming the path and, through `places`,
    the option that chose it. Any other exception is a bug in voxport and keeps its traceback."""
    try:
        return fn()
    except VoxportError as exc:
        _fail(exc, as_json)
    except OSError as exc:
        _fail(explain_os_error(exc, places), as_json)
    except KeyboardInterrupt:
        err.print("interrupted")
        if as_json:
            _emit_json({"error": "interrupted", "exit_code": 130})
        raise typer.Exit(130) from None


def _progress(quiet: bool) -> AbstractContextManager[Progress]:
    """Bars only when a person watches stderr; a CI log gets timed lines; --quiet gets nothing."""
    if quiet:
        return nullcontext(NullProgress())
    if sys.stderr.isatty():
        return RichProgress(err)
    return nullcontext(LineProgress(sys.stderr))


@contextmanager
def _silenced(quiet: bool) -> Iterator[None]:
    """--quiet also means no library bars: transformers draws tqdm bars on stderr when it saves a
    checkpoint (convert, demo, import). Restored afterwards, for callers that invoke the app in-process."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _recipe_and_out(recipe_path: Path, out_dir: Path | None):  # noqa: ANN202
    from voxport.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    return recipe, out_dir if out_dir is not None else Path("build") / recipe.name


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


#: the core metrics the build table shows, in column order (labels and digits: `CORE_METRICS`); a
#: family's own metrics (`Family.metrics`) follow, each where some artifact reports it
TABLE_METRICS = ("forced_snr_db", "snr_db", "logmel_dtw_db", "mcd_db", "duration_match", "length_ratio")


def metric_columns(
    family: str | None, artifact_metrics: Iterable[Mapping[str, float | None]]
) -> list[tuple[str, str, int]]:
    """(column, metric, digits) of a build's table: TABLE_METRICS, then the metrics of `family` and the
    ASR gate's (`wer`, `wer_increase`) that some artifact has a figure for. Shared with
    benchmarks/readme_build_table.py."""
    from voxport.families.registry import families
    from voxport.validate.asr import ASR_METRICS
    from voxport.validate.thresholds import CORE_METRICS, spec_named

    core = [spec for name in TABLE_METRICS if (spec := spec_named(name, CORE_METRICS)) is not None]
    family_cls = families().get(family) if family is not None else None
    measured = list(artifact_metrics)
    # the family's own metrics, then the ASR gate's (validate.asr), where some artifact has a figure
    own = [
        spec
        for spec in (*(family_cls.metrics if family_cls is not None else ()), *ASR_METRICS)
        if any(m.get(spec.name) is not None for m in measured)
    ]
    return [(spec.label, spec.name, spec.digits) for spec in (*core, *own)]


def _print_manifest(manifest: Any, out_dir: Path) -> None:
    table = Table(title=f"{manifest.recipe.get('name')} → {out_dir}", title_justify="left")
    columns = metric_columns(manifest.model.family, [a.parity.metrics for a in manifest.artifacts])
    for col in ("format", "precision", "MB", "bits/w", *[c for c, _, _ in columns], "parity", "file"):
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
            *[_fmt(m.get(metric), digits) for _, metric, digits in columns],
            "[green]pass[/green]" if a.parity.passed else "[red]FAIL[/red]",
            a.path,
        )
    out.print(table)


def _print_parity_failures(manifest: Any) -> None:
    for a in manifest.artifacts:
        for failure in a.parity.failures:
            unit = " ".join(filter(None, (a.format, a.precision, a.layout)))  # "onnx fp32 sherpa-onnx"
            err.print(f"[red]parity failed[/red] {unit}: {escape(failure)}", soft_wrap=True)


# --- stages ---------------------------------------------------------------------------------------------
def _stage(
    stage: str, recipe: Path, out_dir: Path | None, quiet: bool, as_json: bool, **options: Any
) -> tuple[Any, Any, Path]:
    """Load the recipe and run one pipeline function by name; every stage command is this call.

    Returns (recipe, what the stage returned, output dir)."""
    from voxport import pipeline

    r, o = _run(lambda: _recipe_and_out(recipe, out_dir), as_json)
    cache_dir = options.get("cache_dir")
    if cache_dir is not None:
        _run(lambda: _writable_cache(cache_dir), as_json)

    def run() -> Any:
        # the error line is printed after the progress display is torn down, so it is the last line
        with _silenced(quiet), _progress(quiet) as progress:
            return getattr(pipeline, stage)(r, o, progress, **options)

    result = _run(run, as_json, places=[(cache_dir, "--cache-dir"), (o, "--out")])
    return r, result, o


def _writable_cache(cache_dir: Path) -> None:
    """A file, a read-only mount or an unwritable directory as --cache-dir fails now, not after the
    first stage has run for minutes and tries to store its result."""
    from voxport.io import ensure_writable_dir

    ensure_writable_dir(cache_dir, what="cache directory", option="--cache-dir")


def _finish(manifest: Any, out_dir: Path, as_json: bool) -> None:
    if as_json:
        _emit_json(json.loads(manifest.model_dump_json()))
    else:
        _print_manifest(manifest, out_dir)
    _print_parity_failures(manifest)
    if not manifest.passed:
        # a CI log's last line is what people read first: make it the verdict, as for any failure
        missed = sum(not a.parity.passed for a in manifest.artifacts)
        err.print(
            f"[red]error:[/red] {missed} of {len(manifest.artifacts)} artifacts missed the recipe's parity "
            f"thresholds; see {escape(str(out_dir / 'report.html'))}",
            soft_wrap=True,
        )
        raise typer.Exit(1)


@app.command()
def build(
    recipe: RecipeArg,
    out_dir: OutOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    cache_dir: CacheDirOpt = None,
    prune_cache: PruneCacheOpt = False,
) -> None:
    """Run every stage of RECIPE: convert → quantize → export → validate. Exit 1 if parity fails.

    Stages whose inputs did not change are restored from the stage cache instead of recomputed.

    Example: voxport build recipes/demo-tiny-vits.yaml --out build/demo --cache-dir .voxport-cache
    """
    _, manifest, o = _stage(
        "build", recipe, out_dir, quiet, as_json, force=force, cache_dir=cache_dir, prune_cache=prune_cache
    )
    _finish(manifest, o, as_json)


@app.command()
def convert(
    recipe: RecipeArg,
    out_dir: OutOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Load the recipe's checkpoint (and prune it) into OUT/stages/checkpoint.

    Example: voxport convert recipes/demo-tiny-vits.yaml --out build/demo
    """
    _, model, o = _stage("convert", recipe, out_dir, quiet, as_json, force=force, cache_dir=cache_dir)
    if as_json:
        from voxport.pipeline import Layout

        _emit_json(
            {
                "stage": "convert",
                "out": o,
                "checkpoint": Layout(o).checkpoint,
                "family": model.family,
                "parameters": model.parameters(),
            }
        )


@app.command()
def quantize(
    recipe: RecipeArg,
    out_dir: OutOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Quantize the converted checkpoint once per precision into OUT/stages/quantized.

    Example: voxport quantize recipes/demo-tiny-vits.yaml --out build/demo
    """
    r, _, o = _stage("quantize", recipe, out_dir, quiet, as_json, force=force, cache_dir=cache_dir)
    from voxport.pipeline import Layout
    from voxport.quantize.stage import quantized_info

    layout = Layout(o)
    info = {p: quantized_info(layout.quantized(p)) for p in r.precisions}
    if as_json:
        files = {p: layout.quantized(p) for p in r.precisions}
        _emit_json(
            {
                "stage": "quantize",
                "out": o,
                "precisions": list(r.precisions),
                "files": files,
                "modules": {p: i.get("summary", []) for p, i in info.items()},
                "budgets": {p: i["budget"] for p, i in info.items() if i.get("budget")},
            }
        )
    elif not quiet:
        _print_quantize_summary(info, layout)


def _print_quantize_summary(info: dict[str, dict[str, Any]], layout: Any) -> None:
    """Per integer precision, what was done to each module: stored precision, method, and its error
    relative to rtn's codes (the method's own error measure; < 1 is better than rounding to nearest)."""
    for precision, data in info.items():
        rows = [row for row in data.get("summary", []) if row.get("error_vs_rtn") is not None]
        if not rows:
            continue
        budget = data.get("budget")
        title = f"quantize {precision} ({data.get('method')})"
        if budget:
            title += (
                f": budget {budget['budget_bits_per_weight']} → {budget['bits_per_weight']:.3f} bits/weight, "
                f"mix in {layout.budget_plan(precision)}"
            )
        table = Table(title=title, title_justify="left")
        for col in ("module", "weights", "stored", "method", "error ÷ rtn"):
            table.add_column(col, justify="right" if col in ("weights", "error ÷ rtn") else "left")
        for row in rows:
            table.add_row(
                row["module"],
                str(row["weights"]),
                row["precision"],
                row["method"],
                f"{row['error_vs_rtn']:.3f}",
            )
        out.print(table)


@app.command("export")
def export_cmd(
    recipe: RecipeArg,
    out_dir: OutOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Export every format × precision of the recipe from the quantized weights.

    Example: voxport export recipes/demo-tiny-vits.yaml --out build/demo
    """
    _, index, o = _stage("export", recipe, out_dir, quiet, as_json, force=force, cache_dir=cache_dir)
    if as_json:
        _emit_json({"stage": "export", "out": o, "artifacts": index})


@app.command("stream-export")
def stream_export_cmd(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            help="Checkpoint of a family with streaming conversion (Voxtral TTS) [default: --recipe's model]."
        ),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output directory; files go to OUT/<format>/.")
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(
            help="Take formats, precisions and the quantize mix (method, block size, overrides) from it."
        ),
    ] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, fp16, int8 or int4 [default: int4].")] = None,
    formats: Annotated[
        list[str] | None,
        typer.Option("--format", "-f", help="A format to write (repeatable) [default: onnx]."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="File stem [default: the checkpoint's name].")] = None,
    method: Annotated[str, typer.Option(help="An uncalibrated quantization method: rtn or mse.")] = "rtn",
    block_size: Annotated[int, typer.Option(help="int4 block size (elements per scale).")] = 32,
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="Load each written file in its runtime afterwards.")
    ] = True,
    family: Annotated[str | None, typer.Option(help="The checkpoint's family [default: detected].")] = None,
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="Allow pickled files (voices).")
    ] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Convert a checkpoint too large to load (Voxtral TTS, 4B) one weight at a time: weightless graphs,
    each weight read, quantized and written before the next, so peak memory stays near one weight.

    No parity check runs (a full-precision reference of this size does not fit beside the exporter).
    What runs: each ONNX graph is loaded in ONNX Runtime (in a child process) and run on its example
    inputs, its output shapes compared with the torch graph's (--no-check skips it). The table ends with
    wall time and this process's peak RSS. For checkpoints that fit, `voxport build` does more.
    --recipe builds a device recipe's streamable formats (ONNX, GGUF) at each of its precisions with its
    mix; the checkpoint argument then replaces the recipe's model.

    Example: voxport stream-export checkpoints/voxtral-4b --recipe recipes/voxtral-phone.yaml --out build/vx
    """
    from voxport.export.stream import STREAMERS, stream_export
    from voxport.families.registry import detect_family

    def jobs() -> tuple[Path, list[str], list[dict[str, Any]], str | None, bool]:
        """(checkpoint, formats, one stream_export keyword set per precision, stem, trust_pickle)."""
        if recipe is None:
            if checkpoint is None:
                raise VoxportError("give a checkpoint, or --recipe RECIPE to use its model")
            one = {"precision": precision or "int4", "method": method, "block_size": block_size}
            return checkpoint, formats or ["onnx"], [one], name, trust_pickle
        from voxport.recipe import load_recipe

        r = load_recipe(recipe)
        q = r.quantize
        if q.budget:
            raise VoxportError(
                f"{recipe}: quantize.budget picks a mix by letting the model speak, which a streamed export "
                "cannot; give the mix as precision_overrides, or build with `voxport build`"
            )
        chosen = formats or [f for f in r.formats if f in STREAMERS]
        skipped = [f for f in r.formats if f not in STREAMERS and not formats]
        if skipped and not quiet:
            streamable = ", ".join(sorted(STREAMERS))
            err.print(f"stream-export writes {streamable}; skipping the recipe's {', '.join(skipped)}")
        if not chosen:
            raise VoxportError(f"{recipe}: none of its formats ({', '.join(r.formats)}) can be streamed")
        runs = [
            {
                "precision": p,
                "method": q.method,
                "block_size": q.block_size,
                "overrides": q.overrides_for(p),
                "int8_block_size": q.int8_block_size,
                "gguf_types": r.export.gguf.types.get(p),
            }
            for p in ([precision] if precision else r.precisions)
        ]
        return checkpoint or r.model, chosen, runs, name or r.name, trust_pickle or r.trust_pickle

    def run() -> list[Any]:
        if out_dir is None:
            raise VoxportError("give the output directory with --out DIR")
        path, chosen_formats, runs, stem, pickle_ok = jobs()
        chosen = detect_family(path, family)
        source = chosen.stream_source(path, trust_pickle=pickle_ok)
        stem = stem or (path if path.is_dir() else path.parent).resolve().name
        reports = []
        with _progress(quiet) as progress:
            for options in runs:
                reports.append(
                    stream_export(
                        source,
                        chosen_formats,
                        out_dir=out_dir,
                        stem=stem,
                        check=check,
                        progress=progress,
                        **options,
                    )
                )
        return reports

    reports = _run(run, as_json, places=[(out_dir or Path("."), "--out")])
    if as_json:
        _emit_json(reports[0].to_json() if len(reports) == 1 else {"reports": [r.to_json() for r in reports]})
        return
    for report in reports:
        checks = [c["peak_rss_bytes"] for c in report.checks.values() if c.get("peak_rss_bytes")]
        caption = (
            f"{report.weights} weights in {report.seconds:.1f} s, "
            f"peak RSS {report.peak_rss_bytes / 1e9:.2f} GB "
            f"(checkpoint {report.checkpoint_bytes / 1e9:.2f} GB, "
            f"largest tensor {report.largest_tensor_bytes / 1e9:.2f} GB)"
            + (f"; load check {max(checks) / 1e9:.2f} GB in its own process" if checks else "")
            + "; no parity check (streamed)"
        )
        table = Table(
            title=f"{report.family} {report.precision} ({report.method}) → {out_dir}",
            title_justify="left",
            caption=caption,
            caption_justify="left",
        )
        for col in ("format", "holds", "MB", "file"):
            table.add_column(col, justify="right" if col == "MB" else "left", no_wrap=col == "file")
        for f in report.files:
            table.add_row(f.format, f.role, f"{f.bytes / 1e6:.2f}", str(f.path))
        out.print(table)


@app.command()
def validate(
    recipe: RecipeArg,
    out_dir: OutOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Measure parity of the exported artifacts; write report.json and manifest.json. Exit 1 on a miss.

    Example: voxport validate recipes/demo-tiny-vits.yaml --out build/demo
    """
    _, manifest, o = _stage("validate", recipe, out_dir, quiet, as_json, force=force, cache_dir=cache_dir)
    _finish(manifest, o, as_json)


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="Checkpoint dir/file, .onnx or .gguf artifact, or build dir.")],
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow pickled checkpoints.")] = False,
) -> None:
    """Describe a checkpoint or artifact: family, parameters, tensors by precision, bytes, bits per weight.

    Example: voxport inspect build/demo/onnx/demo-tiny-vits.int4.onnx
    """
    from voxport.inspect import inspect_path

    info = _run(lambda: inspect_path(path, trust_pickle=trust_pickle), as_json)
    if as_json:
        _emit_json(info)
        return
    table = Table(show_header=False, title=str(path), title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in info.items():
        if isinstance(value, dict | list):
            value = (
                json.dumps(value) if len(json.dumps(value)) < 200 else f"({len(value)} entries; see --json)"
            )
        table.add_row(key, escape(str(value)))
    out.print(table)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Argument(help="Where to write the checkpoint.")] = Path(
        "build/demo-checkpoint"
    ),
    seed: Annotated[int, typer.Option(help="Random seed of the weights.")] = 0,
    family: Annotated[
        str | None,
        typer.Option(help="A registered family (an unknown name lists them) [default: the first built-in]."),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(help="A size or variant, where the family has several (its demo's own default)."),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a small random-weight checkpoint the demo recipes use (deterministic, no download).

    Example: voxport demo build/demo-checkpoint
    Example: voxport demo build/pocket-demo-checkpoint --family pocket_tts --config tiny
    """
    from voxport.families.registry import families
    from voxport.io import ensure_writable_dir

    def run() -> str:
        known = families()
        name = family if family is not None else next(iter(known))
        if name not in known:
            raise VoxportError(f"unknown demo family {name!r} (known: {', '.join(sorted(known))})")
        known[name].demo(ensure_writable_dir(out_dir), seed=seed, config=config)
        return name

    with _silenced(quiet):
        written = _run(run, as_json)
    if as_json:
        _emit_json({"checkpoint": out_dir, "seed": seed, "family": written})
    _info(f"wrote {out_dir}", quiet)


@app.command("import")
def import_(
    kind: Annotated[
        str, typer.Argument(help="Which toolchain the source comes from (an importer a family provides).")
    ],
    source: Annotated[str, typer.Argument(help="The file, directory or installed package to import.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint directory to write.")],
    config: Annotated[Path | None, typer.Option(help="A config file the source needs beside it.")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow a pickled source.")] = False,
    voices: Annotated[
        Path | None, typer.Option(help="Style presets, for models whose voices are vectors (Kokoro).")
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Bring a checkpoint from another toolchain in as a voxport checkpoint (KIND: an importer a
    registered family provides; an unknown KIND lists them).

    Example: voxport import piper en_US-joe-medium.onnx --out checkpoints/joe (a voice-preset model
    takes its presets too: voxport import kokoro kokoro.onnx --voices voices.npz --out checkpoints/k)
    """
    from voxport.families.base import ImportRequest
    from voxport.families.registry import families

    def run() -> Path:
        importers = {k: imp for f in families().values() for k, imp in f.importers.items()}
        if kind not in importers:
            listed = "; ".join(f"{k}: {imp.help}" for k, imp in sorted(importers.items()))
            raise VoxportError(f"unknown import kind {kind!r} (known: {listed or 'none'})")
        importer = importers[kind]
        if voices is not None and not importer.takes_voices:
            raise VoxportError(f"--voices is not used by the {kind!r} importer; leave it out")
        return importer.run(ImportRequest(source, out_dir, config, trust_pickle, voices))

    with _silenced(quiet):
        written = _run(run, as_json)
    if as_json:
        _emit_json({"checkpoint": written, "source": source})
    _info(f"wrote {written}", quiet)


@app.command()
def say(
    source: Annotated[
        Path, typer.Argument(help="Checkpoint (a directory or voice file) or exported <name>.<p>.onnx.")
    ],
    text: Annotated[str | None, typer.Argument(help="What to say.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="WAV file to write.")] = Path("say.wav"),
    ids: Annotated[str | None, typer.Option(help="Comma-separated input ids instead of text.")] = None,
    seed: Annotated[int | None, typer.Option(help="Noise seed [default: 0].")] = None,
    noise_scale: Annotated[
        float | None, typer.Option(help="Prior noise (0 = deterministic) [default: the voice's].")
    ] = None,
    noise_w: Annotated[float | None, typer.Option(help="Duration noise [default: the voice's].")] = None,
    length_scale: Annotated[float | None, typer.Option(help="> 1 speaks slower [default: 1].")] = None,
    speaker: Annotated[int | None, typer.Option(help="Speaker id of a multi-speaker voice.")] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling variance of autoregressive models [default: model's].")
    ] = None,
    max_frames: Annotated[int | None, typer.Option(help="Autoregressive models: stop after N frames.")] = (
        None
    ),
    voice_prompt: Annotated[
        str | None,
        typer.Option("--voice", help="Voice: a name the model ships, or a file (WAV, .npy)."),
    ] = None,
    speed: Annotated[
        float, typer.Option(help="Speaking rate: 2 = twice as fast (refused by voices with no pace control).")
    ] = 1.0,
    chunk_frames: Annotated[
        int | None,
        typer.Option(help="Decode each sentence in chunks of N frames, where the voice decodes in chunks."),
    ] = None,
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="Allow a pickled checkpoint (or voice presets).")
    ] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Synthesise TEXT with a checkpoint or an exported artifact and write a WAV file (`-o -`: raw
    16-bit PCM on stdout). Long text is spoken sentence by sentence (Pocket TTS: in chunks of up to
    50 tokens) in bounded memory, each chunk written as soon as it is made: VITS decodes a sentence in
    chunks of frames (the same samples as decoding it whole), Pocket TTS one 80 ms frame at a time.
    --json reports first_audio_ms, real_time_factor and chunks (the audio chunks written).

    Example: voxport say build/joe-medium/onnx/joe-medium.int8.onnx "Hello there." -o hello.wav
    """
    from voxport.say import call_settings, load, speak_to, voice_family

    flags = {
        "--seed": ("seed", seed),
        "--noise-scale": ("noise_scale", noise_scale),
        "--noise-w": ("noise_scale_duration", noise_w),
        "--length-scale": ("length_scale", length_scale),
        "--speaker": ("speaker_id", speaker),
        "--temperature": ("temperature", temperature),
        "--max-frames": ("max_frames", max_frames),
        "--voice": ("voice", voice_prompt),
    }

    def run():  # noqa: ANN202
        if (text is None) == (ids is None):
            raise VoxportError("give the text to say, or --ids, but not both")
        if str(output) == "-" and as_json:
            raise VoxportError("-o - writes audio to stdout; it cannot be combined with --json")
        # every given flag checked against the family's own settings (NaN, ranges) before a model loads
        given = {f: v for f, v in flags.items() if v[1] is not None}
        family = voice_family(source)
        settings = _say_settings(family, given)
        if ids is not None:
            try:
                tokens = [int(t) for t in ids.split(",") if t.strip()]
            except ValueError:
                raise VoxportError(f"--ids must be comma-separated integers, got {ids!r}") from None
        options = {name: value for name, value in given.values() if name != "seed"}
        call_settings(family, speed=speed, seed=settings.seed, **options)  # speed too, before a model loads
        synthesizer = load(source, trust_pickle=trust_pickle)
        stream = synthesizer.stream(
            text,
            ids=tokens if ids is not None else None,
            speed=speed,
            seed=settings.seed,
            chunk_frames=chunk_frames,
            **options,
        )
        return synthesizer.sample_rate, speak_to(stream, synthesizer.sample_rate, output)

    with _silenced(quiet):
        rate, spoken = _run(run, as_json, places=[(output.parent, "-o")])
    rtf = spoken.compute_seconds / spoken.seconds if spoken.seconds else None
    if as_json:
        _emit_json(
            {
                "output": output,
                "sample_rate": rate,
                "seconds": round(spoken.seconds, 4),
                "first_audio_ms": round(spoken.first_audio_seconds * 1000, 1),
                "real_time_factor": None if rtf is None else round(rtf, 4),
                "chunks": spoken.chunks,
            }
        )
    message = f"wrote {output} ({spoken.seconds:.2f} s at {rate} Hz"
    if spoken.chunks > 1:
        message += f"; first audio after {spoken.first_audio_seconds * 1000:.0f} ms, {spoken.chunks} chunks"
    if rtf is not None:
        message += f", real-time factor {rtf:.2f}"
    _info(message + ")", quiet)


def _say_settings(family: type[Family], given: Mapping[str, tuple[str, Any]]) -> SynthesisSettings:
    """The family's own settings model from the `say` flags given (flag -> (setting, value)); a flag
    for a setting the family does not have is an error naming it, never silently ignored."""
    fields = family.settings.model_fields
    for flag, (name, _) in given.items():
        if name not in fields:
            raise BadInput(
                f"{flag}: {family.name} voices have no {name.replace('_', ' ')} setting "
                f"(its settings: {', '.join(fields)})"
            )
    return family.settings(**dict(given.values()))


@app.command()
def plan(
    files: Annotated[list[Path], typer.Argument(help="Recipe YAML files.", show_default=False)],
    out_root: Annotated[
        str, typer.Option("--out-root", help="Each job builds into OUT_ROOT/<recipe name>.")
    ] = "build",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Validate RECIPEs and print the CI build matrix: one job per recipe. Exit 2 on a bad recipe.

    With --json the matrix is one line, `{"include": [...]}`, for GitHub Actions'
    `strategy.matrix: ${{ fromJSON(needs.plan.outputs.matrix) }}`.

    Example: voxport plan recipes/*.yaml --json
    """
    from voxport.plan import matrix
    from voxport.plan import plan as plan_jobs

    entries = _run(lambda: plan_jobs(files, out_root=out_root), as_json)
    if as_json:
        _emit_json(matrix(entries), indent=None)  # one line: `echo "matrix=..." >> $GITHUB_OUTPUT`
        return
    table = Table(title=f"{len(entries)} build jobs", title_justify="left")
    for col in ("recipe", "name", "out", "formats", "precisions", "artifacts"):
        table.add_column(col, justify="right" if col == "artifacts" else "left")
    for e in entries:
        table.add_row(e.recipe, e.name, e.out, e.formats, e.precisions, str(e.artifacts))
    out.print(table)


def _mark(value: bool | None) -> str:
    return "—" if value is None else ("[green]ok[/green]" if value else "[red]FAIL[/red]")


@app.command()
def verify(
    out_dir: Annotated[Path, typer.Argument(help="Build directory holding manifest.json.")],
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Re-check a build dir against its manifest: files present, size and sha256, loads in its runtime.

    Exit 0 all match; 1 a file is missing, altered or does not load, or an artifact folder holds a file the
    manifest does not list (named on stderr); 2 not a build directory, no valid manifest, or no artifacts.

    Example: voxport verify build/demo
    """
    from voxport.verify import verify_dir

    with _progress(quiet) as progress:
        result = _run(lambda: verify_dir(out_dir, progress), as_json)
    if as_json:
        _emit_json(result.to_json())
    else:
        table = Table(title=f"{out_dir}/manifest.json", title_justify="left")
        for col in ("file", "format", "bytes ok", "sha ok", "loads ok"):
            table.add_column(col, no_wrap=col == "file")
        for f in result.files:
            table.add_row(f.path, f.format, _mark(f.bytes_ok), _mark(f.sha_ok), _mark(f.loads_ok))
        for rel in result.unlisted:  # in an artifact folder, not in the manifest: shipped unverified
            table.add_row(rel, "[red]unlisted[/red]", _mark(None), _mark(None), _mark(None))
        out.print(table)
    for problem in result.problems():
        err.print(f"[red]verify failed[/red] {escape(problem)}", soft_wrap=True)
    if not result.ok:
        raise typer.Exit(1)


@recipes_app.command("check")
def recipes_check(
    files: Annotated[list[Path], typer.Argument(help="Recipe YAML files.")],
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Validate recipes; prints one line per file, exit 2 if any is invalid.

    Example: voxport recipes check recipes/*.yaml
    """
    from voxport.recipe import load_recipe

    results: list[dict[str, Any]] = []
    for file in files:
        try:
            r = load_recipe(file)
        except VoxportError as exc:
            results.append({"file": str(file), "ok": False, "error": str(exc)})
            err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            continue
        results.append(
            {"file": str(file), "ok": True, "name": r.name, "formats": r.formats, "precisions": r.precisions}
        )
        if not as_json:
            out.print(f"ok  {file}: {r.name} ({', '.join(r.formats)} × {', '.join(r.precisions)})")
    bad = [x for x in results if not x["ok"]]
    if as_json:
        document: dict[str, Any] = {"passed": not bad, "recipes": results}
        if bad:
            document |= {"error": f"{len(bad)} of {len(results)} recipes are invalid", "exit_code": 2}
        _emit_json(document)
    if bad:
        raise typer.Exit(2)


@recipes_app.command("schema")
def recipes_schema(as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Print the recipe's JSON Schema (for editors). The output is JSON with or without --json.

    Example: voxport recipes schema > recipe.schema.json
    """
    from voxport.recipe import recipe_json_schema

    _emit_json(recipe_json_schema())


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
    """The console script. With --json, a failure that printed no JSON document (a usage error, which
    the argument parser reports before any command runs) still prints `{"error": ..., "exit_code": N}`
    on stdout, so a script reading stdout always gets JSON."""
    global _emitted
    _emitted = False
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code and not _emitted and "--json" in sys.argv[1:]:
            # sys.exit is called while the parser's exception is handled: it is the exit's __context__
            cause = exc.__context__
            message = cause.format_message() if hasattr(cause, "format_message") else "usage error"
            _emit_json({"error": message, "exit_code": code})
        raise
