"""Voxtral TTS as GGUF, written by the streaming converter from a checkpoint on disk
(voxtral_tts/gguf.py, export/gguf/stream.py).

The tiny random checkpoint (real layout, BF16) goes through `write_layout_stream`; the two files are
read back and checked: the backbone file against gguf-py's own constants for llama.cpp's `llama`
architecture (names, keys, no output.weight for tied embeddings, the Tekken vocabulary as llama.cpp's
converter writes it), the layout's read-back against the checkpoint's weights, and the streamed bytes
against encoding each whole tensor in memory (chunking must not change a byte). Peak memory is checked
by instrumentation: every load is at most one row chunk, and no earlier load is alive when the next
one is made.
"""

from __future__ import annotations

import copy
import json
import weakref
from pathlib import Path

import numpy as np
import pytest
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSORS, TENSOR_NAMES, GGUFReader, Keys, TokenType

from voxport.export.gguf.split import read_file, read_header, read_layout
from voxport.export.gguf.stream import LazyWeights, write_layout_stream
from voxport.export.gguf.writer import TensorPlan, encode_tensor
from voxport.families.voxtral_tts.config import NAMED_PARAMS, VoxtralConfig
from voxport.families.voxtral_tts.consolidated import LazyCheckpoint, LazyState
from voxport.families.voxtral_tts.gguf import (
    ARCH_AUDIO,
    CONFIG_KEY,
    VoxtralGgufLayout,
    backbone_names,
    quantizable,
)
from voxport.families.voxtral_tts.synthetic import PARAMS, TOKENIZER, WEIGHTS, make_checkpoint

GENERAL = {"general.name": "tiny voxtral"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("voxtral_tiny_gguf"), "tiny", seed=0)


@pytest.fixture(scope="module")
def wide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny config with a 256-wide backbone (and head), so Q4_K's 256-blocks fit its rows."""
    raw = copy.deepcopy(NAMED_PARAMS["tiny"])
    raw.update(dim=256, hidden_dim=512)
    raw["multimodal"]["audio_model_args"]["acoustic_transformer_args"].update(input_dim=256, dim=256)
    return make_checkpoint(tmp_path_factory.mktemp("voxtral_wide_gguf"), raw, seed=0)


@pytest.fixture(scope="module")
def cfg(tiny_dir: Path) -> VoxtralConfig:
    return VoxtralConfig(json.loads((tiny_dir / PARAMS).read_text()))


@pytest.fixture(scope="module")
def layout(tiny_dir: Path, cfg: VoxtralConfig) -> VoxtralGgufLayout:
    return VoxtralGgufLayout(cfg, tiny_dir / TOKENIZER)


def _write(tiny_dir: Path, cfg: VoxtralConfig, layout: VoxtralGgufLayout, out: Path, **kw: object):
    ck = LazyCheckpoint(tiny_dir / WEIGHTS)
    state = LazyState(ck)
    try:
        return write_layout_stream(
            layout,
            LazyWeights(state.shapes, state.load, quantizable(cfg)),
            out,
            stem="tiny",
            general=GENERAL,
            **kw,  # type: ignore[arg-type]
        ), state
    finally:
        ck.close()


def test_backbone_names_and_keys_are_llama_cpp_s(layout: VoxtralGgufLayout, cfg: VoxtralConfig) -> None:
    text, audio = layout.files()
    llama = MODEL_ARCH_NAMES[MODEL_ARCH.LLAMA]
    assert text.architecture == llama and audio.architecture == ARCH_AUDIO
    allowed = set()
    for kind in MODEL_TENSORS[MODEL_ARCH.LLAMA]:
        for i in range(cfg.backbone.n_layers):
            allowed.add(TENSOR_NAMES[kind].format(bid=i) + ".weight")
    names = {t.gguf_name for t in text.tensors}
    assert names <= allowed
    assert "output.weight" not in names  # tied embeddings: llama.cpp reuses token_embd
    assert len(names) == 2 + 9 * cfg.backbone.n_layers
    assert dict((t.gguf_name, t.source) for t in text.tensors)["blk.1.ffn_gate.weight"] == (
        "layers.1.feed_forward.w1.weight"
    )
    b = cfg.backbone
    meta = {k: m.value for k, m in text.metadata.items()}
    expected = {
        Keys.LLM.BLOCK_COUNT: b.n_layers,
        Keys.LLM.EMBEDDING_LENGTH: b.dim,
        Keys.LLM.FEED_FORWARD_LENGTH: b.hidden_dim,
        Keys.LLM.VOCAB_SIZE: b.vocab_size,
        Keys.Attention.HEAD_COUNT: b.n_heads,
        Keys.Attention.HEAD_COUNT_KV: b.n_kv_heads,
        Keys.Attention.KEY_LENGTH: b.head_dim,
        Keys.Attention.VALUE_LENGTH: b.head_dim,
        Keys.Rope.DIMENSION_COUNT: b.head_dim,
        Keys.Rope.FREQ_BASE: b.rope_theta,
        Keys.Attention.LAYERNORM_RMS_EPS: b.norm_eps,
    }
    for key, value in expected.items():
        assert meta[key.format(arch=llama)] == value, key
    assert meta[Keys.Tokenizer.MODEL] == "gpt2" and meta[Keys.Tokenizer.PRE] == "tekken"


