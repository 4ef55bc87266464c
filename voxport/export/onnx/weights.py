"""Store each weight of a traced fp32 ONNX graph in the precision the quantize stage chose.

- fp16: a float16 initializer followed by `Cast` to float32 (weight-only; compute stays fp32).
- int8: an int8 initializer of the original shape with a per-output-channel `DequantizeLinear`.
- int4, and int8 in blocks (`quantize.int8_block_size`): an INT4 (INT8) initializer in the 2-D layout
  of `QuantizedTensor` with a blocked `DequantizeLinear` (opset 21), then `Reshape` back to the
  kernel's shape. A Linear weight that the trace feeds through `Transpose` into `MatMul` is stored
  pre-transposed with blocks along axis 0, the pattern ONNX Runtime fuses into `MatMulNBits` (int4).

Scales are stored as float32 holding the quantizer's values (for blocks those are exactly
float16-representable; blocked int8 stores them as float16 with an exact `Cast`), so every runtime
dequantizes to the same floats as `QuantizedTensor`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from voxport.errors import BadInput
from voxport.quantize.tensor import QuantizedTensor

#: blocked DequantizeLinear (int4 or int8 blocks) exists from opset 21; per-axis int8 DQ and Cast need less
BLOCKED_DQ_OPSET = 21

Stored = np.ndarray | QuantizedTensor


def _int4_tensor(name: str, codes: np.ndarray) -> TensorProto:
    flat = codes.astype(np.int8).reshape(-1)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int8)])
    nibbles = flat.astype(np.uint8) & 0x0F
    packed = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)
    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = TensorProto.INT4
    tensor.dims.extend(codes.shape)
    tensor.raw_data = packed.tobytes()
    return tensor


def _fp16_exact(values: np.ndarray) -> bool:
    with np.errstate(over="ignore"):
        return bool(np.array_equal(values.astype(np.float16).astype(np.float32), values))


def scale_bits(q: QuantizedTensor) -> int:
    """Bits the ONNX file spends per scale of `q`: 16 for blocks (int4 and blocked int8 scales are
    fp16-exact by construction: fp16 initializer + Cast), 32 for per-channel int8 (float32 scales)."""
    blocked = q.block_size < q.cols
    return 16 if blocked and _fp16_exact(q.scales.astype(np.float32)) else 32


class _Rewriter:
    def __init__(self, model: onnx.ModelProto, *, fold: bool = False) -> None:
        self.model = model
        #: write code × scale as Cast → Mul (→ Reshape) instead of DequantizeLinear (see apply_stored_weights)
        self.fold = fold
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in model.graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.new_inits: list[TensorProto] = []
        self.new_nodes: list[onnx.NodeProto] = []
        self.removed: set[int] = set()

    def _transposed_matmul(self, name: str) -> onnx.NodeProto | None:
        """The single Transpose(perm=[1,0]) that feeds this weight only into MatMuls, if any."""
        users = self.consumers[name]
        if len(users) != 1 or users[0].op_type != "Transpose":
            return None
        perm = [list(a.ints) for a in users[0].attribute if a.name == "perm"]
        if perm not in ([[1, 0]], []):
            return None
        if not all(n.op_type == "MatMul" for n in self.consumers[users[0].output[0]]):
            return None
        return users[0]

    def store(self, init: TensorProto, value: Stored) -> list[TensorProto]:
        """Store one weight; returns the initializers it added (the streaming exporter moves their bytes
        to an external-data file at once, export/onnx/stream.py)."""
        name = init.name
        before = len(self.new_inits)
        if isinstance(value, QuantizedTensor):
            self._store_quantized(name, value)
        else:
            array = value if value.dtype == np.float16 else value.astype(np.float32)
            tensor = self.store_float(name, array.shape, array.dtype)
            tensor.raw_data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        return self.new_inits[before:]

    @staticmethod
    def _float_name(name: str, dtype: np.dtype) -> str:
        return f"{name}__fp16" if dtype == np.float16 else name

    def store_float(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> TensorProto:
        """The initializer, still without data, that holds float weight `name` as `dtype` (float16 is
        followed by a Cast to float32). The caller fills it: `store` with the array's bytes, the
        streaming exporter with external data written in row chunks, so a table larger than memory
        allows never exists as one array."""
        stored = self._float_name(name, np.dtype(dtype))
        tensor = TensorProto()
        tensor.name = stored
        tensor.data_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        tensor.dims.extend(shape)
        self.new_inits.append(tensor)
        if stored != name:
            self.new_nodes.append(
                helper.make_node("Cast", [stored], [name], to=TensorProto.FLOAT, name=f"{name}__cast")
            )
        return tensor

    def _store_quantized(self, name: str, q: QuantizedTensor) -> None:
        transpose = self._transposed_matmul(name) if len(q.shape) == 2 else None
        codes, scales = q.codes, q.scales.astype(np.float32)
        out = name
        if transpose is not None:
            # MatMul B = W^T: rows become axis 1, blocks run along axis 0 (the reduction axis).
            codes, scales, axis = codes.T, scales.T, 0
            out = transpose.output[0]
            self.removed.add(id(transpose))
        else:
            axis = 1
        blocked = q.block_size < q.cols
        if q.bits == 8 and not blocked:
            # per output channel: the original kernel shape (or [in, out] for MatMul), one scale per row
            stored = codes if transpose is not None else codes.reshape(q.shape)
            q8 = numpy_helper.from_array(stored.astype(np.int8), f"{name}__q")
            self._dequantize(name, q8, scales.reshape(-1), out, axis=1 if transpose is not None else 0)
            return
        if q.bits not in (4, 8):
            raise ValueError(f"{name}: unsupported bit width {q.bits}")
        if q.offsets is not None:
            raise ValueError(f"{name}: asymmetric int{q.bits} blocks are not exported to ONNX yet")
        needs_reshape = transpose is None and tuple(codes.shape) != tuple(q.shape)
        dq_out = f"{name}__dq2d" if needs_reshape else out
        if q.bits == 4:
            stored_codes = _int4_tensor(f"{name}__q", codes)
        else:
            stored_codes = numpy_helper.from_array(np.ascontiguousarray(codes, dtype=np.int8), f"{name}__q")
        self._dequantize(
            name, stored_codes, np.ascontiguousarray(scales), dq_out, axis=axis, block_size=q.block_size
        )
        if needs_reshape:
            self.new_inits.append(numpy_helper.from_array(np.asarray(q.shape, np.int64), f"{name}__shape"))
            self.new_nodes.append(
                helper.make_node("Reshape", [dq_out, f"{name}__shape"], [out], name=f"{name}__reshape")
            )

    def _dequantize(self, name: str, codes: TensorProto, scales: np.ndarray, out: str, **attrs: int) -> None:
        """Codes + scales initializers and the DequantizeLinear that produces the float weight `out`.

        Block scales (int4, blocked int8: fp16-exact by construction) are stored as float16 and `Cast`
        to float32 before the DequantizeLinear: one scale per 32 codes costs 0.5 bit per weight instead
        of 1, the float32 product ``code * scale`` is unchanged (the cast is exact), and ONNX Runtime
        folds the cast of a constant once at load (and still fuses DequantizeLinear → MatMul)."""
        if self.fold and self._fold(name, codes, scales, out, **attrs):
            return
        self.new_inits.append(codes)
        if attrs.get("block_size") and _fp16_exact(scales):
            # the rule `scale_bits` reports
            self.new_inits.append(numpy_helper.from_array(scales.astype(np.float16), f"{name}__fp16__scale"))
            self.new_nodes.append(
                helper.make_node(
                    "Cast",
                    [f"{name}__fp16__scale"],
                    [f"{name}__scale"],
                    to=TensorProto.FLOAT,
                    name=f"{name}__scale_cast",
                )
            )
        else:
            self.new_inits.append(numpy_helper.from_array(scales, f"{name}__scale"))
        self.new_nodes.append(
            helper.make_node(
                "DequantizeLinear", [codes.name, f"{name}__scale"], [out], name=f"{name}__dq", **attrs
            )
        )

    def _fold(self, name: str, codes: TensorProto, scales: np.ndarray, out: str, **attrs: int) -> bool:
        """`out` = float(codes) × scales by Cast, Mul and Reshape of initializers: the same float32 weight as
        DequantizeLinear (x − 0) · s, in ops every runtime folds when it loads the file. False (the caller
        writes DequantizeLinear) when a block does not divide its axis."""
        shape = list(codes.dims)
        axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
        if block and shape[axis] % block:
            return False
        self.new_inits.append(codes)
        as_float = f"{name}__float"
        self.new_nodes.append(
            helper.make_node(
                "Cast", [codes.name], [as_float], to=TensorProto.FLOAT, name=f"{name}__cast_codes"
            )
        )
        if not block:  # one scale per index of `axis`
            broadcast = [1] * len(shape)
            broadcast[axis] = -1
            self.new_inits.append(numpy_helper.from_array(scales.reshape(broadcast), f"{name}__scale"))
            self.new_nodes.append(
                helper.make_node("Mul", [as_float, f"{name}__scale"], [out], name=f"{name}__mul")
            )
            return True
        # blocks of `block` along `axis` of a 2-D tensor: [rows, cols/b, b] × [rows, cols/b, 1] (axis 1) or
        # [rows/b, b, cols] × [rows/b, 1, cols] (axis 0), then back to the 2-D shape
        rows, cols = shape
        split = [rows, cols // block, block] if axis == 1 else [rows // block, block, cols]
        scale_shape = [rows, cols // block, 1] if axis == 1 else [rows // block, 1, cols]
        self.new_inits.append(numpy_helper.from_array(np.asarray(split, np.int64), f"{name}__blocks"))
        self.new_inits.append(numpy_helper.from_array(np.asarray(shape, np.int64), f"{name}__shape2d"))
        self.new_inits.append(numpy_helper.from_array(scales.reshape(scale_shape), f"{name}__scale"))
        self.new_nodes.extend(
            [
                helper.make_node(
                    "Reshape", [as_float, f"{name}__blocks"], [f"{name}__b"], name=f"{name}__split"
                ),
                helper.make_node(
                    "Mul", [f"{name}__b", f"{name}__scale"], [f"{name}__bs"], name=f"{name}__mul"
                ),
                helper.make_node("Reshape", [f"{name}__bs", f"{name}__shape2d"], [out], name=f"{name}__join"),
            ]
        )
        return True

    def finish(self, replaced: set[str]) -> None:
        graph = self.model.graph
        keep_inits = [i for i in graph.initializer if i.name not in replaced]
        del graph.initializer[:]
        graph.initializer.extend(keep_inits + self.new_inits)
        keep_nodes = [n for n in graph.node if id(n) not in self.removed]
        del graph.node[:]
        # Weight producers first: ONNX requires topological order.
        graph.node.extend(self.new_nodes + keep_nodes)


def apply_stored_weights(
    model: onnx.ModelProto,
    weights: Mapping[str, Stored],
    *,
    opset: int,
    prefix: str = "model.",
    fold: bool = False,
) -> set[str]:
    """Replace initializers named ``prefix + weight name``; returns the weight names stored.

    The model is stamped with `opset` (at least the traced one); blocks (int4, blocked int8) need 21
    or later. `fold`: integer weights as Cast → Mul instead of DequantizeLinear. The floats are the same;
    what differs is ONNX Runtime: its constant folding skips DequantizeLinear (kept for QDQ fusion), so a
    weight-only DequantizeLinear before a Conv or LSTM runs on every call, while Cast → Mul of
    initializers is computed once when the session loads and the graph then runs at fp32 speed."""
    blocked = [k for k, v in weights.items() if isinstance(v, QuantizedTensor) and v.block_size < v.cols]
    if blocked and opset < BLOCKED_DQ_OPSET:
        raise BadInput(
            f"int4 and int8 blocks need ONNX opset >= {BLOCKED_DQ_OPSET} (blocked DequantizeLinear), "
            f"the recipe asks for {opset}: set export.onnx.opset: {BLOCKED_DQ_OPSET}"
        )
    rewriter = _Rewriter(model, fold=fold)
    replaced: set[str] = set()
    for init in list(model.graph.initializer):
        if not init.name.startswith(prefix):
            continue
        key = init.name[len(prefix) :]
        if key not in weights:
            continue
        rewriter.store(init, weights[key])
        replaced.add(init.name)
    rewriter.finish(replaced)
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = max(entry.version, opset)
    return {name[len(prefix) :] for name in replaced}
