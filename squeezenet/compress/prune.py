"""Magnitude pruning per layer to target densities, with masks that stay fixed once chosen.

Layers are named by role (``conv1``, ``fire2.squeeze``, ``fire2.expand1x1``, ...,
``conv10``), the same for SqueezeNet v1.0 and v1.1, so a density profile read off one model
applies to the other. A profile spec is ``auto``, ``keep``, ``released``, one density for every
layer (``0.5``), or ``PATTERN=DENSITY`` pairs matched against roles in order
(``*.expand3x3=0.4,conv10=0.3``; unmatched layers stay dense).
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import SqueezeNetError

# Fraction of weights kept per layer in Song Han's compressed_SqueezeNet.net (rounded).
RELEASED_DENSITY = {
    "conv1": 1.0,
    **{f"fire{i}.squeeze": 1.0 for i in range(2, 10)},
    **{f"fire{i}.expand1x1": 1.0 for i in range(2, 10)},
    **{f"fire{i}.expand3x3": 0.33 for i in range(2, 8)},
    "fire6.expand1x1": 0.5,
    "fire7.squeeze": 0.5,
    "fire8.expand1x1": 0.5,
    "fire8.expand3x3": 0.3,
    "fire9.squeeze": 0.5,
    "fire9.expand3x3": 0.3,
    "conv10": 0.2,
}
SPARSE_MODEL = 0.9  # "auto" keeps the zeros of a model whose density is below this


def layer_roles(model: nn.Module) -> dict[str, nn.Module]:
    """Role name -> conv/linear module, in data-flow order (``conv1``, ``fire2.squeeze``...)."""
    roles: dict[str, nn.Module] = {}
    fire = 1
    for name, module in model.named_modules():
        if type(module).__name__ == "Fire":
            fire += 1
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        parts = name.split(".")
        if parts[0] == "classifier":
            role = "conv10"
        elif parts[0] == "features":
            role = f"fire{fire}.{parts[2]}" if len(parts) == 3 else "conv1"
        else:
            role = name
        roles[role] = module
    return roles


def density(weight: torch.Tensor) -> float:
    return float((weight != 0).float().mean())


def resolve_profile(spec: str, model: nn.Module) -> dict[str, float]:
    """Target density per role for a profile spec (see the module docstring)."""
    roles = layer_roles(model)
    current = {role: density(m.weight) for role, m in roles.items()}
    if spec == "auto":
        total = sum(m.weight.numel() for m in roles.values())
        kept = sum(current[r] * m.weight.numel() for r, m in roles.items())
        spec = "keep" if kept / total < SPARSE_MODEL else "released"
    if spec == "keep":
        return current
    if spec == "released":
        return {role: RELEASED_DENSITY.get(role, 1.0) for role in roles}
    try:
        if "=" not in spec:
            rules = [("*", float(spec))]
        else:
            rules = [(p.strip(), float(d)) for p, d in (r.split("=") for r in spec.split(","))]
    except ValueError:
        raise SqueezeNetError(
            f"--sparsity {spec!r}: expected auto, keep, released, a density, or "
            "PATTERN=DENSITY,... (e.g. '*.expand3x3=0.4,conv10=0.3')"
        ) from None
    for pattern, d in rules:
        if not 0 < d <= 1:
            raise SqueezeNetError(f"--sparsity: density {d} for {pattern!r} is not in (0, 1]")
        if not fnmatch.filter(roles, pattern):
            raise SqueezeNetError(f"--sparsity: {pattern!r} matches no layer of {list(roles)}")
    return {
        role: next((d for p, d in rules if fnmatch.fnmatchcase(role, p)), 1.0) for role in roles
    }


class Masked(nn.Module):
    """Parametrization ``weight * mask``: pruned weights stay zero and get no gradient."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def magnitude_mask(weight: torch.Tensor, keep: float) -> torch.Tensor:
    """Boolean mask of the ``keep`` fraction of largest-magnitude weights (ties: first ones)."""
    magnitude = weight.abs().flatten()
    count = max(1, round(keep * magnitude.numel()))
    mask = torch.zeros_like(magnitude, dtype=torch.bool)
    mask[magnitude.argsort(descending=True, stable=True)[:count]] = True
    return mask.reshape(weight.shape)


def prune(model: nn.Module, densities: dict[str, float]) -> None:
    """Mask every layer to its target density (magnitude), as a ``Masked`` parametrization."""
    for role, module in layer_roles(model).items():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        if densities.get(role, 1.0) < 1.0 or density(module.weight) < 1.0:
            mask = magnitude_mask(module.weight.detach(), densities.get(role, 1.0))
            mask &= module.weight.detach() != 0  # what is already pruned stays pruned
            parametrize.register_parametrization(module, "weight", Masked(mask.float()))


def bake(model: nn.Module) -> None:
    """Replace every parametrized weight by its current value (plain parameters again)."""
    for module in layer_roles(model).values():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def schedule(densities: dict[str, float], steps: int) -> list[dict[str, float]]:
    """Geometric steps from dense to the target, for iterative pruning."""
    return [{r: d ** ((i + 1) / steps) for r, d in densities.items()} for i in range(steps)]