def test_every_weight_is_in_exactly_one_file(layout: VoxtralGgufLayout, tiny_dir: Path) -> None:
    files = layout.files()
    sources = [t.source for f in files for t in f.tensors]
    with LazyCheckpoint(tiny_dir / WEIGHTS) as ck:
        state = LazyState(ck)
        assert sorted(sources) == sorted(state.shapes)
    names = [t.gguf_name for f in files for t in f.tensors]
    assert len(set(names)) == len(names) and max(len(n.encode()) for n in names) <= 63
    assert set(backbone_names(layout.cfg)) == {t.source for t in files[0].tensors}


def test_streamed_files_read_back_to_the_checkpoint(
    tiny_dir: Path, cfg: VoxtralConfig, layout: VoxtralGgufLayout, tmp_path: Path
) -> None:
    """No types: every matrix F32, convs F16 (forced), vectors F32. read_layout (the exporter's own
    read-back) gives every weight back, exactly for F32 and to F16 rounding for the convs."""
    written, state = _write(tiny_dir, cfg, layout, tmp_path, chunk_elements=300)
    assert set(written.paths) == {"gguf", "audio"}
    with LazyCheckpoint(tiny_dir / WEIGHTS) as ck:
        st = LazyState(ck)
        metas, weights = read_layout(st, layout, written.paths)  # type: ignore[arg-type]
        assert set(weights) == set(st.shapes)
        for name in st.shapes:
            want = st.load(name)
            if name.endswith("conv.weight"):
                np.testing.assert_array_equal(weights[name], want.astype(np.float16).astype(np.float32))
            else:
                np.testing.assert_array_equal(weights[name], want, err_msg=name)
    assert metas["gguf"]["general.architecture"] == "llama"
    assert metas["audio"]["general.architecture"] == ARCH_AUDIO
    assert json.loads(metas["audio"][CONFIG_KEY]) == cfg.raw
    # gguf-py's own reader opens both files
    for path in written.paths.values():
        assert len(GGUFReader(path).tensors) > 0


def test_tokenizer_is_written_as_llama_cpp_does_for_tekken(
    tiny_dir: Path, cfg: VoxtralConfig, layout: VoxtralGgufLayout, tmp_path: Path
) -> None:
    written, _ = _write(tiny_dir, cfg, layout, tmp_path)
    meta, _, _ = read_file(written.paths["gguf"])
    tekken = json.loads((tiny_dir / TOKENIZER).read_text())
    n_special = tekken["config"]["default_num_special_tokens"]
    tokens, types = meta[Keys.Tokenizer.LIST], meta[Keys.Tokenizer.TOKEN_TYPE]
    assert len(tokens) == len(types) == cfg.backbone.vocab_size
    assert set(types[:n_special]) == {int(TokenType.CONTROL)}
    assert set(types[n_special:]) == {int(TokenType.NORMAL)}
    assert tokens[1] == "<s>" and meta[Keys.Tokenizer.BOS_ID] == 1 and meta[Keys.Tokenizer.EOS_ID] == 2
    # the first 256 vocabulary entries are the bytes, in GPT-2's byte-to-unicode spelling
    assert tokens[n_special + ord("a")] == "a" and tokens[n_special + ord(" ")] == "Ġ"
    merges = meta[Keys.Tokenizer.MERGES]
    assert len(merges) >= cfg.backbone.vocab_size - n_special - 256
    for merge in merges[:50]:  # each merge joins two tokens into a third, all in the vocabulary
        left, right = merge.split(" ")
        assert left in tokens and right in tokens and left + right in tokens


