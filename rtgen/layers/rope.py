"""Slot-aware 4D rotary position embedding (DiffKT3D, Sec. 3.2, eqs. 2-5).

Why four axes. An Any2Any DiT attends jointly over the tokens of several volumes (CT, PTV, OAR,
body, dose, ...) laid out slot-major: the tokens of slot 0, then of slot 1, ... Standard 3D RoPE
gives a CT token and a dose token at the same voxel the same phase, so attention cannot tell, from
position alone, which volume a key came from. DiffKT3D adds a fourth, *slot* axis: each head's
channels are split into four sub-spaces (slot, z, y, x), each rotated by its own coordinate.

- The slot coordinate is the modality's index in a fixed list, not the slot's position in the
  tensor, so a modality keeps its phase whatever subset of modalities is present and in whatever
  order; the q.k score between two tokens depends on the *pair of modalities* (a modality offset),
  never on how the caller ordered the slots.
- The spatial axes are shared across slots: a CT token and a dose token at the same patch get the
  same (z, y, x) phase, so the spatial part of q.k depends only on the 3D offset between the two
  tokens, whichever volumes they come from -- the cross-modal alignment is exact and relative.

Rotation: channel pairs (2i, 2i+1) are rotated as complex numbers by the angle of pair i (the
interleaved layout of Wan's `rope_apply`, so Wan's pretrained q/k projections keep their pairing).
Pair i of axis a (a sub-space of d_a channels, d_a/2 pairs) turns at omega_{a,i} = theta_a^(-2i/d_a).
Because <R(p1) q, R(p2) k> depends only on p2 - p1 on every axis, shifting all coordinates leaves
attention scores unchanged, and the rotation preserves norms.

`sincos_4d` is the additive counterpart (same axes, same frequencies, [sin, cos] features added to
the tokens instead of rotating q and k): the absolute-position baseline for the "- 4D RoPE" ablation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

AXES = ("slot", "z", "y", "x")


def split_head_dim(head_dim: int, slot_dim: int | None = None) -> tuple[int, int, int, int]:
    """(slot, z, y, x) sub-dimensions of one head, each even, summing to `head_dim`.

    slot_dim None: head_dim // 8 rounded down to even (at least 2). slot_dim 0: no slot axis (plain
    3D RoPE). The rest is split into channel pairs as evenly as possible over z, y, x, earlier axes
    taking the remainder (head_dim 128 -> (16, 38, 38, 36); 32 -> (4, 10, 10, 8)).
    """
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"rotary embedding needs an even head dimension, got {head_dim}")
    if slot_dim is None:
        slot_dim = max(2, (head_dim // 8) // 2 * 2)
    if slot_dim < 0 or slot_dim % 2:
        raise ValueError(f"the slot sub-dimension must be even and >= 0, got {slot_dim}")
    pairs = (head_dim - slot_dim) // 2
    if pairs < 3:
        raise ValueError(f"head dimension {head_dim} leaves {2 * pairs} channels after the slot axis ({slot_dim}); "
                         "the three spatial axes need at least 2 each")
    base, extra = divmod(pairs, 3)
    z, y, x = (2 * (base + (i < extra)) for i in range(3))
    return slot_dim, z, y, x


def _bases(bases: Sequence[float], n: int) -> tuple[float, ...]:
    """(slot base, spatial base) or one base per axis -> one base per axis."""
    bases = tuple(float(b) for b in bases)
    if len(bases) == 2 and n == 4:
        bases = (bases[0], bases[1], bases[1], bases[1])
    if len(bases) != n or any(b <= 1.0 for b in bases):
        raise ValueError(f"need {n} rotary bases > 1 (or a slot and a spatial base), got {bases}")
    return bases


def rope_frequencies(dim: int, base: float, device=None) -> torch.Tensor:
    """omega_i = base^(-2i/dim), i = 0 .. dim/2 - 1 (float64), for one axis of `dim` channels."""
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)


def rope_4d_angles(coords: torch.Tensor, dims: Sequence[int], bases: Sequence[float]) -> torch.Tensor:
    """Rotation angles of each token: coords (..., 4) as (slot, z, y, x) -> (..., sum(dims) / 2).

    dims: the (slot, z, y, x) sub-dimensions of a head (`split_head_dim`); bases: (slot, spatial)
    or one per axis. Angles of axis a, pair i: coords[..., a] * bases[a]^(-2i/dims[a]); axes are
    concatenated in (slot, z, y, x) order along the pair index. Computed in float64.
    """
    if coords.shape[-1] != len(dims):
        raise ValueError(f"coords have {coords.shape[-1]} axes, dims {len(dims)}")
    bases = _bases(bases, len(dims))
    c = coords.to(torch.float64)
    parts = [c[..., a, None] * rope_frequencies(d, b, coords.device) for a, (d, b) in enumerate(zip(dims, bases)) if d]
    return torch.cat(parts, dim=-1)


def rope_cos_sin(coords: torch.Tensor, dims: Sequence[int], bases: Sequence[float],
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of `rope_4d_angles`, each (..., head_dim / 2), ready for `apply_rope`."""
    angles = rope_4d_angles(coords, dims, bases)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (B, H, N, D) by the angle of pair i.

    cos, sin: (N, D/2) shared by the batch, or (B, N, D/2) per sample. Computed in float32 at
    least (a rotation in bf16 loses the relative-position property), returned in x's dtype.
    """
    if cos.dim() == 2:
        cos, sin = cos[None, None], sin[None, None]
    elif cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    else:
        raise ValueError(f"cos/sin must be (N, D/2) or (B, N, D/2), got {tuple(cos.shape)}")
    if x.shape[-1] != 2 * cos.shape[-1] or x.shape[-2] != cos.shape[-2]:
        raise ValueError(f"x {tuple(x.shape)} does not match rotary tables {tuple(cos.shape)}")
    work = torch.promote_types(x.dtype, torch.float32)
    pairs = x.to(work).unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = cos.to(work), sin.to(work)
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


def sincos_4d(coords: torch.Tensor, dims: Sequence[int], bases: Sequence[float]) -> torch.Tensor:
    """Fixed additive embedding (..., sum(dims)): per axis [sin(angles), cos(angles)] (no parameters)."""
    if coords.shape[-1] != len(dims):
        raise ValueError(f"coords have {coords.shape[-1]} axes, dims {len(dims)}")
    bases = _bases(bases, len(dims))
    c = coords.to(torch.float64)
    parts = []
    for a, (d, b) in enumerate(zip(dims, bases)):
        if d:
            ang = c[..., a, None] * rope_frequencies(d, b, coords.device)
            parts += [ang.sin(), ang.cos()]
    return torch.cat(parts, dim=-1).float()


def grid_coords(slots: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Slot-major token coordinates: slots (..., S) slot coordinates, grid (d, h, w) ->
    (..., S * d * h * w, 4) as (slot, z, y, x), the spatial part in z-y-x raster order."""
    d, h, w = grid
    dev = slots.device
    zyx = torch.stack(torch.meshgrid(torch.arange(d, device=dev), torch.arange(h, device=dev),
                                     torch.arange(w, device=dev), indexing="ij"), dim=-1).reshape(-1, 3)
    L = zyx.shape[0]
    s = slots.to(torch.float64)[..., None, None].expand(*slots.shape, L, 1)
    xyz = zyx.to(torch.float64).expand(*slots.shape, L, 3)
    return torch.cat([s, xyz], dim=-1).flatten(-3, -2)
