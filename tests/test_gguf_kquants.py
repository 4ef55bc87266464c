"""Numpy k-quant encoders (Q4_K/Q5_K/Q6_K): gguf-py's own dequantizer must read our bytes back."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import dequantize, quant_shape_to_byte_shape, quantize

from voxport.export.gguf.kquants import K_TYPES, quantize_k

# measured relative RMS errors on the fixed seeds below (Gaussian / Student-t df 3):
# Q4_K 7.16 % / 9.26 %, Q5_K 3.63 % / 4.69 %, Q6_K 1.78 % / 2.59 %
GAUSS_BOUND = {"Q4_K": 0.08, "Q5_K": 0.04, "Q6_K": 0.02}
HEAVY_BOUND = {"Q4_K": 0.105, "Q5_K": 0.055, "Q6_K": 0.03}


def rel_rms(approx: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(np.mean((approx - ref) ** 2) / np.mean(ref**2)))


def roundtrip(weight: np.ndarray, qtype: str) -> np.ndarray:
    return dequantize(quantize_k(weight, qtype), K_TYPES[qtype])


def bits_per_weight(qtype: GGMLQuantizationType) -> float:
    block, size = GGML_QUANT_SIZES[qtype]
    return 8 * size / block


@pytest.fixture(scope="module")
def gauss() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal((128, 1024)) * 0.02).astype(np.float32)


@pytest.fixture(scope="module")
def heavy() -> np.ndarray:
    return (np.random.default_rng(1).standard_t(3, (128, 1024)) * 0.02).astype(np.float32)


@pytest.mark.parametrize("qtype", sorted(K_TYPES))
def test_gguf_py_decodes_close_to_input(gauss, qtype):
    out = roundtrip(gauss, qtype)
    err = rel_rms(out, gauss)
    print(f"{qtype} gaussian relative RMS error {err:.4%}")
    assert out.shape == gauss.shape and out.dtype == np.float32
    assert err < GAUSS_BOUND[qtype]


@pytest.mark.parametrize("qtype", sorted(K_TYPES))
def test_byte_layout_size(gauss, qtype):
    data = quantize_k(gauss, qtype)
    type_size = GGML_QUANT_SIZES[K_TYPES[qtype]][1]
    rows, cols = gauss.shape
    assert data.dtype == np.uint8
    assert data.shape == (rows, cols // 256 * type_size)
    assert data.nbytes == rows * cols // 256 * type_size
    assert data.shape == quant_shape_to_byte_shape(gauss.shape, K_TYPES[qtype])  # gguf-py's own rule


@pytest.mark.parametrize("qtype", sorted(K_TYPES))
def test_zero_rows_stay_exact_zeros(gauss, qtype):
    weight = gauss[:8].copy()
    weight[[1, 4]] = 0.0
    weight[6, :256] = 0.0  # a zero super-block inside a non-zero row
    out = roundtrip(weight, qtype)
    assert np.array_equal(out[[1, 4]], np.zeros((2, weight.shape[1]), np.float32))
    assert np.array_equal(out[6, :256], np.zeros(256, np.float32))
    assert rel_rms(out[6, 256:], weight[6, 256:]) < GAUSS_BOUND[qtype]
    assert not roundtrip(np.zeros((2, 512), np.float32), qtype).any()


@pytest.mark.parametrize("qtype", sorted(K_TYPES))
def test_heavy_tailed_weight(heavy, qtype):
    out = roundtrip(heavy, qtype)
    err = rel_rms(out, heavy)
    print(f"{qtype} Student-t(3) relative RMS error {err:.4%}")
    assert np.isfinite(out).all()
    assert err < HEAVY_BOUND[qtype]
    # the outliers themselves survive: the largest weight of every row comes back within 10 %
    idx = np.abs(heavy).argmax(axis=1)[:, None]
    peak, back = np.take_along_axis(heavy, idx, 1), np.take_along_axis(out, idx, 1)
    assert np.all(np.abs(back - peak) <= 0.1 * np.abs(peak))


def test_constant_negative_subblock_is_carried_by_the_min():
    weight = np.full((1, 256), -0.5, np.float32)
    for qtype in ("Q4_K", "Q5_K"):
        np.testing.assert_allclose(roundtrip(weight, qtype), weight, rtol=1e-3)


@pytest.mark.parametrize(
    ("kq", "legacy"),
    [
        ("Q4_K", GGMLQuantizationType.Q4_0),
        ("Q5_K", GGMLQuantizationType.Q5_0),
    ],
)
def test_k_quant_beats_legacy_quant_at_equal_bits(gauss, heavy, kq, legacy):
    assert bits_per_weight(K_TYPES[kq]) == bits_per_weight(legacy)
    for name, weight in (("gaussian", gauss), ("Student-t(3)", heavy)):
        ours = rel_rms(roundtrip(weight, kq), weight)
        theirs = rel_rms(dequantize(quantize(weight, legacy), legacy), weight)
        print(
            f"{name}: {kq} {ours:.3%} vs gguf-py {legacy.name} {theirs:.3%} "
            f"at {bits_per_weight(legacy)} bits/weight"
        )
        assert ours < theirs


def test_bytes_load_through_a_gguf_file(tmp_path, gauss):
    path = tmp_path / "kq.gguf"
    writer = GGUFWriter(path, "llama")
    for qtype, gtype in K_TYPES.items():
        writer.add_tensor(f"w.{qtype}", quantize_k(gauss[:16], qtype), raw_dtype=gtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    for qtype, gtype in K_TYPES.items():
        t = tensors[f"w.{qtype}"]
        assert t.tensor_type == gtype
        assert [int(n) for n in t.shape] == [1024, 16]  # ggml order: columns first
        back = dequantize(np.asarray(t.data), gtype).reshape(16, 1024)
        assert rel_rms(back, gauss[:16]) < GAUSS_BOUND[qtype]


def test_rejects_rows_not_made_of_super_blocks():
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_k(np.ones((4, 288), np.float32), "Q4_K")


def test_rejects_unknown_type():
    with pytest.raises(ValueError, match="unknown k-quant type 'Q3_K'"):
        quantize_k(np.ones((4, 256), np.float32), "Q3_K")


def test_rejects_non_finite_weights():
    weight = np.ones((1, 256), np.float32)
    weight[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        quantize_k(weight, "Q6_K")
