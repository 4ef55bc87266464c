"""Voxtral TTS's consolidated checkpoint on disk: the lazy reader, the streaming writer, the random
checkpoint (voxtral_tts/consolidated.py, voxtral_tts/synthetic.py).

The reader and writer are checked against the `safetensors` package itself (its writer's files read
lazily here; this writer's files read by `safe_open`), bit for bit. The memory property — the writer
never holds two produced tensors, the reader returns one tensor per call — is asserted by
instrumentation (weak references to what the producer handed out), not by timing or RSS.
"""

from __future__ import annotations

import json
import math
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from voxport.errors import BadInput
from voxport.families.voxtral_tts.config import NAMED_PARAMS, VoxtralConfig, tensor_shapes
from voxport.families.voxtral_tts.consolidated import (
    CODEBOOK,
    LazyCheckpoint,
    LazyState,
    TensorSpec,
    write_safetensors_stream,
)
from voxport.families.voxtral_tts.synthetic import (
    OUTPUT_GAIN,
    PARAMS,
    TOKENIZER,
    VOICE_DIR,
    WEIGHTS,
    SyntheticWeights,
    make_checkpoint,
)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {
        "b.weight": torch.randn(5, 3, generator=g).to(torch.bfloat16),
        "a.half": torch.randn(4, 2, 3, generator=g).to(torch.float16),
        "c.full": torch.randn(6, generator=g),
        "d.empty": torch.zeros(0, 4, dtype=torch.bfloat16),
    }


def test_lazy_reader_reads_what_safetensors_wrote(tmp_path: Path) -> None:
    tensors = _tensors()
    path = tmp_path / "x.safetensors"
    save_file(tensors, path)
    with LazyCheckpoint(path) as ck:
        assert set(ck.names) == set(tensors)
        for name, t in tensors.items():
            got = ck.get(name)
            assert got.dtype == torch.float32 and tuple(got.shape) == tuple(t.shape)
            assert torch.equal(got, t.float()), name  # BF16/F16 -> float32 is exact
            assert ck.shape(name) == tuple(t.shape)
            assert ck.nbytes(name) == t.numel() * t.element_size()
        assert ck.dtype("b.weight") == "BF16" and ck.dtype("a.half") == "F16" and ck.dtype("c.full") == "F32"
        # a row range reads only those rows, with the same values
        assert torch.equal(ck.get("b.weight", (1, 4)), tensors["b.weight"][1:4].float())
        assert torch.equal(ck.get("a.half", (3, 4)), tensors["a.half"][3:4].float())
        with pytest.raises(ValueError):
            ck.get("b.weight", (4, 6))
        with pytest.raises(BadInput, match="no tensor named"):
            ck.get("missing")


