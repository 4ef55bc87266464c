"""Which of Kokoro's weights are audible when rounded: one group at a time, then whole mixes.

    .venv/bin/python benchmarks/kokoro_sensitivity.py --checkpoint build/kokoro-checkpoint [--sentences 3]

Why: Kokoro's harmonic source integrates the predicted pitch into a phase that reaches 10^4 radians, so a
weight error that moves the pitch by 1e-5 drifts every harmonic's phase by radians over a sentence, and
the decoder is not phase-blind. Which weights shape the pitch, and what a mix of precisions costs, is
measured here (the kokoro recipes' `precision_overrides` come from this table), in torch on the first
`--sentences` calibration sentences (voxport/quantize/data/calibration_en.txt: never a recipe's validate
text nor a benchmark's held-out sentence, so what is tuned here is checked elsewhere). Each row: log-mel
DTW dB (worst, mean) of the one-graph synthesis (no source noise) against the fp32 reference, the
length difference in samples, and the bytes the quantized weights take (ONNX storage: int8 per channel
with fp32 scales, int4 in blocks of 32 with fp16 scales). Weights are rounded by voxport's rtn
(`voxport.quantize.methods.quantize`), as the kokoro recipes do.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from voxport.families.kokoro.frontend import text_to_ids
from voxport.families.kokoro.loading import load_checkpoint
from voxport.families.kokoro.settings import KokoroSettings
from voxport.quantize.methods import quantize
from voxport.validate.metrics import logmel_dtw_db

CALIBRATION = Path(__file__).resolve().parent.parent / "voxport/quantize/data/calibration_en.txt"
#: the groups the kokoro recipes treat alike (prefixes of state-dict names)
GROUPS: dict[str, tuple[str, ...]] = {
    "F0 branch (predictor.shared, F0, F0_proj)": ("predictor.shared", "predictor.F0"),
    "ALBERT (bert, bert_encoder)": ("bert.", "bert_encoder"),
    "duration encoder (predictor.text_encoder, lstm, duration_proj)": (
        "predictor.text_encoder",
        "predictor.lstm",
        "predictor.duration_proj",
    ),
    "N branch (predictor.N, N_proj)": ("predictor.N",),
    "text encoder": ("text_encoder",),
    "decoder blocks (encode, decode, F0/N conv, asr_res)": (
        "decoder.encode",
        "decoder.decode",
        "decoder.F0_conv",
        "decoder.N_conv",
        "decoder.asr_res",
    ),
    "generator (iSTFTNet)": ("decoder.generator",),
}
PITCH = GROUPS["F0 branch (predictor.shared, F0, F0_proj)"]
TEXT_SIDE = (
    PITCH
    + GROUPS["ALBERT (bert, bert_encoder)"]
    + GROUPS["duration encoder (predictor.text_encoder, lstm, duration_proj)"]
)
#: name → (base precision, [(prefixes, precision)]), the mixes the recipes consider
MIXES: dict[str, tuple[str, list[tuple[tuple[str, ...], str]]]] = {
    "int8": ("int8", []),
    "int8, F0 branch fp16 (kokoro-phone)": ("int8", [(PITCH, "fp16")]),
    "int8, F0 + ALBERT + durations fp16 (kokoro-desktop)": ("int8", [(TEXT_SIDE, "fp16")]),
    "int4": ("int4", []),
    "int4, F0 + ALBERT + durations int8 (kokoro-desktop)": ("int4", [(TEXT_SIDE, "int8")]),
    "int4, F0 + ALBERT + durations fp16": ("int4", [(TEXT_SIDE, "fp16")]),
    "fp16": ("fp16", []),
}
BYTES = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0 + 4 / 512, "int4": 0.5 + 2 / 32}


def _rounded(weight: torch.Tensor, precision: str) -> torch.Tensor:
    stored = quantize(weight.numpy(), precision, block_size=32)
    values = stored if isinstance(stored, np.ndarray) else stored.dequantize()
    return torch.from_numpy(np.asarray(values, np.float32).reshape(weight.shape))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--sentences", type=int, default=3)
    parser.add_argument("--voice", default="jf_alpha")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = load_checkpoint(args.checkpoint)
    lines = [
        ln.strip() for ln in CALIBRATION.read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    texts = [lines[i] for i in np.linspace(3, len(lines) - 1, args.sentences).astype(int)]
    settings = KokoroSettings(voice=args.voice, noise_scale=0.0)
    ids = [text_to_ids(t) for t in texts]
    reference = [model.synthesize_primary(model.torch_runner(), i, settings).audio for i in ids]
    weights = model.state_dict()
    quantizable = model.quantizable()

    def row(label: str, plan: Mapping[str, str]) -> None:
        rounded = {k: (_rounded(v, plan[k]) if k in plan else v) for k, v in weights.items()}
        mixed = model.with_weights(rounded)
        audio = [mixed.synthesize_primary(mixed.torch_runner(), i, settings).audio for i in ids]
        dist = [logmel_dtw_db(a, r, model.sample_rate) for a, r in zip(audio, reference, strict=True)]
        lengths = [a.size - r.size for a, r in zip(audio, reference, strict=True)]
        size = sum(v.numel() * BYTES[plan.get(k, "fp32")] for k, v in weights.items()) / 1e6
        print(f"| {label} | {size:.1f} | {max(dist):.3f} | {np.mean(dist):.3f} | {lengths} |", flush=True)

    print(f"calibration sentences: {texts}\n")
    print("| rounded | MB (all weights) | log-mel worst dB | mean dB | length Δ samples |")
    print("|---|---|---|---|---|")
    for precision in ("fp16", "int8", "int4"):
        for name, prefixes in GROUPS.items():
            row(f"{name} at {precision}", {k: precision for k in quantizable if k.startswith(prefixes)})
    for name, (base, overrides) in MIXES.items():
        plan = {k: base for k in quantizable}
        for prefixes, precision in overrides:
            plan.update({k: precision for k in quantizable if k.startswith(prefixes)})
        row(f"mix: {name}", plan)


if __name__ == "__main__":
    sys.exit(main())
