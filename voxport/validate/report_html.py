"""report.html: the page a person reads next to report.json, one self-contained file.

Everything is inline (CSS, a few lines of script, audio and pictures as `data:` URIs) so the file can be
attached to a CI run, mailed, or opened from an archive years later without anything to fetch: an
artifact review should not depend on a CDN being reachable or on the output folder staying together.

Input is `out_dir/report.json` as the validate stage writes it (see `render_report`); audio paths in it are
relative to `out_dir`. Audio is re-encoded to 16-bit PCM before embedding (float WAVs are twice the size
and not every browser plays them). Verdicts are given as text and as class names (`pass`, `fail`,
`none`), never by colour alone, and elements carry stable ids / classes / data attributes so tests (and
scripts scraping the page) can find them without depending on the layout.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from voxport.io import atomic_write_text
from voxport.validate.spectrogram import DIFF_RANGE_DB, spectrograms
from voxport.validate.thresholds import Threshold

#: Columns of the summary table, in this order (all metrics are in each artifact's own table).
SUMMARY_METRICS = ("snr_db", "logmel_dtw_db", "mcd_db", "duration_match", "length_ratio")
#: the ASR gate's figures (validate.asr), summary columns where some artifact has them
ASR_SUMMARY_METRICS = ("wer", "wer_increase")

_DIRECTION_HINT = {"min": "higher is better", "max": "lower is better", "band": "closer to 1 is better"}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:16px 24px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0 12px}
th,td{border:1px solid #d0d0d7;padding:3px 8px;text-align:left}
thead th{background:#f2f2f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{font-weight:700;white-space:nowrap}
.pass{background:#e3f4e6;color:#175c26}.fail{background:#fbe3e3;color:#8a1414}.none{color:#6b6b75}
.verdict.pass::before{content:"\\2713\\00a0"}.verdict.fail::before{content:"\\2717\\00a0"}
#overall-verdict{display:inline-block;padding:4px 12px;border-radius:4px;font-size:18px}
.meta{color:#4a4a55;margin:2px 0}code{background:#f4f4f7;padding:0 3px}
section.artifact{border-top:2px solid #d0d0d7;margin-top:24px}
.sentence{margin:10px 0 22px;padding-left:10px;border-left:3px solid #e4e4ea}
figure{margin:6px 0}figure.spectrogram figcaption{max-width:280px}
figcaption{font-size:12px;color:#4a4a55}img{display:block;max-width:100%;
image-rendering:pixelated;border:1px solid #e4e4ea}
.players,.spectrograms{display:flex;gap:16px 24px;flex-wrap:wrap;align-items:flex-start}
td.num.pass::after{content:"\\00a0\\2713"}td.num.fail::after{content:"\\00a0\\2717"}
audio{width:320px}
.missing{color:#8a1414;font-style:italic}ul.failures{color:#8a1414}
.heard{margin:4px 0;font-size:13px}.heard q{font-style:italic}
"""

# Records what the browser decoded, for the headless test and for anyone checking a page in devtools:
# each <audio> gets data-decoded-duration once its metadata loads, each <img> data-natural-width; the
# body gets data-audio-ready / data-images-ready (counts decoded) when all have settled.
_SCRIPT = """
(function(){
  var b=document.body;
  var audios=Array.prototype.slice.call(document.querySelectorAll('audio'));
  var left=audios.length, ok=0, bad=0;
  function settle(){ if(--left===0){ b.dataset.audioErrors=String(bad); b.dataset.audioReady=String(ok); } }
  audios.forEach(function(a){
    var done=false;
    function meta(){ if(done) return; done=true; var d=a.duration;
      if(isFinite(d)&&d>0){ a.dataset.decodedDuration=d.toFixed(4); ok++; }
      else { a.dataset.decodedDuration='invalid'; bad++; } settle(); }
    function fail(){ if(done) return; done=true; a.dataset.decodedDuration='error'; bad++; settle(); }
    a.addEventListener('loadedmetadata', meta); a.addEventListener('error', fail);
    if(a.readyState>=1){ meta(); } else if(a.error){ fail(); }
  });
  if(!audios.length){ b.dataset.audioErrors='0'; b.dataset.audioReady='0'; }
  var imgs=Array.prototype.slice.call(document.querySelectorAll('img'));
  var ileft=imgs.length, iok=0;
  function isettle(){ if(--ileft===0){ b.dataset.imagesReady=String(iok); } }
  imgs.forEach(function(im){
    var done=false;
    function check(){ if(done) return; done=true; im.dataset.naturalWidth=String(im.naturalWidth);
      if(im.naturalWidth>0){ iok++; } isettle(); }
    if(im.complete){ check(); }
    else { im.addEventListener('load', check); im.addEventListener('error', check); }
  });
  if(!imgs.length){ b.dataset.imagesReady='0'; }
})();
"""


