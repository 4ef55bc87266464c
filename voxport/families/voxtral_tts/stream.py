"""A Voxtral TTS checkpoint as a `StreamSource`: weightless graphs plus its BF16 tensors read one by one.

The full model is 4.0B parameters, 8 GB in BF16 and 16 GB as float32 torch modules, more than a
small build machine holds next to an exporter. Here nothing is loaded up front: the modules are
built with stride-0 placeholder weights (modules.weightless), and each voxport-named weight is read
from consolidated.safetensors when the exporter asks for it, folded (weight norm, the codebook's
sums) from its one or two source tensors and converted to float32 on its own.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from voxport.errors import BadInput
from voxport.families.base import StreamSource
from voxport.families.voxtral_tts.checkpoint import (
    EMBEDDING,
    SUMS,
    TEKKEN,
    USAGE,
    VOICES,
    WEIGHTS,
    G,
    V,
    checkpoint_dir,
    read_marker,
    read_params,
    weight_norm_fold,
)
from voxport.families.voxtral_tts.config import tensor_shapes
from voxport.families.voxtral_tts.modules import weightless

_DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4}


def stream_source(path: Path, *, trust_pickle: bool = False) -> StreamSource:
    from safetensors import SafetensorError, safe_open

    from voxport.families.voxtral_tts.model import VoxtralAdapter
    from voxport.families.voxtral_tts.voices import read_presets

    directory = checkpoint_dir(path)
    cfg = read_params(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise BadInput(f"{directory}: no {WEIGHTS} beside params.json")
    try:
        handle = safe_open(str(weights), framework="pt")
    except (SafetensorError, OSError, ValueError) as exc:
        raise BadInput(f"{weights}: not a readable safetensors file ({exc}); re-download it") from None
    on_disk = set(handle.keys())
    expected = tensor_shapes(cfg)
    missing = sorted(set(expected) - on_disk)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise BadInput(f"{weights}: tensors missing: {', '.join(missing[:3])}{more}")
    sizes = {}
    for name in on_disk:
        sl = handle.get_slice(name)
        shape = tuple(sl.get_shape())
        if name in expected and shape != expected[name]:
            raise BadInput(f"{weights}: {name} has shape {shape}, params.json implies {expected[name]}")
        sizes[name] = math.prod(shape) * _DTYPE_BYTES.get(sl.get_dtype(), 4)

    def get(name: str) -> torch.Tensor:
        return handle.get_tensor(name).to(torch.float32)

    def read(name: str, rows: slice | None = None) -> torch.Tensor:
        if name.endswith("conv.weight"):
            prefix = name[: -len("conv.weight")]
            value = weight_norm_fold(get(prefix + G), get(prefix + V))
        elif name.endswith(EMBEDDING):
            prefix = name[: -len(EMBEDDING)]
            value = get(prefix + SUMS) / get(prefix + USAGE).clamp(min=1e-5)[:, None]
        elif rows is not None:  # only these rows leave the file
            return handle.get_slice(name)[rows].to(torch.float32)
        else:
            return get(name)
        return value if rows is None else value[rows]

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
    shapes = {name: tuple(p.shape) for name, p in modules.state_dict().items()}
    return StreamSource(
        model=model,
        read=read,
        shapes=shapes,
        checkpoint_bytes=weights.stat().st_size,
        largest_tensor_bytes=max(sizes.values()),
    )
