"""DiffKT3D (Sec. 3.2, App. A, B.3): the Any2Any 3D DiT on autoencoder latents, a Wan 2.1 block stack.

forward(latents (B, S, C, d, h, w), modality_ids (S,) or (B, S), roles (B, S) True = target,
t (B,) in [0, 1]) -> velocity (B, S, C, d, h, w) for every slot; the caller reads the target slots.

- Slots: each slot is one modality's latent volume, clean (condition) or noised (target). Any
  subset of `modalities`, in any order, one slot per modality. Modality-specific patch embedding:
  one Conv3d(C, dim, patch, stride=patch) per modality (Wan's patch embed, separate weights each).
  Tokens are slot-major (slot 0's d'h'w' tokens in z-y-x raster order, then slot 1's, ...).
- Conditioning: e_t = MLP(sinusoid(1000 t)) (Wan: 256 features, Linear-SiLU-Linear); a learned
  binary role embedding e_role (0 = condition, 1 = target) is added per token, c = e_t + e_role.
  As in Wan, one shared modulation MLP (SiLU, Linear(dim, 6 dim)) maps c to shift/scale/gate for
  attention and FFN, used by every block; each block adds its own learned modulation bias (Wan's
  `modulation` parameter). c takes two values per sample (condition, target) and the role is per
  slot, so the modulation is computed for the two codes and broadcast over each slot's tokens.
- Block (Wan without its text cross-attention): x += g1 * Attn(LN(x)(1 + s1) + b1), then
  x += g2 * FFN(LN(x)(1 + s2) + b2); LayerNorms without affine; attention has q, k, v, o linears,
  RMSNorm on q and k (over the full width, as Wan), slot-aware 4D RoPE on q and k
  (`rtgen.layers.rope`), full SDPA over all tokens of all slots (no mask, no cross-attention).
  FFN: Linear(dim, ffn) - GELU(tanh) - Linear(ffn, dim).
- Head (Wan's Head): LN(x)(1 + scale) + shift with (shift, scale) = c + a learned 2-vector bias,
  then one Linear(dim, C * prod(patch)) per modality; tokens unpatchified back to (C, d, h, w).
- RoPE coordinates: slot = the modality's index in `modalities` (a modality keeps its phase
  whatever subset is present and however the slots are ordered), (z, y, x) = patch-grid indices
  (shared across slots). Nothing else in the network depends on a slot's position in the tensor,
  so permuting slots (with their modality ids and roles) permutes the output.

Initialisation: Wan's (xavier-uniform linears with zero bias, patch embeds xavier on the flattened
kernel, time MLP N(0, 0.02), modulation biases randn / sqrt(dim)), and DiT's zero start: the gate
rows of the shared modulation and the gate biases are zero, so every block is the identity, and the
output heads are zero, so the network outputs exactly 0 at initialisation. Role embedding N(0, 0.02).

Ablation switches (paper Table 4): `role_embedding=False` drops e_role (then the output does not
depend on `roles`: a target is recognised only from its noise); `rope=False` removes the rotary
embedding and adds instead a fixed (parameter-free) 4D sin-cos absolute embedding of (slot, z, y, x)
to the tokens after the patch embedding, so the network still sees position and modality;
`rope_slot_dim=0` keeps RoPE on the three spatial axes only (Wan's 3D RoPE, no slot axis).

Sizes: the default config is a CPU size (dim 192, depth 6, heads 6: 3.06 M parameters).
`PAPER_SIZE` is Wan 2.1 1.3B (dim 1536, 30 blocks, 12 heads, FFN 8960): without Wan's text
embedding and cross-attention, 1.127 B parameters (Wan 2.1 1.3B itself has about 1.42 B). It is
not registered under a name of its own because `rtgen models` builds every registered name at its
default config (4.5 GB of float32 weights); build it with `build_model("diffkt3d", **PAPER_SIZE)`.
Wan itself uses 16-channel latents and patch (1, 2, 2). The paper's rope bases are lost from its
text; the defaults here are 100 for the slot axis and 10000 (Wan's base) for the spatial axes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Annotated

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from rtgen.core.registry import register_model
from rtgen.layers.embeddings import timestep_embedding
from rtgen.layers.rope import apply_rope, grid_coords, rope_cos_sin, sincos_4d, split_head_dim

FREQ_DIM = 256  # sinusoidal timestep features before the time MLP (Wan)
TIME_SCALE = 1000.0  # t in [0, 1] -> Wan's 0..1000 timestep scale
EPS = 1e-6
MODALITIES = ("ct", "ptv", "oar", "body", "prior", "dose")
PAPER_SIZE = {"dim": 1536, "depth": 30, "heads": 12, "ffn_dim": 8960}  # Wan 2.1 T2V-1.3B
TINY_SIZE = {"dim": 192, "depth": 6, "heads": 6}  # the config defaults

PatchSide = Annotated[int, Field(ge=1, le=16)]
Base = Annotated[float, Field(gt=1.0, le=1e9)]


@dataclass
class DiffKT3DConfig:
    latent_channels: Annotated[int, Field(ge=1, le=256)] = 4  # per slot (set by the task from its autoencoder)
    modalities: tuple[str, ...] = MODALITIES  # index = patch embed, output head and RoPE slot coordinate
    patch: tuple[PatchSide, PatchSide, PatchSide] = (2, 2, 2)  # (d, h, w) of a latent patch
    dim: Annotated[int, Field(ge=8, le=8192)] = 192
    depth: Annotated[int, Field(ge=1, le=128)] = 6
    heads: Annotated[int, Field(ge=1, le=128)] = 6
    mlp_ratio: Annotated[float, Field(gt=0, le=16)] = 4.0  # FFN width = mlp_ratio * dim unless ffn_dim
    ffn_dim: Annotated[int, Field(ge=1, le=65536)] | None = None  # Wan 1.3B: 8960
    rope_bases: tuple[Base, Base] = (100.0, 10000.0)  # (slot axis, spatial axes)
    rope_slot_dim: Annotated[int, Field(ge=0, le=1024)] | None = None  # None: head_dim // 8 (even); 0: 3D RoPE
    role_embedding: bool = True
    rope: bool = True  # False: a fixed 4D sin-cos embedding added to the tokens instead
    qk_norm: bool = True

    def __post_init__(self):
        self.modalities = tuple(str(m) for m in self.modalities)
        self.patch = tuple(int(p) for p in self.patch)
        self.rope_bases = tuple(float(b) for b in self.rope_bases)
        if not 1 <= len(self.modalities) <= 64:
            raise ValueError(f"modalities needs 1 to 64 names, got {len(self.modalities)}")
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be distinct, got {self.modalities}")
        bad = [m for m in self.modalities if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", m)]
        if bad:
            raise ValueError(f"modality names must be lower-case identifiers, not {bad}")
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"patch must be three positive sizes (d, h, w), got {self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} does not split into {self.heads} heads")
        split_head_dim(self.head_dim, self.rope_slot_dim)  # raises on a head too small for 4 axes
        if not self.rope:
            split_head_dim(self.dim, self.abs_slot_dim)

    @property
    def abs_slot_dim(self) -> int | None:
        """Slot channels of the additive embedding (rope=False): the rotary share of each head, over all heads."""
        return None if self.rope_slot_dim is None else self.rope_slot_dim * self.heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def ffn(self) -> int:
        return int(self.ffn_dim) if self.ffn_dim is not None else max(1, round(self.mlp_ratio * self.dim))

    @property
    def rope_dims(self) -> tuple[int, int, int, int]:
        """(slot, z, y, x) channels of each head."""
        return split_head_dim(self.head_dim, self.rope_slot_dim)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("modalities", "patch", "rope_bases"):
            d[k] = list(d[k])
        return d


class SelfAttention4D(nn.Module):
    """Wan's self-attention: q, k, v, o linears, RMSNorm on q and k, rotary q and k, SDPA."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = True):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = nn.RMSNorm(dim, eps=EPS) if qk_norm else nn.Identity()
        self.norm_k = nn.RMSNorm(dim, eps=EPS) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, N, D = x.shape
        split = lambda u: u.view(B, N, self.heads, D // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.norm_q(self.q(x))), split(self.norm_k(self.k(x))), split(self.v(x))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(B, N, D))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, S, L, D) tokens by slot; shift, scale (B, S, D) per slot."""
    return x * (1 + scale[:, :, None]) + shift[:, :, None]


class DiTBlock(nn.Module):
    """x += g1 * Attn(mod(LN(x))); x += g2 * FFN(mod(LN(x))), modulation = shared(c) + own bias."""

    def __init__(self, cfg: DiffKT3DConfig):
        super().__init__()
        D = cfg.dim
        self.norm1 = nn.LayerNorm(D, eps=EPS, elementwise_affine=False)
        self.attn = SelfAttention4D(D, cfg.heads, cfg.qk_norm)
        self.norm2 = nn.LayerNorm(D, eps=EPS, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(D, cfg.ffn), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn, D))
        self.modulation = nn.Parameter(torch.randn(6, D) / D**0.5)  # Wan's per-block bias
        with torch.no_grad():
            self.modulation[2].zero_()  # attention gate
            self.modulation[5].zero_()  # FFN gate

    def forward(self, x: torch.Tensor, mod: torch.Tensor, rope) -> torch.Tensor:
        """x (B, S, L, D); mod (B, S, 6, D) the shared modulation of each slot's code."""
        B, S, L, D = x.shape
        e = (mod + self.modulation).unbind(2)
        y = self.attn(_modulate(self.norm1(x), e[0], e[1]).reshape(B, S * L, D), rope)
        x = x + e[2][:, :, None] * y.view(B, S, L, D)
        y = self.ffn(_modulate(self.norm2(x), e[3], e[4]))
        return x + e[5][:, :, None] * y


