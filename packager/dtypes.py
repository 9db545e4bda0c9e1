"""The dtype tables: runtime dtype names, torch dtypes and safetensors codes, defined once.

A release's dtype is named as transformers names it (`float32`, `bfloat16`, `float16`); safetensors
headers use codes (`F32`, `BF16`, ...). Every conversion between the three goes through this module.
"""

from __future__ import annotations

import torch

from packager.errors import UsageError

#: The dtypes a release can be written in and run at, by name.
RUNTIME = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RUNTIME_NAMES = tuple(RUNTIME)
#: Bytes per element of the runtime dtypes.
RUNTIME_SIZES = {"float32": 4, "bfloat16": 2, "float16": 2}

#: torch dtype -> safetensors code, for every dtype a release or checkpoint tensor may have.
SAFETENSORS_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
#: Bytes per element of every safetensors code (including codes torch here does not hold, e.g. F8).
CODE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
              "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8}
FLOATING_CODES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
#: Runtime dtype name -> safetensors code.
RUNTIME_CODES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
_FROM_CODE = {code: dtype for dtype, code in SAFETENSORS_CODES.items()}


def check_dtype(name: str | None, *, flag: str = "--dtype") -> str | None:
    """Return `name` if a release can run at it (None passes: the default applies); UsageError otherwise."""
    if name is not None and name not in RUNTIME:
        raise UsageError(f"{flag} {name!r} is unknown; choose one of {', '.join(RUNTIME)}")
    return name


def runtime_dtype(name: str) -> torch.dtype:
    """The torch dtype of a runtime dtype name; ValueError for any other name."""
    if name not in RUNTIME:
        raise ValueError(f"dtype {name!r} is not a runtime dtype; expected one of {', '.join(RUNTIME)}")
    return RUNTIME[name]


def runtime_name(dtype: torch.dtype, default: str = "float32") -> str:
    """The runtime name of a torch dtype (`default` for dtypes a release is never written in)."""
    return next((name for name, value in RUNTIME.items() if value == dtype), default)


def from_code(code: str) -> torch.dtype:
    """The torch dtype of a safetensors code (F32, BF16, I64, ...); ValueError for codes torch lacks here."""
    if code not in _FROM_CODE:
        raise ValueError(f"safetensors dtype {code} is not supported here; supported: {', '.join(_FROM_CODE)}")
    return _FROM_CODE[code]
