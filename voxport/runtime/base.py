"""The runner contract every runtime implements, and what a torch runner needs of a graph.

The family's synthesis loop only sees `Runner`, so the fp32 torch reference and every exported
artifact are driven by the same code with the same inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch


class Runner(Protocol):
    """Calls one named graph with numpy inputs; implemented by torch, ONNX Runtime, ... runners."""

    name: str

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class TorchGraph(Protocol):
    """What `TorchRunner` needs of a graph: a family's `GraphSpec` satisfies it structurally."""

    # read-only members: a dataclass with `list[str]` fields then matches (mutable protocol attributes
    # are invariant, so `input_names: Sequence[str]` would refuse GraphSpec's list)
    @property
    def name(self) -> str: ...
    @property
    def module(self) -> torch.nn.Module: ...
    @property
    def input_names(self) -> Sequence[str]: ...
    @property
    def output_names(self) -> Sequence[str]: ...


def runs_graph(runner: Runner, graph: str) -> bool:
    """Whether the artifact has `graph` (a Core ML artifact has no one-graph Piper form, for one);
    runners over a subset of graphs say which via `graph_names`."""
    names = getattr(runner, "graph_names", None)
    return names is None or graph in names
