"""2D token orders: permutations of an H x W grid, each with its exact inverse.

`perm = token_order(name, (H, W))` lists flat (row-major) indices in visiting order, so
`tokens[:, perm]` reorders and `y[:, inverse(perm)]` restores. A 3D shape (D, H, W) applies
the 2D order within each axial slice, slices in sequence.

Spirals (DiffMa): scheme k in 0..7 is one of the eight symmetries (transpose, row flip,
column flip) of the clockwise spiral that starts at the top-left corner moving right and
winds inward. Mode "in" walks it from the corner to the centre, mode "out" the same path
reversed, from the centre outward. Every step moves to a 4-neighbour, for any H x W.
(DiffMa's public code indexes with the inverse permutation, whose order is not contiguous;
this follows the paper.)
"""

from __future__ import annotations

import functools

import torch

CROSS_SCAN = ("raster", "column", "reversed", "column_reversed")
"""VMamba's four-way cross scan (SS2D)."""


def _spiral_cw(H: int, W: int) -> list[tuple[int, int]]:
    top, bottom, left, right = 0, H - 1, 0, W - 1
    out = []
    while top <= bottom and left <= right:
        out += [(top, c) for c in range(left, right + 1)]
        out += [(r, right) for r in range(top + 1, bottom + 1)]
        if top < bottom:
            out += [(bottom, c) for c in range(right - 1, left - 1, -1)]
        if left < right:
            out += [(r, left) for r in range(bottom - 1, top, -1)]
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return out


def spiral(H: int, W: int, scheme: int = 0, mode: str = "out") -> torch.Tensor:
    if not 0 <= scheme < 8 or mode not in ("in", "out"):
        raise ValueError(f"spiral scheme must be 0..7 and mode 'in' or 'out', got {scheme}, {mode!r}")
    transpose, flip_rows, flip_cols = bool(scheme & 1), bool(scheme & 2), bool(scheme & 4)
    cells = [(c, r) for r, c in _spiral_cw(W, H)] if transpose else _spiral_cw(H, W)
    cells = [((H - 1 - r) if flip_rows else r, (W - 1 - c) if flip_cols else c) for r, c in cells]
    perm = torch.tensor([r * W + c for r, c in cells], dtype=torch.long)
    return perm.flip(0) if mode == "out" else perm


def _order_2d(name: str, H: int, W: int) -> torch.Tensor:
    grid = torch.arange(H * W).reshape(H, W)
    if name == "raster":
        return grid.flatten()
    if name == "reversed":
        return grid.flatten().flip(0)
    if name == "column":
        return grid.t().flatten()
    if name == "column_reversed":
        return grid.t().flatten().flip(0)
    if name in ("snake", "snake_reversed"):
        rows = [grid[r] if r % 2 == 0 else grid[r].flip(0) for r in range(H)]
        perm = torch.cat(rows)
        return perm.flip(0) if name == "snake_reversed" else perm
    if name.startswith("spiral"):
        try:
            k, mode = name[len("spiral"):].split("_")
            return spiral(H, W, int(k), mode)
        except ValueError:
            pass
    raise ValueError(f"unknown token order {name!r}; known: {ORDER_NAMES}")


ORDER_NAMES = ("raster", "reversed", "column", "column_reversed", "snake", "snake_reversed") + tuple(
    f"spiral{k}_{m}" for k in range(8) for m in ("out", "in")
)


@functools.lru_cache(maxsize=256)
def token_order(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Permutation of prod(shape) tokens; shape is (H, W) or (D, H, W)."""
    if len(shape) == 2:
        return _order_2d(name, *shape)
    if len(shape) == 3:
        D, H, W = shape
        per_slice = _order_2d(name, H, W)
        return (torch.arange(D).unsqueeze(1) * (H * W) + per_slice).flatten()
    raise ValueError(f"token orders need a 2D or 3D shape, got {shape}")


def inverse(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv
