"""Check voxport's Pocket TTS export in llama.cpp's `pockettts` layout inside a real llama.cpp.

    benchmarks/llama_cpp/build.sh                       # once: llama.cpp (libllama, libmtmd) + pocket_check
    .venv/bin/python benchmarks/llama_cpp/check_pocket_gguf.py [--config small|english_2026-10]
        [--precisions fp32 fp16 int8 int4] [--bin build/llama_cpp/pocket_check] [--out DIR] [--keep]

Why: voxport writes the text GGUF and the audio mmproj itself, not with llama.cpp's converter, so
only llama.cpp can say whether it accepts them and computes the same thing. For each precision this
script builds a random-weight Pocket TTS (`--config small`: the smallest shape llama.cpp's loader and
clip.cpp accept, tests/test_pocket_gguf.py's `llama_cpp_config`; `--config english_2026-10`: the
released ~100M shape, its YAML taken from the installed `pocket-tts` package), quantizes and exports
it with voxport, runs pocket_check (pocket_check.cpp: llama.cpp loads both files, tokenizes, decodes
the prompt, encodes a voice prompt, runs one flow-head step with noise ~ 0 and one codec frame) and
compares llama.cpp's numbers with voxport's torch graphs run on the weights read back from the same
two files (`LayoutRunner`), so the SNRs measure llama.cpp's arithmetic, not quantization error:

* backbone hidden: last position of text ids + `<|audio_bos|>`, llama.cpp vs torch;
* flow latent: torch's flow head on llama.cpp's hidden vs llama.cpp's latent (same input);
* codec frame: torch's codec on llama.cpp's latent vs llama.cpp's first frame (cold state);
* voice encoder: 2 s of a 24 kHz chirp, llama.cpp's voice rows vs voxport's encode_voice + projection.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxport.export.gguf.split import LayoutRunner, read_header, write_layout
from voxport.families.pocket_tts.frontend import prepare_text
from voxport.families.pocket_tts.gguf import AUDIO_BOS_TOKEN
from voxport.families.pocket_tts.graphs import (
    KIND_AUDIO_BOS,
    KIND_TEXT,
    BackboneGraph,
    CodecGraph,
    FlowHeadGraph,
)
from voxport.families.pocket_tts.modules import encode_voice
from voxport.families.pocket_tts.synthetic import named_config, random_model
from voxport.quantize.stage import quantize_model

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ("small", "english_2026-10")
PRECISIONS = ("fp32", "fp16", "int8", "int4")
#: the seeds the figures in docs/gguf-pockettts.md were made with
SEEDS = {"small": 3, "english_2026-10": 1}
VOICE_SECONDS = 2.0


@dataclass
class Row:
    config: str
    precision: str
    status: str = "not run"
    desc: str = ""
    mb: str = ""
    tokenizer: str = ""
    snr: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def config_raw(name: str) -> dict[str, Any]:
    if name == "small":
        sys.path.insert(0, str(REPO / "tests"))
        from test_pocket_gguf import llama_cpp_config

        return llama_cpp_config()
    return named_config(name)  # the release YAML from pocket_tts.utils.config.CONFIGS_DIR


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    ref64 = np.asarray(ref, np.float64).ravel()
    got64 = np.asarray(got, np.float64).ravel()
    noise = max(float(((ref64 - got64) ** 2).sum()), 1e-300)
    return float(10 * np.log10(float((ref64**2).sum()) / noise))


def chirp(sample_rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32)


def parse_results(stdout: str) -> dict[str, str]:
    """`RESULT key=value ...` / `RESULT key rc=N ...` lines -> {first word: rest of the line}."""
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            head, _, rest = line[len("RESULT ") :].partition(" ")
            key, _, value = head.partition("=")
            out[key] = (value + " " + rest).strip()
    return out


def read_dump(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pocket_check's OUT.bin: int32 {n_embd, n_feats, n_samples}, then hidden, feats, audio (float32)."""
    raw = np.fromfile(path, dtype=np.uint8)
    dims = raw[:12].view(np.int32)
    values = raw[12:].view(np.float32)
    hidden, feats, audio = np.split(values, [dims[0], dims[0] + dims[1]])
    return hidden, feats, audio


def check_precision(
    model: Any, config: str, precision: str, binary: Path, out: Path, text: str, keep: bool
) -> Row:
    row = Row(config, precision)
    c = model.cfg
    layout = model.gguf_layout()
    t0 = time.time()
    written = write_layout(
        model, quantize_model(model, precision), layout, out, stem=f"{config}.{precision}", name=config
    )
    paths: dict[str, Path] = written.paths
    row.mb = " + ".join(f"{written.bytes[role] / 1e6:.1f}" for role in ("gguf", "mmproj"))
    print(f"{config} {precision}: wrote {row.mb} MB in {time.time() - t0:.1f} s; llama.cpp:", flush=True)

    prepared = prepare_text(text, c.text_options)
    ids = [int(i) for i in model.tokenizer.encode(prepared)]
    tokens = list(read_header(paths["gguf"])[0]["tokenizer.ggml.tokens"])
    prompt = ids + [tokens.index(AUDIO_BOS_TOKEN)]
    wav = chirp(c.sample_rate, VOICE_SECONDS)
    wav_path = out / "voice.f32"
    wav.tofile(wav_path)
    dump = out / f"{config}.{precision}.bin"
    voice_dump = Path(f"{dump}.voice")
    for stale in (dump, voice_dump):
        stale.unlink(missing_ok=True)
    cmd = [str(binary), "--voice", str(wav_path), "--text", prepared]
    cmd += [str(paths["gguf"]), str(paths["mmproj"]), str(dump), *map(str, prompt)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    (out / f"{config}.{precision}.log").write_text(res.stdout + res.stderr)
    for line in res.stdout.splitlines():
        if line.startswith("RESULT"):
            print("   ", line)
    results = parse_results(res.stdout)
    row.desc = results.get("desc", "")
    if "tokenize" in results:
        cpp_ids = [int(i) for i in results["tokenize"].split("ids=", 1)[1].split()]
        row.tokenizer = "same ids" if cpp_ids == ids else f"DIFFERS ({cpp_ids} vs {ids})"
    if res.returncode != 0:
        failed = [f"{k} {v}" for k, v in results.items() if "FAILED" in v or ("rc=" in v and "rc=0" not in v)]
        row.status = f"FAILED (rc {res.returncode}: {failed[-1] if failed else 'see log'})"
        print(res.stderr[-2000:])
    else:
        row.status = "both load, all steps run"
        compare(model, layout, paths, row, prompt, len(ids), dump, voice_dump, wav)
    if not keep:
        for path in paths.values():
            path.unlink()
    return row


def compare(
    model: Any,
    layout: Any,
    paths: dict[str, Path],
    row: Row,
    prompt: list[int],
    n_text: int,
    dump: Path,
    voice_dump: Path,
    wav: np.ndarray,
) -> None:
    """voxport's torch graphs on the weights read back from the two files vs llama.cpp's dump."""
    c = model.cfg
    h_cpp, x_cpp, a_cpp = read_dump(dump)
    mq = LayoutRunner(model, layout, paths).model
    with torch.no_grad():
        kind = torch.tensor([[KIND_TEXT] * n_text + [KIND_AUDIO_BOS]])
        past = [torch.zeros(1, c.num_kv_heads, 0, c.head_dim) for _ in range(2 * c.num_layers)]
        token_ids = torch.tensor([prompt[:n_text] + [0]])
        latents = torch.zeros(1, len(prompt), c.latent_dim)
        hidden, *_ = BackboneGraph(mq.modules)(token_ids, latents, kind, torch.tensor([0]), *past)
        noise = torch.zeros(1, c.latent_dim)
        x_ref = FlowHeadGraph(mq.modules, 1)(torch.from_numpy(h_cpp)[None], noise)[0].numpy()
        state = [torch.zeros(s) for s in mq.loop_spec.codec_state.values()]
        audio, *_ = CodecGraph(mq.modules)(
            torch.from_numpy(x_cpp).reshape(1, 1, c.latent_dim), torch.tensor([0]), *state
        )
        a_ref = audio.reshape(-1).numpy()
        latent = encode_voice(mq.modules.mimi, torch.from_numpy(wav), c.frame_size)[0]
        v_ref = (latent @ mq.modules.flow_lm.speaker_proj_weight.t()).numpy()
    row.snr["hidden"] = snr_db(hidden[0, -1].numpy(), h_cpp)
    row.snr["latent"] = snr_db(x_ref, x_cpp)
    if len(a_ref) != len(a_cpp):
        row.notes.append(f"codec frame: llama.cpp {len(a_cpp)} samples, torch {len(a_ref)}")
    n = min(len(a_ref), len(a_cpp))
    row.snr["codec"] = snr_db(a_ref[:n], a_cpp[:n])
    v_cpp = np.fromfile(voice_dump, dtype=np.float32).reshape(-1, c.d_model)
    if len(v_cpp) != len(v_ref):
        row.notes.append(f"voice rows: llama.cpp {len(v_cpp)}, voxport {len(v_ref)}")
    n = min(len(v_ref), len(v_cpp))
    row.snr["voice"] = snr_db(v_ref[:n], v_cpp[:n])
    row.notes.append(f"{len(x_cpp)} latent values, {len(a_cpp)} samples, {len(v_cpp)} voice rows")


def print_table(rows: list[Row]) -> None:
    def db(row: Row, key: str) -> str:
        return f"{row.snr[key]:.1f} dB" if key in row.snr else "-"

    print()
    print(
        "| config | precision | MB (text + mmproj) | llama.cpp | model desc | tokenizer | backbone hidden "
        "| flow latent, same hidden | first codec frame | voice encoder |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r.config, r.precision, r.mb, r.status, r.desc, r.tokenizer]
        cells += [db(r, k) for k in ("hidden", "latent", "codec", "voice")]
        print("| " + " | ".join(cells) + " |")
    for r in rows:
        if r.notes:
            print(f"{r.config} {r.precision}: " + "; ".join(r.notes))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=CONFIGS, default="small")
    ap.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    ap.add_argument("--bin", type=Path, default=REPO / "build" / "llama_cpp" / "pocket_check")
    ap.add_argument("--out", type=Path, default=REPO / "build" / "llama_cpp" / "check")
    ap.add_argument("--text", default="Hello world.")
    ap.add_argument("--seed", type=int, default=None, help="random weights (default: the documented one)")
    ap.add_argument("--keep", action="store_true", help="keep the exported .gguf files")
    args = ap.parse_args()
    if not args.bin.is_file():
        ap.error(f"{args.bin} not found: run benchmarks/llama_cpp/build.sh first, or pass --bin")
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    seed = SEEDS[args.config] if args.seed is None else args.seed
    model = random_model(config_raw(args.config), seed=seed)
    built = time.time() - t0
    print(f"{args.config}: {model.parameters():,} parameters, seed {seed}, built in {built:.1f}s", flush=True)
    rows = [
        check_precision(model, args.config, p, args.bin.resolve(), args.out, args.text, args.keep)
        for p in args.precisions
    ]
    print_table(rows)
    print(f"logs and dumps: {args.out}")
    return 0 if all(r.status.startswith("both load") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
