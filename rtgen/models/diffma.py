"""DiffMa (Wang et al. 2024): latent diffusion noise predictor with spiral-scan Mamba blocks, CT -> MR.

forward(x_t (B, C, h, w) noisy MR latent, t (B,) or scalar, ct (B, C_ct, h, w) CT latent) -> eps.

- Condition (eq. 6): the Vision Embedder (`diffma_embedder`) gives soft-masked CT tokens m*e
  (B, L, D), the soft mask m (B, L) and a pooled CT embedding (B, D) (BioMedCLIP's stand-in).
  The pooled embedding, projected, is added to the timestep embedding: that global c drives
  AdaLN-Zero in every block (shift, scale, gate; zero-initialised, so each block starts as the
  identity). The per-token part enters each block through its own linear branch added to the
  modulated tokens (the "branch added to the Diffusion block"), and m weights the tokens that
  the block scans ("the soft mask acts upon the sequence"; eq. 9 takes m as its own input).
  CT token k and MR token k cover the same latent patch, so the two add token by token.
- Spiral scan: block i uses Omega_i = Phi_(i mod 8). Phi_k is `rtgen.ssm.orders.spiral(.., k, .)`,
  the eight symmetries of a contiguous spiral (start corner x turning sense): k = 0 top-left
  clockwise, 1 top-left anticlockwise, 2 bottom-left anticlockwise, 3 bottom-left clockwise,
  4 top-right anticlockwise, 5 top-right clockwise, 6 bottom-right clockwise, 7 bottom-right
  anticlockwise (the paper's Fig. 4 numbering is not in its text). Its two modes, "in" (corner to
  centre) and "out" (centre to corner, the same path reversed), are the "two Spiral-Scan branches":
  one shared in_proj, one selective SSM per mode, each output put back in grid order by the exact
  inverse permutation, then fused by CBAM spatial attention (`fusion="cbam"`:
  y = sum_k y_k * sigmoid(conv7x7([mean_c y_k; max_c y_k])), one module shared by the branches) or
  summed (`fusion="sum"`), gated by SiLU(z) inside the scan and projected back (out_proj).
- Long skips (U-ViT): the outputs of the first depth//2 blocks are concatenated, last first, to
  the inputs of the last depth//2 blocks through Linear(2D, D); an odd depth leaves a middle block.
- Final layer (DiT): LayerNorm, AdaLN shift/scale, Linear to p*p*C, both zero-initialised, so the
  network outputs exactly 0 at initialisation; unpatchify to (B, C, h, w). Fixed 2D sin-cos
  positional embedding (a buffer, not a parameter).

Baselines share the skeleton and change only the token mixer (`scan`): "raster_bidirectional"
(ViM: raster and reversed raster), "cross4" (VMamba SS2D: `orders.CROSS_SCAN`, four branches),
"zigzag" (ZigMa: block i scans zigzag scheme i mod 8, one of the eight symmetries of the row
boustrophedon, in both directions) and "attention" (DiT: multi-head self-attention).

Sizes (paper Table 1, D = 512, on 4 x 28 x 28 latents): S/B/L/XL/XXL have 4/8/16/28/56 blocks, patch
size 7, 4 or 2. The table's counts exclude the frozen embedder and (from how they change with the
patch size) use DiT's 2C learned-sigma output; this model outputs C channels and uses expand = 1 in
its Mamba layers. Per block it has 2.22 M parameters (1.96 M in the block, 0.26 M its share of the
long-skip linears) against the table's 2.10 M, so the backbone counts are 1-6 % over Table 1
(tested within 6 %). The paper's complexity formula (eq. 10) implies an inner width of 2D, but
expand = 2 would put the count 49 % over the table. The table's XXL patch-2 count exceeds its
patch-4 count, unlike every other size; probably a typo, left as printed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import Field

from rtgen.core.registry import register_model
from rtgen.layers.attention import SelfAttention
from rtgen.layers.embeddings import timestep_embedding
from rtgen.models.diffma_embedder import VisionCondition, VisionEmbedder
from rtgen.ssm.mamba import SelectiveSSM
from rtgen.ssm.orders import CROSS_SCAN, inverse, spiral, token_order

Positive = Annotated[int, Field(ge=1, le=4096)]  # a bound, so a corrupt config cannot ask for 1e40 weights

SCANS = ("spiral", "raster_bidirectional", "cross4", "zigzag", "attention")
SIZES = {"s": 4, "b": 8, "l": 16, "xl": 28, "xxl": 56}  # paper Table 1: blocks per size, D = 512
FREQ_DIM = 256  # sinusoidal timestep features before the MLP (DiT)


@dataclass
class DiffMaConfig:
    in_channels: Positive = 32  # MR latent channels (TAEF2: 32 at 1/8 resolution)
    ct_channels: Positive = 32  # CT latent channels (same autoencoder)
    latent_size: Positive = 16  # h = w of the latent (128 px slices / 8); the embedder's mask spans this grid
    patch_size: Positive = 2
    hidden_size: Annotated[int, Field(ge=8, le=4096, multiple_of=2)] = 128  # D; the paper's sizes use 512
    depth: Positive = 4
    scan: Literal["spiral", "raster_bidirectional", "cross4", "zigzag", "attention"] = "spiral"
    fusion: Literal["cbam", "sum"] = "cbam"
    soft_mask: bool = True
    d_state: Positive = 16  # N in the paper's eq. 10
    expand: Annotated[int, Field(ge=1, le=4)] = 1  # Mamba inner width = expand * D
    attention_head_dim: Positive = 64  # the "attention" baseline
    # not in the paper: the CT latent also concatenated to the noisy MR latent before patchify (the
    # usual conditional-LDM input), so every token sees its CT patch from the first layer on
    ct_input: bool = False

    def __post_init__(self):
        if self.latent_size % self.patch_size:
            raise ValueError(f"latent_size {self.latent_size} is not a multiple of patch_size {self.patch_size}")
        heads = max(1, self.hidden_size // self.attention_head_dim)
        if self.scan == "attention" and self.hidden_size % heads:
            raise ValueError(f"hidden_size {self.hidden_size} does not split into {heads} attention heads")

    def to_dict(self) -> dict:
        return asdict(self)


def zigzag(H: int, W: int, scheme: int = 0) -> torch.Tensor:
    """ZigMa's zigzag scheme k in 0..7: the row boustrophedon from the top-left corner under
    transpose (bit 0), row flip (bit 1) and column flip (bit 2), as flat row-major indices."""
    if not 0 <= scheme < 8:
        raise ValueError(f"zigzag scheme must be 0..7, got {scheme}")
    transpose, flip_rows, flip_cols = bool(scheme & 1), bool(scheme & 2), bool(scheme & 4)
    rows, cols = (W, H) if transpose else (H, W)
    cells = [(r, c if r % 2 == 0 else cols - 1 - c) for r in range(rows) for c in range(cols)]
    if transpose:
        cells = [(c, r) for r, c in cells]
    cells = [((H - 1 - r) if flip_rows else r, (W - 1 - c) if flip_cols else c) for r, c in cells]
    return torch.tensor([r * W + c for r, c in cells], dtype=torch.long)


def block_orders(scan: str, index: int, grid: tuple[int, int]) -> list[torch.Tensor]:
    """The token orders (one per branch) that block `index` scans."""
    H, W = grid
    if scan == "spiral":
        return [spiral(H, W, index % 8, "in"), spiral(H, W, index % 8, "out")]
    if scan == "zigzag":
        path = zigzag(H, W, index % 8)
        return [path, path.flip(0)]
    if scan == "raster_bidirectional":
        return [token_order("raster", grid), token_order("reversed", grid)]
    if scan == "cross4":
        return [token_order(name, grid) for name in CROSS_SCAN]
    if scan == "attention":
        return []
    raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")


def sincos_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2D sin-cos positional embedding (MAE/DiT), (H*W, dim), row-major tokens."""
    H, W = grid
    half, quarter = dim // 2, dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / max(quarter, 1))

    def axis(pos: np.ndarray, d: int) -> np.ndarray:
        out = np.outer(pos, omega[: d // 2])
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    rr, cc = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    emb = np.concatenate([axis(rr.ravel(), half), axis(cc.ravel(), dim - half)], axis=1)
    return torch.from_numpy(np.pad(emb, ((0, 0), (0, dim - emb.shape[1])))).float()


class SpatialAttention(nn.Module):
    """CBAM spatial attention map: sigmoid(conv7x7([mean over channels; max over channels]))."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1, H, W) in (0, 1)."""
        return torch.sigmoid(self.conv(torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1)))


class ScanMixer(nn.Module):
    """Mamba over several token orders: shared in_proj -> one selective SSM per order -> exact
    inverse permutation -> fusion (CBAM spatial attention or sum) -> out_proj."""

    def __init__(self, dim: int, orders: list[torch.Tensor], grid: tuple[int, int], d_state: int, expand: int,
                 fusion: str):
        super().__init__()
        d_inner, self.grid = expand * dim, grid
        self.register_buffer("orders", torch.stack(orders), persistent=False)  # (branches, L)
        self.register_buffer("inverses", torch.stack([inverse(p) for p in orders]), persistent=False)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        rank = -(-dim // 16)
        self.ssms = nn.ModuleList(SelectiveSSM(d_inner, d_state, 4, rank) for _ in orders)
        self.fuse = SpatialAttention() if fusion == "cbam" else None
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, D), tokens row-major in and out."""
        x, z = self.in_proj(u).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        y = 0
        for ssm, perm, inv in zip(self.ssms, self.orders, self.inverses):
            yk = ssm(x[..., perm], z[..., perm])[..., inv]
            if self.fuse is not None:
                yk = yk * self.fuse(yk.unflatten(-1, self.grid)).flatten(2)
            y = y + yk
        return self.out_proj(y.transpose(1, 2))


class DiffMaBlock(nn.Module):
    """x + gate * mixer(m * modulate(LN(x), shift, scale) + W cond): AdaLN-Zero from c, CT branch W."""

    def __init__(self, cfg: DiffMaConfig, index: int, grid: tuple[int, int]):
        super().__init__()
        D = cfg.hidden_size
        self.scheme = index % 8  # the spiral (or zigzag) scheme Phi_(i mod 8)
        self.norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(D, 3 * D))
        self.cond = nn.Linear(D, D)
        if cfg.scan == "attention":
            self.mixer: nn.Module = SelfAttention(D, cfg.attention_head_dim)
        else:
            self.mixer = ScanMixer(D, block_orders(cfg.scan, index, grid), grid, cfg.d_state, cfg.expand, cfg.fusion)

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN(c).unsqueeze(1).chunk(3, dim=-1)
        u = (self.norm(x) * (1 + scale) + shift) * mask.unsqueeze(-1) + self.cond(cond)
        return x + gate * self.mixer(u)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(c).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(self.norm(x) * (1 + scale) + shift)


@register_model("diffma", config=DiffMaConfig, task="image_synthesis",
                description="DiffMa: CT-to-MR latent diffusion, spiral-scan Mamba blocks, soft-mask vision embedder")
@register_model("diffma_tiny", config=DiffMaConfig, task="image_synthesis", hidden_size=32, depth=2, d_state=4,
                description="DiffMa at test size (D = 32, 2 blocks)")
@register_model("diffma_dit", config=DiffMaConfig, task="image_synthesis", scan="attention",
                description="DiT baseline: the DiffMa skeleton with self-attention blocks")
@register_model("diffma_vim", config=DiffMaConfig, task="image_synthesis", scan="raster_bidirectional",
                description="ViM baseline: the DiffMa skeleton with forward and backward raster scans")
@register_model("diffma_vmamba", config=DiffMaConfig, task="image_synthesis", scan="cross4",
                description="VMamba baseline: the DiffMa skeleton with the four-way cross scan")
@register_model("diffma_zigma", config=DiffMaConfig, task="image_synthesis", scan="zigzag",
                description="ZigMa baseline: the DiffMa skeleton with zigzag scans cycling over 8 schemes")
# the paper's sizes (SIZES), each a literal registration: `rtgen train` reads them without importing this file
@register_model("diffma_s", config=DiffMaConfig, task="image_synthesis", hidden_size=512, depth=4, scan="spiral",
                description="DiffMa-S (paper Table 1: 4 blocks, D = 512)")
@register_model("diffma_b", config=DiffMaConfig, task="image_synthesis", hidden_size=512, depth=8, scan="spiral",
                description="DiffMa-B (paper Table 1: 8 blocks, D = 512)")
@register_model("diffma_l", config=DiffMaConfig, task="image_synthesis", hidden_size=512, depth=16, scan="spiral",
                description="DiffMa-L (paper Table 1: 16 blocks, D = 512)")
@register_model("diffma_xl", config=DiffMaConfig, task="image_synthesis", hidden_size=512, depth=28, scan="spiral",
                description="DiffMa-XL (paper Table 1: 28 blocks, D = 512)")
@register_model("diffma_xxl", config=DiffMaConfig, task="image_synthesis", hidden_size=512, depth=56, scan="spiral",
                description="DiffMa-XXL (paper Table 1: 56 blocks, D = 512)")
class DiffMa(nn.Module):
    """forward(x_t (B, C, h, w), t (B,), ct (B, C_ct, h, w)) -> prediction (B, C, h, w)."""

    def __init__(self, cfg: DiffMaConfig):
        super().__init__()
        self.cfg = cfg
        D, p = cfg.hidden_size, cfg.patch_size
        self.grid = (cfg.latent_size // p, cfg.latent_size // p)
        self.embedder = VisionEmbedder(cfg.ct_channels, D, p, self.grid, cfg.soft_mask)
        self.x_embed = nn.Conv2d(cfg.in_channels + (cfg.ct_channels if cfg.ct_input else 0), D, p, stride=p)
        self.register_buffer("pos_embed", sincos_2d(D, self.grid).unsqueeze(0), persistent=False)
        self.t_embed = nn.Sequential(nn.Linear(FREQ_DIM, D), nn.SiLU(), nn.Linear(D, D))
        self.y_embed = nn.Linear(D, D)  # pooled CT embedding -> global condition
        self.blocks = nn.ModuleList(DiffMaBlock(cfg, i, self.grid) for i in range(cfg.depth))
        self.skips = nn.ModuleList(nn.Linear(2 * D, D) for _ in range(cfg.depth // 2))
        self.final = FinalLayer(D, p * p * cfg.in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's: Xavier linears, zero AdaLN modulations and final layer (AdaLN-Zero). SSM layers keep Mamba's."""
        ssm = [m for m in self.modules() if isinstance(m, SelectiveSSM)]
        ssm_params = {id(q) for m in ssm for q in m.parameters()}
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m.weight) not in ssm_params:
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for lin in (self.t_embed[0], self.t_embed[2]):
            nn.init.normal_(lin.weight, std=0.02)
        for mod in [b.adaLN[-1] for b in self.blocks] + [self.final.adaLN[-1], self.final.linear]:
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)

    def backbone_parameters(self) -> int:
        """Parameters without the (separately pre-trained, frozen) vision embedder: Table 1's count."""
        return sum(q.numel() for n, q in self.named_parameters() if not n.startswith("embedder."))

    def forward(self, x: torch.Tensor, t: torch.Tensor, ct: torch.Tensor) -> torch.Tensor:
        return self.denoise(x, t, self.embedder(ct))

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: VisionCondition) -> torch.Tensor:
        """The noise predictor for a precomputed condition (the embedder's output is the same at every step)."""
        B, C, h, w = x.shape
        p = self.cfg.patch_size
        if (h // p, w // p) != self.grid or h % p or w % p:
            n = self.cfg.latent_size
            raise ValueError(f"DiffMa was built for {n} x {n} latents, got {h} x {w}")
        t = t.reshape(1).expand(B) if t.dim() == 0 else t
        c = self.t_embed(timestep_embedding(t, FREQ_DIM).to(x.dtype)) + self.y_embed(cond.pooled)
        if self.cfg.ct_input:
            x = torch.cat([x, cond.latent.to(x.dtype)], 1)
        tokens = self.x_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        n_out, saved = len(self.skips), []
        for i, block in enumerate(self.blocks):
            if i >= len(self.blocks) - n_out:  # second half: the matching first-half output, last first
                tokens = self.skips[i - (len(self.blocks) - n_out)](torch.cat([tokens, saved.pop()], dim=-1))
            tokens = block(tokens, c, cond.tokens, cond.mask)
            if i < n_out:
                saved.append(tokens)
        out = self.final(tokens, c)  # (B, L, p*p*C)
        gh, gw = self.grid
        out = out.reshape(B, gh, gw, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(B, C, h, w)
