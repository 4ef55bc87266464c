"""Pocket TTS in sherpa-onnx's layout: the five graphs against voxport's torch functions in ONNX
Runtime, and sherpa-onnx itself (the installed wheel) loading the files and speaking them, compared
with voxport's own loop on the same weights at temperature 0.

The model is `TINY_CONFIG` (LSD head, GQA with attn_dim != d_model, low-rank text table, z_proj,
bos_before_voice): everything the small releases have that sherpa's engine can hold.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from voxport.export.onnx.exporter import DEFAULT_OPSET
from voxport.export.onnx.layouts import write_onnx_layout
from voxport.families.pocket_tts import sherpa as sh
from voxport.families.pocket_tts.loop import LoopSettings, fade_in, generate, prompt_inputs
from voxport.families.pocket_tts.modules import (
    backbone_step,
    codec_state_shapes,
    codec_step,
    encode_voice,
    sample_latent,
)
from voxport.families.pocket_tts.synthetic import TINY_CONFIG, random_model

sherpa_onnx = pytest.importorskip("sherpa_onnx")

TEXT = "Hello there."
GRAPH_DB = 100.0


def snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    ref, test = np.asarray(ref, np.float64).ravel(), np.asarray(test, np.float64).ravel()
    assert ref.shape == test.shape, (ref.shape, test.shape)
    noise = float(np.sum((ref - test) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref**2)) / noise)


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def sherpa_zero_state(sess: ort.InferenceSession, skip: int) -> list[np.ndarray]:
    """sherpa-onnx's initial state (CreateZeroTensorLike): zeros of each declared input shape after
    the first `skip` inputs, dynamic dimensions set to 1."""
    out = []
    for i in sess.get_inputs()[skip:]:
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        out.append(np.zeros(shape, np.int64 if i.type == "tensor(int64)" else np.float32))
    return out


def reference_audio(seed: int, seconds: float = 0.9) -> np.ndarray:
    """A distinct clip per model: sherpa caches voice embeddings process-wide by audio hash alone."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(24000 * seconds)) / 24000
    tone = 0.2 * np.sin(2 * np.pi * (180 + 40 * seed) * t) + 0.02 * rng.standard_normal(t.size)
    return tone.astype(np.float32)


def plain_model():
    """The ~100M releases' shape of things at tiny size: full-rank text table, no z_proj, as many kv
    heads as heads, no bos_before_voice, and no codec encoder (a release without voice cloning)."""
    raw = copy.deepcopy(TINY_CONFIG)
    fl = raw["flow_lm"]
    raw["default_eos_threshold"] = -2.0  # sherpa's rule is fixed at -4: the graph shifts the logit
    fl["insert_bos_before_voice"] = False
    del fl["z_dim"], fl["lookup_table"]["rank"], fl["transformer"]["attn_dim"]
    del fl["transformer"]["num_kv_heads"]
    return random_model(raw, seed=4, with_encoder=False)


@pytest.fixture(scope="module", params=["tiny", "plain"])
def model(request):
    return random_model(seed=3) if request.param == "tiny" else plain_model()


def fp32_weights(model) -> dict[str, np.ndarray]:
    """The model's own weights as the fp32 precision stores them."""
    return {k: v.to(torch.float32).numpy() for k, v in model.state_dict().items()}


def export_sherpa(model, directory: Path, weights=None, **kw) -> Path:
    """The layout written as the ONNX exporter writes it (fp32 weights unless given)."""
    weights = fp32_weights(model) if weights is None else weights
    paths = write_onnx_layout(sh.sherpa_layout(model), directory, weights, opset=DEFAULT_OPSET, **kw)
    assert {p.parent for p in paths.values()} == {directory}
    return directory


@pytest.fixture(scope="module")
def layout(model, tmp_path_factory) -> Path:
    return export_sherpa(model, tmp_path_factory.mktemp("sherpa") / "m.fp32.sherpa")


