"""Pocket TTS as GGUF in llama.cpp's `pockettts` layout: a text-model file + an audio mmproj.

A small random model shaped the way llama.cpp can hold it (64-wide heads, no z_proj / low-rank table,
LSD head, encoder = decoder codec transformer, window 250, ratios 6/5/4) goes through the real
pipeline (quantize → export → validate with the GGUF runner); the files are then read back with
gguf-py's own GGUFReader and checked against llama.cpp's names, keys and types, and against the
quantized weights they came from.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf import quants as gguf_quants

from voxport import pipeline
from voxport.errors import BadInput
from voxport.export.gguf.split import LayoutRunner, read_file
from voxport.families import load_model
from voxport.families.pocket_tts import PocketSettings
from voxport.families.pocket_tts import gguf as pg
from voxport.families.pocket_tts.synthetic import _SEANET, TINY_CONFIG, make_checkpoint, random_model
from voxport.manifest import read_manifest, verify_files
from voxport.quantize.stage import quantize_model
from voxport.quantize.tensor import QuantizedTensor
from voxport.recipe import Recipe

T = GGMLQuantizationType
PRECISIONS = ("fp32", "int8", "int4")


def llama_cpp_config() -> dict[str, Any]:
    """The smallest config llama.cpp's pockettts loader and clip.cpp accept (see gguf.py)."""
    raw = copy.deepcopy(TINY_CONFIG)
    f = raw["flow_lm"]
    f.pop("z_dim")
    f["flow"] = {"dim": 64, "depth": 1, "type": "lsd"}
    f["transformer"] = {
        "d_model": 128,
        "hidden_scale": 2,
        "max_period": 10000,
        "num_heads": 2,
        "num_layers": 2,
    }
    f["lookup_table"] = {
        "dim": 128,
        "n_bins": 4000,
        "tokenizer": "sentencepiece",
        "tokenizer_path": "tokenizer.model",
    }
    codec_tfm = {
        "d_model": 64,
        "num_heads": 1,
        "num_layers": 1,
        "layer_scale": 0.01,
        "context": 250,
        "dim_feedforward": 128,
        "input_dimension": 64,
        "output_dimensions": [64],
    }
    raw["mimi"] = {
        "dtype": "float32",
        "sample_rate": 24000,
        "channels": 1,
        "frame_rate": 12.5,
        "inner_dim": 32,  # = the latent dim, as in every release (the voice path: downsample → 32)
        "outer_dim": 64,
        "seanet": {**_SEANET, "dimension": 64, "n_filters": 4, "kernel_size": 7},
        "transformer": codec_tfm,
        "quantizer": {"dimension": 32, "output_dimension": 64},
    }
    return raw


def identity_tokenizer() -> bytes:
    """A unigram model without a normalization charsmap: gguf-py's GGUFReader parses a UINT8 array
    element by element (seconds for the default 240 kB charsmap), so the file the tests read with it
    stays small; the charsmap path is checked on its own below."""
    import io

    import sentencepiece as spm

    from voxport.families.pocket_tts.synthetic import CORPUS

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in CORPUS.splitlines() if line.strip()] * 4),
        model_writer=out,
        vocab_size=150,
        model_type="unigram",
        normalization_rule_name="identity",
        num_threads=1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return out.getvalue()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pocket-gguf")
    checkpoint = make_checkpoint(root / "checkpoint", llama_cpp_config(), seed=3)
    (checkpoint / "tokenizer.model").write_bytes(identity_tokenizer())
    recipe = Recipe.from_mapping(
        {
            "name": "pg",
            "model": str(checkpoint),
            "formats": ["gguf"],
            "precisions": list(PRECISIONS),
            "quantize": {"block_size": 32},
            "validate": {
                "texts": ["Hello world."],
                "temperature": 0.3,
                "max_frames": 6,
                "thresholds": {"hidden_snr_db": 10, "latent_snr_db": 3, "logmel_dtw_db": 12},
            },
        },
        root,
    )
    out = root / "build"
    manifest = pipeline.build(recipe, out)
    index = json.loads((out / "stages" / "export.json").read_text())
    model = load_model(checkpoint)
    entries = {e["precision"]: e for e in index if e["format"] == "gguf"}
    return {"out": out, "manifest": manifest, "entries": entries, "model": model}