# --- small helpers --------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    """Escape for text and double-quoted attributes alike."""
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """4 significant digits, like the failure strings `parity.check` writes; `—` when not measurable."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def _thresholds(art: Mapping[str, Any]) -> dict[str, Threshold]:
    """An artifact's limits as report.json stores them (`{"snr_db": {"min": 20}}`)."""
    return {name: Threshold.model_validate(t) for name, t in (art.get("thresholds") or {}).items()}


def _verdict_cell(verdict: bool | None, tag: str = "td") -> str:
    if verdict is None:
        return f'<{tag} class="verdict none">—</{tag}>'
    word = "PASS" if verdict else "FAIL"
    return f'<{tag} class="verdict {word.lower()}">{word}</{tag}>'


def _verdict_class(verdict: bool | None) -> str:
    return "none" if verdict is None else ("pass" if verdict else "fail")


# --- audio ----------------------------------------------------------------------------------------------
@dataclass
class _Audio:
    samples: np.ndarray
    sample_rate: int
    data_uri: str

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / self.sample_rate


@dataclass
class _Assets:
    """Loads each WAV once (the reference appears in every artifact's section) and remembers why one
    could not be read, so the page says so instead of the whole report failing."""

    out_dir: Path
    audio: dict[str, _Audio | str] = field(default_factory=dict)

    def load(self, rel: str | None) -> _Audio | str:
        if not rel:
            return "no audio recorded"
        if rel not in self.audio:
            self.audio[rel] = self._read(rel)
        return self.audio[rel]

    def _read(self, rel: str) -> _Audio | str:
        path = self.out_dir / rel
        try:
            samples, rate = sf.read(path, dtype="float32", always_2d=True)
        except (OSError, RuntimeError, sf.LibsndfileError) as exc:  # missing or unreadable file
            return f"{rel}: cannot read ({type(exc).__name__})"
        mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
        if mono.size == 0 or not np.all(np.isfinite(mono)):
            return f"{rel}: empty or non-finite audio"
        buf = io.BytesIO()
        sf.write(buf, np.clip(mono, -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
        uri = "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        return _Audio(mono.astype(np.float64), int(rate), uri)


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _player(audio: _Audio | str, role: str, label: str) -> str:
    if isinstance(audio, str):
        return (
            f'<figure class="player" data-role="{role}"><figcaption>{_e(label)}</figcaption>'
            f'<p class="missing">{_e(audio)}</p></figure>'
        )
    return (
        f'<figure class="player" data-role="{role}"><figcaption>{_e(label)} '
        f"({audio.seconds:.2f} s)</figcaption>"
        f'<audio controls preload="metadata" data-role="{role}" '
        f'data-expected-duration="{audio.seconds:.4f}" src="{audio.data_uri}"></audio></figure>'
    )


# --- sections -------------------------------------------------------------------------------------------
def _metric_names(specs: Mapping[str, Mapping[str, Any]], *metric_maps: Mapping[str, Any]) -> list[str]:
    """The report's metrics in their listed order, then anything else an artifact reports."""
    extra = [k for m in metric_maps for k in m if k not in specs]
    return list(specs) + list(dict.fromkeys(extra))


def _metrics_table(
    metrics: Mapping[str, Any],
    thresholds: Mapping[str, Threshold],
    failed: Collection[str],
    specs: Mapping[str, Mapping[str, Any]],
) -> str:
    names = [n for n in _metric_names(specs, metrics, thresholds) if n in metrics or n in thresholds]
    rows = []
    for name in names:
        verdict = False if name in failed else (True if name in thresholds else None)
        hint = _DIRECTION_HINT.get(str(specs.get(name, {}).get("direction", "")), "")
        limit = thresholds[name].describe() if name in thresholds else "—"
        rows.append(
            f'<tr class="metric-row {_verdict_class(verdict)}" data-metric="{_e(name)}">'
            f'<th scope="row"><code>{_e(name)}</code></th>'
            f'<td class="value num">{_e(_fmt(metrics.get(name)))}</td>'
            f'<td class="threshold">{_e(limit)}</td>'
            f'{_verdict_cell(verdict)}<td class="hint">{_e(hint)}</td></tr>'
        )
    return (
        '<table class="metrics"><thead><tr><th>metric</th><th>value (worst sentence)</th><th>threshold</th>'
        "<th>verdict</th><th></th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _sentence_metrics(
    metrics: Mapping[str, Any], thresholds: Mapping[str, Threshold], specs: Mapping[str, Mapping[str, Any]]
) -> str:
    """One sentence's figures, each cell coloured by the same `Threshold.check` the build's verdict uses
    (on the worst sentence), so the sentence that breaks a limit stands out. A limit on a figure that
    could not be measured fails, as it does for the verdict."""
    names = [n for n in _metric_names(specs, metrics) if n in metrics]
    head = "".join(f"<th><code>{_e(n)}</code></th>" for n in names)
    cells = []
    for name in names:
        value = metrics.get(name)
        verdict = thresholds[name].check(value) if name in thresholds else None
        cells.append(
            f'<td class="num {_verdict_class(verdict)}" data-metric="{_e(name)}">{_e(_fmt(value))}</td>'
        )
    return (
        f'<table class="sentence-metrics"><thead><tr>{head}</tr></thead><tbody><tr>{"".join(cells)}'
        "</tr></tbody></table>"
    )


def _spectrogram_figures(ref: _Audio | str, test: _Audio | str, cache: dict[tuple[int, int], str]) -> str:
    if isinstance(ref, str) or isinstance(test, str):
        return '<p class="missing">spectrograms need both the reference and the exported audio</p>'
    if ref.sample_rate != test.sample_rate:
        return (
            f'<p class="missing">sample rates differ ({ref.sample_rate} Hz vs {test.sample_rate} Hz); '
            "no spectrograms</p>"
        )
    key = (id(ref), id(test))
    if key not in cache:
        spec = spectrograms(ref.samples, test.samples, ref.sample_rate)
        low, peak = spec.level_range_db
        note = (
            f" Lengths differ ({spec.reference_frames} vs {spec.test_frames} frames): first "
            f"{spec.diff_frames} frames compared, unaligned."
            if spec.reference_frames != spec.test_frames
            else ""
        )
        figures = [
            ("reference", spec.reference_png, f"Reference log-mel, {low:.0f} to {peak:.0f} dB, dark = quiet"),
            ("exported", spec.test_png, "Exported log-mel, on the reference's scale."),
            (
                "difference",
                spec.diff_png,
                f"Exported − reference, ±{DIFF_RANGE_DB:.0f} dB: red = louder, blue = quieter, white = same."
                + note,
            ),
        ]
        parts = []
        for kind, png, caption in figures:
            width, height = _png_size(png)
            parts.append(
                f'<figure class="spectrogram" data-kind="{kind}"><img src="{_png_uri(png)}" '
                f'width="{width}" height="{height}" alt="{_e(caption)}">'
                f"<figcaption>{_e(caption)}</figcaption></figure>"
            )
        cache[key] = '<div class="spectrograms">' + "".join(parts) + "</div>"
    return cache[key]


def _png_size(png: bytes) -> tuple[int, int]:
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _reference_for(reference: Sequence[Mapping[str, Any]], index: int, label: str) -> Mapping[str, Any]:
    """The reference entry of a sentence: same position, or failing that the same input text."""
    if index < len(reference) and reference[index].get("input") == label:
        return reference[index]
    for entry in reference:
        if entry.get("input") == label:
            return entry
    return reference[index] if index < len(reference) else {}


def _heard(sentence: Mapping[str, Any], index: int, asr: Mapping[str, Any]) -> str:
    """What the ASR gate's recogniser heard in the reference's and the artifact's audio of a sentence."""
    if "transcript" not in sentence:
        return ""
    said = list(asr.get("reference") or [])
    ref = said[index].get("transcript") if index < len(said) else None
    rows = [("reference", ref), ("exported", sentence.get("transcript"))]
    return "".join(
        f'<p class="heard" data-role="{role}">Heard ({role}): <q>{_e("—" if text is None else text)}</q></p>'
        for role, text in rows
    )


def _artifact_section(
    art: Mapping[str, Any],
    section_id: str,
    reference: Sequence[Mapping[str, Any]],
    assets: _Assets,
    cache: dict[tuple[int, int], str],
    specs: Mapping[str, Mapping[str, Any]],
    asr: Mapping[str, Any] | None = None,
) -> str:
    fmt, precision = str(art.get("format", "?")), str(art.get("precision", "?"))
    thresholds = _thresholds(art)
    failures: Sequence[str] = art.get("failures") or []
    passed = art.get("passed")
    out = [
        f'<section class="artifact" id="{_e(section_id)}" data-format="{_e(fmt)}" '
        f'data-precision="{_e(precision)}" data-passed="{_e(str(bool(passed)).lower())}">',
        f"<h2>{_e(' '.join(filter(None, (fmt, precision, art.get('layout')))))} "
        f"{_verdict_cell(passed, 'span')}</h2>",
        f'<p class="meta">File <code>{_e(art.get("path", "?"))}</code>, {_e(_mb(art.get("bytes")))} MB, '
        f"{_e(_fmt(art.get('bits_per_weight')))} bits/weight.</p>",
    ]
    if art.get("note"):  # a runtime layout measured nowhere says why (validate/layouts.py)
        out.append(f'<p class="note">Not measured: {_e(art["note"])}</p>')
    if failures:
        out.append('<ul class="failures">' + "".join(f"<li>{_e(f)}</li>" for f in failures) + "</ul>")
    failed = set(art.get("failed_metrics") or [])
    out.append(_metrics_table(art.get("metrics") or {}, thresholds, failed, specs))
    for i, sentence in enumerate(art.get("sentences") or []):
        label = str(sentence.get("input", f"sentence {i + 1}"))
        ref_entry = _reference_for(reference, i, label)
        # a runtime layout is compared with a reference under its own settings (validate/layouts.py)
        ref_audio = assets.load(sentence.get("reference_audio") or ref_entry.get("audio"))
        test_audio = assets.load(sentence.get("audio"))
        out += [
            f'<div class="sentence" data-index="{i}">',
            f'<h3>Sentence {i + 1}: <q class="input">{_e(label)}</q> '
            f'<span class="meta">({_e(sentence.get("tokens", "?"))} tokens)</span></h3>',
            _sentence_metrics(sentence.get("metrics") or {}, thresholds, specs),
            _heard(sentence, i, asr or {}),
            _spectrogram_figures(ref_audio, test_audio, cache),
            '<div class="players">',
            _player(ref_audio, "reference", "Reference (fp32)"),
            _player(test_audio, "exported", f"Exported ({fmt} {precision})"),
            "</div></div>",
        ]
    out.append("</section>")
    return "\n".join(out)


def _mb(n: Any) -> str:
    return "—" if not isinstance(n, int | float) else f"{n / 1e6:.2f}"


def _seconds(x: Any) -> str:
    return "—" if not isinstance(x, int | float) else f"{x:.1f}"


def _summary(artifacts: Sequence[Mapping[str, Any]], ids: Sequence[str]) -> str:
    shown = SUMMARY_METRICS + tuple(
        m for m in ASR_SUMMARY_METRICS if any((a.get("metrics") or {}).get(m) is not None for a in artifacts)
    )
    head = "".join(f"<th><code>{_e(m)}</code></th>" for m in shown)
    rows = []
    for art, section_id in zip(artifacts, ids, strict=True):
        metrics = art.get("metrics") or {}
        thresholds = art.get("thresholds") or {}
        failed = set(art.get("failed_metrics") or [])
        cells = []
        for m in shown:
            verdict = False if m in failed else (True if m in thresholds else None)
            cells.append(
                f'<td class="num {_verdict_class(verdict)}" data-metric="{m}">{_e(_fmt(metrics.get(m)))}</td>'
            )
        rows.append(
            f'<tr class="artifact-row" data-format="{_e(art.get("format", "?"))}" '
            f'data-precision="{_e(art.get("precision", "?"))}">'
            f'<td><a href="#{_e(section_id)}">{_e(art.get("format", "?"))}</a></td>'
            f"<td>{_e(art.get('precision', '?'))}</td>"
            f'<td class="num">{_mb(art.get("bytes"))}</td>'
            f'<td class="num">{_e(_fmt(art.get("bits_per_weight")))}</td>'
            f'<td class="num">{_seconds(art.get("export_seconds"))}</td>'
            f'<td class="num">{_seconds(art.get("validate_seconds"))}</td>'
            f"{_verdict_cell(art.get('passed'))}{''.join(cells)}</tr>"
        )
    return (
        '<section id="summary"><h2>Artifacts</h2><table id="summary-table"><thead><tr><th>format</th>'
        "<th>precision</th><th>size (MB)</th><th>bits/weight</th><th>export (s)</th><th>validate (s)</th>"
        f"<th>verdict</th>{head}</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        '<p class="meta">Metric cells: green passed its threshold, red missed it, grey has no threshold. '
        "Values are the worst sentence.</p></section>"
    )


def _quantization(quantization: Mapping[str, Mapping[str, Any]]) -> str:
    """Per precision: what the method did per module and, where a size budget chose the mix, the plan
    (module, precision, sensitivity per candidate, bytes), so a reader sees why a module kept its bits."""
    parts = ['<section id="quantization"><h2>Quantization</h2>']
    for precision, info in quantization.items():
        plan = info.get("budget")
        parts.append(f'<div class="quantization" data-precision="{_e(precision)}"><h3>{_e(precision)}</h3>')
        if plan:
            measured = plan.get("measured_objective")
            parts.append(
                f'<p class="meta budget">Size budget {_e(plan["budget_bits_per_weight"])} bits/weight → '
                f"{_e(_fmt(plan['bits_per_weight']))} bits/weight chosen from "
                f"{_e(', '.join(plan['candidates']))} over {len(plan['units'])} {_e(plan['granularity'])}s, "
                f"audio objective predicted {_e(_fmt(plan['predicted_objective']))}, measured "
                f"{_e(_fmt(measured))} on {_e(plan['sentences'])} calibration sentences. "
                f"Reusable mix: <code>{_e(info.get('plan_file', ''))}</code></p>"
            )
            cands = list(plan["candidates"])
            head = "".join(f"<th>objective at {_e(c)}</th>" for c in cands)
            rows = "".join(
                f'<tr class="budget-row" data-unit="{_e(u["unit"])}"><td><code>{_e(u["unit"])}</code></td>'
                f"<td>{_e(u['precision'])}</td>"
                + "".join(f'<td class="num">{_e(_fmt(u["sensitivity"].get(c)))}</td>' for c in cands)
                + f'<td class="num">{_e(u["bytes"])}</td></tr>'
                for u in plan["units"]
            )
            parts.append(
                f'<table class="budget-table"><thead><tr><th>module</th><th>precision</th>{head}'
                f"<th>bytes</th></tr></thead><tbody>{rows}</tbody></table>"
            )
        summary = [r for r in info.get("summary") or [] if r.get("error_vs_rtn") is not None]
        if summary:
            rows = "".join(
                f"<tr><td><code>{_e(r['module'])}</code></td><td>{_e(r['precision'])}</td>"
                f'<td>{_e(r["method"])}</td><td class="num">{_e(_fmt(r["error_vs_rtn"]))}</td></tr>'
                for r in summary
            )
            parts.append(
                f"<details><summary>Per module: {_e(info.get('method', '?'))} error relative to rtn</summary>"
                '<table class="method-table"><thead><tr><th>module</th><th>stored</th><th>method</th>'
                f"<th>error ÷ rtn</th></tr></thead><tbody>{rows}</tbody></table></details>"
            )
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def _phrases(phrases: Sequence[Mapping[str, Any]], assets: _Assets) -> str:
    items = []
    for i, phrase in enumerate(phrases):
        text = str(phrase.get("text", ""))
        items.append(
            f'<div class="phrase" data-index="{i}"><h3><q>{_e(text)}</q></h3>'
            f"{_player(assets.load(phrase.get('audio')), 'phrase', 'Pre-rendered')}</div>"
        )
    return '<section id="phrases"><h2>Pre-rendered phrases</h2>' + "".join(items) + "</section>"


def _asr_line(asr: Mapping[str, Any] | None) -> str:
    """The header's line on the intelligibility gate: its baseline and limit, or why it was skipped."""
    if not asr:
        return ""
    model = _e(asr.get("model", "ASR"))
    limit = _e(_fmt(asr.get("max_wer_increase")))
    if asr.get("skipped"):
        return (
            f'<p class="meta" id="asr" data-skipped="true">Intelligibility (ASR) not measured: '
            f"{_e(asr['skipped'])}</p>"
        )
    return (
        f'<p class="meta" id="asr" data-skipped="false">Intelligibility: {model} transcribes every '
        f"sentence; the reference's word error rate is {_e(_fmt(asr.get('reference_wer')))} and an "
        f"artifact's may exceed it by at most {limit} (<code>wer_increase</code>).</p>"
    )


def render_html(report: Mapping[str, Any], out_dir: Path) -> str:
    """The page as a string; `out_dir` resolves the audio paths in `report`."""
    artifacts: list[Mapping[str, Any]] = list(report.get("artifacts") or [])
    reference: list[Mapping[str, Any]] = list(report.get("reference") or [])
    passed = report.get("passed")
    if passed is None:  # older report.json without the top-level verdict
        passed = bool(artifacts) and all(a.get("passed") for a in artifacts)
    ids: list[str] = []
    for art in artifacts:
        base = "artifact-" + _slug(f"{art.get('format', '?')}-{art.get('precision', '?')}")
        section_id, n = base, 2
        while section_id in ids:
            section_id, n = f"{base}-{n}", n + 1
        ids.append(section_id)
    assets = _Assets(Path(out_dir))
    cache: dict[tuple[int, int], str] = {}
    recipe = str(report.get("recipe", "?"))
    verdict = "PASS" if passed else "FAIL"
    body = [
        '<header id="report-header">',
        f"<h1>voxport parity report: {_e(recipe)}</h1>",
        f'<p class="meta">Recipe <code id="recipe">{_e(recipe)}</code> · family '
        f'<code id="family">{_e(report.get("family", "?"))}</code> · voxport '
        f'<code id="voxport-version">{_e(report.get("voxport_version", "?"))}</code> · sample rate '
        f"{_e(report.get('sample_rate', '?'))} Hz · {len(artifacts)} artifact(s), "
        f"{len(reference)} sentence(s)</p>",
        f'<p>Overall: <span id="overall-verdict" class="verdict {_verdict_class(bool(passed))}">'
        f"{verdict}</span></p>",
        _asr_line(report.get("asr")),
        "</header>",
        _summary(artifacts, ids),
    ]
    specs = {str(m["name"]): m for m in report.get("metrics") or []}
    body += [
        _artifact_section(a, i, reference, assets, cache, specs, report.get("asr"))
        for a, i in zip(artifacts, ids, strict=True)
    ]
    if report.get("quantization"):
        body.append(_quantization(report["quantization"]))
    if report.get("phrases"):
        body.append(_phrases(report["phrases"], assets))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{verdict} · voxport report · {_e(recipe)}</title><style>{_CSS}</style></head>\n"
        f'<body data-passed="{str(bool(passed)).lower()}">\n'
        + "\n".join(body)
        + f"\n<script>{_SCRIPT}</script>\n</body></html>\n"
    )


def render_report(out_dir: Path) -> Path:
    """Read `out_dir/report.json`, write `out_dir/report.html` atomically, return its path.

    report.json fields used (all optional except `artifacts`): voxport_version, recipe, family,
    sample_rate, passed, metrics[{name, direction, label, digits}], reference[{input, tokens, audio}],
    artifacts[{format, precision, path, bytes, bits_per_weight, export_seconds, validate_seconds, passed,
    failures, failed_metrics, metrics, thresholds{metric: {min, max}}, sentences[{input, tokens, metrics,
    audio, transcript}]}], phrases[{text, audio}], asr{model, max_wer_increase, reference_wer,
    reference[{transcript}], skipped}, quantization{precision: {method, summary, budget, plan_file}}.
    Missing or unreadable audio
    is reported on the page rather than aborting the render.
    """
    out_dir = Path(out_dir)
    report = json.loads((out_dir / "report.json").read_text(encoding="utf-8"))
    return atomic_write_text(out_dir / "report.html", render_html(report, out_dir))
