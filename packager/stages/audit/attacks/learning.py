"""Learning attack: fit a plain MLP of the source's shape to input/output pairs of a released MLP.

This is the threat the paper evaluates (reconstruction by training). The attacker records inputs x and
outputs y of one released MLP by running the release on text of its own, then trains a fresh plain MLP
(the same width, activation and gating as the source) with Adam on the mean squared error, under a
fixed budget of steps. Nothing from the release's tensors is used, so the channels it learns need not
correspond to the source's; the audit aligns them by gate rows before counting recovered elements.
"""

from __future__ import annotations

import torch

from packager.stages.audit.attacks import RecoveredMLP, ReleasedMLP

NAME = "learning"
#: Share of the pairs held back to report the fitted MLP's error on inputs it did not train on.
HOLDOUT = 0.1


def recover(mlp: ReleasedMLP, inputs: torch.Tensor, outputs: torch.Tensor, *, steps: int, lr: float = 3e-3,
            seed: int = 0) -> RecoveredMLP:
    """Train a plain MLP on (inputs [T, H], outputs [T, H]) for `steps` full-batch Adam steps."""
    generator = torch.Generator().manual_seed(seed)
    x_all, y_all = inputs.float(), outputs.float()
    order = torch.randperm(x_all.shape[0], generator=generator)
    held = max(1, int(len(order) * HOLDOUT)) if len(order) > 1 else 0
    train, test = order[held:], order[:held]
    hidden, width = x_all.shape[1], mlp.intermediate

    def init(rows: int, columns: int) -> torch.nn.Parameter:
        return torch.nn.Parameter(torch.randn(rows, columns, generator=generator) / columns**0.5)

    gate = init(width, hidden)
    up = init(width, hidden) if mlp.gated else None
    down = torch.nn.Parameter(torch.zeros(hidden, width))
    params = [p for p in (gate, up, down) if p is not None]
    optimiser = torch.optim.Adam(params, lr=lr)
    activation = mlp.activation.value

    def forward(x: torch.Tensor) -> torch.Tensor:
        h = activation(x @ gate.T)
        if up is not None:
            h = h * (x @ up.T)
        return h @ down.T

    x, y = x_all[train], y_all[train]
    scale = y.pow(2).mean().clamp(min=1e-12)
    with torch.enable_grad():
        for _ in range(steps):
            optimiser.zero_grad()
            loss = (forward(x) - y).pow(2).mean() / scale
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        train_error = float((forward(x) - y).norm() / y.norm().clamp(min=1e-12))
        test_error = (float((forward(x_all[test]) - y_all[test]).norm() / y_all[test].norm().clamp(min=1e-12))
                      if held else None)
    extra = {"output_error_train": train_error, "output_error_heldout": test_error,
             "pairs": int(x_all.shape[0])}
    return RecoveredMLP(gate=gate.detach().double(), down=down.detach().double(),
                        up=None if up is None else up.detach().double(), down_bias=mlp.out_bias, extra=extra)