def _paths(built: dict[str, Any], precision: str) -> dict[str, Path]:
    return {role: built["out"] / rel for role, rel in built["entries"][precision]["files"].items()}


def _fields(reader: GGUFReader) -> dict[str, Any]:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_each_precision_is_a_text_model_and_an_mmproj_that_pass_parity(built: dict[str, Any]) -> None:
    manifest = built["manifest"]
    assert manifest.passed
    assert [(a.format, a.precision) for a in manifest.artifacts] == [("gguf", p) for p in PRECISIONS]
    assert verify_files(built["out"], manifest) == []
    for precision in PRECISIONS:
        paths = _paths(built, precision)
        assert [p.name for p in paths.values()] == [f"pg.{precision}.gguf", f"pg.{precision}.mmproj.gguf"]
        assert built["entries"][precision]["layout"] == "llama.cpp pockettts"
    figures = {a.precision: a.parity.metrics for a in read_manifest(built["out"]).artifacts}
    # fp32 differs from torch only by the F16 convolutions llama.cpp mandates
    assert figures["fp32"]["hidden_snr_db"] > 100  # backbone weights are exact
    assert figures["fp32"]["latent_snr_db"] > 60
    for metric in ("hidden_snr_db", "latent_snr_db"):
        values = [figures[p][metric] for p in PRECISIONS]
        assert values == sorted(values, reverse=True), (metric, values)
    bpw = [built["entries"][p]["bits_per_weight"] for p in PRECISIONS]
    assert bpw == sorted(bpw, reverse=True)


def test_text_model_has_llama_cpp_keys_names_and_vocabulary(built: dict[str, Any]) -> None:
    model = built["model"]
    c = model.cfg
    reader = GGUFReader(_paths(built, "int4")["gguf"])
    kv = _fields(reader)
    assert kv["general.architecture"] == "pockettts" and kv["general.type"] == "model"
    assert kv["pockettts.block_count"] == c.num_layers
    assert kv["pockettts.embedding_length"] == c.d_model
    assert kv["pockettts.feed_forward_length"] == c.ffn_dim
    assert kv["pockettts.attention.head_count"] == c.d_model // 64
    assert kv["pockettts.context_length"] == 4096
    assert kv["pockettts.rope.freq_base"] == pytest.approx(10000.0)
    assert kv["pockettts.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    assert kv["tokenizer.ggml.model"] == "t5" and kv["tokenizer.ggml.pre"] == "default"
    tokens = kv["tokenizer.ggml.tokens"]
    assert len(tokens) == c.n_bins + 3 == 4003
    assert tokens[-3:] == ["<|pad|>", "<|bos_before_voice|>", "<|audio_bos|>"]
    assert kv["tokenizer.ggml.token_type"][-3:] == [3, 3, 3]
    assert kv["tokenizer.ggml.scores"][-1] == -1000.0
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model.tokenizer_files["tokenizer.model"])
    assert tokens[: sp.vocab_size()] == [sp.IdToPiece(i) for i in range(sp.vocab_size())]
    assert tokens[sp.vocab_size()] == f"[PAD{sp.vocab_size()}]"
    assert "tokenizer.ggml.precompiled_charsmap" not in kv  # identity normalization has none
    assert kv["tokenizer.ggml.add_space_prefix"] is True
    assert kv["tokenizer.ggml.add_bos_token"] is False and kv["tokenizer.ggml.add_eos_token"] is False
    names = {t.name: t for t in reader.tensors}
    expected = {"token_embd.weight", "output_norm.weight", "output_norm.bias"}
    for i in range(c.num_layers):
        expected |= {
            f"blk.{i}.{n}"
            for n in (
                "attn_norm.weight",
                "attn_norm.bias",
                "attn_q.weight",
                "attn_k.weight",
                "attn_v.weight",
                "attn_output.weight",
                "ffn_norm.weight",
                "ffn_norm.bias",
                "ffn_up.weight",
                "ffn_down.weight",
            )
        }
    assert set(names) == expected
    # token_embd: the 4001 text rows, bos_before_voice, input_linear @ bos_emb (ggml order: ne0 = D)
    embd = names["token_embd.weight"]
    assert embd.tensor_type == T.F32 and list(embd.shape) == [c.d_model, 4003]
    rows = np.asarray(embd.data).reshape(4003, c.d_model)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    assert np.array_equal(rows[:4001], state["flow_lm.conditioner.embed.weight"])
    assert np.array_equal(rows[4001], state["flow_lm.bos_before_voice"].reshape(-1))
    qt = quantize_model(model, "int4").weights["flow_lm.input_linear.weight"]
    assert isinstance(qt, QuantizedTensor)
    np.testing.assert_allclose(rows[4002], qt.dequantize() @ state["flow_lm.bos_emb"], rtol=1e-5, atol=1e-6)
    assert names["blk.0.attn_q.weight"].tensor_type == T.Q4_0
    assert names["output_norm.weight"].tensor_type == T.F32


