"""Pocket TTS in Core ML: a fixed-capacity KV cache backbone, flow head and streaming codec per
precision, driven by the family's own synthesis loop in voxport's numpy MIL interpreter (no Mac here).

One pipeline build (formats [coreml], fp32 / int8 / int4 on iOS18, fp32 compute) of the demo
checkpoint serves every test. EOS is switched off in that checkpoint (`out_eos` bias -100), so every
runner produces exactly `FRAMES` frames and figures compare frame by frame.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import coremltools as ct
import numpy as np
import pytest
import torch
from torch import nn

from voxport import pipeline
from voxport.errors import BadInput
from voxport.families.pocket_tts.bounded import GRAPH, BackboneCacheGraph, cache_names
from voxport.families.pocket_tts.graphs import KIND_AUDIO_BOS, KIND_LATENT
from voxport.families.pocket_tts.loop import Generation, LoopSettings, generate, run_backbone
from voxport.families.pocket_tts.model import PocketTTSAdapter
from voxport.families.pocket_tts.synthetic import random_model
from voxport.manifest import read_manifest, verify_files
from voxport.quantize.stage import quantize_model
from voxport.quantize.tensor import QuantizedTensor
from voxport.recipe import Recipe
from voxport.runtime.coreml import CoremlRunner, spec_input_shapes
from voxport.runtime.mil import load_mlpackage

torch.set_num_threads(1)

CAPACITY, MAX_TOKENS, FRAMES, BLOCK = 64, 32, 8, 32
PRECISIONS = ("fp32", "int8", "int4")
GRAPHS = {GRAPH, "flow_head", "codec"}
TEXT = "Hello world, this is voxport."
SETTINGS = LoopSettings(seed=0, temperature=0.3, max_frames=FRAMES)


def _no_eos(model: PocketTTSAdapter) -> PocketTTSAdapter:
    with torch.no_grad():
        model.modules.flow_lm.out_eos.bias.fill_(-100.0)
    return model


@pytest.fixture(scope="module")
def model() -> PocketTTSAdapter:
    """The demo checkpoint's weights (`make_checkpoint` = `random_model(seed=0)`), EOS off."""
    return _no_eos(random_model(seed=0))


@pytest.fixture(scope="module")
def built(model: PocketTTSAdapter, tmp_path_factory: pytest.TempPathFactory) -> Path:
    checkpoint = tmp_path_factory.mktemp("pocket-ckpt")
    model.save(checkpoint)
    recipe = Recipe.from_mapping(
        {
            "name": "pocket",
            "model": str(checkpoint),
            "formats": ["coreml"],
            "precisions": list(PRECISIONS),
            "quantize": {"block_size": BLOCK},
            "export": {
                "coreml": {
                    "target": "iOS18",
                    "compute_precision": "fp32",
                    "kv_capacity": CAPACITY,
                    "max_tokens": MAX_TOKENS,
                }
            },
            "validate": {
                "texts": [TEXT],
                "temperature": 0.3,
                "max_frames": FRAMES,
                "thresholds": {"hidden_snr_db": 10, "latent_snr_db": 3, "logmel_dtw_db": 12},
            },
        },
        checkpoint,
    )
    out = tmp_path_factory.mktemp("pocket-coreml")
    started = time.perf_counter()
    pipeline.build(recipe, out)
    seconds = time.perf_counter() - started
    print(f"\npipeline build (3 precisions x 3 graphs, convert + validate): {seconds:.1f} s")
    return out


def _files(out: Path, precision: str) -> dict[str, Path]:
    [artifact] = [a for a in read_manifest(out).artifacts if a.precision == precision]
    return {f.graph: out / f.path for f in artifact.files}  # type: ignore[attr-defined]


def _snr(ref: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - test) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise)


