"""The adapter interface: where a family keeps its MLP weights, on disk and in modules.

The pipeline sees a model as a flat list of MLP *units*, each one plain MLP the transform replaces:
the MLP of a dense decoder layer, one routed expert of a mixture-of-experts block, or its shared
expert. Every unit is read as gate rows, optional up rows, a down matrix and optional biases, whatever
the family's layout (separate or fused gate/up projections, experts packed in 3-D tensors or stored
one by one). Calibration hooks come from `taps`, so an expert only ever sees the tokens routed to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from packager.errors import UsageError

#: What `Adapter.read_mlp` returns, by name: the parts of one unit that exist (raw dtype, not copied).
PARTS = ("gate", "up", "down", "gate_bias", "up_bias", "down_bias")

#: A calibration tap: called with (module, args, kwargs) of a forward pre-hook, returns
#: (unit index, gate pre-activation g [tokens, I], up projection u [tokens, I] or None) per unit reached.
Tap = Callable[[nn.Module, tuple, dict], list[tuple[int, torch.Tensor, torch.Tensor | None]]]


@dataclass(frozen=True)
class Unit:
    """One MLP of the source that the release replaces by a series."""

    index: int  # position in the unit list, = its entry in config.json["unswift"]["layers"]
    layer: int  # decoder layer
    name: str  # module path in the model = prefix of its release tensors, e.g. "model.layers.3.mlp.experts.5"
    expert: int | None = None  # routed expert number; None for a dense MLP or a shared expert

    @property
    def prefix(self) -> str:
        return self.name + "."


@dataclass(frozen=True)
class Experts:
    """How a mixture-of-experts block keeps its experts (transformers 5.x modules, and older files).

    In memory (transformers 5.x) the routed experts are one module holding `gate_up_proj` [E, 2I, H]
    (gate rows then up rows) and `down_proj` [E, H, I]; `save_pretrained` writes them back one expert at
    a time (`<block>.experts.{e}.<gate|up|down>.weight`), as older checkpoints do. Both are read.
    """

    count: str  # config key: number of routed experts
    legacy: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")  # per-expert names on disk
    legacy_block: str | None = None  # the MoE block's name in older files, renamed to the adapter's `mlp`
    shared: str | None = None  # a dense shared expert inside the block (its gate `<shared>_gate` stays)
    sparse_step: bool = False  # Qwen-MoE rule: `mlp_only_layers` and `decoder_sparse_step` pick MoE layers
    module: str = "experts"

    def is_sparse(self, config, layer: int) -> bool:
        """Whether decoder layer `layer` holds a mixture-of-experts block (else a dense MLP)."""
        if not self.sparse_step:
            return True
        if layer in (getattr(config, "mlp_only_layers", None) or []):
            return False
        count = int(getattr(config, self.count) or 0)
        return count > 0 and (layer + 1) % int(getattr(config, "decoder_sparse_step", 1) or 1) == 0


@dataclass(frozen=True)
class Adapter:
    """How one model family lays out its decoder MLPs, in checkpoint names and in modules."""

    family: str  # runtime class stem: Unswift{Family}Config / Model / ForCausalLM
    base_model_type: str
    layers_prefix: str = "model.layers"
    mlp: str = "mlp"
    gate: str = "gate_proj"  # the projection whose output feeds the activation (fc1 when not gated)
    up: str | None = "up_proj"  # None for non-gated MLPs and for a fused gate/up projection
    down: str = "down_proj"
    fused: bool = False  # `gate` holds the gate rows then the up rows (Phi-3's gate_up_proj)
    act_key: str = "hidden_act"  # the config key naming the activation
    experts: Experts | None = None
    #: (regex, replacement) for copied tensor names: the renames transformers applies when it loads the
    #: family's files into its own classes, which it skips for remote code such as the release's.
    renames: tuple[tuple[str, str], ...] = ()

    @property
    def gated(self) -> bool:
        return self.up is not None or self.fused

    def activation_name(self, config) -> str:
        return str(getattr(config, self.act_key, None))

    def key(self, layer: int, projection: str, kind: str = "weight") -> str:
        """The checkpoint name of a dense layer's MLP projection."""
        return f"{self.layers_prefix}.{layer}.{self.mlp}.{projection}.{kind}"

    def mlp_prefix(self, layer: int) -> str:
        return f"{self.layers_prefix}.{layer}.{self.mlp}."

    # -- units --------------------------------------------------------------------------------------

    def units(self, config) -> list[Unit]:
        """Every MLP unit in release order: per layer its dense MLP, or its experts then its shared expert."""
        units: list[Unit] = []
        for layer in range(int(config.num_hidden_layers)):
            block = f"{self.layers_prefix}.{layer}.{self.mlp}"
            if self.experts is not None and self.experts.is_sparse(config, layer):
                for expert in range(int(getattr(config, self.experts.count))):
                    units.append(Unit(len(units), layer, f"{block}.{self.experts.module}.{expert}", expert))
                if self.experts.shared:
                    units.append(Unit(len(units), layer, f"{block}.{self.experts.shared}"))
            else:
                units.append(Unit(len(units), layer, block))
        return units

    def source_prefixes(self, config) -> tuple[str, ...]:
        """Name prefixes of every checkpoint tensor the units replace (everything else is copied)."""
        prefixes: list[str] = []
        for layer in range(int(config.num_hidden_layers)):
            block = f"{self.layers_prefix}.{layer}.{self.mlp}"
            if self.experts is None or not self.experts.is_sparse(config, layer):
                prefixes.append(block + ".")
                continue
            prefixes.append(f"{block}.{self.experts.module}.")
            if self.experts.legacy_block:
                prefixes.append(f"{self.layers_prefix}.{layer}.{self.experts.legacy_block}.{self.experts.module}.")
            if self.experts.shared:
                prefixes.append(f"{block}.{self.experts.shared}.")
        return tuple(prefixes)

    def release_key(self, key: str) -> str:
        """The release name of a copied tensor: the name of the module that holds it in transformers 5.x."""
        for pattern, replacement in self.renames:
            key = re.sub(pattern, replacement, key)
        return key

    def read_mlp(self, checkpoint, unit: Unit, parts: Iterable[str] = PARTS) -> dict[str, torch.Tensor]:
        """The parts of one unit present in the checkpoint (of `PARTS`), in the checkpoint's dtype.

        Gate and up rows come out separate whatever the layout: fused projections are split, packed
        experts sliced, per-expert files read directly.
        """
        wanted = set(parts)
        if unit.expert is not None:
            found = self._read_expert(checkpoint, unit, wanted)
        else:
            found = self._read_dense(checkpoint, unit, wanted)
        if "down" in wanted and found.get("down") is None:
            raise UsageError(f"checkpoint '{checkpoint.name}' has no weights for MLP '{unit.name}' in the "
                             f"layout {self.family} checkpoints use; is it complete and unmodified?")
        return {name: value for name, value in found.items() if value is not None and name in wanted}

    def _read_dense(self, checkpoint, unit: Unit, wanted: set[str]) -> dict[str, torch.Tensor | None]:
        def get(name: str | None, kind: str) -> torch.Tensor | None:
            key = f"{unit.prefix}{name}.{kind}"
            return checkpoint.tensor(key) if name and checkpoint.has(key) else None

        found: dict[str, torch.Tensor | None] = {}
        for kind, suffix in (("weight", ""), ("bias", "_bias")):
            if self.fused and wanted & {"gate" + suffix, "up" + suffix}:
                both = get(self.gate, kind)
                half = None if both is None else both.shape[0] // 2
                found["gate" + suffix] = None if both is None else both[:half]
                found["up" + suffix] = None if both is None else both[half:]
            else:
                if "gate" + suffix in wanted:
                    found["gate" + suffix] = get(self.gate, kind)
                if "up" + suffix in wanted:
                    found["up" + suffix] = get(self.up, kind)
            if "down" + suffix in wanted:
                found["down" + suffix] = get(self.down, kind)
        return found

    def _read_expert(self, checkpoint, unit: Unit, wanted: set[str]) -> dict[str, torch.Tensor | None]:
        experts = self.experts
        assert experts is not None
        packed = f"{unit.name.rsplit('.', 1)[0]}."
        found: dict[str, torch.Tensor | None] = {}
        if checkpoint.has(packed + "down_proj"):  # transformers 5.x packed layout
            if wanted & {"gate", "up"}:
                both = checkpoint.tensor_slice(packed + "gate_up_proj", unit.expert)
                half = both.shape[0] // 2
                found["gate"], found["up"] = both[:half], both[half:]
            if "down" in wanted:
                found["down"] = checkpoint.tensor_slice(packed + "down_proj", unit.expert)
            return found
        blocks = [self.mlp] + ([experts.legacy_block] if experts.legacy_block else [])
        for block in blocks:
            prefix = f"{self.layers_prefix}.{unit.layer}.{block}.{experts.module}.{unit.expert}."
            for part, name in zip(("gate", "up", "down"), experts.legacy, strict=True):
                key = f"{prefix}{name}.weight"
                if part in wanted and checkpoint.has(key):
                    found[part] = checkpoint.tensor(key)
        return found

    # -- modules (calibration) ----------------------------------------------------------------------

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The decoder layers of an instantiated model of this family (each holds its MLP at `self.mlp`)."""
        root = model
        for part in self.layers_prefix.split("."):
            root = getattr(root, part)
        return root

    def preactivations(self, mlp: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(gate pre-activation g, up projection u or None) of one dense MLP module for its input x."""
        g = getattr(mlp, self.gate)(x)
        if self.fused:
            return tuple(g.chunk(2, dim=-1))  # type: ignore[return-value]
        return g, (getattr(mlp, self.up)(x) if self.up else None)

    def taps(self, model: nn.Module) -> list[tuple[nn.Module, Tap]]:
        """(module, tap) pairs whose forward pre-hooks see every unit's pre-activations.

        A dense MLP (or shared expert) is tapped on its own input. Routed experts are tapped on the
        packed experts module's input (hidden states, top-k expert indices, top-k weights): each expert
        gets exactly the rows routed to it.
        """
        units = self.units(model.config)
        taps: list[tuple[nn.Module, Tap]] = []
        routed: dict[str, list[Unit]] = {}
        for unit in units:
            if unit.expert is not None:
                routed.setdefault(unit.name.rsplit(".", 1)[0], []).append(unit)
            else:
                taps.append((_submodule(model, unit.name, self.family), self._dense_tap(unit.index)))
        for path, members in routed.items():
            module = _submodule(model, path, self.family)
            if getattr(module, "is_transposed", False) or not getattr(module, "is_concatenated", True):
                raise UsageError(f"the experts of '{path}' use a transposed or interleaved layout that "
                                 f"unswift does not read; supported: concatenated [gate; up] experts")
            taps.append((module, _routed_tap([(u.expert, u.index) for u in members])))
        return taps

    def outputs(self, model: nn.Module) -> list[tuple[nn.Module, int]]:
        """(module, unit index) of every dense unit (dense MLP, shared expert): its forward output is the
        unit's output y. Routed experts are left out: their packed module returns the routed sum."""
        return [(_submodule(model, unit.name, self.family), unit.index)
                for unit in self.units(model.config) if unit.expert is None]

    def _dense_tap(self, index: int) -> Tap:
        def tap(module: nn.Module, args: tuple, kwargs: dict):
            x = args[0] if args else next(iter(kwargs.values()))  # an MLP takes one input, x
            g, u = self.preactivations(module, x)
            return [(index, g, u)]

        return tap

    def runtime_classes(self) -> dict[str, str]:
        stem = f"Unswift{self.family}"
        return {
            "AutoConfig": f"configuration_unswift.{stem}Config",
            "AutoModel": f"modeling_unswift.{stem}Model",
            "AutoModelForCausalLM": f"modeling_unswift.{stem}ForCausalLM",
        }

    def runtime_spec(self) -> dict | None:
        """What the runtime needs to find the experts in a decoder layer's MLP block (None if dense)."""
        if self.experts is None:
            return None
        return {"module": self.experts.module, "shared": self.experts.shared}


def _routed_tap(members: list[tuple[int, int]]) -> Tap:
    def tap(module: nn.Module, args: tuple, kwargs: dict):
        x = args[0] if len(args) > 0 else kwargs["hidden_states"]
        top_k_index = args[1] if len(args) > 1 else kwargs["top_k_index"]
        out = []
        for expert, index in members:
            rows = (top_k_index == expert).any(-1)
            if bool(rows.any()):
                g, u = F.linear(x[rows], module.gate_up_proj[expert]).chunk(2, dim=-1)
                out.append((index, g, u))
        return out

    return tap


def _submodule(model: nn.Module, path: str, family: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as err:
        raise UsageError(f"the loaded {family} model has no module '{path}'; this transformers version "
                         f"lays the family out differently from what unswift supports") from err
