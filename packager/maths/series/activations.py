"""The activations unswift can expand exactly: their values and Taylor coefficients, by name.

Names are transformers' `hidden_act` keys (ACT2FN). An activation not listed here cannot be expanded
exactly and is refused; it is never approximated by a different function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from packager.maths.series import jets

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _silu_jet(x: torch.Tensor) -> torch.Tensor:
    return jets.mul(x, jets.sigmoid(x))


def _gelu_jet(x: torch.Tensor) -> torch.Tensor:
    # 0.5 x (1 + erf(x / sqrt 2))
    return jets.scale(jets.mul(x, jets.shift(jets.erf(jets.scale(x, 1 / math.sqrt(2.0))), 1.0)), 0.5)


def _gelu_tanh_jet(x: torch.Tensor) -> torch.Tensor:
    # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    inner = jets.scale(jets.mul(x, jets.shift(jets.scale(jets.mul(x, x), 0.044715), 1.0)), _SQRT_2_OVER_PI)
    return jets.scale(jets.mul(x, jets.shift(jets.tanh(inner), 1.0)), 0.5)


def _quick_gelu_jet(x: torch.Tensor) -> torch.Tensor:
    return jets.mul(x, jets.sigmoid(jets.scale(x, 1.702)))


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


@dataclass(frozen=True)
class Activation:
    """One expandable activation: its canonical name, its values and its jet."""

    name: str
    value: Callable[[torch.Tensor], torch.Tensor]
    jet: Callable[[torch.Tensor], torch.Tensor]

    def taylor(self, x0: torch.Tensor, order: int) -> torch.Tensor:
        """f^(n)(x0)/n! for n = 0..order, in float64, shape [..., order+1]."""
        return self.jet(jets.variable(x0, order))


_SILU = Activation("silu", F.silu, _silu_jet)
_GELU = Activation("gelu", F.gelu, _gelu_jet)
_GELU_TANH = Activation("gelu_tanh", _gelu_tanh, _gelu_tanh_jet)
_QUICK_GELU = Activation("quick_gelu", _quick_gelu, _quick_gelu_jet)

#: transformers `hidden_act` name -> the exact function it computes.
ACTIVATIONS: dict[str, Activation] = {
    "silu": _SILU,
    "swish": _SILU,
    "gelu": _GELU,
    "gelu_pytorch_tanh": _GELU_TANH,
    "gelu_new": _GELU_TANH,
    "gelu_python_tanh": _GELU_TANH,
    "gelu_fast": _GELU_TANH,
    "quick_gelu": _QUICK_GELU,
}


def get_activation(name: str) -> Activation:
    """The activation called `name` by transformers; KeyError lists the expandable ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise KeyError(
            f"activation {name!r} cannot be expanded exactly; supported: {', '.join(sorted(ACTIVATIONS))}"
        ) from None
