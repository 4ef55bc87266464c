"""Evaluate a MIL program op by op on numpy arrays.

Core ML only predicts on macOS, so parity for a `.mlpackage` on Linux needs another executor. The
program loaded by `loader.load_mlpackage` lists its ops in a valid (topological) order; each op is
evaluated by an explicit numpy kernel from the table below. The table is deliberately our own rather
than coremltools' `value_inference`: that code is meant for constant folding, is missing for many
ops (conv, conv_transpose, ...) and would make a wrong interpreter agree with a wrong converter.

Precision: every op computes in float32 (float16 inputs are widened) and its result is rounded to
the dtype the program declares for that output. A float16 program therefore loses precision at
every op boundary, as on a device that stores activations in fp16, and parity figures for fp16
programs are meaningful (though not bit-identical to any particular Core ML compute unit).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache
from typing import Any

import numpy as np

from voxport.errors import BadInput
from voxport.runtime.mil import constexpr, kernels
from voxport.runtime.mil.loader import MilPackage


class OpArgs:
    """The materialized inputs of one op: runtime values from the environment, or const values."""

    def __init__(self, op: Any, env: Mapping[int, Any]) -> None:
        self.op = op
        self._inputs = op.inputs
        self._env = env

    def _resolve(self, var: Any) -> Any:
        if id(var) in self._env:
            value = self._env[id(var)]
        elif var.val is not None:
            value = var.val
        else:
            raise BadInput(
                f"MIL op '{self.op.op_type}' (name '{self.op.name}'): input '{var.name}' has no value"
            )
        if isinstance(value, np.ndarray) and value.dtype == np.float16:
            return value.astype(np.float32)
        if isinstance(value, np.floating | np.integer | np.bool_):
            return np.asarray(value)
        return value

    def get(self, name: str, default: Any = None) -> Any:
        var = self._inputs.get(name)
        if var is None:
            return default
        if isinstance(var, list | tuple):
            return [self._resolve(v) for v in var]
        return self._resolve(var)

    def __getitem__(self, name: str) -> Any:
        if name not in self._inputs:
            raise BadInput(
                f"MIL op '{self.op.op_type}' (name '{self.op.name}'): required input '{name}' missing"
            )
        return self.get(name)

    def scalar(self, name: str, default: Any = None) -> Any:
        value = self.get(name, default)
        return value.item() if isinstance(value, np.ndarray) else value

    def ints(self, name: str, default: Any = None) -> list[int] | None:
        value = self.get(name, default)
        return None if value is None else [int(v) for v in np.asarray(value).ravel()]


Kernel = Callable[[OpArgs], Any]


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Kernel:
    return lambda a: fn(np.asarray(a["x"]))


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Kernel:
    return lambda a: fn(np.asarray(a["x"]), np.asarray(a["y"]))


def _reduce(fn: Callable[..., np.ndarray]) -> Kernel:
    def run(a: OpArgs) -> np.ndarray:
        axes = a.ints("axes")
        return fn(
            np.asarray(a["x"]),
            axis=None if axes is None else tuple(axes),
            keepdims=bool(a.scalar("keep_dims", False)),
        )

    return run


def _reduce_arg(fn: Callable[..., np.ndarray]) -> Kernel:
    def run(a: OpArgs) -> np.ndarray:
        axis = int(a.scalar("axis", -1))
        out = fn(np.asarray(a["x"]), axis=axis)
        return np.expand_dims(out, axis) if a.scalar("keep_dims", False) else out

    return run


def _reshape(a: OpArgs) -> np.ndarray:
    x = np.asarray(a["x"])
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(a.ints("shape"))]
    return x.reshape(shape)


def _squeeze(a: OpArgs) -> np.ndarray:
    axes = a.ints("axes")
    return np.squeeze(np.asarray(a["x"]), axis=None if axes is None else tuple(axes))


def _expand_dims(a: OpArgs) -> np.ndarray:
    x = np.asarray(a["x"])
    rank = x.ndim + len(a.ints("axes"))
    return np.expand_dims(x, tuple(ax % rank for ax in a.ints("axes")))


def _concat(a: OpArgs) -> np.ndarray:
    # shape arithmetic in flexible-shape programs concatenates scalars into a shape vector
    values = [np.atleast_1d(np.asarray(v)) for v in a["values"]]
    axis = int(a.scalar("axis"))
    if a.scalar("interleave", False):
        axis %= values[0].ndim
        stacked = np.stack(values, axis=axis + 1)
        shape = list(values[0].shape)
        shape[axis] *= len(values)
        return stacked.reshape(shape)
    return np.concatenate(values, axis=axis)


def _split(a: OpArgs) -> tuple[np.ndarray, ...]:
    x = np.asarray(a["x"])
    axis = int(a.scalar("axis"))
    sizes = a.ints("split_sizes")
    if sizes is None:
        return tuple(np.split(x, int(a.scalar("num_splits")), axis=axis))
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def _reverse(a: OpArgs) -> np.ndarray:
    axes = a.ints("axes")
    return np.flip(np.asarray(a["x"]), axis=None if axes is None else tuple(axes))


def _cast(a: OpArgs) -> np.ndarray:
    dtype = str(a["dtype"])
    if dtype not in constexpr.MIL_DTYPES:
        raise BadInput(f"cast: unknown dtype {dtype!r}")
    x = np.asarray(a["x"])
    target = constexpr.MIL_DTYPES[dtype]
    if target.kind in "iu" and x.dtype.kind == "f":
        x = np.trunc(x)  # Core ML casts float->int toward zero, like C
    return x.astype(target)


def _topk(a: OpArgs) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a["x"])
    k = int(a.scalar("k", 1))
    axis = int(a.scalar("axis", -1))
    ascending = bool(a.scalar("ascending", False))
    order = np.argsort(x if ascending else -x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int32)


def _one_hot(a: OpArgs) -> np.ndarray:
    idx = np.asarray(a["indices"]).astype(np.int64)
    depth = int(a.scalar("one_hot_vector_size"))
    axis = int(a.scalar("axis", -1))
    on, off = a.scalar("on_value", 1), a.scalar("off_value", 0)
    hot = np.arange(depth) == idx[..., None]
    out = np.where(hot, on, off)
    return np.moveaxis(out, -1, axis % out.ndim)


def _leaky_relu(x: np.ndarray, alpha: np.float32) -> np.ndarray:
    # max(x, alpha*x) is one pass instead of where's three; it is only right for 0 <= alpha <= 1
    return np.maximum(x, alpha * x) if 0 <= alpha <= 1 else np.where(x >= 0, x, alpha * x)


def _clamped_relu(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return np.minimum(np.where(x >= 0, x, alpha * x), beta)


def _prelu(a: OpArgs) -> np.ndarray:
    x = np.asarray(a["x"])
    alpha = np.asarray(a["alpha"]).reshape(1, -1, *([1] * (x.ndim - 2)))
    return np.where(x >= 0, x, alpha * x)


def _sliding_windows(a: OpArgs) -> np.ndarray:
    x = np.asarray(a["x"])
    axis = int(a.scalar("axis")) % x.ndim
    size, stride = int(a.scalar("size")), int(a.scalar("stride", 1))
    windows = np.lib.stride_tricks.sliding_window_view(x, size, axis=axis)  # [..., n, ..., size]
    windows = np.take(windows, np.arange(0, windows.shape[axis], stride), axis=axis)
    return np.moveaxis(windows, -1, axis + 1)


def _conv(a: OpArgs) -> np.ndarray:
    return kernels.conv(
        np.asarray(a["x"]),
        np.asarray(a["weight"]),
        a.get("bias"),
        strides=a.ints("strides"),
        pad_type=str(a.get("pad_type", "valid")),
        pad=a.ints("pad"),
        dilations=a.ints("dilations"),
        groups=int(a.scalar("groups", 1)),
    )


def _conv_transpose(a: OpArgs) -> np.ndarray:
    return kernels.conv_transpose(
        np.asarray(a["x"]),
        np.asarray(a["weight"]),
        a.get("bias"),
        strides=a.ints("strides"),
        pad_type=str(a.get("pad_type", "valid")),
        pad=a.ints("pad"),
        dilations=a.ints("dilations"),
        groups=int(a.scalar("groups", 1)),
        output_shape=a.ints("output_shape"),
    )


def _lstm(a: OpArgs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if a.get("clip") is not None:
        raise BadInput(f"MIL op 'lstm' (name '{a.op.name}'): clip is not supported by the MIL interpreter")
    weights = [(a["weight_ih"], a["weight_hh"], a.get("bias"), a.get("peephole"))]
    direction = str(a.scalar("direction", "forward"))
    if direction == "bidirectional":
        weights.append((a["weight_ih_back"], a["weight_hh_back"], a.get("bias_back"), a.get("peephole_back")))
    return kernels.lstm(
        np.asarray(a["x"]),
        np.asarray(a["initial_h"]),
        np.asarray(a["initial_c"]),
        weights,
        direction=direction,
        output_sequence=bool(a.scalar("output_sequence", False)),
        activations=(
            str(a.scalar("recurrent_activation", "sigmoid")),
            str(a.scalar("cell_activation", "tanh")),
            str(a.scalar("activation", "tanh")),
        ),
    )


def _fill(shape: Iterable[int], value: Any) -> np.ndarray:
    return np.full(tuple(int(s) for s in shape), value)


_F32 = np.float32

#: MIL op type -> kernel; everything the interpreter can evaluate
KERNELS: dict[str, Kernel] = {
    # elementwise binary (numpy broadcasting matches MIL's)
    "add": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "real_div": _binary(lambda x, y: np.true_divide(x, y)),
    "floor_div": _binary(np.floor_divide),
    "mod": _binary(np.mod),
    "pow": _binary(np.power),
    "maximum": _binary(np.maximum),
    "minimum": _binary(np.minimum),
    "equal": _binary(np.equal),
    "not_equal": _binary(np.not_equal),
    "less": _binary(np.less),
    "less_equal": _binary(np.less_equal),
    "greater": _binary(np.greater),
    "greater_equal": _binary(np.greater_equal),
    "logical_and": _binary(np.logical_and),
    "logical_or": _binary(np.logical_or),
    "logical_xor": _binary(np.logical_xor),
    # elementwise unary
    "abs": _unary(np.abs),
    "acos": _unary(np.arccos),
    "asin": _unary(np.arcsin),
    "atan": _unary(np.arctan),
    "atanh": _unary(np.arctanh),
    "ceil": _unary(np.ceil),
    "cos": _unary(np.cos),
    "cosh": _unary(np.cosh),
    "erf": _unary(kernels.erf),
    "exp": _unary(np.exp),
    "exp2": _unary(np.exp2),
    "floor": _unary(np.floor),
    "logical_not": _unary(np.logical_not),
    "round": _unary(np.round),
    "sign": _unary(np.sign),
    "sin": _unary(np.sin),
    "sinh": _unary(np.sinh),
    "sqrt": _unary(np.sqrt),
    "square": _unary(np.square),
    "tan": _unary(np.tan),
    "tanh": _unary(np.tanh),
    "identity": lambda a: np.asarray(a["x"]),
    "inverse": lambda a: 1 / (np.asarray(a["x"]) + _F32(a.scalar("epsilon", 1e-4))),
    "log": lambda a: np.log(np.asarray(a["x"]) + _F32(a.scalar("epsilon", 1e-45))),
    "rsqrt": lambda a: 1 / np.sqrt(np.asarray(a["x"]) + _F32(a.scalar("epsilon", 1e-12))),
    "clip": lambda a: np.clip(np.asarray(a["x"]), a.scalar("alpha"), a.scalar("beta")),
    "threshold": lambda a: np.maximum(np.asarray(a["x"]), _F32(a.scalar("alpha"))),
    "cast": _cast,
    # activations
    "relu": _unary(lambda x: np.maximum(x, 0)),
    "relu6": _unary(lambda x: np.clip(x, 0, 6)),
    "leaky_relu": lambda a: _leaky_relu(np.asarray(a["x"]), _F32(a.scalar("alpha", 0.01))),
    "sigmoid": _unary(kernels.sigmoid),
    "silu": _unary(lambda x: x * kernels.sigmoid(x)),
    "gelu": lambda a: kernels.gelu(np.asarray(a["x"]), str(a.get("mode", "EXACT"))),
    "elu": lambda a: (lambda x, al: np.where(x > 0, x, al * np.expm1(x)))(
        np.asarray(a["x"]), _F32(a.scalar("alpha", 1.0))
    ),
    "softplus": _unary(kernels.softplus),
    "softsign": _unary(lambda x: x / (1 + np.abs(x))),
    "hard_sigmoid": lambda a: np.clip(
        _F32(a.scalar("alpha", 0.2)) * np.asarray(a["x"]) + _F32(a.scalar("beta", 0.5)), 0, 1
    ),
    "linear_activation": lambda a: _F32(a.scalar("alpha")) * np.asarray(a["x"]) + _F32(a.scalar("beta", 0.0)),
    "scaled_tanh": lambda a: (
        _F32(a.scalar("alpha", 1.0)) * np.tanh(_F32(a.scalar("beta", 1.0)) * np.asarray(a["x"]))
    ),
    "clamped_relu": lambda a: _clamped_relu(
        np.asarray(a["x"]), _F32(a.scalar("alpha", 0.01)), _F32(a.scalar("beta", 6.0))
    ),
    "prelu": _prelu,
    "softmax": lambda a: kernels.softmax(np.asarray(a["x"]), int(a.scalar("axis", -1))),
    # reductions
    "reduce_sum": _reduce(np.sum),
    "reduce_mean": _reduce(np.mean),
    "reduce_max": _reduce(np.max),
    "reduce_min": _reduce(np.min),
    "reduce_prod": _reduce(np.prod),
    "reduce_l1_norm": _reduce(lambda x, **k: np.sum(np.abs(x), **k)),
    "reduce_l2_norm": _reduce(lambda x, **k: np.sqrt(np.sum(np.square(x), **k))),
    "reduce_sum_square": _reduce(lambda x, **k: np.sum(np.square(x), **k)),
    "reduce_log_sum": _reduce(lambda x, **k: np.log(np.sum(x, **k))),
    "reduce_log_sum_exp": _reduce(
        lambda x, **k: (
            lambda m: np.log(np.sum(np.exp(x - m), **k)) + (m if k["keepdims"] else np.squeeze(m, k["axis"]))
        )(np.max(x, axis=k["axis"], keepdims=True))
    ),
    "reduce_argmax": _reduce_arg(np.argmax),
    "reduce_argmin": _reduce_arg(np.argmin),
    # linear algebra and normalization
    "matmul": lambda a: kernels.matmul(
        np.asarray(a["x"]),
        np.asarray(a["y"]),
        bool(a.scalar("transpose_x", False)),
        bool(a.scalar("transpose_y", False)),
    ),
    "linear": lambda a: kernels.linear(np.asarray(a["x"]), np.asarray(a["weight"]), a.get("bias")),
    "conv": _conv,
    "conv_transpose": _conv_transpose,
    "layer_norm": lambda a: kernels.layer_norm(
        np.asarray(a["x"]), a.ints("axes"), a.get("gamma"), a.get("beta"), float(a.scalar("epsilon", 1e-5))
    ),
    "batch_norm": lambda a: kernels.normalize_channels(
        np.asarray(a["x"]),
        a["mean"],
        a["variance"],
        a.get("gamma"),
        a.get("beta"),
        float(a.scalar("epsilon", 1e-5)),
    ),
    "instance_norm": lambda a: kernels.normalize_channels(
        np.asarray(a["x"]),
        None,
        None,
        a.get("gamma"),
        a.get("beta"),
        float(a.scalar("epsilon", 1e-5)),
        instance=True,
    ),
    "band_part": lambda a: kernels.band_part(
        np.asarray(a["x"]), int(a.scalar("lower", -1)), int(a.scalar("upper", -1))
    ),
    # shape and indexing
    "reshape": _reshape,
    "squeeze": _squeeze,
    "expand_dims": _expand_dims,
    "transpose": lambda a: np.transpose(np.asarray(a["x"]), a.ints("perm")),
    "concat": _concat,
    "split": _split,
    "stack": lambda a: np.stack([np.asarray(v) for v in a["values"]], axis=int(a.scalar("axis"))),
    "tile": lambda a: np.tile(np.asarray(a["x"]), a.ints("reps")),
    "reverse": _reverse,
    "slice_by_index": lambda a: kernels.slice_by_index(
        np.asarray(a["x"]),
        a.ints("begin"),
        a.ints("end"),
        a.ints("stride"),
        a.get("begin_mask"),
        a.get("end_mask"),
        a.get("squeeze_mask"),
    ),
    "slice_by_size": lambda a: kernels.slice_by_size(np.asarray(a["x"]), a.ints("begin"), a.ints("size")),
    "gather": lambda a: kernels.gather(
        np.asarray(a["x"]), a["indices"], int(a.scalar("axis", 0)), int(a.scalar("batch_dims", 0))
    ),
    "gather_nd": lambda a: kernels.gather_nd(
        np.asarray(a["x"]), a["indices"], int(a.scalar("batch_dims", 0))
    ),
    "gather_along_axis": lambda a: kernels.gather_along_axis(
        np.asarray(a["x"]), a["indices"], int(a.scalar("axis", 0))
    ),
    "pad": lambda a: kernels.pad(
        np.asarray(a["x"]),
        a.ints("pad"),
        str(a.get("mode", "constant")),
        float(a.scalar("constant_val", 0.0)),
    ),
    "cumsum": lambda a: kernels.cumsum(
        np.asarray(a["x"]),
        int(a.scalar("axis", 0)),
        bool(a.scalar("exclusive", False)),
        bool(a.scalar("reverse", False)),
    ),
    "range_1d": lambda a: np.arange(a.scalar("start"), a.scalar("end"), a.scalar("step")),
    "fill": lambda a: _fill(a.ints("shape"), a.scalar("value", 0.0)),
    "fill_like": lambda a: np.full(np.shape(a["ref_tensor"]), a.scalar("value", 0.0)),
    "shape": lambda a: np.asarray(np.shape(a["x"]), np.int32),
    "select": lambda a: np.where(np.asarray(a["cond"]).astype(bool), a["a"], a["b"]),
    "one_hot": _one_hot,
    "argsort": lambda a: np.argsort(
        np.asarray(a["x"]) * (1 if a.scalar("ascending", False) else -1),
        axis=int(a.scalar("axis", -1)),
        kind="stable",
    ),
    "topk": _topk,
    "non_zero": lambda a: np.argwhere(np.asarray(a["x"])).astype(np.int32),
    "sliding_windows": _sliding_windows,
    "lstm": _lstm,
    "upsample_nearest_neighbor": lambda a: kernels.upsample_nearest(
        np.asarray(a["x"]), [a.scalar("scale_factor_height", 1), a.scalar("scale_factor_width", 1)]
    ),
}


def supported_ops() -> list[str]:
    """Op types the interpreter evaluates (compute ops, then decodable constexpr ops)."""
    return sorted(KERNELS) + ["const"] + sorted(constexpr.DECODERS)


def _numpy_dtype(var: Any) -> np.dtype | None:
    """The numpy dtype a program declares for `var`, or None for non-numeric values (strings)."""
    from coremltools.converters.mil.mil import types

    try:
        builtin = var.dtype
        if builtin is types.str:
            return None
        return np.dtype(types.nptype_from_builtin(builtin))
    except Exception:  # lists, states and other non-tensor types
        return None


def _coerce(value: Any, var: Any) -> Any:
    dtype = _numpy_dtype(var)
    if dtype is None or isinstance(value, str):
        return value
    return np.asarray(value).astype(dtype, copy=False)


@cache
def _threadpools() -> Any:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional: without it BLAS keeps its own thread count
        return None
    return ThreadpoolController()


@contextlib.contextmanager
def blas_threads(threads: int | None) -> Iterator[None]:
    """Limit BLAS threads while the interpreter runs.

    On the shared 2-core machine OpenBLAS' default two threads made the tiny VITS decoder ~8x
    slower (1.0 s against 0.12 s) and erratic, the same effect seen with ONNX Runtime and torch."""
    controller = _threadpools() if threads else None
    if controller is None:
        yield
        return
    with controller.limit(limits=threads, user_api="blas"):
        yield


class MilInterpreter:
    """Runs one function of a loaded MIL program on numpy inputs.

    Constant and compressed (`constexpr_*`) values are materialized once at construction, so
    repeated `run` calls only pay for the compute ops.
    """

    def __init__(self, package: MilPackage, function: str = "main", *, threads: int | None = 1) -> None:
        functions = package.program.functions
        if function not in functions:
            raise BadInput(f"{package.path}: no function '{function}' (has: {', '.join(functions)})")
        self.package = package
        self.threads = threads
        self.function = functions[function]
        self.operations = list(self.function.operations)
        self._constants: dict[int, Any] = {}
        self._compute: list[Any] = []
        for op in self.operations:
            if op.op_type == "const":
                self._constants[id(op.outputs[0])] = op.outputs[0].val
            elif op.op_type.startswith("constexpr_"):
                args = OpArgs(op, self._constants)
                named = {name: args.get(name) for name in op.inputs}
                try:
                    value = constexpr.decode(op.op_type, named)
                except BadInput as exc:
                    raise BadInput(f"MIL op '{op.op_type}' (name '{op.name}'): {exc}") from None
                self._constants[id(op.outputs[0])] = _coerce(value, op.outputs[0])
            elif op.blocks:
                raise BadInput(f"MIL op '{op.op_type}' (name '{op.name}'): control flow is not supported")
            elif op.op_type not in KERNELS:
                raise BadInput(
                    f"MIL op '{op.op_type}' (name '{op.name}') is not supported by the MIL interpreter "
                    "(see voxport.runtime.mil.supported_ops())"
                )
            else:
                self._compute.append(op)

    @property
    def input_names(self) -> list[str]:
        return list(self.function.inputs)

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.function.outputs]

    def op_types(self) -> dict[str, int]:
        """How often each op type occurs: what a graph needs from the interpreter."""
        counts: dict[str, int] = {}
        for op in self.operations:
            counts[op.op_type] = counts.get(op.op_type, 0) + 1
        return counts

    def run(self, inputs: Mapping[str, np.ndarray], *, capture: Iterable[str] = ()) -> dict[str, np.ndarray]:
        """Outputs by name; `capture` adds intermediate values by var name (for debugging parity)."""
        env: dict[int, Any] = dict(self._constants)
        for name, var in self.function.inputs.items():
            if name not in inputs:
                raise BadInput(
                    f"{self.package.path}: missing input '{name}' (needs: {', '.join(self.input_names)})"
                )
            value = np.asarray(inputs[name])
            declared = var.shape
            if len(declared) != value.ndim or any(
                isinstance(d, int | np.integer) and d != s for d, s in zip(declared, value.shape, strict=True)
            ):
                raise BadInput(
                    f"input '{name}': shape {value.shape} does not fit the declared {tuple(declared)}"
                )
            env[id(var)] = _coerce(value, var)
        wanted = set(capture)
        captured: dict[str, np.ndarray] = {}
        with blas_threads(self.threads):
            self._evaluate(env, wanted, captured)
        outputs = {var.name: env[id(var)] for var in self.function.outputs}
        return {**outputs, **captured}

    def _evaluate(self, env: dict[int, Any], wanted: set[str], captured: dict[str, np.ndarray]) -> None:
        for op in self._compute:
            try:
                result = KERNELS[op.op_type](OpArgs(op, env))
            except BadInput:
                raise
            except Exception as exc:  # a kernel failing is a bug or an unsupported form: name the op
                raise BadInput(
                    f"MIL op '{op.op_type}' (name '{op.name}') failed: {type(exc).__name__}: {exc}"
                ) from exc
            results = result if isinstance(result, tuple) else (result,)
            if len(results) != len(op.outputs):
                raise BadInput(
                    f"MIL op '{op.op_type}' (name '{op.name}'): {len(results)} results for {len(op.outputs)}"
                )
            for var, value in zip(op.outputs, results, strict=True):
                env[id(var)] = _coerce(value, var)
                if var.name in wanted:
                    captured[var.name] = env[id(var)]
