"""report.html: built from real synthesized audio and checked by what headless Chromium shows.

Parsing our own HTML string would only prove the generator writes what it meant to write; the browser
proves the embedded WAVs decode (with the right durations), the PNGs load, and the page has no
reference outside itself. The Chromium tests skip when /usr/bin/chromium is absent (Debian package
`chromium`); the escaping and PNG tests need no browser.
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from voxport.families import FamilyModel
from voxport.families.vits import VitsSettings
from voxport.runtime.torch import TorchRunner
from voxport.validate.metrics import compare_audio
from voxport.validate.parity import SentenceParity
from voxport.validate.report_html import render_report
from voxport.validate.spectrogram import encode_png
from voxport.validate.thresholds import (
    CORE_METRICS,
    Threshold,
    aggregate,
    check,
    failed_metrics,
    metrics_json,
)

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless Chromium not installed (apt-get install chromium)"
)

SENTENCES = [
    ("Hello <script>alert(1)</script> & world.", [3, 8, 5, 12, 12, 15, 2, 23, 15, 18, 12, 4]),
    ("Second sentence", [19, 5, 3, 15, 14, 4, 2, 19, 5, 14, 20, 5, 14, 3, 5, 7, 9]),
]


# --- building a report.json like the validate stage writes --------------------------------------------
def _noisy(audio: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(audio.shape[0])
    scale = np.sqrt(np.mean(audio**2) / 10 ** (snr_db / 10) / np.mean(noise**2))
    return (audio + scale * noise).astype(np.float32)


def _stretched(audio: np.ndarray, factor: float) -> np.ndarray:
    """A slower rendition: a different length, so waveform SNR is not measurable (null in the report)."""
    n = int(round(audio.shape[0] * factor))
    return np.interp(np.linspace(0, audio.shape[0] - 1, n), np.arange(audio.shape[0]), audio).astype(
        np.float32
    )


def _artifact(
    out: Path,
    fmt: str,
    precision: str,
    refs: list[np.ndarray],
    tests: list[np.ndarray],
    sr: int,
    thresholds: dict[str, Threshold],
) -> dict[str, Any]:
    sentences = []
    entries = []
    for i, ((label, ids), ref, test) in enumerate(zip(SENTENCES, refs, tests, strict=True)):
        rel = f"report/audio/{fmt}-{precision}/{i}.wav"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(out / rel, test, sr, subtype="FLOAT")  # float WAV: the report must re-encode it
        a = compare_audio(ref, test, sr)
        metrics = {
            "snr_db": a.snr_db,
            "logmel_dtw_db": a.logmel_dtw_db,
            "mcd_db": a.mcd_db,
            "duration_match": 1.0,
            "length_ratio": test.shape[0] / ref.shape[0],
            "forced_snr_db": None,
            "tts_snr_db": None,
            "max_abs_error": float(np.max(np.abs(ref[: test.shape[0]] - test[: ref.shape[0]]))),
        }
        sentences.append(SentenceParity(label=label, tokens=len(ids), metrics=metrics))
        entries.append({"input": label, "tokens": len(ids), "metrics": metrics, "audio": rel})
    agg = aggregate([s.metrics for s in sentences], CORE_METRICS)
    failures = check(agg, thresholds)
    return {
        "format": fmt,
        "precision": precision,
        "path": f"{fmt}/tiny.{precision}.{fmt}",
        "bytes": 1_234_567,
        "bits_per_weight": 8.5 if precision == "int8" else 4.5,
        "export_seconds": 1.2,
        "validate_seconds": 3.4,
        "passed": not failures,
        "failures": failures,
        "failed_metrics": failed_metrics(agg, thresholds),
        "metrics": agg,
        "thresholds": {k: v.model_dump(exclude_none=True) for k, v in thresholds.items()},
        "sentences": entries,
    }


@pytest.fixture(scope="module")
def report_dir(tiny_vits: FamilyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Reference audio from the tiny VITS, a near-identical int8 artifact (noise at 35 dB SNR: passes) and
    a slower, noisier int4 one (fails log-mel distance, and SNR is not measurable)."""
    out = tmp_path_factory.mktemp("report")
    runner = TorchRunner(tiny_vits.graphs())
    settings = VitsSettings(noise_scale=0, noise_scale_duration=0)
    refs, reference, sr = [], [], 0
    for i, (label, ids) in enumerate(SENTENCES):
        syn = tiny_vits.synthesize(runner, ids, settings)
        sr = syn.sample_rate
        audio = np.asarray(syn.audio, dtype=np.float32)
        refs.append(audio)
        rel = f"report/audio/reference/{i}.wav"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(out / rel, audio, sr, subtype="FLOAT")
        reference.append({"input": label, "tokens": len(ids), "audio": rel})
    good = [_noisy(a, 35.0, seed=i) for i, a in enumerate(refs)]
    bad = [_stretched(_noisy(a, 3.0, seed=10 + i), 1.1) for i, a in enumerate(refs)]
    good_dtw = max(compare_audio(r, t, sr).logmel_dtw_db for r, t in zip(refs, good, strict=True))
    bad_dtw = max(compare_audio(r, t, sr).logmel_dtw_db for r, t in zip(refs, bad, strict=True))
    assert good_dtw < bad_dtw, "test data: the noisy artifact should be measurably worse"
    limit = round((good_dtw + bad_dtw) / 2, 3)
    thresholds = {"snr_db": Threshold(min=20.0), "logmel_dtw_db": Threshold(max=limit)}
    artifacts = [
        _artifact(out, "onnx", "int8", refs, good, sr, thresholds),
        _artifact(out, "gguf", "q4_0", refs, bad, sr, thresholds),
    ]
    assert artifacts[0]["passed"] and not artifacts[1]["passed"]
    (out / "phrases").mkdir()
    sf.write(out / "phrases/battery-low.wav", refs[0], sr, subtype="PCM_16")
    report = {
        "voxport_version": "0.0.test",
        "recipe": "tiny-<edge>",
        "family": "vits",
        "sample_rate": sr,
        "passed": False,
        "metrics": metrics_json(CORE_METRICS),
        "reference": reference,
        "artifacts": artifacts,
        "phrases": [{"text": "Battery low", "audio": "phrases/battery-low.wav"}],
    }
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False), encoding="utf-8")
    assert render_report(out) == out / "report.html"
    return out