@pytest.mark.parametrize("gtype", ["Q8_0", "Q4_K"])
def test_streamed_bytes_equal_whole_tensor_encoding(gtype: str, wide_dir: Path, tmp_path: Path) -> None:
    """Row chunks (here 1000 elements, so most tensors take several) give the bytes of encoding each
    whole tensor at once, in the same plan (type, fallbacks)."""
    tiny_dir = wide_dir
    cfg = VoxtralConfig(json.loads((wide_dir / PARAMS).read_text()))
    layout = VoxtralGgufLayout(cfg, wide_dir / TOKENIZER)
    written, _ = _write(tiny_dir, cfg, layout, tmp_path, types={"*": gtype}, chunk_elements=1000)
    # token_embd and, per backbone layer, every matrix with 256-multiple rows (all but wo, 64 columns)
    assert written.tensor_types[gtype] >= 1 + 6 * cfg.backbone.n_layers
    with LazyCheckpoint(tiny_dir / WEIGHTS) as ck:
        st = LazyState(ck)
        plans = {}
        files = layout.files()
        for f in files:
            _, infos, data = read_header(written.paths[f.role])
            by_name = {i.name: i for i in infos}
            for t in f.tensors:
                info = by_name[t.gguf_name]
                plans[t.gguf_name] = info.ggml_type.name
                values = st.load(t.source)
                stored = tuple(info.shape)
                plan = TensorPlan(t.source, t.gguf_name, info.ggml_type, values.shape, stored, "fp32")
                expected = encode_tensor(plan, values, values)
                got = np.asarray(data[info.begin : info.begin + info.nbytes])
                assert got.tobytes() == np.ascontiguousarray(expected).tobytes(), t.gguf_name
    # Q4_K where 256 divides the rows, the nearest 32-block type elsewhere (as writer.py falls back)
    assert plans["blk.0.attn_q.weight"] == plans["token_embd.weight"] == gtype
    if gtype == "Q4_K":
        assert plans["codec.dec.1.blk.0.ffn.w2.weight"] == "Q5_0"  # 128 columns
    assert plans["codec.dec.0.conv.weight"] == "F16" and plans["blk.0.attn_norm.weight"] == "F32"


def test_streaming_holds_one_row_chunk(
    tiny_dir: Path, cfg: VoxtralConfig, layout: VoxtralGgufLayout, tmp_path: Path
) -> None:
    """Instrumented source: every load is at most `chunk_elements` values (a row longer than that is
    one row), and when the writer loads again, nothing it loaded before is still referenced."""
    chunk = 4096
    with LazyCheckpoint(tiny_dir / WEIGHTS) as ck:
        st = LazyState(ck)
        given: list[weakref.ref[np.ndarray]] = []
        sizes: list[tuple[str, int, int]] = []

        def load(name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
            # reference counting frees a dropped array at once: no gc.collect() needed (nor wanted:
            # hundreds of loads)
            alive = [r for r in given if r() is not None]
            assert not alive, f"{len(alive)} earlier load(s) still referenced when loading {name}"
            values = st.load(name, rows)
            row = int(np.prod(st.shapes[name][1:])) if len(st.shapes[name]) > 1 else 1
            sizes.append((name, values.size, row))
            given.append(weakref.ref(values))
            return values

        write_layout_stream(
            layout,
            LazyWeights(st.shapes, load, quantizable(cfg)),
            tmp_path,
            stem="tiny",
            general=GENERAL,
            types={"*": "Q8_0"},
            chunk_elements=chunk,
        )
    assert {name for name, _, _ in sizes} == set(st.shapes)
    too_big = [(n, size) for n, size, row in sizes if size > max(chunk, row)]
    assert not too_big, too_big[:5]


@pytest.mark.parametrize("gtype", ["Q8_0", "Q4_0"])
def test_streamed_source_equals_the_in_memory_export(gtype: str, tiny_dir: Path, tmp_path: Path) -> None:
    """The family's StreamSource (weightless adapter + one-weight reader) streamed to GGUF gives the
    same tensors, byte for byte, as split.write_layout on the loaded adapter (the exporter's path)."""
    from voxport.export.gguf.split import write_layout
    from voxport.export.gguf.stream import write_source_stream
    from voxport.families import load_model
    from voxport.families.voxtral_tts.stream import stream_source
    from voxport.quantize.stage import quantize_model

    model = load_model(tiny_dir, trust_pickle=True)  # the random presets are ours
    types = {"*": gtype}
    whole = write_layout(
        model,
        quantize_model(model, "fp32"),
        model.gguf_layout(),
        tmp_path / "whole",
        stem="t",
        name="t",
        types=types,
    )
    streamed = write_source_stream(
        stream_source(tiny_dir, trust_pickle=True),
        tmp_path / "streamed",
        stem="t",
        name="t",
        types=types,
        chunk_elements=500,
    )
    assert streamed.tensor_types == whole.tensor_types and streamed.tensor_types[gtype] > 0
    for role, path in whole.paths.items():
        meta_a, infos_a, data_a = read_header(path)
        meta_b, infos_b, data_b = read_header(streamed.paths[role])
        assert [(i.name, i.shape, i.ggml_type) for i in infos_a] == [
            (i.name, i.shape, i.ggml_type) for i in infos_b
        ]
        for a, b in zip(infos_a, infos_b, strict=True):
            assert (
                data_a[a.begin : a.begin + a.nbytes].tobytes()
                == data_b[b.begin : b.begin + b.nbytes].tobytes()
            ), a.name
        drop = {
            "voxport.precision",
            "voxport.method",
        }  # the in-memory writer takes them from its QuantizedModel
        assert {k: v for k, v in meta_a.items() if k not in drop} == {
            k: v for k, v in meta_b.items() if k not in drop
        }
