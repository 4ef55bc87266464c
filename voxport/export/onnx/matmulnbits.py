"""Carry ONNX Runtime's accuracy level in the artifact: DequantizeLinear → MatMul as `MatMulNBits`.

Why: ONNX Runtime fuses a weight's DequantizeLinear → MatMul into its contrib op
`com.microsoft.MatMulNBits` at load time, with accuracy level 4 unless the *session* says otherwise
(`session.qdq_matmulnbits_accuracy_level`). Level 4 quantizes the activations to int8 on the fly,
which costs an autoregressive model several dB of teacher-forced latent SNR. Users load voxport's
files in their own runtime (plain ONNX Runtime, sherpa-onnx) with default session options, so a
session option only helps voxport's own runner; a `MatMulNBits` node written into the file carries its
`accuracy_level` attribute to every ONNX Runtime that loads it.

This is a post-pass over a finished graph (after `weights.apply_stored_weights`): it looks for the
weight pattern that module emits for a Linear, an integer initializer → DequantizeLinear → (only)
MatMul input B, with the codes stored [K, N] and either blocks along K (int4, or blocked int8:
`axis=0, block_size`) or one scale per output channel (int8: `axis=1`), and replaces it by one
MatMulNBits per MatMul holding the *same* codes and scales. MatMulNBits dequantizes
``(code + 2**(bits-1) - zero_point) * scale`` with the default zero point ``2**(bits-1)``, so the
weights are bit-identical to `QuantizedTensor.dequantize` (tests/test_onnx_matmulnbits.py computes the
graph at level 1 against torch with the dequantized weights). Per-channel int8 has no block of its own
in MatMulNBits: its scale is repeated over blocks (the values are unchanged; the file grows by one
float32 scale per block). At level 4 the block is 32, what ONNX Runtime's own fusion picks, because
the activations are quantized in blocks of the same length (256 measured 3.6 dB worse on Pocket TTS
18M); at the other levels 256 (0.125 bit per weight, and the 8-bit reference kernel runs 2x faster).

The cost: the file needs ONNX Runtime (the contrib domain); other ONNX runtimes cannot run it, which
is why the recipe default (`export.onnx.matmul_accuracy_level: null`) keeps the portable pattern.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: ONNX Runtime's contrib domain and the op's version there
DOMAIN = "com.microsoft"
DOMAIN_VERSION = 1
#: accuracy levels MatMulNBits accepts: 0 unset (the kernel's choice), 1 fp32, 2 fp16, 3 bf16, 4 int8
LEVELS = (0, 1, 2, 3, 4)
#: block length for per-channel int8 at level 4 (ORT's own fusion's) and at the other levels
PER_CHANNEL_BLOCK_INT8_ACTIVATIONS = 32
PER_CHANNEL_BLOCK = 256

_INTEGER: dict[int, int] = {TensorProto.INT4: 4, TensorProto.INT8: 8}


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _pack(codes_nk: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Signed codes (N, K) → MatMulNBits' B: uint8 (N, k_blocks, block * bits / 8), low nibble first."""
    n, k = codes_nk.shape
    blocks = -(-k // block)
    unsigned = (codes_nk.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
    # padding uses the zero point: a padded code dequantizes to 0 (and meets zero activations anyway)
    padded = np.full((n, blocks * block), 1 << (bits - 1), np.uint8)
    padded[:, :k] = unsigned
    if bits == 4:
        padded = (padded[:, 0::2] & 0x0F) | ((padded[:, 1::2] & 0x0F) << 4)
    return np.ascontiguousarray(padded.reshape(n, blocks, block * bits // 8))


def _weight(
    node: onnx.NodeProto, inits: dict[str, TensorProto], level: int
) -> tuple[np.ndarray, np.ndarray, int, int] | None:
    """(codes (N, K) signed, scales (N, k_blocks) float32, bits, block) of a DQ in the Linear pattern.

    `inits` maps the output of a `Cast` of an fp16 initializer to that initializer too (weights.py
    stores block scales so): the values are the same float32 scales."""
    if len(node.input) < 2 or node.input[0] not in inits or node.input[1] not in inits:
        return None
    if len(node.input) > 2 and node.input[2]:
        return None  # a zero point: voxport's ONNX codes are symmetric
    codes_init, scale_init = inits[node.input[0]], inits[node.input[1]]
    bits = _INTEGER.get(codes_init.data_type)
    if bits is None or len(codes_init.dims) != 2:
        return None
    if scale_init.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        return None
    codes = numpy_helper.to_array(codes_init).astype(np.int8)  # [K, N]
    scales = numpy_helper.to_array(scale_init).astype(np.float32)
    k, n = codes.shape
    axis, block = _attr(node, "axis", 1), _attr(node, "block_size", 0)
    if block and axis == 0 and scales.shape == (-(-k // block), n):
        if block < 16 or block & (block - 1):
            return None  # MatMulNBits needs a power of two >= 16
        return codes.T, np.ascontiguousarray(scales.T), bits, block
    if not block and bits == 8 and axis == 1 and scales.shape == (n,):
        block = PER_CHANNEL_BLOCK_INT8_ACTIVATIONS if level == 4 else PER_CHANNEL_BLOCK
        while block > 16 and block >= 2 * k:
            block //= 2
        per_block = np.repeat(scales[:, None], -(-k // block), axis=1)
        return codes.T, np.ascontiguousarray(per_block), bits, block
    return None


def use_matmulnbits(model: onnx.ModelProto, accuracy_level: int) -> int:
    """Rewrite every Linear-pattern DequantizeLinear → MatMul of `model` in place; returns how many.

    A DequantizeLinear whose output also feeds anything but MatMul's B input is left alone (it is not
    the Linear pattern: convolutions, embeddings, shared weights)."""
    if accuracy_level not in LEVELS:
        raise ValueError(f"MatMulNBits accuracy_level must be one of {LEVELS}, got {accuracy_level}")
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    # fp16 block scales reach their DequantizeLinear through a Cast (weights.py): see through it
    casts: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        if node.op_type != "Cast" or not node.input:
            continue
        source = node.input[0]
        if source in inits and inits[source].data_type == TensorProto.FLOAT16 and len(consumers[source]) == 1:
            casts[node.output[0]] = node
            inits[node.output[0]] = inits[source]
    outputs = {o.name for o in graph.output}
    replace: dict[int, onnx.NodeProto] = {}
    drop: set[int] = set()
    new_inits: list[TensorProto] = []
    dropped_inits: set[str] = set()
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.output[0] in outputs:
            continue
        users = consumers[node.output[0]]
        if not users or any(u.op_type != "MatMul" or u.input[1] != node.output[0] for u in users):
            continue
        if any(len(consumers[i]) != 1 for i in node.input[:2]):
            continue  # codes or scales shared with another node
        found = _weight(node, inits, accuracy_level)
        if found is None:
            continue
        codes, scales, bits, block = found
        n, k = codes.shape
        # named after the weight (weights.py names its codes `<weight>__q`) so a reader can map it back
        base = node.input[0].removesuffix("__q")
        packed, scale_name = f"{base}__nbits", f"{base}__nbits__scale"
        new_inits += [numpy_helper.from_array(_pack(codes, bits, block), packed)]
        new_inits += [numpy_helper.from_array(scales, scale_name)]
        dropped_inits.update(node.input[:2])
        drop.add(id(node))
        cast = casts.get(node.input[1])
        if cast is not None:
            dropped_inits.add(cast.input[0])
            drop.add(id(cast))
        for i, user in enumerate(users):
            replace[id(user)] = helper.make_node(
                "MatMulNBits",
                [user.input[0], packed, scale_name],
                list(user.output),
                name=f"{user.name or base}__nbits{i if len(users) > 1 else ''}",
                domain=DOMAIN,
                K=k,
                N=n,
                bits=bits,
                block_size=block,
                accuracy_level=accuracy_level,
            )
    if not drop:
        return 0
    nodes = [replace.get(id(n), n) for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [i for i in graph.initializer if i.name not in dropped_inits]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.add(domain=DOMAIN, version=DOMAIN_VERSION)
    return len(replace)