def _figures(ref: Generation, test: Generation) -> dict[str, float]:
    assert len(test.latents) == len(ref.latents) == FRAMES and test.audio.shape == ref.audio.shape
    return {
        "audio": _snr(ref.audio, test.audio),
        "latent": _snr(ref.latents, test.latents),
        "hidden": _snr(ref.hidden, test.hidden),
        "prompt_hidden": _snr(ref.prompt_hidden, test.prompt_hidden),
    }


# --------------------------------------------------------------------------------- the bounded graph


def test_fixed_cache_backbone_is_the_growing_backbone(model: PocketTTSAdapter) -> None:
    """Prefill then single steps: same hidden/EOS as `backbone`, the cache holds `present` in its first
    P + S slots, and slots past them keep whatever they held (stale values are masked, not read)."""
    [growing] = [g for g in model.graphs() if g.name == "backbone"]
    [fixed] = [g for g in model.bounded_graphs(CAPACITY) if g.name == GRAPH]
    assert isinstance(fixed.module, BackboneCacheGraph) and fixed.primary
    c, g = model.cfg, torch.Generator().manual_seed(3)
    past = [torch.zeros(1, c.num_kv_heads, 0, c.head_dim) for _ in range(2 * c.num_layers)]
    stale = [torch.randn(1, c.num_kv_heads, CAPACITY, c.head_dim, generator=g) for _ in past]
    cache, position = [t.clone() for t in stale], 0
    for kinds in ([3, 1, 1, 0, 0, 0, KIND_AUDIO_BOS], [KIND_LATENT], [KIND_LATENT]):
        s = len(kinds)
        inputs = (
            torch.randint(0, 200, (1, s), generator=g),
            torch.randn(1, s, c.latent_dim, generator=g),
            torch.tensor([kinds]),
            torch.tensor([position]),
        )
        with torch.no_grad():
            a = growing.module(*inputs, *past)
            b = fixed.module(*inputs, *cache)
        # measured up to 1.6e-6, 7.6e-6 with torch's portable kernels (one fp32 ulp of a logit near 100),
        # so another CPU's kernels can exceed 1e-5 absolute: allow 1e-5 relative too (~80 ulps); a stale
        # cache slot read or a wrong mask moves them by O(1)
        torch.testing.assert_close(b[0], a[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b[1], a[1], rtol=1e-5, atol=1e-5)
        for present, full, old in zip(a[2:], b[2:], stale, strict=True):
            torch.testing.assert_close(full[:, :, : position + s], present, rtol=0, atol=1e-5)
            assert torch.equal(full[:, :, position + s :], old[:, :, position + s :])
        past, cache, position = list(a[2:]), list(b[2:]), position + s


def test_run_backbone_refuses_more_positions_than_the_cache_holds(model: PocketTTSAdapter) -> None:
    class FixedOnly:
        name = "fake"
        graph_names = frozenset({GRAPH, "flow_head", "codec"})

        def input_shapes(self, graph: str) -> dict[str, tuple[int | None, ...]]:
            return {"key_cache_0": (1, 2, 4, 8)}

        def run(self, graph: str, inputs: Any) -> dict[str, np.ndarray]:
            raise AssertionError("must not run")

    past = {f"past_{kv}_0": np.zeros((1, 2, 3, 8), np.float32) for kv in ("key", "value")}
    inputs = {"kind": np.zeros((1, 2), np.int64), "position": np.array([3]), **past}
    with pytest.raises(BadInput, match="KV capacity of 4.*kv_capacity"):
        run_backbone(FixedOnly(), inputs)


# ------------------------------------------------------------------------------------- the packages


def test_packages_shapes_and_metadata(built: Path, model: PocketTTSAdapter) -> None:
    manifest = read_manifest(built)
    assert manifest.passed and verify_files(built, manifest) == []
    c = model.cfg
    sizes = {}
    for precision in PRECISIONS:
        files = _files(built, precision)
        assert set(files) == GRAPHS and all(p.suffix == ".mlpackage" for p in files.values())
        sizes[precision] = sum(f.stat().st_size for p in files.values() for f in p.rglob("*") if f.is_file())
        runner = CoremlRunner(files)
        shapes = runner.input_shapes(GRAPH)
        names_in, names_out = cache_names(c.num_layers)
        assert list(shapes) == ["token_ids", "latents", "kind", "position", *names_in]
        assert shapes["token_ids"] == shapes["kind"] == (1, None)
        assert shapes["latents"] == (1, None, c.latent_dim) and shapes["position"] == (1,)
        assert all(shapes[n] == (1, c.num_kv_heads, CAPACITY, c.head_dim) for n in names_in)
        assert runner.interpreters[GRAPH].output_names == ["hidden", "eos_logit", *names_out]
        assert runner.input_shapes("flow_head") == {
            "condition": (1, c.condition_dim),
            "noise": (1, c.latent_dim),
        }
        spec = ct.utils.load_spec(str(files[GRAPH]))
        assert spec.specificationVersion >= 9  # iOS18
        # the predict runner's reading of the same spec, and the recipe's max_tokens as the seq range
        assert spec_input_shapes(spec.description.input) == shapes
        [ids] = [f for f in spec.description.input if f.name == "token_ids"]
        seq = ids.type.multiArrayType.shapeRange.sizeRanges[1]
        assert (seq.lowerBound, seq.upperBound) == (1, MAX_TOKENS)
        assert ids.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32
        meta = dict(spec.description.metadata.userDefined)
        assert meta["family"] == "pocket_tts" and meta["precision"] == precision
        assert meta["graph"] == GRAPH and meta["pocket_tts_kv_capacity"] == str(CAPACITY)
        assert '"frame_size": 1920' in meta["pocket_tts"] and meta["compute_precision"] == "fp32"
    print("\npackage bytes (3 graphs):", sizes)
    assert sizes["int4"] < sizes["int8"] < sizes["fp32"]


def test_int8_constexpr_weight_is_voxports_dequantized_tensor(built: Path, model: PocketTTSAdapter) -> None:
    """Decode the backbone's in_proj constexpr in numpy (scale repeated over Core ML's blocks) and
    compare bit for bit with `QuantizedTensor.dequantize()` of the same RTN quantization."""
    name = "flow_lm.transformer.layers.0.self_attn.in_proj.weight"
    q = quantize_model(model, "int8", block_size=BLOCK).weights[name]
    assert isinstance(q, QuantizedTensor)
    package = load_mlpackage(_files(built, "int8")[GRAPH])
    ops = [
        op
        for op in package.program.functions["main"].operations
        if op.op_type == "constexpr_blockwise_shift_scale" and name.replace(".", "_") in op.name
    ]
    assert len(ops) == 1
    data, scale = (np.asarray(ops[0].inputs[k].val) for k in ("data", "scale"))
    assert data.dtype == np.int8 and data.shape == q.shape
    for axis, (full, part) in enumerate(zip(data.shape, scale.shape, strict=True)):
        scale = np.repeat(scale, full // part, axis=axis)
    decoded = data.astype(np.float32) * scale.astype(np.float32)
    expected = q.dequantize()
    assert np.array_equal(data.reshape(-1), q.codes.reshape(-1)[: data.size])
    assert decoded.dtype == expected.dtype and np.array_equal(decoded, expected)


def test_synthesis_loop_in_the_interpreter_matches_torch(built: Path, model: PocketTTSAdapter) -> None:
    """The loop over `backbone_cache` (padded/cut by `run_backbone`), flow head and codec, recorded
    noise: each precision against torch with the very weights it stores (round-off only), and
    against the fp32 reference (what quantization costs)."""
    ids = model.text_to_ids(TEXT)
    reference = generate(model.torch_runner(), model.loop_spec, ids, SETTINGS)
    lines, against_fp32 = [], {}
    for precision in PRECISIONS:
        runner = CoremlRunner(_files(built, precision))
        started = time.perf_counter()
        test = generate(runner, model.loop_spec, ids, SETTINGS)
        seconds = time.perf_counter() - started
        own = (
            model
            if precision == "fp32"
            else model.with_weights(quantize_model(model, precision).dequantized())
        )
        same_weights = _figures(generate(own.torch_runner(), model.loop_spec, ids, SETTINGS), test)
        against_fp32[precision] = _figures(reference, test)
        lines.append(
            f"{precision}: interpreter {seconds:.2f} s for {FRAMES} frames; SNR dB vs torch same weights "
            + ", ".join(f"{k} {v:.1f}" for k, v in same_weights.items())
            + "; vs fp32 torch "
            + ", ".join(f"{k} {v:.1f}" for k, v in against_fp32[precision].items())
        )
        assert min(same_weights.values()) > 80, (precision, same_weights)
    print("\n" + "\n".join(lines))
    for metric in ("latent", "hidden", "audio"):
        assert against_fp32["int8"][metric] > against_fp32["int4"][metric], (metric, against_fp32)


def test_pipeline_parity_figures(built: Path) -> None:
    """validate ran the same loop through `CoremlRunner`: fp32 is round-off, precisions in order."""
    figures = {a.precision: a.parity.metrics for a in read_manifest(built).artifacts}
    # measured 107.1-107.4 dB (torch vs the numpy MIL interpreter); 85 leaves 22 dB for other kernels
    assert figures["fp32"]["hidden_snr_db"] > 85 and figures["fp32"]["latent_snr_db"] > 85
    assert figures["fp32"]["forced_snr_db"] > 80
    for metric in ("hidden_snr_db", "latent_snr_db", "forced_snr_db"):
        values = [figures[p][metric] for p in PRECISIONS]
        assert values == sorted(values, reverse=True), (metric, values)


# ------------------------------------------------------------------------------------- compat patch


class DivideBySize(nn.Module):
    """Pocket's RoPE pattern: a size read from the shape used as a divisor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        return x * (2 / d)


def _convert_divide() -> Any:
    traced = torch.jit.trace(DivideBySize().eval(), torch.ones(1, 4))
    return ct.convert(
        traced,
        inputs=[ct.TensorType(name="x", shape=(1, 4))],
        convert_to="milinternal",
        minimum_deployment_target=ct.target.iOS18,
        compute_precision=ct.precision.FLOAT32,
    )


def test_reciprocal_patch_still_needed() -> None:
    from voxport.export.coreml import compat

    compat.remove_patches()
    try:
        with pytest.raises(Exception, match="fp16', 'fp32'"):
            _convert_divide()
    finally:
        compat.apply_patches()
    assert compat.is_applied("torch-frontend-reciprocal-of-integers")
    from coremltools.converters.mil.mil import types

    program = _convert_divide()
    assert types.builtin_to_string(program.functions["main"].outputs[0].dtype) == "fp32"


def test_coreml_voice_speaks_the_packages(built: Path) -> None:
    """The voice `voxport say` opens on a Pocket TTS Core ML package on macOS, run here with the MIL
    interpreter in place of MLModel.predict: the loop's numbers come from the packages' metadata, it
    streams 80 ms frames, and it matches the same loop over the same packages driven directly."""
    from voxport.families.pocket_tts.artifact import PocketArtifactVoice
    from voxport.families.pocket_tts.settings import PocketSettings

    files = _files(built, "fp32")
    voice = PocketArtifactVoice.coreml(files["flow_head"], CoremlRunner)
    assert voice.sample_rate == 24000 and voice.runtime_options == {}
    settings = PocketSettings(seed=3, max_frames=4, temperature=0.3)
    frames = list(voice.stream([5, 6, 7, 8], settings))
    assert len(frames) == 4 and all(f.size == 1920 for f in frames)
    assert np.array_equal(np.concatenate(frames), voice.speak([5, 6, 7, 8], settings))
    with pytest.raises(BadInput, match="out of range"):
        voice.speak([10**6], settings)