def test_layout_is_sherpas_contract(model, layout: Path) -> None:
    before = (layout / "lm_main.onnx").read_bytes()
    assert export_sherpa(model, layout) == layout  # rewritten in place, through a temporary dir
    assert (layout / "lm_main.onnx").read_bytes() == before
    names = sorted(p.name for p in layout.iterdir())
    assert names == sorted([*(f"{g}.onnx" for g in sh.GRAPH_FILES), "vocab.json", "token_scores.json"])
    assert not [p for p in layout.parent.iterdir() if p.name.startswith(".")], "temporary left behind"
    sig = {}
    for g in sh.GRAPH_FILES:
        s = session(layout / f"{g}.onnx")
        sig[g] = ([i.name for i in s.get_inputs()], [o.name for o in s.get_outputs()])
    # sherpa binds by position: [seq, embeddings, *state] -> [conditioning, eos_logit, *state]
    ins, outs = sig["lm_main"]
    assert ins[:2] == ["seq", "embeddings"] and outs[:2] == ["conditioning", "eos_logit"]
    assert [f"{n}_out" for n in ins[2:]] == outs[2:]
    ins, outs = sig["decoder"]
    assert ins[0] == "latent" and outs[0] == "audio" and [f"{n}_out" for n in ins[1:]] == outs[1:]
    assert sig["lm_flow"] == (["c", "s", "t", "x"], ["v"])
    assert len(sig["encoder"][0]) == 1 and len(sig["text_conditioner"][0]) == 1


def test_vocab_matches_sentencepiece(model, layout: Path) -> None:
    import json

    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model.tokenizer_files["tokenizer.model"])
    vocab = json.loads((layout / "vocab.json").read_text())
    scores = json.loads((layout / "token_scores.json").read_text())
    assert sorted(vocab.values()) == list(range(sp.get_piece_size()))  # sherpa indexes ids densely
    assert all(vocab[sp.id_to_piece(i)] == i for i in range(sp.get_piece_size()))
    assert scores[sp.id_to_piece(10)] == pytest.approx(sp.get_score(10))
    assert scores["<unk>"] == sh.NEVER_SCORE


