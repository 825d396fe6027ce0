"""Which slots one training step generates and conditions on.

The any2any stage draws a target slot uniformly from `any2any.targets` and a set of conditions from
the other slots; the number of conditions follows a curriculum, all of them at first, down to
`min_conditions` after `curriculum_steps` optimiser steps (the paper's "simple curriculum on the
number of observed modalities"). The dose and nft stages always generate the dose from every other slot.
"""

from __future__ import annotations

import torch

from rtgen.tasks.diffkt3d.sections import Any2AnyConfig


def fewest_conditions(n_others: int, step: int, config: Any2AnyConfig) -> int:
    """The smallest number of conditions a step may draw at optimiser step `step`: every other slot at
    step 0, falling linearly to `min_conditions` (at least 1) by `curriculum_steps`."""
    frac = min(1.0, step / config.curriculum_steps) if config.curriculum_steps else 1.0
    return max(1, round(n_others - frac * (n_others - min(config.min_conditions, n_others))))


def draw_slots(modalities: tuple[str, ...], config: Any2AnyConfig, step: int,
               generator: torch.Generator) -> tuple[list[int], int]:
    """(slot indices in model order, index of the target among them) for one step."""
    n_slots = len(modalities)
    if config.stage == "any2any":
        choices = [modalities.index(m) for m in config.targets]
        target = choices[int(torch.randint(len(choices), (1,), generator=generator))]
        others = [i for i in range(n_slots) if i != target]
        k_min = fewest_conditions(len(others), step, config)
        k = int(torch.randint(k_min, len(others) + 1, (1,), generator=generator))
        conds = sorted(others[int(j)] for j in torch.randperm(len(others), generator=generator)[:k])
    else:
        target = modalities.index("dose")
        conds = [i for i in range(n_slots) if i != target]
    slots = sorted(conds + [target])
    return slots, slots.index(target)