# --- a minimal DOM from Chromium's --dump-dom output ----------------------------------------------------
class _Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: _Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[_Node] = []
        self.text_parts: list[str] = []

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        return "".join(self.text_parts) + "".join(c.text() for c in self.children)

    def iter(self) -> list[_Node]:
        return [self] + [n for c in self.children for n in c.iter()]

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[_Node]:
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag)
            and (cls is None or cls in n.classes)
            and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]


class _TreeBuilder(HTMLParser):
    VOID = {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Node("#root", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = _Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in self.VOID:
            self.cur = node

    def handle_endtag(self, tag: str) -> None:
        node = self.cur
        while node.parent is not None and node.tag != tag:
            node = node.parent
        if node.parent is not None:
            self.cur = node.parent

    def handle_data(self, data: str) -> None:
        self.cur.text_parts.append(data)


def _parse(markup: str) -> _Node:
    builder = _TreeBuilder()
    builder.feed(markup)
    return builder.root


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with everything that might phone home switched off; own throwaway profile."""
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--mute-audio",
        f"--user-data-dir={tmp / 'profile'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)


# --- tests ----------------------------------------------------------------------------------------------
def test_report_is_self_contained(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"https?://|src=\"//|href=\"//|url\(", page, re.IGNORECASE)
    assert (
        page.count('src="data:audio/wav;base64,') == 2 * 2 * 2 + 1
    )  # 2 artifacts × 2 sentences × 2 + phrase
    assert page.count('src="data:image/png;base64,') == 2 * 2 * 3
    for uri in re.findall(r'src="data:audio/wav;base64,([^"]+)"', page)[:2]:
        info = sf.info(io.BytesIO(base64.b64decode(uri)))
        assert info.subtype == "PCM_16" and info.channels == 1
    for uri in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        png = base64.b64decode(uri)
        width, height = struct.unpack(">II", png[16:24])
        assert 0 < width <= 800 and 0 < height <= 200


def test_text_is_escaped(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; world." in page
    assert "tiny-&lt;edge&gt;" in page and "tiny-<edge>" not in page


@needs_chromium
def test_chromium_shows_the_report(report_dir: Path, tmp_path: Path) -> None:
    url = (report_dir / "report.html").as_uri()
    for budget_ms in (5000, 20000):  # a loaded machine may need more virtual time to decode the media
        dom = _parse(_chromium(tmp_path, f"--virtual-time-budget={budget_ms}", "--dump-dom", url).stdout)
        (body,) = dom.find_all("body")
        if "data-audio-ready" in body.attrs and "data-images-ready" in body.attrs:
            break

    # header and summary
    (overall,) = dom.find_all(id="overall-verdict")
    assert "fail" in overall.classes and overall.text().strip() == "FAIL"
    assert (
        "vits" in dom.find_all(id="family")[0].text() and "tiny-<edge>" in dom.find_all(id="recipe")[0].text()
    )
    rows = dom.find_all("tr", cls="artifact-row")
    assert [(r.attrs["data-format"], r.attrs["data-precision"]) for r in rows] == [
        ("onnx", "int8"),
        ("gguf", "q4_0"),
    ]
    assert [r.find_all("td", cls="verdict")[0].text() for r in rows] == ["PASS", "FAIL"]
    assert "1.23" in rows[0].text()  # size in MB

    # artifact sections and the failing metric
    good = dom.find_all("section", cls="artifact", data_format="onnx", data_precision="int8")
    bad = dom.find_all("section", cls="artifact", data_format="gguf", data_precision="q4_0")
    assert len(good) == 1 and len(bad) == 1
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    bad_json = report["artifacts"][1]
    (dtw_row,) = bad[0].find_all("tr", data_metric="logmel_dtw_db")
    assert "fail" in dtw_row.classes
    assert dtw_row.find_all("td", cls="verdict")[0].text() == "FAIL"
    assert dtw_row.find_all("td", cls="value")[0].text() == f"{bad_json['metrics']['logmel_dtw_db']:.4g}"
    limit = Threshold.model_validate(bad_json["thresholds"]["logmel_dtw_db"])
    assert dtw_row.find_all("td", cls="threshold")[0].text() == limit.describe()
    (snr_row,) = bad[0].find_all("tr", data_metric="snr_db")  # lengths differ: null, and that fails
    assert "fail" in snr_row.classes and snr_row.find_all("td", cls="value")[0].text() == "—"
    (good_dtw,) = good[0].find_all("tr", data_metric="logmel_dtw_db")
    assert "pass" in good_dtw.classes and good_dtw.find_all("td", cls="verdict")[0].text() == "PASS"
    (mcd_row,) = good[0].find_all("tr", data_metric="mcd_db")  # no threshold
    assert "none" in mcd_row.classes and mcd_row.find_all("td", cls="verdict")[0].text() == "—"
    for section in (good[0], bad[0]):
        assert len(section.find_all("div", cls="sentence")) == len(SENTENCES)
        assert len(section.find_all("figure", cls="spectrogram")) == 3 * len(SENTENCES)
    assert "&" in good[0].find_all("q", cls="input")[0].text()  # the escaped text reads as written
    assert len(dom.find_all("section", id="phrases")) == 1

    # every embedded WAV decoded, with the duration of the file it came from
    audios = dom.find_all("audio")
    assert len(audios) == 2 * 2 * 2 + 1
    assert body.attrs.get("data-audio-ready") == str(len(audios)), body.attrs
    assert body.attrs.get("data-audio-errors") == "0"
    ref_seconds = [sf.info(report_dir / r["audio"]).duration for r in report["reference"]]
    bad_seconds = [sf.info(report_dir / s["audio"]).duration for s in bad_json["sentences"]]
    for a in audios:
        assert abs(float(a.attrs["data-decoded-duration"]) - float(a.attrs["data-expected-duration"])) < 2e-3
    for section, seconds in ((good[0], ref_seconds), (bad[0], bad_seconds)):
        role = "reference" if section is good[0] else "exported"
        decoded = [float(a.attrs["data-decoded-duration"]) for a in section.find_all("audio", data_role=role)]
        assert decoded == pytest.approx(seconds, abs=2e-3)
    assert bad_seconds[0] > ref_seconds[0] * 1.05  # the stretched artifact really is longer

    # every picture loaded
    images = dom.find_all("img")
    assert len(images) == 2 * 2 * 3
    assert body.attrs.get("data-images-ready") == str(len(images))
    assert all(int(i.attrs["data-natural-width"]) > 0 for i in images)

    # and the page renders to something that is not blank
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", "--virtual-time-budget=3000", url)
    stats = _image_stats(tmp_path, shot)
    assert (stats["width"], stats["height"]) == (1200, 2000)
    assert stats["colours"] >= 50 and stats["nonwhite"] > 0.05, stats


def _image_stats(tmp: Path, png: Path) -> dict[str, float]:
    """Distinct colours and the non-white share of a PNG, counted by Chromium itself in a canvas (the
    venv has no image decoder, and a pure-Python PNG unfilter is too slow for 1200×2000 pixels)."""
    uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
    page = tmp / "stats.html"
    page.write_text(
        f'<!DOCTYPE html><html><body><img id="s" src="{uri}"><script>'
        "var im=document.getElementById('s');function go(){var c=document.createElement('canvas');"
        "c.width=im.naturalWidth;c.height=im.naturalHeight;var x=c.getContext('2d');x.drawImage(im,0,0);"
        "var d=x.getImageData(0,0,c.width,c.height).data,seen=new Set(),nw=0;"
        "for(var i=0;i<d.length;i+=4){seen.add((d[i]<<16)|(d[i+1]<<8)|d[i+2]);"
        "if(d[i]<245||d[i+1]<245||d[i+2]<245)nw++;}"
        "document.body.dataset.stats=JSON.stringify({width:c.width,height:c.height,colours:seen.size,"
        "nonwhite:nw/(d.length/4)});}"
        "if(im.complete){go();}else{im.onload=go;}</script></body></html>",
        encoding="utf-8",
    )
    dom = _parse(_chromium(tmp, "--virtual-time-budget=3000", "--dump-dom", page.as_uri()).stdout)
    (body,) = dom.find_all("body")
    return json.loads(body.attrs["data-stats"])


def test_escaping_without_a_browser(tmp_path: Path) -> None:
    """Every string from report.json is escaped, in text and in attributes, even odd failure lines."""
    sr = 16000
    t = np.arange(sr // 2) / sr
    sf.write(tmp_path / "r.wav", 0.3 * np.sin(2 * np.pi * 220 * t), sr)
    sf.write(tmp_path / "t.wav", 0.3 * np.sin(2 * np.pi * 221 * t), sr)
    evil = '<script>alert("x")</script>'
    report = {
        "recipe": evil,
        "family": "vits",
        "voxport_version": "0",
        "sample_rate": sr,
        "passed": False,
        "reference": [{"input": evil, "tokens": 3, "audio": "r.wav"}],
        "artifacts": [
            {
                "format": 'onnx"><b>',
                "precision": "int8",
                "passed": False,
                "failures": [f"mcd_db = 9, needs ≤ 1 {evil}"],
                "failed_metrics": ["mcd_db"],
                "metrics": {"mcd_db": 9.0, "brand_new_metric": 1.0},
                "thresholds": {"mcd_db": {"max": 1.0}},
                "sentences": [{"input": evil, "tokens": 3, "metrics": {"mcd_db": 9.0}, "audio": "t.wav"}],
            }
        ],
        "phrases": [{"text": evil, "audio": "missing.wav"}],
    }
    (tmp_path / "report.json").write_text(json.dumps(report), encoding="utf-8")
    page = render_report(tmp_path).read_text(encoding="utf-8")
    assert "<script>alert" not in page and '"><b>' not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # only the page's own
    assert 'class="missing"' in page  # the absent phrase WAV is reported, not fatal
    assert 'data-metric="brand_new_metric"' in page  # metrics the renderer does not know still show
    assert 'class="metric-row fail" data-metric="mcd_db"' in page


def test_png_encoding() -> None:
    png = encode_png(np.zeros((2, 3, 3), dtype=np.uint8) + np.array([255, 0, 0], dtype=np.uint8))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and struct.unpack(">II", png[16:24]) == (3, 2)
    idat = png[png.index(b"IDAT") + 4 : -12 - 4]
    assert zlib.decompress(idat) == (b"\x00" + b"\xff\x00\x00" * 3) * 2


def test_report_json_stores_thresholds_as_numbers(report_dir: Path) -> None:
    """The limits are data, not text to re-parse: each is a mapping of real numbers that validates back
    into the Threshold the verdict was computed with, and `failed_metrics` names exactly the misses."""
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    assert [m["name"] for m in report["metrics"]] == [s.name for s in CORE_METRICS]
    for art in report["artifacts"]:
        for limit in art["thresholds"].values():
            assert limit and set(limit) <= {"min", "max"}
            assert all(isinstance(v, float) for v in limit.values()), limit
        parsed = {k: Threshold.model_validate(v) for k, v in art["thresholds"].items()}
        assert art["failed_metrics"] == [k for k, t in parsed.items() if not t.check(art["metrics"].get(k))]
    good, bad = report["artifacts"]
    assert good["failed_metrics"] == [] and set(bad["failed_metrics"]) == {"snr_db", "logmel_dtw_db"}


def _sentence_cells(page: str) -> list[tuple[str, str, str]]:
    """(verdict class, metric, shown value) of every per-sentence cell, in page order."""
    return re.findall(r'<td class="num (pass|fail|none)" data-metric="([a-z_]+)">([^<]*)</td>', page)


@pytest.mark.parametrize(
    ("limit", "value", "verdict"),
    [
        # a min bound: one side, the bound itself (inclusive) and the other side
        ({"min": 20.0}, 20.5, "pass"),
        ({"min": 20.0}, 20.0, "pass"),
        ({"min": 20.0}, 19.5, "fail"),
        # a max bound; the second pair is closer than describe()'s 6 digits ("≤ 0.00123457"), where a
        # verdict re-read from the threshold's text would pass a value over the real limit
        ({"max": 1.5}, 1.4999, "pass"),
        ({"max": 1.5}, 1.50004, "fail"),
        ({"max": 0.0012345678}, 0.0012345670, "pass"),
        ({"max": 0.0012345678}, 0.0012345690, "fail"),
        # a band, on both of its sides
        ({"min": 0.98, "max": 1.02}, 0.97, "fail"),
        ({"min": 0.98, "max": 1.02}, 1.0, "pass"),
        ({"min": 0.98, "max": 1.02}, 1.03, "fail"),
        # a figure that could not be measured never passes a limit
        ({"min": 20.0}, None, "fail"),
    ],
)
def test_sentence_cell_colour_is_threshold_check(
    tmp_path: Path, limit: dict[str, float], value: float | None, verdict: str
) -> None:
    """A sentence cell is red exactly when `Threshold.check` fails on the sentence's figure, on either
    side of a bound; a metric without a limit is grey."""
    sr = 16000
    t = np.arange(sr // 4) / sr
    sf.write(tmp_path / "r.wav", 0.3 * np.sin(2 * np.pi * 220 * t), sr)
    metric = (
        "length_ratio" if "min" in limit and "max" in limit else ("snr_db" if "min" in limit else "mcd_db")
    )
    threshold = Threshold.model_validate(limit)
    assert threshold.check(value) is (verdict == "pass")  # the page must agree with this
    metrics = {metric: value, "max_abs_error": 0.5}
    report = {
        "passed": verdict == "pass",
        "metrics": metrics_json(CORE_METRICS),
        "reference": [{"input": "a", "tokens": 1, "audio": "r.wav"}],
        "artifacts": [
            {
                "format": "onnx",
                "precision": "int8",
                "passed": verdict == "pass",
                "failures": check(metrics, {metric: threshold}),
                "failed_metrics": failed_metrics(metrics, {metric: threshold}),
                "metrics": metrics,
                "thresholds": {metric: threshold.model_dump(exclude_none=True)},
                "sentences": [{"input": "a", "tokens": 1, "metrics": metrics, "audio": "r.wav"}],
            }
        ],
    }
    (tmp_path / "report.json").write_text(json.dumps(report), encoding="utf-8")
    page = render_report(tmp_path).read_text(encoding="utf-8")
    sentence = page[page.index('<table class="sentence-metrics">') :]
    cells = {name: cls for cls, name, _ in _sentence_cells(sentence)}
    assert cells == {metric: verdict, "max_abs_error": "none"}
    row = re.search(rf'<tr class="metric-row (\w+)" data-metric="{metric}">', page)
    assert row is not None and row.group(1) == verdict  # the artifact table agrees with the cell