def test_lazy_reader_converts_bf16_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tensor larger than one conversion chunk comes back identical (chunk edges included)."""
    from voxport.families.voxtral_tts import consolidated

    monkeypatch.setattr(consolidated, "CHUNK_ELEMENTS", 7)
    t = torch.randn(9, 5, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    path = tmp_path / "x.safetensors"
    save_file({"t": t}, path)
    with LazyCheckpoint(path) as ck:
        assert torch.equal(ck.get("t"), t.float())
        assert torch.equal(ck.get("t", (2, 7)), t[2:7].float())


def test_lazy_reader_refuses_broken_files(tmp_path: Path) -> None:
    t = _tensors()
    good = tmp_path / "good.safetensors"
    save_file(t, good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[:-10])
    with pytest.raises(BadInput, match="outside the file"):
        LazyCheckpoint(truncated)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(BadInput, match="corrupt safetensors header"):
        LazyCheckpoint(junk)
    with pytest.raises(BadInput, match="not found"):
        LazyCheckpoint(tmp_path / "absent.safetensors")


def test_streaming_writer_is_read_back_by_safetensors(tmp_path: Path) -> None:
    tensors = _tensors()
    specs = [
        TensorSpec(name, tuple(t.shape), {torch.bfloat16: "BF16", torch.float16: "F16"}.get(t.dtype, "F32"))
        for name, t in tensors.items()
    ]
    path = write_safetensors_stream(tmp_path / "out.safetensors", specs, lambda n: tensors[n].float())
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert set(f.keys()) == set(tensors)
        for name, t in tensors.items():
            got = f.get_tensor(name)
            assert got.dtype == t.dtype and torch.equal(got, t), name
    # and the header is one the lazy reader agrees with (offsets follow the spec order)
    with LazyCheckpoint(path) as ck:
        assert ck.names == [s.name for s in specs]


def test_streaming_writer_holds_one_tensor_and_asks_once_each(tmp_path: Path) -> None:
    """Instrumented producer: each name is asked for once, in spec order, and when the writer asks for
    the next tensor it no longer references any tensor it was given before."""
    shapes = {f"t{i}": (3 + i, 4) for i in range(6)}
    given: list[weakref.ref[torch.Tensor]] = []
    asked: list[str] = []

    def produce(name: str) -> torch.Tensor:
        # reference counting frees a dropped tensor at once; a collector pass is not needed
        alive = [r for r in given if r() is not None]
        assert not alive, f"the writer still holds {len(alive)} earlier tensor(s) when asking for {name}"
        asked.append(name)
        t = torch.full(shapes[name], float(len(asked)))
        given.append(weakref.ref(t))
        return t

    write_safetensors_stream(tmp_path / "x.safetensors", [(n, s, "BF16") for n, s in shapes.items()], produce)
    assert asked == list(shapes)


def test_failed_write_leaves_no_finished_looking_file(tmp_path: Path) -> None:
    path = tmp_path / "consolidated.safetensors"

    def failing(name: str) -> torch.Tensor:
        if name == "b":
            raise RuntimeError("producer died")
        return torch.ones(2, 2)

    specs = [("a", (2, 2), "BF16"), ("b", (2, 2), "BF16")]
    with pytest.raises(RuntimeError, match="producer died"):
        write_safetensors_stream(path, specs, failing)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary is left
    # an existing complete file keeps its content when a rewrite fails
    write_safetensors_stream(path, specs, lambda n: torch.full((2, 2), 3.0))
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        write_safetensors_stream(path, specs, failing)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]
    # a producer that disagrees with the header is refused the same way
    with pytest.raises(ValueError, match="produced"):
        write_safetensors_stream(tmp_path / "other.safetensors", specs, lambda n: torch.ones(3))
    assert not (tmp_path / "other.safetensors").exists()


# --- the random checkpoint -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("voxtral_tiny"), "tiny", seed=0)


def test_random_checkpoint_layout(tiny_dir: Path) -> None:
    raw = json.loads((tiny_dir / PARAMS).read_text())
    assert raw == NAMED_PARAMS["tiny"]
    cfg = VoxtralConfig(raw)
    with safe_open(tiny_dir / WEIGHTS, "pt") as f:
        names = set(f.keys())
        assert names == set(tensor_shapes(cfg))
        for name, shape in tensor_shapes(cfg).items():
            t = f.get_tensor(name)
            assert t.dtype == torch.bfloat16 and tuple(t.shape) == shape, name
    voices = sorted(p.stem for p in (tiny_dir / VOICE_DIR).glob("*.pt"))
    assert len(voices) == 2
    for v in voices:
        emb = torch.load(tiny_dir / VOICE_DIR / f"{v}.pt")
        assert emb.dtype == torch.bfloat16 and emb.shape[1] == cfg.backbone.dim and 3 <= emb.shape[0] <= 5
    tekken = json.loads((tiny_dir / TOKENIZER).read_text())
    assert tekken["config"]["default_vocab_size"] == cfg.backbone.vocab_size


def test_random_checkpoint_is_deterministic_per_seed_and_per_tensor(tiny_dir: Path, tmp_path: Path) -> None:
    again = make_checkpoint(tmp_path / "again", "tiny", seed=0)
    for rel in (WEIGHTS, PARAMS, TOKENIZER):
        assert (again / rel).read_bytes() == (tiny_dir / rel).read_bytes(), rel
    for p in (tiny_dir / VOICE_DIR).glob("*.pt"):
        assert torch.equal(torch.load(p), torch.load(again / VOICE_DIR / p.name))
    # one tensor alone, from a fresh generator in any order, is the tensor in the file
    weights = SyntheticWeights(VoxtralConfig(NAMED_PARAMS["tiny"]), seed=0)
    with safe_open(tiny_dir / WEIGHTS, "pt") as f:
        for name in reversed(list(weights.shapes)[-5:]):
            assert torch.equal(weights.tensor(name), f.get_tensor(name)), name
    other = SyntheticWeights(VoxtralConfig(NAMED_PARAMS["tiny"]), seed=1)
    assert not torch.equal(
        other.tensor("layers.0.attention.wq.weight"), weights.tensor("layers.0.attention.wq.weight")
    )


def test_random_values_have_the_intended_scales(tiny_dir: Path) -> None:
    """Linear ~ N(0, 1/fan_in), norms 1 + 0.1·N (never all ones, all distinct), codebook N(0,1) after the
    usage division, folded convs ≈ v·(1 + 0.1·N), output_proj gain 0.1. Bounds are several standard
    errors wide for these sizes (thousands of values), so any seed passes."""
    cfg = VoxtralConfig(NAMED_PARAMS["tiny"])
    with LazyCheckpoint(tiny_dir / WEIGHTS) as ck:
        wq = ck.get("layers.0.attention.wq.weight")
        assert abs(float(wq.std()) * math.sqrt(wq.shape[1]) - 1) < 0.1
        assert abs(float(wq.mean())) < 0.02
        norms = [n for n in ck.names if n.endswith("norm.weight")]
        seen: set[bytes] = set()
        for n in norms:
            v = ck.get(n)
            assert not torch.all(v == 1), n
            assert 0.05 < float(v.std()) < 0.15 and abs(float(v.mean()) - 1) < 0.05, n
            seen.add(v.numpy().tobytes())
        assert len(seen) == len(norms)
        scale = ck.get("audio_tokenizer.decoder_blocks.1.layers.0.attention_scale")
        assert 0.07 < float(scale.mean()) < 0.13
        usage = ck.get("audio_tokenizer.quantizer.semantic_codebook.cluster_usage")
        assert float(usage.min()) >= 0.5 and float(usage.max()) <= 2.0
        state = LazyState(ck)
        book = torch.from_numpy(state.load(CODEBOOK))
        assert tuple(book.shape) == (cfg.codec.semantic_codebook_size, cfg.codec.semantic_dim)
        assert abs(float(book.std()) - 1) < 0.1
        for prefix, gain in (
            ("audio_tokenizer.decoder_blocks.0.", 1.0),
            ("audio_tokenizer.output_proj.", OUTPUT_GAIN),
        ):
            v = ck.get(prefix + "conv.parametrizations.weight.original1")
            g = ck.get(prefix + "conv.parametrizations.weight.original0")
            ratio = g.reshape(-1) / v.flatten(1).norm(dim=1)
            assert abs(float(ratio.mean()) / gain - 1) < 0.05 and 0.05 < float(ratio.std()) / gain < 0.15


def test_lazy_state_folds_weight_norm_like_torch(tiny_dir: Path) -> None:
    """`<p>conv.weight` equals torch's own weight_norm parametrisation (dim 0) over the same g and v,
    for a Conv1d and a ConvTranspose1d; the codebook is embedding_sum / usage."""
    with LazyCheckpoint(tiny_dir / WEIGHTS) as ck:
        state = LazyState(ck)
        assert "audio_tokenizer.decoder_blocks.0.conv.weight" in state.shapes
        assert not any(
            "parametrizations" in n or n.endswith(("cluster_usage", "embedding_sum")) for n in state.shapes
        )
        for prefix, cls in (
            ("audio_tokenizer.decoder_blocks.0.", torch.nn.Conv1d),
            ("audio_tokenizer.decoder_blocks.2.", torch.nn.ConvTranspose1d),
        ):
            v = ck.get(prefix + "conv.parametrizations.weight.original1")
            g = ck.get(prefix + "conv.parametrizations.weight.original0")
            a, b, k = v.shape
            conv = cls(b, a, k, bias=False) if cls is torch.nn.Conv1d else cls(a, b, k, bias=False)
            conv = torch.nn.utils.parametrizations.weight_norm(conv, dim=0)
            with torch.no_grad():
                conv.parametrizations.weight.original0.copy_(g)
                conv.parametrizations.weight.original1.copy_(v)
                expected = conv.weight.detach()
            got = torch.from_numpy(state.load(prefix + "conv.weight"))
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
            # row ranges fold the same rows
            assert np.array_equal(state.load(prefix + "conv.weight", (1, 3)), got[1:3].numpy())
        usage = ck.get("audio_tokenizer.quantizer.semantic_codebook.cluster_usage")
        total = ck.get("audio_tokenizer.quantizer.semantic_codebook.embedding_sum")
        torch.testing.assert_close(torch.from_numpy(state.load(CODEBOOK)), total / usage[:, None])


def test_lazy_state_reads_what_the_family_stream_source_reads(tiny_dir: Path) -> None:
    """LazyState.read can stand in for the family's StreamSource.read: same names, same float32 values
    bit for bit, whole or by row range."""
    from voxport.families.voxtral_tts.stream import stream_source

    source = stream_source(tiny_dir, trust_pickle=True)  # the random presets are ours
    with LazyCheckpoint(tiny_dir / WEIGHTS) as ck:
        state = LazyState(ck)
        assert state.shapes == dict(source.shapes)
        for name, shape in state.shapes.items():
            assert torch.equal(state.read(name), source.read(name, None)), name
            rows = slice(1, max(1, shape[0] - 1))
            assert torch.equal(state.read(name, rows), source.read(name, rows)), name