@register_model("diffkt3d", config=DiffKT3DConfig, task="diffkt3d",
                description="DiffKT3D: Any2Any 3D DiT (Wan 2.1 blocks, role-aware AdaLN, slot-aware 4D RoPE)")
class DiffKT3D(nn.Module):
    """forward(latents (B, S, C, d, h, w), modality_ids (S,)|(B, S), roles (B, S), t (B,)) -> (B, S, C, d, h, w)."""

    def __init__(self, cfg: DiffKT3DConfig = DiffKT3DConfig()):
        super().__init__()
        self.cfg = self.config = cfg
        D, C, M = cfg.dim, cfg.latent_channels, len(cfg.modalities)
        self.patch_embed = nn.ModuleDict({m: nn.Conv3d(C, D, cfg.patch, stride=cfg.patch) for m in cfg.modalities})
        self.time_embedding = nn.Sequential(nn.Linear(FREQ_DIM, D), nn.SiLU(), nn.Linear(D, D))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))  # the shared AdaLN modulation
        self.role = nn.Embedding(2, D) if cfg.role_embedding else None
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.head_norm = nn.LayerNorm(D, eps=EPS, elementwise_affine=False)
        self.head_modulation = nn.Parameter(torch.randn(2, D) / D**0.5)
        out = C * math.prod(cfg.patch)
        self.heads = nn.ModuleDict({m: nn.Linear(D, out) for m in cfg.modalities})
        self.n_modalities = M
        self._init_weights()

    def _init_weights(self) -> None:
        D = self.cfg.dim
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.xavier_uniform_(mod.weight)
                nn.init.zeros_(mod.bias)
        for conv in self.patch_embed.values():
            nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
            nn.init.zeros_(conv.bias)
        for lin in (self.time_embedding[0], self.time_embedding[2], self.time_projection[1]):
            nn.init.normal_(lin.weight, std=0.02)
        if self.role is not None:
            nn.init.normal_(self.role.weight, std=0.02)
        with torch.no_grad():  # DiT's zero start: gates 0 (blocks are the identity), heads 0 (output 0)
            proj = self.time_projection[1]
            for g in (2, 5):
                proj.weight[g * D:(g + 1) * D].zero_()
                proj.bias[g * D:(g + 1) * D].zero_()
            for head in self.heads.values():
                head.weight.zero_()
                head.bias.zero_()

    # -- inputs ------------------------------------------------------------------------------

    def modality_index(self, names: Sequence[str] | Sequence[Sequence[str]], device=None) -> torch.Tensor:
        """Modality names (S,) or (B, S) -> their indices in config.modalities, a LongTensor."""
        known = {m: i for i, m in enumerate(self.cfg.modalities)}

        def one(n):
            if n not in known:
                raise ValueError(f"unknown modality {n!r}; known: {', '.join(self.cfg.modalities)}")
            return known[n]

        rows = [one(n) if isinstance(n, str) else [one(x) for x in n] for n in names]
        return torch.tensor(rows, dtype=torch.long, device=device)

    def _check(self, latents, modality_ids, roles, t):
        cfg = self.cfg
        if latents.dim() != 6:
            raise ValueError(f"latents must be (B, S, C, d, h, w), got {tuple(latents.shape)}")
        B, S, C, *grid = latents.shape
        if S < 1 or B < 1:
            raise ValueError(f"latents need at least one sample and one slot, got {tuple(latents.shape)}")
        if C != cfg.latent_channels:
            raise ValueError(f"latents have {C} channels per slot, the model {cfg.latent_channels}")
        if any(g % p for g, p in zip(grid, cfg.patch)):
            raise ValueError(f"latent grid {tuple(grid)} is not divisible by the patch {cfg.patch}")
        if not torch.is_tensor(modality_ids) or modality_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError("modality_ids must be an integer tensor (S,) or (B, S) of indices into config.modalities")
        ids = modality_ids.long().to(latents.device)
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2 or ids.shape[-1] != S or ids.shape[0] not in (1, B):
            raise ValueError(f"modality_ids must be ({S},) or ({B}, {S}), got {tuple(modality_ids.shape)}")
        if ids.min() < 0 or ids.max() >= self.n_modalities:
            raise ValueError(f"modality_ids must lie in [0, {self.n_modalities}), got {ids.unique().tolist()}")
        if S > 1 and (ids.sort(-1).values.diff(dim=-1) == 0).any():
            raise ValueError(f"a modality may fill one slot per sample, got {ids.tolist()}")
        roles = torch.as_tensor(roles, device=latents.device)
        if roles.dim() == 1:
            roles = roles[None]
        if roles.dim() != 2 or roles.shape[-1] != S or roles.shape[0] not in (1, B):
            raise ValueError(f"roles must be ({B}, {S}) or ({S},), got {tuple(roles.shape)}")
        t = torch.as_tensor(t, device=latents.device, dtype=torch.float32)
        if t.dim() == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must be ({B},) or a scalar, got {tuple(t.shape)}")
        return ids, roles.bool().expand(B, S), t, tuple(g // p for g, p in zip(grid, cfg.patch))

    # -- network -----------------------------------------------------------------------------

    def _per_modality(self, modules, x: torch.Tensor, ids: torch.Tensor, out_shape) -> torch.Tensor:
        """Apply modules[modality of slot] to x (B, S, ...) slot by slot -> (B, S, *out_shape)."""
        B, S = x.shape[:2]
        if ids.shape[0] == 1:  # one modality list for the batch: one call per slot
            return torch.stack([modules[self.cfg.modalities[m]](x[:, s]) for s, m in enumerate(ids[0].tolist())], 1)
        ids = ids.expand(B, S)
        out = x.new_empty(B, S, *out_shape)
        for m in ids.unique().tolist():
            sel = ids == m
            out[sel] = modules[self.cfg.modalities[m]](x[sel])
        return out

    def forward(self, latents: torch.Tensor, modality_ids: torch.Tensor, roles: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        ids, roles, t, grid = self._check(latents, modality_ids, roles, t)
        B, S, C = latents.shape[:3]
        L, D = math.prod(grid), cfg.dim
        x = self._per_modality(_TokenEmbed(self.patch_embed), latents, ids, (L, D))  # (B, S, L, D)
        coords = grid_coords(ids.to(torch.float64), grid)  # (1 or B, S*L, 4)
        if cfg.rope:
            cos, sin = rope_cos_sin(coords, cfg.rope_dims, cfg.rope_bases)  # float32 even under bf16
            rope = (cos[0], sin[0]) if ids.shape[0] == 1 else (cos, sin)
        else:
            pos = sincos_4d(coords, split_head_dim(D, cfg.abs_slot_dim), cfg.rope_bases).to(x.dtype)
            x = x + pos.view(-1, S, L, D)
            rope = None
        # conditioning codes: 0 = condition, 1 = target; c = e_t (+ e_role)
        e_t = self.time_embedding(timestep_embedding(t * TIME_SCALE, FREQ_DIM).to(x.dtype))  # (B, D)
        codes = e_t[:, None].expand(B, 2, D)
        if self.role is not None:
            codes = codes + self.role.weight[None]
        mod = self.time_projection(codes).view(B, 2, 6, D)
        slot_code = roles.long()  # (B, S)
        mod = torch.gather(mod, 1, slot_code[..., None, None].expand(B, S, 6, D))  # (B, S, 6, D)
        c = torch.gather(codes, 1, slot_code[..., None].expand(B, S, D))  # (B, S, D)
        for block in self.blocks:
            x = block(x, mod, rope)
        shift, scale = (c[:, :, None] + self.head_modulation).unbind(2)
        x = _modulate(self.head_norm(x), shift, scale)  # (B, S, L, D)
        y = self._per_modality(self.heads, x, ids, (L, C * math.prod(cfg.patch)))
        return self._unpatchify(y, grid)

    def _unpatchify(self, y: torch.Tensor, grid) -> torch.Tensor:
        """(B, S, L, pd * ph * pw * C) -> (B, S, C, d, h, w); channel last in a token, as Wan's unpatchify."""
        B, S = y.shape[:2]
        (gd, gh, gw), (pd, ph, pw), C = grid, self.cfg.patch, self.cfg.latent_channels
        y = y.view(B, S, gd, gh, gw, pd, ph, pw, C).permute(0, 1, 8, 2, 5, 3, 6, 4, 7)
        return y.reshape(B, S, C, gd * pd, gh * ph, gw * pw)


class _TokenEmbed:
    """[name](latent (n, C, d, h, w)) -> tokens (n, L, D), slot-major z-y-x raster: a patch embed as a token map."""

    def __init__(self, convs: nn.ModuleDict):
        self.convs = convs

    def __getitem__(self, name: str):
        conv = self.convs[name]
        return lambda v: conv(v).flatten(2).transpose(1, 2)
