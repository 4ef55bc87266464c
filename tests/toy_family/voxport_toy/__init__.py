"""A toy TTS family that lives outside voxport: letters -> Embedding -> Linear -> ConvTranspose1d -> tanh.

It exists to prove that a package adds an architecture through the `voxport.families` entry point alone:
voxport never imports it by name, yet `voxport demo --family toy`, `voxport build` and the recipe's
settings checks all work for it. The model is random and tiny, so a build takes seconds.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from pydantic import AfterValidator
from safetensors.torch import load_file, save_file
from torch import nn

from voxport.errors import BadInput
from voxport.families.base import (
    Family,
    FamilyModel,
    GraphSpec,
    MetricSpec,
    PrunableStack,
    Runner,
    Synthesis,
    SynthesisSettings,
    check_ids,
)

FAMILY = "toy"
#: id 0 is unused (a pad), then space and a..z
ALPHABET = " abcdefghijklmnopqrstuvwxyz"
CONFIG: dict[str, int] = {"vocab_size": len(ALPHABET) + 1, "hidden": 32, "hop": 160, "sample_rate": 16000}


def _gain(value: float) -> float:
    if not 0.0 < value <= 4.0:
        raise ValueError(f"gain must be in (0, 4], got {value}")
    return value


class ToySettings(SynthesisSettings):
    """The toy's only knob besides the seed: a gain applied to the waveform after the graph."""

    gain: Annotated[float, AfterValidator(_gain)] = 1.0


class ToyNet(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, hop: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.up = nn.ConvTranspose1d(hidden, 1, kernel_size=2 * hop, stride=hop, padding=hop // 2)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames = torch.relu(self.proj(self.embed(ids)))  # (1, T, hidden)
        audio = torch.tanh(self.up(frames.transpose(1, 2)))[:, 0]  # (1, T * hop)
        return audio, frames


class DecoderGraph(nn.Module):
    """The exported graph: holds the net as `model`, so its initializers are named `model.<weight>`
    (how the exporters find a quantized weight's initializer)."""

    def __init__(self, net: ToyNet) -> None:
        super().__init__()
        self.model = net

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(ids)


class ToyModel(FamilyModel):
    family: ClassVar[str] = FAMILY

    def __init__(self, net: ToyNet, config: Mapping[str, int], source: str) -> None:
        self.net = net.eval()
        self.config = dict(config)
        self.source = source

    @property
    def sample_rate(self) -> int:
        return self.config["sample_rate"]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.net.state_dict().items()}

    def quantizable(self) -> set[str]:
        return {"proj.weight", "up.weight"}

    def prunable_stacks(self) -> list[PrunableStack]:
        return []

    def pruned(self, stack: str, drop: Sequence[int]) -> FamilyModel:
        raise BadInput(f"the toy family has no layer stack {stack!r} to prune")

    def with_weights(self, weights: Mapping[str, torch.Tensor]) -> ToyModel:
        net = copy.deepcopy(self.net)
        net.load_state_dict({k: v.to(torch.float32) for k, v in weights.items()}, strict=True)
        return ToyModel(net, self.config, self.source)

    def graphs(self) -> list[GraphSpec]:
        return [
            GraphSpec(
                name="decoder",
                module=DecoderGraph(self.net),
                input_names=["ids"],
                output_names=["audio", "frames"],
                example_inputs=(torch.tensor([[1, 2, 3, 4, 5]], dtype=torch.int64),),
                dynamic_axes={"ids": {1: "tokens"}, "audio": {1: "samples"}, "frames": {1: "tokens"}},
                primary=True,
            )
        ]

    def text_to_ids(self, text: str) -> list[int]:
        bad = sorted({c for c in text.lower() if c not in ALPHABET})
        if bad:
            raise BadInput(f"the toy voice speaks only letters and spaces, not {''.join(bad)!r}")
        ids = [ALPHABET.index(c) + 1 for c in text.lower()]
        if not ids:
            raise BadInput("give some text")
        return ids

    def synthesize(
        self,
        runner: Runner,
        ids: Sequence[int],
        settings: SynthesisSettings,
        *,
        forced: Synthesis | None = None,
    ) -> Synthesis:
        settings = ToySettings.of(settings)
        checked = np.array([check_ids(ids, self.config["vocab_size"])], dtype=np.int64)
        out = runner.run("decoder", {"ids": checked})
        audio = np.asarray(out["audio"], dtype=np.float32)[0] * np.float32(settings.gain)
        return Synthesis(
            audio=audio,
            sample_rate=self.sample_rate,
            durations=np.ones(checked.shape[1], dtype=np.float32),  # one frame of `hop` samples per token
            graph_outputs={"decoder": {k: np.asarray(v) for k, v in out.items()}},
            tensors={"frames": np.asarray(out["frames"])[0]},
        )

    def synthesize_primary(
        self, runner: Runner, ids: Sequence[int], settings: SynthesisSettings
    ) -> Synthesis:
        return self.synthesize(runner, ids, settings)

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(out_dir / "model.safetensors"))
        (out_dir / "config.json").write_text(json.dumps({"model_type": FAMILY, **self.config}, indent=2))
        (out_dir / "voxport.json").write_text(json.dumps({"family": FAMILY, "source": self.source}))

    def describe(self) -> dict[str, Any]:
        return {"family": FAMILY, **self.config}


def load(path: Path) -> ToyModel:
    directory = path if path.is_dir() else path.parent
    config = json.loads((directory / "config.json").read_text())
    net = ToyNet(config["vocab_size"], config["hidden"], config["hop"])
    net.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    return ToyModel(net, {k: config[k] for k in CONFIG}, str(path))


class ToyFamily(Family):
    name: ClassVar[str] = FAMILY
    settings: ClassVar[type[ToySettings]] = ToySettings
    #: each token's hidden frame, compared reference vs artifact (a family-declared parity metric)
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("frame_snr_db", "min", "frame SNR dB", tensor="frames"),
    )
    checkpoint_hint: ClassVar[str] = "a toy directory (config.json with model_type toy)"

    @classmethod
    def recognizes(cls, path: Path) -> bool:
        config = (path if path.is_dir() else path.parent) / "config.json"
        try:
            return json.loads(config.read_text()).get("model_type") == FAMILY
        except (OSError, ValueError, AttributeError):
            return False

    @classmethod
    def load(cls, path: Path, *, trust_pickle: bool = False) -> ToyModel:
        return load(path)

    @classmethod
    def demo(cls, out_dir: Path, *, seed: int = 0, config: str | None = None) -> Path:
        if config is not None:
            raise BadInput(f"the toy demo has one size; leave --config out (got {config!r})")
        torch.manual_seed(seed)
        ToyModel(ToyNet(CONFIG["vocab_size"], CONFIG["hidden"], CONFIG["hop"]), CONFIG, "demo").save(out_dir)
        return out_dir
