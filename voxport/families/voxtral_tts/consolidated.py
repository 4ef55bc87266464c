"""Mistral's `consolidated.safetensors`, read and written one tensor at a time.

The released Voxtral TTS checkpoint is ~8 GB of BF16; the machine converting it may have little more
RAM than that. Loading it whole (`safetensors.torch.load_file`) or even through `safe_open` — which
memory-maps the file, so every page a read touches stays in the process's resident set until the
kernel needs it back — makes the converter's peak RSS grow towards the file's size. Here:

- `LazyCheckpoint` parses the safetensors header itself and reads ONE tensor with plain `readinto`
  calls (page cache, not the process's memory), converting BF16/F16 to float32 in bounded chunks: the
  peak is that one tensor in float32 plus a chunk.
- `write_safetensors_stream` writes the header first (offsets follow from the shapes alone), then asks
  `produce(name)` for each tensor in order and writes its bytes, dropping it before asking for the
  next: the peak is one tensor. The file appears under its name only when complete (temp + rename).

The file format (https://github.com/huggingface/safetensors, "Format"): 8-byte little-endian header
length N, N bytes of JSON `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}` (offsets relative to the byte after the header), then the data. safetensors itself pads the
header with spaces to a multiple of 8 so the data is aligned; so does the writer here.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from voxport.errors import BadInput
from voxport.io import atomic_path

#: safetensors dtype code -> (bytes per element, numpy dtype as stored; BF16 as its raw 16 bits)
DTYPES: dict[str, tuple[int, np.dtype]] = {
    "BF16": (2, np.dtype("<u2")),
    "F16": (2, np.dtype("<f2")),
    "F32": (4, np.dtype("<f4")),
}
TORCH_DTYPES: dict[str, torch.dtype] = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
#: elements converted per chunk (BF16/F16 -> float32): 16 M = 32 MB read buffer, small beside any tensor
CHUNK_ELEMENTS = 1 << 24
#: largest header accepted (safetensors' own limit is 100 MB)
MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in the file: absolute byte range, dtype code, shape (torch order)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """({name: entry} in file order, __metadata__) from a safetensors file, checked against its size."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: checkpoint file not found")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise BadInput(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise BadInput(f"{path}: not a safetensors file (header length {n} for a {size}-byte file)")
        try:
            raw = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadInput(f"{path}: corrupt safetensors header ({exc})") from None
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = raw.pop("__metadata__", None) or {}
    start = 8 + n
    entries: list[TensorEntry] = []
    for name, info in raw.items():
        try:
            dtype, shape, (b, e) = (
                str(info["dtype"]),
                tuple(int(d) for d in info["shape"]),
                info["data_offsets"],
            )
        except (KeyError, TypeError, ValueError):
            raise BadInput(f"{path}: corrupt safetensors header entry for {name!r}") from None
        entry = TensorEntry(name, dtype, shape, start + int(b), start + int(e))
        if dtype in DTYPES and entry.nbytes != entry.numel * DTYPES[dtype][0]:
            raise BadInput(f"{path}: {name}: {entry.nbytes} bytes do not hold {dtype} {list(shape)}")
        if entry.end > size or entry.begin < start or entry.end < entry.begin:
            raise BadInput(f"{path}: {name}: data lies outside the file (truncated download?)")
        entries.append(entry)
    entries.sort(key=lambda t: t.begin)
    return {t.name: t for t in entries}, {str(k): str(v) for k, v in meta.items()}


class LazyCheckpoint:
    """A safetensors file whose tensors are read one at a time, on demand (see the module docstring).

    `get(name)` returns a new float32 torch tensor the caller owns; nothing is cached, so a caller that
    drops it before the next `get` holds at most one tensor."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries, self.metadata = read_header(self.path)
        self._file: io.FileIO | None = None

    # --- what is in the file ------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Tensor names in file order."""
        return list(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def _entry(self, name: str) -> TensorEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise BadInput(f"{self.path}: no tensor named {name!r}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def dtype(self, name: str) -> str:
        """The safetensors dtype code as stored ("BF16", "F16", "F32", ...)."""
        return self._entry(name).dtype

    def nbytes(self, name: str) -> int:
        """Bytes the tensor takes in the file."""
        return self._entry(name).nbytes

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: t.shape for name, t in self.entries.items()}

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.entries.values())

    @property
    def largest(self) -> TensorEntry:
        return max(self.entries.values(), key=lambda t: t.nbytes)

    # --- reading ------------------------------------------------------------------------------------
    def _handle(self) -> io.FileIO:
        if self._file is None or self._file.closed:
            self._file = io.FileIO(self.path, "r")
        return self._file

    def _read_into(self, offset: int, out: np.ndarray) -> None:
        f = self._handle()
        f.seek(offset)
        view = out.data.cast("B")
        done = 0
        while done < len(view):
            got = f.readinto(view[done:])
            if not got:
                raise BadInput(f"{self.path}: file ended inside a tensor (truncated?)")
            done += got

    def get(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """One tensor as float32 (torch order), read from disk now; peak extra memory is one chunk.

        `rows` = (r0, r1) reads only that range of the first dimension (contiguous on disk), so a
        converter whose per-tensor work is row-local can stream inside one large tensor too."""
        return torch.from_numpy(self.get_numpy(name, rows))

    def get_numpy(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """`get` as a float32 numpy array."""
        t = self._entry(name)
        if t.dtype not in DTYPES:
            raise BadInput(f"{self.path}: {name} is {t.dtype}; voxport reads BF16, F16 and F32 checkpoints")
        size, stored = DTYPES[t.dtype]
        shape, begin = t.shape, t.begin
        if rows is not None:
            r0, r1 = int(rows[0]), int(rows[1])
            if not shape or not 0 <= r0 <= r1 <= shape[0]:
                raise ValueError(f"{name}: rows {rows} outside its shape {list(shape)}")
            row_elems = int(np.prod(shape[1:], dtype=np.int64))
            shape, begin = (r1 - r0, *shape[1:]), begin + r0 * row_elems * size
        numel = int(np.prod(shape, dtype=np.int64))
        out = np.empty(numel, dtype=np.float32)
        if t.dtype == "F32":
            self._read_into(begin, out)
        elif numel:
            buf = np.empty(min(numel, CHUNK_ELEMENTS), dtype=stored)
            bits = out.view(np.uint32)
            for start in range(0, numel, CHUNK_ELEMENTS):
                n = min(CHUNK_ELEMENTS, numel - start)
                chunk = buf[:n]
                self._read_into(begin + start * size, chunk)
                if t.dtype == "BF16":  # bfloat16 is the top half of a float32
                    np.left_shift(chunk, 16, out=bits[start : start + n], dtype=np.uint32)
                else:
                    out[start : start + n] = chunk
            del buf
        return out.reshape(shape)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> LazyCheckpoint:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)


# --- writing ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One tensor to write: name, shape (torch order), safetensors dtype code."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "BF16"


def _header(specs: Sequence[TensorSpec], metadata: Mapping[str, str] | None) -> bytes:
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for s in specs:
        if s.dtype not in DTYPES:
            raise ValueError(f"{s.name}: dtype {s.dtype!r} not one of {sorted(DTYPES)}")
        n = int(np.prod(s.shape, dtype=np.int64)) * DTYPES[s.dtype][0]
        header[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # align the data to 8 bytes, as safetensors does
    return struct.pack("<Q", len(raw)) + raw


def _bytes_of(tensor: torch.Tensor, dtype: str) -> np.ndarray:
    """The tensor's bytes in `dtype` as a uint8 view (no copy when it is already stored that way)."""
    t = tensor.detach().to("cpu")
    if t.dtype != TORCH_DTYPES[dtype]:
        t = t.to(TORCH_DTYPES[dtype])
    t = t.contiguous()
    if dtype == "BF16":
        return t.view(torch.int16).numpy().view(np.uint8).reshape(-1)
    return t.numpy().view(np.uint8).reshape(-1)


def write_safetensors_stream(
    path: str | Path,
    specs: Sequence[TensorSpec | tuple[str, tuple[int, ...], str]],
    produce: Callable[[str], torch.Tensor],
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a safetensors file at `path` tensor by tensor: header from `specs`, then `produce(name)`
    for each spec in order (called once each; its result is dropped before the next call).

    `produce` may return any float dtype; it is converted to the spec's dtype (a BF16 producer avoids
    the float32 copy). A shape that disagrees with its spec, or any exception, leaves no file at `path`
    (the temporary is removed; an existing file keeps its old content)."""
    path = Path(path)
    items = [s if isinstance(s, TensorSpec) else TensorSpec(s[0], tuple(s[1]), s[2]) for s in specs]
    names = [s.name for s in items]
    if len(set(names)) != len(names):
        raise ValueError("write_safetensors_stream: duplicate tensor names")
    header = _header(items, {"format": "pt", **(metadata or {})})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        f.write(header)
        for spec in items:
            tensor = produce(spec.name)
            if tuple(tensor.shape) != tuple(spec.shape):
                raise ValueError(
                    f"write_safetensors_stream: {spec.name} produced {list(tensor.shape)}, "
                    f"the header says {list(spec.shape)}"
                )
            data = _bytes_of(tensor, spec.dtype)
            del tensor
            f.write(data.data)
            del data
    return path


# --- the adapter's state, read lazily from the consolidated names -----------------------------------

WEIGHT_NORM_G, WEIGHT_NORM_V = (
    "conv.parametrizations.weight.original0",
    "conv.parametrizations.weight.original1",
)
FOLDED_CONV = "conv.weight"
USAGE = "audio_tokenizer.quantizer.semantic_codebook.cluster_usage"
EMBEDDING_SUM = "audio_tokenizer.quantizer.semantic_codebook.embedding_sum"
CODEBOOK = "audio_tokenizer.quantizer.semantic_codebook.embedding"
#: the codec's floor on a cluster's usage count when it divides the running sum by it
USAGE_EPS = 1e-5


def state_sources(checkpoint_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[str, ...]]:
    """Each state-dict name of the voxport model with the checkpoint tensors it is computed from.

    Names are the consolidated ones except: a weight-normed conv (`<p>conv.parametrizations.weight.
    original0/1` = g, v) becomes `<p>conv.weight` = g·v/‖v‖ (norm over every dim but 0, as
    torch.nn.utils.parametrizations.weight_norm(dim=0)), and the semantic codebook (`cluster_usage`,
    `embedding_sum`) becomes `...semantic_codebook.embedding` = sum / max(usage, 1e-5) per row."""
    out: dict[str, tuple[str, ...]] = {}
    for name in checkpoint_shapes:
        if name.endswith(WEIGHT_NORM_V):
            continue
        if name.endswith(WEIGHT_NORM_G):
            prefix = name[: -len(WEIGHT_NORM_G)]
            out[prefix + FOLDED_CONV] = (name, prefix + WEIGHT_NORM_V)
        elif name == USAGE:
            continue
        elif name == EMBEDDING_SUM:
            out[CODEBOOK] = (USAGE, EMBEDDING_SUM)
        else:
            out[name] = (name,)
    return out


def state_shapes(checkpoint_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The voxport state dict's names and shapes (see `state_sources`)."""
    return {
        name: tuple(checkpoint_shapes[srcs[-1]]) for name, srcs in state_sources(checkpoint_shapes).items()
    }


def fold_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """g·v/‖v‖ with the norm over every dim but 0 (float32, like torch's `_weight_norm`)."""
    norm = np.sqrt(np.sum(np.square(v.reshape(v.shape[0], -1), dtype=np.float32), axis=1, dtype=np.float32))
    return (v * (g.reshape(-1) / norm).reshape((-1,) + (1,) * (v.ndim - 1))).astype(np.float32)


def semantic_codebook(usage: np.ndarray, embedding_sum: np.ndarray) -> np.ndarray:
    return (embedding_sum / np.maximum(usage, np.float32(USAGE_EPS))[:, None]).astype(np.float32)


class LazyState:
    """The voxport model's state dict over a `LazyCheckpoint`, one tensor (or row range) per call.

    Every transform is row-local along dim 0 (a conv's dim 0 is weight norm's dim; the codebook divides
    row by row), so `load(name, rows)` reads only those rows of each source."""

    def __init__(self, checkpoint: LazyCheckpoint) -> None:
        self.checkpoint = checkpoint
        self.sources = state_sources(checkpoint.shapes())
        self.shapes = state_shapes(checkpoint.shapes())

    def load(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        try:
            srcs = self.sources[name]
        except KeyError:
            raise BadInput(f"{self.checkpoint.path}: no weight {name!r} in the voxport model") from None
        get = self.checkpoint.get_numpy
        if len(srcs) == 1:
            return get(srcs[0], rows)
        if name == CODEBOOK:
            return semantic_codebook(get(srcs[0], rows), get(srcs[1], rows))
        return fold_weight_norm(get(srcs[0], rows), get(srcs[1], rows))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight at once (small checkpoints and tests only: this holds the whole model)."""
        return {name: torch.from_numpy(self.load(name)) for name in self.shapes}