def test_mmproj_has_clip_keys_names_and_f16_convolutions(built: dict[str, Any]) -> None:
    c = built["model"].cfg
    for precision in PRECISIONS:
        reader = GGUFReader(_paths(built, precision)["mmproj"])
        kv = _fields(reader)
        assert kv["general.architecture"] == "clip" and kv["general.type"] == "mmproj"
        assert kv["clip.has_audio_encoder"] is True and kv["clip.has_gen_audio_encoder"] is True
        assert kv["clip.audio.projector_type"] == "pockettts_spkenc"
        assert kv["clip.gen.audio.projector_type"] == "pockettts_gen"
        assert kv["clip.audio.projection_dim"] == kv["clip.gen.audio.projection_dim"] == c.d_model
        t = c.encoder_transformer
        for side in ("audio", "gen.audio"):
            assert kv[f"clip.{side}.block_count"] == t.num_layers
            assert kv[f"clip.{side}.embedding_length"] == t.d_model
            assert kv[f"clip.{side}.feed_forward_length"] == t.dim_feedforward
            assert kv[f"clip.{side}.attention.head_count"] == t.d_model // 64
            assert kv[f"clip.{side}.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
        assert kv["clip.audio.num_mel_bins"] == 1
        tensors = {t.name: t for t in reader.tensors}
        for name in (
            "a.speaker_proj.weight",
            "a.gen.input_linear.weight",
            "a.gen.emb_mean",
            "a.gen.emb_std",
            "a.gen.out_eos.bias",
            "a.gen.flow.time.1.freqs",
            "a.gen.flow.time.0.norm",
            "a.gen.flow.blk.0.ada.weight",
            "a.gen.flow.final.proj.weight",
            "a.gen.wav.quant_out.weight",
            "a.gen.wav.tfm.blk.0.ls2.weight",
            "a.gen.wav.seanet.blk.2.res_conv2.bias",
            "a.seanet.blk.0.scale_conv.weight",
            "a.blk.0.attn_v.weight",
            "a.downsample.conv.weight",
        ):
            assert name in tensors, name
        for name, t in tensors.items():
            is_conv = ".seanet." in name or name in ("a.downsample.conv.weight", "a.gen.wav.upsample.weight")
            if len(t.shape) == 1:
                assert t.tensor_type == T.F32, name  # every vector F32, as the converter writes
            elif is_conv:
                assert t.tensor_type == T.F16, name
                assert len(t.shape) == 3, name  # kernels stay 3-D: ggml_conv_1d reads ne0 = kernel size
        assert list(tensors["a.gen.wav.quant_out.weight"].shape) == [32, c.outer_dim]  # squeezed
        flow_type = tensors["a.gen.flow.blk.0.up.weight"].tensor_type
        assert flow_type == {"fp32": T.F32, "int8": T.Q8_0, "int4": T.Q4_0}[precision]


def test_stored_weights_equal_the_quantized_weights(built: dict[str, Any]) -> None:
    model = built["model"]
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    d = model.cfg.d_model
    for precision in ("int8", "int4"):
        qm = quantize_model(model, precision)
        paths = _paths(built, precision)
        _, text, text_types = read_file(paths["gguf"])
        _, mm, mm_types = read_file(paths["mmproj"])
        layer0, layer1 = "flow_lm.transformer.layers.0", "flow_lm.transformer.layers.1"
        checks = [  # (file tensors, types, GGUF name, voxport name, row range)
            (text, text_types, "blk.1.attn_k.weight", f"{layer1}.self_attn.in_proj.weight", (d, 2 * d)),
            (text, text_types, "blk.0.ffn_up.weight", f"{layer0}.linear1.weight", None),
            (mm, mm_types, "a.gen.flow.blk.0.up.weight", "flow_lm.flow_net.res_blocks.0.mlp.0.weight", None),
        ]
        pairs = [(tensors[g], types[g], name, rows) for tensors, types, g, name, rows in checks]
        for got, type_name, name, rows in pairs:
            qt = qm.weights[name]
            assert isinstance(qt, QuantizedTensor)
            want = qt.dequantize() if rows is None else qt.dequantize()[rows[0] : rows[1]]
            if precision == "int4":
                assert type_name == "Q4_0"
                assert np.array_equal(got, want), name  # Q4_0 packed from the int4 codes, bit-exact
            else:
                assert type_name == "Q8_0"  # gguf-py's Q8_0 of the fp32 weight (blocks of 32)
                fp32 = state[name] if rows is None else state[name][rows[0] : rows[1]]
                np.testing.assert_allclose(got, fp32, atol=np.abs(fp32).max() / 127)
                np.testing.assert_allclose(got, want, atol=2 * np.abs(fp32).max() / 127)
        # gguf-py's dequantizer agrees with this module's reader
        reader = GGUFReader(paths["mmproj"])
        t = next(t for t in reader.tensors if t.name == "a.gen.flow.blk.0.up.weight")
        assert np.array_equal(gguf_quants.dequantize(np.asarray(t.data), t.tensor_type), mm[t.name])


def test_runner_reads_both_files_back_to_the_exact_weights(built: dict[str, Any]) -> None:
    model = built["model"]
    layout = model.gguf_layout()
    runner = LayoutRunner(model, layout, _paths(built, "fp32"))
    restored = runner.model.state_dict()
    for name, tensor in model.state_dict().items():
        conv = name.startswith(("mimi.encoder.model", "mimi.decoder.model")) or name.endswith(
            ("downsample.conv.conv.weight", "upsample.convtr.convtr.weight")
        )
        if conv and tensor.ndim == 3:
            torch.testing.assert_close(
                restored[name], tensor.half().float(), rtol=0, atol=0
            )  # F16 in the file
        else:
            assert torch.equal(restored[name], tensor), name
    # free-running loop through the runner vs the torch reference, same noise
    settings = PocketSettings(seed=1, temperature=0.3, max_frames=5)
    ids = model.text_to_ids("Hello world.")
    ref = model.synthesize(model.torch_runner(), ids, settings)
    got = model.synthesize(runner, ids, settings)
    assert np.array_equal(got.tensors["hidden"], ref.tensors["hidden"])  # backbone is exact at fp32
    err = np.abs(got.audio - ref.audio).max()
    assert err < 1e-2 * max(1.0, float(np.abs(ref.audio).max()))


def test_a_converter_file_without_voxport_keys_still_reads(built: dict[str, Any], tmp_path: Path) -> None:
    """llama.cpp's converter does not store bos_emb: it is solved back from the audio_bos row."""
    from gguf import GGUFWriter

    model = built["model"]
    paths = _paths(built, "fp32")
    meta, tensors, types = read_file(paths["gguf"])
    stripped = tmp_path / "conv.gguf"
    w = GGUFWriter(stripped, "pockettts")
    w.add_array("tokenizer.ggml.tokens", meta["tokenizer.ggml.tokens"][:4])
    for name, values in tensors.items():
        w.add_tensor(name, values if types[name] == "F32" else values.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    runner = LayoutRunner(model, model.gguf_layout(), {"gguf": stripped, "mmproj": paths["mmproj"]})
    bos = runner.model.state_dict()["flow_lm.bos_emb"]
    torch.testing.assert_close(bos, model.state_dict()["flow_lm.bos_emb"], rtol=1e-4, atol=1e-4)


def test_configs_llama_cpp_cannot_hold_are_refused_with_the_reason(tmp_path: Path) -> None:
    model = random_model(TINY_CONFIG)
    qm = quantize_model(model, "fp32")
    from voxport.export.gguf.split import write_layout

    with pytest.raises(BadInput) as err:
        write_layout(model, qm, model.gguf_layout(), tmp_path, stem="tiny.fp32", name="tiny")
    message = str(err.value)
    for reason in ("z_proj", "low-rank text table", "grouped-query attention", "head_dim 24", "window 20"):
        assert reason in message, reason
    assert "use the onnx or coreml format" in message
    assert not list(tmp_path.iterdir())  # nothing written
    assert pg.unsupported_reasons(random_model(llama_cpp_config())) == []


def test_the_normalization_charsmap_is_copied_from_the_sentencepiece_proto() -> None:
    from sentencepiece import sentencepiece_model_pb2

    data = random_model(llama_cpp_config()).tokenizer_files["tokenizer.model"]  # nmt_nfkc rules
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(data)
    meta = pg.tokenizer_metadata(data, 4003, ["<|pad|>", "<|bos_before_voice|>", "<|audio_bos|>"])
    charsmap = meta["tokenizer.ggml.precompiled_charsmap"]
    assert charsmap.value == proto.normalizer_spec.precompiled_charsmap and len(charsmap.value) > 1000
    assert charsmap.sub_type == pg.V.UINT8
    with pytest.raises(BadInput, match="not unigram"):
        proto.trainer_spec.model_type = 2  # BPE
        pg.tokenizer_metadata(proto.SerializeToString(), 4003, [])


def test_inspect_describes_both_files_from_their_headers(built: dict[str, Any]) -> None:
    from typer.testing import CliRunner

    from voxport.cli import app

    for role, arch in (("gguf", "pockettts"), ("mmproj", "clip")):
        result = CliRunner().invoke(app, ["inspect", str(_paths(built, "int4")[role]), "--json"])
        assert result.exit_code == 0, result.output
        info = json.loads(result.output)
        assert info["architecture"] == arch and info["tensor_types"]["Q4_0"] > 0


def test_without_bos_before_voice_the_table_has_one_extra_row_less(tmp_path: Path) -> None:
    from voxport.export.gguf.split import read_layout, write_layout

    raw = llama_cpp_config()
    raw["flow_lm"]["insert_bos_before_voice"] = False
    model = random_model(raw, seed=5)
    written = write_layout(
        model, quantize_model(model, "int4"), model.gguf_layout(), tmp_path, stem="nb", name="nb"
    )
    meta, tensors, _ = read_file(written.paths["gguf"])
    assert tensors["token_embd.weight"].shape == (4002, model.cfg.d_model)
    assert meta["tokenizer.ggml.tokens"][-2:] == ["<|pad|>", "<|audio_bos|>"]
    _, restored = read_layout(model, model.gguf_layout(), written.paths)
    state = model.state_dict()
    assert "flow_lm.bos_before_voice" not in state
    assert np.array_equal(
        restored["flow_lm.conditioner.embed.weight"], state["flow_lm.conditioner.embed.weight"].numpy()
    )
    assert np.array_equal(restored["flow_lm.bos_emb"], state["flow_lm.bos_emb"].numpy())
