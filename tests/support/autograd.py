"""Taylor coefficients by repeated autograd: the independent reference the series' exact jets are checked against."""

from __future__ import annotations

import math

import torch


def autograd_taylor(fn, x0: torch.Tensor, order: int) -> torch.Tensor:
    """f^(n)(x0) / n! for n = 0..order, [..., order+1], by differentiating `fn` `order` times."""
    x = x0.clone().requires_grad_(True)
    derivatives = [fn(x)]
    for _ in range(order):
        (grad,) = torch.autograd.grad(derivatives[-1].sum(), x, create_graph=True)
        derivatives.append(grad)
    return torch.stack([d.detach() / math.factorial(n) for n, d in enumerate(derivatives)], -1)
