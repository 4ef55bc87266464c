"""A Voxtral TTS checkpoint as a `StreamSource`: weightless graphs plus its BF16 tensors read one by one.

The full model is 4.0B parameters, 8 GB in BF16 and 16 GB as float32 torch modules, more than a
small build machine holds next to an exporter. Here nothing is loaded up front: the modules are
built with stride-0 placeholder weights (modules.weightless), and each voxport-named weight is read
from consolidated.safetensors when the exporter asks for it (`consolidated.LazyState`: plain reads,
not a memory map whose touched pages would stay in the process's RSS), folded from its one or two
source tensors and converted to float32 on its own.
"""

from __future__ import annotations

from pathlib import Path

from voxport.errors import BadInput
from voxport.families.base import StreamSource
from voxport.families.voxtral_tts.checkpoint import (
    TEKKEN,
    VOICES,
    WEIGHTS,
    checkpoint_dir,
    read_marker,
    read_params,
)
from voxport.families.voxtral_tts.config import tensor_shapes
from voxport.families.voxtral_tts.consolidated import LazyCheckpoint, LazyState
from voxport.families.voxtral_tts.modules import weightless


def stream_source(path: Path, *, trust_pickle: bool = False) -> StreamSource:
    from voxport.families.voxtral_tts.model import VoxtralAdapter
    from voxport.families.voxtral_tts.voices import read_presets

    directory = checkpoint_dir(path)
    cfg = read_params(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise BadInput(f"{directory}: no {WEIGHTS} beside params.json")
    checkpoint = LazyCheckpoint(weights)
    expected = tensor_shapes(cfg)
    missing = sorted(set(expected) - set(checkpoint.names))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise BadInput(f"{weights}: tensors missing: {', '.join(missing[:3])}{more}")
    for name, shape in expected.items():
        if checkpoint.shape(name) != shape:
            raise BadInput(
                f"{weights}: {name} has shape {checkpoint.shape(name)}, params.json implies {shape}"
            )
    tekken = directory / TEKKEN
    if not tekken.is_file():
        raise BadInput(f"{directory}: no {TEKKEN} beside params.json")
    modules = weightless(cfg)
    model = VoxtralAdapter(
        modules,
        tekken=tekken.read_bytes(),
        voices=read_presets(directory / VOICES, dim=cfg.backbone.dim, trust_pickle=trust_pickle),
        source=str(read_marker(directory).get("source", directory)),
    )
    return StreamSource(
        model=model,
        read=LazyState(checkpoint).read,
        shapes={name: tuple(p.shape) for name, p in modules.state_dict().items()},
        checkpoint_bytes=checkpoint.total_bytes,
        largest_tensor_bytes=checkpoint.largest.nbytes,
    )
