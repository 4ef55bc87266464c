"""Pocket TTS in the layout sherpa-onnx's Pocket TTS engine loads (`OfflineTtsPocketModelConfig`).

sherpa-onnx (k2-fsa/sherpa-onnx, `sherpa-onnx/csrc/offline-tts-pocket-{model.cc,impl.h}`) runs five
ONNX graphs and keeps the loop in C++. It binds inputs and outputs *by position* (the names are read
from the session and passed back unchanged), reads no metadata_props, and creates every recurrent
state as zeros of the declared input shape with dynamic dimensions set to 1. Its loop, per sentence
(text split at . ! ?, short sentences merged, no other text preparation):

- `encoder(audio (1,1,N) f32 @ 24 kHz) -> embeddings (1,T,D)`: the voice prompt (reference audio is
  required); `text_conditioner(token_ids (1,N) i64) -> (1,N,D)`, ids from `vocab.json` +
  `token_scores.json` (a max-score segmentation over the pieces, spaces as U+2581, a leading U+2581
  added, `<0xNN>` pieces as byte fallback);
- `lm_main(seq (1,S,32), embeddings (1,T,E), *state) -> (conditioning, eos_logit, *state)`: called
  with the voice embeddings and S=0, then the text embeddings and S=0 (both results dropped), then
  once per frame with the previous latent and an empty (1,0,1024) text tensor; the first frame's
  latent is all-NaN, meaning "audio BOS";
- end of speech: the first step whose `eos_logit[0] > -4` (fixed) is the EOS step; generation stops
  at `eos_step + frames_after_eos` frames (extra `frames_after_eos`, default 3, which is voxport's 2:
  sherpa counts the EOS frame). Unlike voxport/Kyutai there is no minimum of 6 frames, and an EOS
  at step 0 disables the rule (the stop test is `eos_step > 0`): `max_frames` (default 500) ends it;
- `lm_flow(c, s (1,1), t (1,1), x (1,32)) -> v`: Euler steps `x += v / num_steps` from
  `x = noise ~ N(0, temperature)` (extras `temperature` default 0.7, `seed`; `num_steps` from
  GenerationConfig), s = i/n, t = s + 1/n;
- `decoder(latent (1,T,32), *state) -> (audio (1,1,samples), *state)`: all latents decoded after
  generation in chunks of `chunk_size` (default 15) frames, the state carried across chunks.

This module describes that layout as data (`sherpa_layout(model) -> OnnxLayout`): thin wrappers over
`layer_step`, `codec_step`, `encode_voice` and the flow net as GraphSpecs, the vocabulary files, the
metadata, and a voice that drives written files in sherpa-onnx. The ONNX exporter traces the graphs and
gives them the precision's stored weights (`export/onnx/layouts.py`), so an int8 artifact's sherpa files
hold the same int8 codes as its main graphs. Design choices where the contract leaves room:

Caveats of sherpa's side (not of the files): it prepares no text the way Kyutai does (capital first
letter, terminal punctuation, padding), so the voice here hands it voxport's prepared sentence; it
speaks a text sentence by sentence, so a text of several sentences has no voxport counterpart; it caches
voice embeddings keyed by the reference audio (two `OfflineTts` objects in one process given the same
clip were measured, with 2.0.1, to keep their own); without `<0xNN>` pieces in the vocabulary (sherpa
logs "Missing byte token" for each, on stderr) a character outside the vocabulary gets an undefined id.

What cannot be expressed is skipped with a reason (`unsupported`): heads other than LSD (sherpa's
Euler loop equals a drifting or pointwise head only at num_steps 1), latents other than 32 wide and
sample rates other than 24 kHz (both fixed in sherpa's C++), no sentencepiece-style vocabulary.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from voxport import __version__
from voxport.families.base import GraphSpec, SynthesisSettings
from voxport.families.layouts.onnx import OnnxLayout, Unmeasurable
from voxport.families.pocket_tts.frontend import prepare_text
from voxport.families.pocket_tts.graphs import CodecGraph
from voxport.families.pocket_tts.loop import fade_in, max_frames_for
from voxport.families.pocket_tts.modules import (
    PocketModules,
    codec_state_shapes,
    encode_voice,
    layer_step,
    rope_table,
)
from voxport.families.pocket_tts.voice import voice_audio

if TYPE_CHECKING:
    from voxport.families.pocket_tts.model import PocketTTSAdapter

log = logging.getLogger(__name__)

#: sherpa-onnx's fixed numbers (offline-tts-pocket-impl.h)
SHERPA_LATENT_DIM = 32
SHERPA_SAMPLE_RATE = 24000
SHERPA_EOS_THRESHOLD = -4.0
#: the layout's name (manifest `Artifact.layout`), its directory suffix and its runtime (PyPI)
LAYOUT_NAME, DIRECTORY_SUFFIX, RUNTIME_PACKAGE = "sherpa-onnx", "sherpa", "sherpa-onnx"
#: files of the layout; the five graphs in the order of OfflineTtsPocketModelConfig's arguments
GRAPH_FILES = ("lm_flow", "lm_main", "encoder", "decoder", "text_conditioner")
VOCAB_FILE, SCORES_FILE = "vocab.json", "token_scores.json"
#: score of pieces sherpa must never pick (control, unknown, unused): they stay in vocab.json because
#: sherpa indexes its id table by id, so ids must be contiguous
NEVER_SCORE = -1.0e4


def unsupported(model: PocketTTSAdapter) -> str | None:
    """Why sherpa-onnx's Pocket engine cannot run this model exactly, or None when it can."""
    c = model.cfg
    if c.flow_type != "lsd":
        return (
            f"flow head '{c.flow_type}': sherpa-onnx runs Euler steps x += v/num_steps over lm_flow, "
            "which equals a drifting or pointwise head only at num_steps 1 (sherpa's default is 5)"
        )
    if c.latent_dim != SHERPA_LATENT_DIM:
        return f"latent width {c.latent_dim}: sherpa-onnx fixes it at {SHERPA_LATENT_DIM}"
    if c.sample_rate != SHERPA_SAMPLE_RATE:
        return f"sample rate {c.sample_rate}: sherpa-onnx fixes it at {SHERPA_SAMPLE_RATE} Hz"
    try:
        sherpa_vocab(model.tokenizer_files)
    except ValueError as exc:
        return str(exc)
    return None