def test_graphs_match_torch_functions(model, layout: Path) -> None:
    """Each graph in ONNX Runtime against voxport's torch functions on identical inputs, driven the
    way sherpa drives it (zero state with dynamic dims at 1, chunks of 15 frames, empty tensors)."""
    m, c = model.modules, model.cfg
    f = m.flow_lm
    g = torch.Generator().manual_seed(11)
    figures: dict[str, float] = {}
    with torch.no_grad():
        # text conditioner
        ids = np.array([[3, 105, 4, 19, 38, 12, 36, 5]], np.int64)
        text = session(layout / "text_conditioner.onnx").run(None, {"token_ids": ids})[0]
        figures["text_conditioner"] = snr_db(f.conditioner(torch.from_numpy(ids)).numpy(), text)
        # encoder, at a length the trace never saw (not a whole number of frames)
        audio = reference_audio(0, 0.77)
        voice = session(layout / "encoder.onnx").run(None, {"audio": audio.reshape(1, 1, -1)})[0]
        if m.mimi.has_encoder:
            latents = encode_voice(m.mimi, torch.from_numpy(audio), c.frame_size)
            ref = latents @ f.speaker_proj_weight.t()
            if c.insert_bos_before_voice:
                ref = torch.cat([f.bos_before_voice, ref], dim=1)
            figures["encoder"] = snr_db(ref.numpy(), voice)
            voice_latents = latents[0].numpy()
        else:  # no voice cloning: no voice positions
            assert voice.shape == (1, 0, c.d_model)
            voice_latents = None
        # lm_main: voice call, text call, NaN (audio BOS) step, then three latent steps, against the
        # backbone over the whole prompt [bos_before_voice][voice][text][audio BOS] + latents
        lm = session(layout / "lm_main.onnx")
        state = sherpa_zero_state(lm, 2)
        empty_seq = np.zeros((1, 0, 32), np.float32)

        def call(seq: np.ndarray, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            nonlocal state
            out = lm.run(None, dict(zip([i.name for i in lm.get_inputs()], [seq, emb, *state], strict=True)))
            state = out[2:]
            return out[0], out[1]

        call(empty_seq, voice)
        call(empty_seq, text)
        steps = [np.full((1, 1, 32), np.nan, np.float32)]
        steps += [torch.randn(1, 1, 32, generator=g).numpy() for _ in range(3)]
        got = [call(s, np.zeros((1, 0, 1024), np.float32)) for s in steps]
        prompt = prompt_inputs(model.loop_spec, ids[0].tolist(), voice_latents)
        from voxport.families.pocket_tts.graphs import BackboneGraph

        embeds = BackboneGraph(m).embed(
            *(torch.from_numpy(prompt[k]) for k in ("token_ids", "latents", "kind"))
        )
        fed = f.input_linear(torch.from_numpy(np.concatenate(steps[1:], axis=1)))
        embeds = torch.cat([embeds, fed], dim=1)
        past = [(torch.zeros(1, c.num_kv_heads, 0, c.head_dim),) * 2 for _ in range(c.num_layers)]
        hidden, eos, _ = backbone_step(f, embeds, torch.zeros(1, dtype=torch.int64), past)
        n = hidden.shape[1]
        ref_h = hidden[0, n - 4 :].numpy()
        ref_eos = eos[0, n - 4 :, 0].numpy() + (sh.SHERPA_EOS_THRESHOLD - c.eos_threshold)
        figures["lm_main.conditioning"] = snr_db(ref_h, np.concatenate([h for h, _ in got]))
        figures["lm_main.eos_logit"] = snr_db(ref_eos, np.concatenate([e[:, 0] for _, e in got]))
        assert int(state[-1][0]) == n  # the length counter
        # lm_flow: one velocity, and sherpa's Euler loop at 1 and 4 steps against sample_latent
        flow = session(layout / "lm_flow.onnx")
        cond, noise = torch.from_numpy(ref_h[:1]), torch.randn(1, 32, generator=g)
        for steps_n in (1, 4):
            x = noise.numpy().copy()
            for i in range(steps_n):
                s = np.full((1, 1), i / steps_n, np.float32)
                t = s + np.float32(1 / steps_n)
                x = x + flow.run(None, {"c": cond.numpy(), "s": s, "t": t, "x": x})[0] * np.float32(
                    1 / steps_n
                )
            ref_x = sample_latent(f.flow_net, "lsd", cond, noise, steps_n).numpy()
            figures[f"lm_flow.euler{steps_n}"] = snr_db(ref_x, x)
        # decoder: 20 frames as sherpa sends them (15 + 5) against one frame per call in torch
        frames = torch.randn(1, 20, 32, generator=g)
        dec = session(layout / "decoder.onnx")
        dstate = sherpa_zero_state(dec, 1)
        names = [i.name for i in dec.get_inputs()]
        chunks = []
        for lo, hi in ((0, 15), (15, 20)):
            out = dec.run(None, dict(zip(names, [frames[:, lo:hi].numpy(), *dstate], strict=True)))
            chunks.append(out[0].reshape(-1))
            dstate = out[1:]
        tstate = {k: torch.zeros(v) for k, v in codec_state_shapes(m.mimi).items()}
        ref_audio = []
        for i in range(20):
            a, tstate = codec_step(
                m.mimi, f.emb_std, f.emb_mean, frames[:, i : i + 1], torch.tensor([i * c.codec_steps]), tstate
            )
            ref_audio.append(a.reshape(-1).numpy())
        figures["decoder"] = snr_db(np.concatenate(ref_audio), np.concatenate(chunks))
    print({k: round(float(v), 1) for k, v in figures.items()})
    low = {k: v for k, v in figures.items() if v < GRAPH_DB}
    assert not low, f"graphs below {GRAPH_DB} dB: {low}"


def _eos_never(model):
    """A copy of `model` whose EOS logit is always -30 (the hidden states are unchanged)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.modules.flow_lm.out_eos.weight.zero_()
        out.modules.flow_lm.out_eos.bias.fill_(-30.0)
    return out


def _eos_at(model, frame: int, hidden: np.ndarray):
    """A copy of `model` whose EOS head first crosses the model's threshold at `frame` for these states
    (a random head never fires): logit = a·(h·u) + b with the threshold between the running maximum
    before `frame` and the value at `frame`. Only out_eos changes, so the states stay the same."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        u = rng.standard_normal(hidden.shape[1])
        s = hidden @ u
        if s[frame] > s[:frame].max() + 0.05 * np.ptp(s):
            break
    else:  # pragma: no cover - 200 random directions without a record at `frame`
        pytest.skip("no EOS direction found")
    threshold = (s[:frame].max() + s[frame]) / 2
    scale = 10.0 / np.ptp(s)
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.modules.flow_lm.out_eos.weight.copy_(torch.from_numpy(scale * u).float()[None])
        out.modules.flow_lm.out_eos.bias.fill_(float(model.cfg.eos_threshold - scale * threshold))
    return out


def _sherpa_tts(directory: Path, debug: bool = False):
    pocket = sherpa_onnx.OfflineTtsPocketModelConfig(**sh.sherpa_config_args(directory))
    cfg = sherpa_onnx.OfflineTtsConfig(
        model=sherpa_onnx.OfflineTtsModelConfig(pocket=pocket, num_threads=1, debug=debug, provider="cpu")
    )
    assert cfg.validate()
    return sherpa_onnx.OfflineTts(cfg)


def _speak(tts, audio: np.ndarray, **extra: str) -> np.ndarray:
    g = sherpa_onnx.GenerationConfig()
    g.num_steps = 1  # the release default, voxport's flow_head graph
    g.silence_scale = 1.0  # sherpa's default 0.2 rescales quiet stretches
    g.reference_audio = audio.tolist()
    g.reference_sample_rate = 24000
    g.extra = {"temperature": "0", **extra}
    return np.asarray(tts.generate(TEXT, g).samples, np.float32)


def test_sherpa_speaks_like_voxport(model, tmp_path: Path, capfd) -> None:
    """sherpa-onnx loads the files and, at temperature 0, says what voxport's loop says on the same
    weights: same token ids, same EOS frame and length, same audio (sherpa does not fade in). Without
    a codec encoder the reference audio is ignored and the prompt has no voice, as in voxport."""
    variant = "tiny" if model.modules.mimi.has_encoder else "plain"
    audio = reference_audio(1 if variant == "tiny" else 3)
    ids = model.tokenizer.encode(TEXT)  # sherpa prepares no text: compare on the raw sentence
    voice = None
    if model.modules.mimi.has_encoder:
        with torch.no_grad():
            voice = encode_voice(model.modules.mimi, torch.from_numpy(audio), model.cfg.frame_size)[0].numpy()
    silent = _eos_never(model)
    probe = generate(
        silent.torch_runner(),
        silent.loop_spec,
        ids,
        LoopSettings(temperature=0.0, max_frames=24),
        voice=voice,
    )
    eos_frame = 9
    tuned = _eos_at(model, eos_frame, probe.hidden)
    ref = generate(
        tuned.torch_runner(),
        tuned.loop_spec,
        ids,
        LoopSettings(temperature=0.0, max_frames=60, frames_after_eos=2),
        voice=voice,
    )
    assert ref.eos_frame == eos_frame
    directory = export_sherpa(tuned, tmp_path / "tuned.fp32.sherpa")
    capfd.readouterr()
    said = _speak(_sherpa_tts(directory, debug=True), audio, max_frames="60", frames_after_eos="3")
    logs = capfd.readouterr().err
    found = re.search(r"token_ids \(len=\d+\): ([\d ]+)", logs)
    assert found and [int(t) for t in found.group(1).split()] == ids
    frames = (eos_frame + 3) * model.cfg.frame_size
    assert said.shape == (frames,) == ref.audio.shape
    assert np.isfinite(said).all() and np.abs(said).max() > 1e-3
    figure = snr_db(ref.audio, fade_in(said, 24000))
    print(f"{variant}: sherpa vs voxport loop, {len(said) // 1920} frames, audio SNR {figure:.1f} dB")
    assert figure > 60.0


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_layout_carries_the_same_codes(precision: str, tmp_path: Path) -> None:
    """Through the family hook (`runtime_layouts`) and the writer as `OnnxFormat.export_layout` calls
    them: the sherpa files of a quantized artifact hold exactly the main graphs' integer codes (the
    quantizer's), and sherpa-onnx speaks them."""
    from voxport.export.onnx.exporter import export_onnx
    from voxport.quantize.stage import quantize_model
    from voxport.quantize.tensor import QuantizedTensor

    model = random_model(seed=3)
    qm = quantize_model(model, precision)
    files = export_onnx(model, qm.weights, tmp_path / "onnx", stem="tiny", precision=precision, metadata={})
    [layout] = model.runtime_layouts("onnx")
    assert layout is model.runtime_layouts("onnx")[0]  # one object per model: traced once
    assert (layout.name, layout.directory_suffix, layout.runtime_package) == (
        "sherpa-onnx",
        "sherpa",
        "sherpa-onnx",
    )
    assert model.runtime_layouts("gguf") == []
    directory = export_sherpa(model, tmp_path / "onnx" / f"tiny.{precision}.sherpa", qm.weights)

    def codes(path: Path) -> dict[str, np.ndarray]:
        proto = onnx.load(str(path))
        return {
            i.name: onnx.numpy_helper.to_array(i).astype(np.int8)
            for i in proto.graph.initializer
            if i.name.endswith("__q")
        }

    main: dict[str, np.ndarray] = {}
    for f in files:
        main.update(codes(f.path))
    side: dict[str, np.ndarray] = {}
    for g in sh.GRAPH_FILES:
        side.update(codes(directory / f"{g}.onnx"))
    quantized = {k: v for k, v in qm.weights.items() if isinstance(v, QuantizedTensor)}
    assert quantized and {n.removeprefix("model.").removesuffix("__q") for n in side} == set(quantized)
    assert set(side) == set(main)
    for name, stored in side.items():
        q = quantized[name.removeprefix("model.").removesuffix("__q")].codes
        # stored in the kernel's shape, or transposed for a Linear that runs as MatMul
        assert np.array_equal(stored.reshape(q.shape), q) or np.array_equal(stored.T, q)
        assert np.array_equal(stored, main[name]) or np.array_equal(stored.T, main[name])
    # the quantized flow net in ORT equals the torch flow net on the dequantized weights
    deq = model.with_weights(qm.dequantized())
    c = torch.randn(1, model.cfg.condition_dim, generator=torch.Generator().manual_seed(2))
    x = torch.randn(1, 32, generator=torch.Generator().manual_seed(3))
    ones = torch.ones(1, 1)
    with torch.no_grad():
        ref = deq.modules.flow_lm.flow_net(c, [ones * 0, ones], x).numpy()
    got = session(directory / "lm_flow.onnx").run(
        None,
        {"c": c.numpy(), "s": np.zeros((1, 1), np.float32), "t": np.ones((1, 1), np.float32), "x": x.numpy()},
    )[0]
    figure = snr_db(ref, got)
    print(f"{precision} lm_flow vs dequantized torch: {figure:.1f} dB")
    assert figure > GRAPH_DB
    said = _speak(_sherpa_tts(directory), reference_audio(2), max_frames="7")
    assert said.shape == (7 * model.cfg.frame_size,) and np.isfinite(said).all() and np.abs(said).max() > 1e-3


def test_unsupported_head_is_skipped_with_a_reason(tmp_path: Path) -> None:
    raw = copy.deepcopy(TINY_CONFIG)
    raw["flow_lm"]["flow"]["type"] = "drifting"
    drifting = random_model(raw)
    assert "num_steps 1" in (sh.unsupported(drifting) or "")
    [layout] = drifting.runtime_layouts("onnx")
    assert layout.unsupported == sh.unsupported(drifting) and not layout.files
    directory = tmp_path / "d.fp32.sherpa"
    with pytest.raises(ValueError, match="drifting"):
        write_onnx_layout(layout, directory, fp32_weights(drifting), opset=DEFAULT_OPSET)
    assert not directory.exists() and not list(tmp_path.iterdir())


def test_sidecars_hold_no_runtime_layout(tmp_path: Path) -> None:
    """The ONNX artifact's sidecars are the tokenizer only: sherpa's files are their own artifact."""
    model = random_model(TINY_CONFIG)
    primary = tmp_path / "t.fp32.onnx"
    primary.write_bytes(b"")
    assert set(model.write_sidecars(primary)) == {"tokenizer"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.fp32.onnx", "t.tokenizer.model"]