# --- the five graphs ---------------------------------------------------------------------------------


class LmMain(nn.Module):
    """Backbone step in sherpa's calling convention: `seq` latents (NaN rows = audio BOS) after
    `embeddings` (voice or text), the KV cache per layer plus a `length` counter as state."""

    def __init__(self, modules: PocketModules) -> None:
        super().__init__()
        self.model = modules
        self.num_layers = modules.cfg.num_layers
        self.d_model = modules.cfg.d_model
        # Without a codec encoder the voice call brings no positions, and ONNX Runtime cannot run the
        # RoPE reshape on zero positions: such models run one trailing scratch position per call
        # (after every real one, so nothing attends to it) whose outputs are dropped.
        self.scratch = not modules.mimi.has_encoder
        # sherpa's end-of-speech test is `eos_logit > -4`; shifting the logit applies the model's own
        # threshold (-1 for the small releases) through that fixed rule
        self.eos_shift = SHERPA_EOS_THRESHOLD - modules.cfg.eos_threshold

    def forward(
        self, seq: torch.Tensor, embeddings: torch.Tensor, *state: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        f = self.model.flow_lm
        t = f.transformer
        length = state[-1]
        latents = torch.where(torch.isnan(seq), f.bos_emb, seq)
        x = torch.cat([embeddings.reshape(1, -1, self.d_model), f.input_linear(latents)], dim=1)
        new = x.shape[1]
        if self.scratch:
            x = torch.cat([x, x.new_zeros(1, 1, self.d_model)], dim=1)
        run, past = x.shape[1], state[0].shape[2]
        start = length.to(torch.float32)
        positions = start + torch.arange(run, dtype=torch.float32)
        # cache slot j holds position j - past + length; slots before the first real one are padding
        keys = start - past + torch.arange(past + run, dtype=torch.float32)
        visible = (keys[None, :] >= 0) & (keys[None, :] <= positions[:, None])
        mask = torch.where(visible, 0.0, float("-inf"))
        out: list[torch.Tensor] = []
        table = rope_table(positions, t.layers[0].self_attn.head_dim, t.max_period)
        for i, layer in enumerate(t.layers):
            x, k, v = layer_step(layer, x, table, state[2 * i], state[2 * i + 1], mask)
            out += [k[:, :, :-1], v[:, :, :-1]] if self.scratch else [k, v]
        if self.scratch:
            x = x[:, :-1]
        hidden = f.out_norm(x)
        if f.z_proj is not None:
            hidden = f.z_proj(hidden)
        # the last position; a zero row in front keeps a call with no positions well defined
        condition = torch.cat([hidden.new_zeros(1, 1, hidden.shape[-1]), hidden], dim=1)[:, -1]
        eos = f.out_eos(condition)
        if self.eos_shift:
            eos = eos + self.eos_shift
        return (condition, eos, *out, length + new)


class LmFlow(nn.Module):
    """The LSD flow net's velocity at (s, t): sherpa runs the Euler loop itself."""

    def __init__(self, modules: PocketModules) -> None:
        super().__init__()
        self.model = modules

    def forward(self, c: torch.Tensor, s: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.model.flow_lm.flow_net(c, [s, t], x)


class Encoder(nn.Module):
    """Reference audio -> the voice part of the prompt, already in the backbone's embedding space."""

    def __init__(self, modules: PocketModules) -> None:
        super().__init__()
        self.model = modules

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        f, cfg = self.model.flow_lm, self.model.cfg
        if not self.model.mimi.has_encoder:
            # no voice cloning: no voice positions (sherpa still requires some reference audio)
            return audio.new_zeros(1, 0, cfg.d_model) + audio[..., :0].sum()
        latents = encode_voice(self.model.mimi, audio, cfg.frame_size)
        voice = latents @ f.speaker_proj_weight.t()
        if hasattr(f, "bos_before_voice"):
            voice = torch.cat([f.bos_before_voice, voice], dim=1)
        return voice


class Decoder(CodecGraph):
    """Streaming codec over any number of frames per call; state = codec position + voxport's codec
    state (fixed shapes, zeros at the start, as sherpa creates it)."""

    def __init__(self, modules: PocketModules) -> None:
        super().__init__(modules)
        self.steps = modules.cfg.codec_steps

    def forward(
        self, latent: torch.Tensor, position: torch.Tensor, *state: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        audio, *new = super().forward(latent, position, *state)
        return (audio, position + latent.shape[1] * self.steps, *new)


class TextConditioner(nn.Module):
    """Token ids -> text embeddings (the low-rank table's projection included)."""

    def __init__(self, modules: PocketModules) -> None:
        super().__init__()
        self.model = modules

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        lut = self.model.flow_lm.conditioner
        return lut(token_ids.clamp(0, lut.embed.num_embeddings - 1))


def sherpa_graphs(model: PocketTTSAdapter) -> list[GraphSpec]:
    """The five graphs as GraphSpecs (traced with voxport's tracer). Example shapes avoid 0 and 1 on
    every dynamic axis so the trace specialises none of them."""
    modules, c = model.modules, model.cfg
    g = torch.Generator().manual_seed(0)
    kv = [f"{kind}_{i}" for i in range(c.num_layers) for kind in ("key", "value")]
    past = 3
    lm_main = GraphSpec(
        name="lm_main",
        module=LmMain(modules),
        input_names=["seq", "embeddings", *kv, "length"],
        output_names=["conditioning", "eos_logit", *[f"{n}_out" for n in kv], "length_out"],
        example_inputs=(
            torch.cat([torch.full((1, 1, c.latent_dim), float("nan")), torch.randn(1, 1, c.latent_dim)], 1),
            torch.randn(1, 3, c.d_model, generator=g),
            *[torch.randn(1, c.num_kv_heads, past, c.head_dim, generator=g) for _ in kv],
            torch.tensor([2], dtype=torch.int64),
        ),
        dynamic_axes={
            "seq": {1: "seq"},
            "embeddings": {1: "positions", 2: "width"},
            **{n: {2: "past"} for n in kv},
            **{f"{n}_out": {2: "total"} for n in kv},
        },
        state={**{f"{n}_out": n for n in kv}, "length_out": "length"},
    )
    lm_flow = GraphSpec(
        name="lm_flow",
        module=LmFlow(modules),
        input_names=["c", "s", "t", "x"],
        output_names=["v"],
        example_inputs=(
            torch.randn(1, c.condition_dim, generator=g),
            torch.full((1, 1), 0.25),
            torch.full((1, 1), 0.5),
            torch.randn(1, c.latent_dim, generator=g),
        ),
        dynamic_axes={},
    )
    encoder = GraphSpec(
        name="encoder",
        module=Encoder(modules),
        input_names=["audio"],
        output_names=["embeddings"],
        example_inputs=(torch.randn(1, 1, c.frame_size * 2 + c.frame_size // 2, generator=g) * 0.1,),
        dynamic_axes={"audio": {2: "samples"}, "embeddings": {1: "positions"}},
    )
    decoder_module = Decoder(modules)
    shapes = codec_state_shapes(modules.mimi)
    st = [f"st_{n}" for n in decoder_module.state_names]
    decoder = GraphSpec(
        name="decoder",
        module=decoder_module,
        input_names=["latent", "position", *st],
        output_names=["audio", "position_out", *[f"{n}_out" for n in st]],
        example_inputs=(
            torch.randn(1, 2, c.latent_dim, generator=g),
            torch.tensor([3 * c.codec_steps], dtype=torch.int64),
            *[torch.randn(s, generator=g) * 0.1 for s in shapes.values()],
        ),
        dynamic_axes={"latent": {1: "frames"}, "audio": {2: "samples"}},
        state={"position_out": "position", **{f"{n}_out": n for n in st}},
    )
    text = GraphSpec(
        name="text_conditioner",
        module=TextConditioner(modules),
        input_names=["token_ids"],
        output_names=["embeddings"],
        example_inputs=(torch.tensor([[5, 7, 9]], dtype=torch.int64),),
        dynamic_axes={"token_ids": {1: "tokens"}, "embeddings": {1: "tokens"}},
    )
    return [lm_flow, lm_main, encoder, decoder, text]


# --- the tokenizer files -------------------------------------------------------------------------------


def sherpa_vocab(tokenizer_files: Mapping[str, bytes]) -> tuple[dict[str, int], dict[str, float]]:
    """`vocab.json` (piece -> id) and `token_scores.json` (piece -> score) from the checkpoint's
    unigram tokenizer (`tokenizer.model`, or a tokenizers `Unigram` JSON). sherpa segments by the
    highest total score, as sentencepiece's unigram Viterbi does."""
    if "tokenizer.model" in tokenizer_files:
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor()
        sp.LoadFromSerializedProto(tokenizer_files["tokenizer.model"])
        vocab, scores = {}, {}
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            vocab[piece] = i
            special = sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)
            scores[piece] = NEVER_SCORE if special else float(sp.get_score(i))
        return vocab, scores
    if "tokenizer.json" in tokenizer_files:
        data = json.loads(tokenizer_files["tokenizer.json"])
        m = data.get("model", {})
        if m.get("type") != "Unigram":
            raise ValueError(
                f"tokenizer.json model '{m.get('type')}': sherpa-onnx's Pocket engine reads "
                "a unigram (sentencepiece) vocabulary only"
            )
        unk = m.get("unk_id")
        vocab = {piece: i for i, (piece, _) in enumerate(m["vocab"])}
        scores = {piece: NEVER_SCORE if i == unk else float(s) for i, (piece, s) in enumerate(m["vocab"])}
        if len(vocab) != len(m["vocab"]):
            raise ValueError(
                "tokenizer.json repeats a piece: sherpa-onnx's vocab.json needs one id per piece"
            )
        return vocab, scores
    raise ValueError(
        "no tokenizer.model or tokenizer.json: sherpa-onnx needs vocab.json and token_scores.json"
    )


# --- the layout ---------------------------------------------------------------------------------------


def sherpa_layout(model: PocketTTSAdapter) -> OnnxLayout:
    """The layout as data for the ONNX exporter and for `validate`; `unsupported` says why when sherpa
    cannot hold this model exactly (then there are no files). Metadata keys in the order they are
    written (the precision's and `graph` follow), which keeps the files byte-identical across versions
    of this code."""
    reason = unsupported(model)
    files: dict[str, bytes] = {}
    if reason is None:
        vocab, scores = sherpa_vocab(model.tokenizer_files)
        files = {
            VOCAB_FILE: json.dumps(vocab, ensure_ascii=False, indent=0).encode("utf-8"),
            SCORES_FILE: json.dumps(scores, ensure_ascii=False, indent=0).encode("utf-8"),
        }
    return OnnxLayout(
        name=LAYOUT_NAME,
        directory_suffix=DIRECTORY_SUFFIX,
        graphs=lambda: sherpa_graphs(model),
        files=files,
        metadata={
            "family": model.family,
            "layout": "sherpa-onnx pocket",
            "voxport_version": __version__,
            "sample_rate": str(model.sample_rate),
        },
        unsupported=reason,
        voice=lambda directory: SherpaVoice(directory, model),
        runtime_package=RUNTIME_PACKAGE,
        # sherpa draws its own noise (std::mt19937): only the noise-free path has a voxport counterpart
        parity_settings={"temperature": 0.0},
    )


def sherpa_config_args(directory: Path) -> dict[str, Any]:
    """Keyword arguments of `sherpa_onnx.OfflineTtsPocketModelConfig` for a written layout."""
    args: dict[str, Any] = {name: str(directory / f"{name}.onnx") for name in GRAPH_FILES}
    args["vocab_json"] = str(directory / VOCAB_FILE)
    args["token_scores_json"] = str(directory / SCORES_FILE)
    return args


# --- the runtime ------------------------------------------------------------------------------------


#: a sentence end followed by more text: sherpa would speak the parts one by one
_SEVERAL_SENTENCES = re.compile(r"[.!?]\s+\S")


class SherpaVoice:
    """A written layout speaking in sherpa-onnx, with voxport's settings mapped onto sherpa's
    `GenerationConfig`: the flow head's single Euler step, sherpa's `frames_after_eos` counting the EOS
    frame (voxport's + 1), voxport's frame limit, the prepared sentence, the voice prompt's audio, and
    voxport's 5 ms fade-in (which sherpa omits) applied to the result."""

    def __init__(self, directory: Path, model: PocketTTSAdapter) -> None:
        self.directory = directory
        self.model = model
        self._tts: Any = None

    def _engine(self) -> Any:
        if self._tts is None:
            import sherpa_onnx

            config = sherpa_onnx.OfflineTtsConfig(
                model=sherpa_onnx.OfflineTtsModelConfig(
                    pocket=sherpa_onnx.OfflineTtsPocketModelConfig(**sherpa_config_args(self.directory)),
                    num_threads=1,
                    provider="cpu",
                )
            )
            if not config.validate():
                raise ValueError(f"{self.directory}: sherpa-onnx does not accept these files")
            with _stderr_to_log():  # one "Missing byte token" line per byte piece a vocabulary lacks
                self._tts = sherpa_onnx.OfflineTts(config)
        return self._tts

    def _reference_audio(self, settings: SynthesisSettings) -> np.ndarray:
        model = self.model
        if settings.voice is None:
            if model.modules.mimi.has_encoder:
                raise Unmeasurable(
                    "sherpa-onnx always prompts with a voice, voxport's reference has none: set "
                    "validate.voice to a WAV file to compare them"
                )
            return np.zeros(model.cfg.frame_size, np.float32)  # ignored: no codec encoder
        if Path(settings.voice).suffix == ".npy":
            raise Unmeasurable("the voice prompt is latents (.npy): sherpa-onnx takes reference audio")
        return voice_audio(Path(settings.voice), model.sample_rate)

    def speak(self, text: str, settings: SynthesisSettings) -> np.ndarray:
        import sherpa_onnx

        model = self.model
        prepared = prepare_text(text, model.cfg.text_options)
        if _SEVERAL_SENTENCES.search(prepared.strip()):
            raise Unmeasurable(
                f"{text!r} has several sentences: sherpa-onnx speaks them one by one, voxport as one prompt"
            )
        ids = model.text_to_ids(text)
        loop = model.loop_settings(settings, ids)
        g = sherpa_onnx.GenerationConfig()
        g.num_steps = 1  # voxport's flow_head graph: one LSD step
        g.silence_scale = 1.0  # sherpa's default 0.2 rescales quiet stretches
        g.reference_audio = self._reference_audio(settings).tolist()
        g.reference_sample_rate = model.sample_rate
        g.extra = {
            "temperature": str(loop.temperature),
            "seed": str(loop.seed),
            "max_frames": str(loop.max_frames or max_frames_for(len(ids), model.loop_spec.frame_rate)),
            "frames_after_eos": str(loop.frames_after_eos + 1),
        }
        audio = np.asarray(self._engine().generate(prepared, g).samples, np.float32)
        return fade_in(audio, model.sample_rate)


@contextlib.contextmanager
def _stderr_to_log() -> Iterator[None]:
    """sherpa-onnx's C++ writes warnings to file descriptor 2: catch them and log them at debug level,
    so a build's terminal shows voxport's progress, not hundreds of tokenizer lines."""
    try:
        fd = os.dup(2)
    except OSError:  # no stderr to redirect
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)
            sink.seek(0)
            lines = sink.read().decode("utf-8", "replace").splitlines()
            if lines:
                log.debug("sherpa-onnx: %d lines, first: %s", len(lines), lines[0])


__all__ = [
    "GRAPH_FILES",
    "LAYOUT_NAME",
    "SHERPA_EOS_THRESHOLD",
    "SherpaVoice",
    "sherpa_config_args",
    "sherpa_graphs",
    "sherpa_layout",
    "sherpa_vocab",
    "unsupported",
]
