"""DiffKT3D's Any2Any DiT (`rtgen.models.diffkt3d`) and its slot-aware 4D RoPE (`rtgen.layers.rope`)."""

from __future__ import annotations

import pytest
import torch

from rtgen.core.errors import ConfigError
from rtgen.core.registry import MODELS, count_parameters
from rtgen.layers.rope import apply_rope, grid_coords, rope_cos_sin, sincos_4d, split_head_dim
from rtgen.models.diffkt3d import PAPER_SIZE, DiffKT3D

TINY = {"dim": 32, "depth": 2, "heads": 2}  # head_dim 16 -> rope (2, 6, 4, 4)


# -- 4D RoPE ---------------------------------------------------------------------------------

def _rot(v: torch.Tensor, coord, dims, bases=(100.0, 10000.0)) -> torch.Tensor:
    cos, sin = rope_cos_sin(torch.tensor([coord], dtype=torch.float64), dims, bases, torch.float64)
    return apply_rope(v[None, None, None], cos, sin)[0, 0, 0]


def test_split_head_dim():
    assert split_head_dim(128) == (16, 38, 38, 36)
    assert split_head_dim(32) == (4, 10, 10, 8)
    assert split_head_dim(16) == (2, 6, 4, 4)
    assert split_head_dim(64, 0) == (0, 22, 22, 20)
    for bad in [(15, None), (32, 3), (8, 4)]:
        with pytest.raises(ValueError):
            split_head_dim(*bad)


def test_rope_scores_depend_only_on_the_relative_offset_on_every_axis():
    g = torch.Generator().manual_seed(0)
    dims = split_head_dim(32)
    q, k = torch.randn(32, generator=g, dtype=torch.float64), torch.randn(32, generator=g, dtype=torch.float64)
    p1, p2 = [2.0, 3.0, 5.0, 1.0], [4.0, 1.0, 7.0, 6.0]
    score = _rot(q, p1, dims) @ _rot(k, p2, dims)
    for axis in range(4):
        for shift in (1.0, 7.0, -3.5):
            s = [shift if a == axis else 0.0 for a in range(4)]
            q1, k2 = [a + b for a, b in zip(p1, s)], [a + b for a, b in zip(p2, s)]
            assert torch.allclose(_rot(q, q1, dims) @ _rot(k, k2, dims), score, atol=1e-9)
            # moving only one token changes the relative offset on this axis, and the score
            assert not torch.allclose(_rot(q, p1, dims) @ _rot(k, k2, dims), score, atol=1e-4)
    everywhere = [a + 11.0 for a in p1], [a + 11.0 for a in p2]
    assert torch.allclose(_rot(q, everywhere[0], dims) @ _rot(k, everywhere[1], dims), score, atol=1e-9)
    # norm preservation, and the identity at the origin
    assert torch.allclose(_rot(q, p1, dims).norm(), q.norm(), atol=1e-12)
    assert torch.equal(_rot(q, [0.0] * 4, dims), q)


def test_rope_tables_broadcast_per_sample_and_keep_dtype():
    coords = grid_coords(torch.tensor([[0.0, 3.0], [5.0, 1.0]]), (2, 2, 1))  # (B=2, 2 slots * 4 tokens, 4)
    assert coords.shape == (2, 8, 4) and coords[1, 4].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert coords[0, :4, 1:].tolist() == [[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 1, 0]]  # z-y-x raster
    cos, sin = rope_cos_sin(coords, split_head_dim(16), (100.0, 10000.0))
    x = torch.randn(2, 3, 8, 16, dtype=torch.bfloat16)
    y = apply_rope(x, cos, sin)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    assert torch.allclose(apply_rope(x.float(), cos[1], sin[1])[1], apply_rope(x.float(), cos, sin)[1])
    assert sincos_4d(coords, split_head_dim(16), (100.0, 10000.0)).shape == (2, 8, 16)


# -- the network -----------------------------------------------------------------------------

def _model(**kw) -> DiffKT3D:
    """A tiny DiffKT3D whose zero-initialised gates and heads are made random (else it outputs 0)."""
    torch.manual_seed(0)
    m = MODELS.get("diffkt3d").build(**{**TINY, **kw}).double()
    with torch.no_grad():
        for p in m.parameters():
            if (p == 0).all():
                p.normal_(0, 0.2)
    return m.eval()


def _inputs(B=2, S=3, grid=(4, 4, 4), seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, S, 4, *grid, generator=g, dtype=torch.float64), torch.rand(B, generator=g, dtype=torch.float64)


def test_outputs_zero_at_initialisation_and_train_from_there():
    m = MODELS.get("diffkt3d").build(**TINY)
    x, t = _inputs()
    y = m(x.float(), torch.tensor([5, 0, 2]), torch.tensor([True, False, False]), t.float())
    assert y.shape == x.shape and torch.equal(y, torch.zeros_like(y))
    (y - x.float()).square().sum().backward()  # ... and the heads of the slots present get a gradient
    assert all(m.heads[k].weight.grad.abs().sum() > 0 for k in ("dose", "ct", "oar"))


@pytest.mark.parametrize("variant", [{}, {"rope": False}, {"rope_slot_dim": 0}, {"qk_norm": False}])
def test_permuting_slots_permutes_the_outputs(variant):
    """Slot identity comes from the modality ids (patch embed, head, RoPE slot axis) and the roles,
    never from a slot's position in the tensor."""
    m = _model(**variant)
    x, t = _inputs(S=4)
    ids, roles = torch.tensor([5, 0, 1, 3]), torch.tensor([[True, False, False, False], [False, False, True, False]])
    y = m(x, ids, roles, t)
    perm = torch.tensor([2, 0, 3, 1])
    yp = m(x[:, perm], ids[perm], roles[:, perm], t)
    assert torch.allclose(yp, y[:, perm], atol=1e-10)
    # relabelling two slots' modalities (same data, same place) is a different question
    assert not torch.allclose(m(x, torch.tensor([0, 5, 1, 3]), roles, t), y, atol=1e-6)


def test_the_role_picks_the_target():
    m = _model()
    x, t = _inputs(S=2)
    ids = torch.tensor([5, 0])
    y1 = m(x, ids, torch.tensor([True, False]), t)
    y2 = m(x, ids, torch.tensor([False, True]), t)
    assert (y1 - y2).abs().amax(dim=(0, 2, 3, 4, 5)).min() > 1e-4  # both slots' outputs change
    m_off = _model(role_embedding=False)
    assert m_off.role is None
    assert torch.equal(m_off(x, ids, torch.tensor([True, False]), t), m_off(x, ids, torch.tensor([False, True]), t))
    assert torch.equal(m_off(x, ids, torch.tensor([[True, True], [False, False]]), t),
                       m_off(x, ids, torch.tensor([False, False]), t))


def test_per_sample_modalities_match_one_sample_at_a_time():
    m = _model()
    x, t = _inputs(S=3)
    ids = torch.tensor([[5, 0, 1], [2, 5, 4]])
    roles = torch.tensor([[True, False, False], [False, True, False]])
    y = m(x, ids, roles, t)
    for b in range(2):
        assert torch.allclose(y[b:b + 1], m(x[b:b + 1], ids[b], roles[b:b + 1], t[b:b + 1]), atol=1e-10)


@pytest.mark.parametrize("slots,grid", [([5], (2, 4, 6)), ([5, 0, 2], (4, 2, 2)), ([4, 3, 2, 1, 0], (2, 2, 2))])
def test_any_subset_of_modalities(slots, grid):
    m = _model()
    x, t = _inputs(B=1, S=len(slots), grid=grid)
    names = [m.cfg.modalities[i] for i in slots]
    assert m.modality_index(names).tolist() == slots
    y = m(x, m.modality_index(names), torch.zeros(1, len(slots), dtype=torch.bool), t[0])
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_unpatchify_inverts_wans_patch_layout():
    """A token holds its patch as (pd, ph, pw, C), channel last; tokens in z-y-x raster order."""
    m = _model(patch=(1, 2, 4))
    x, _ = _inputs(B=2, S=3, grid=(2, 4, 8))
    B, S, C = x.shape[:3]
    tokens = x.view(B, S, C, 2, 1, 2, 2, 2, 4).permute(0, 1, 3, 5, 7, 4, 6, 8, 2).reshape(B, S, 8, -1)
    assert torch.equal(m._unpatchify(tokens, (2, 2, 2)), x)


def test_bad_inputs_are_refused():
    m = _model()
    x, t = _inputs(S=2)
    ids, roles = torch.tensor([5, 0]), torch.tensor([True, False])
    cases = [
        ((x[..., :3], ids, roles, t), "not divisible by the patch"),
        ((x[:, :, :3], ids, roles, t), "channels"),
        ((x[:, 0], ids, roles, t), r"\(B, S, C, d, h, w\)"),
        ((x, torch.tensor([5, 0, 1]), roles, t), "modality_ids must be"),
        ((x, torch.tensor([5, 6]), roles, t), r"lie in \[0, 6\)"),
        ((x, torch.tensor([5, 5]), roles, t), "one slot per sample"),
        ((x, torch.tensor([5.0, 0.0]), roles, t), "integer tensor"),
        ((x, ids, torch.tensor([True]), t), "roles must be"),
        ((x, ids, roles, t[:1].expand(3)), "t must be"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            m(*args)
    with pytest.raises(ValueError, match="unknown modality 'mr'"):
        m.modality_index(["ct", "mr"])


def test_backward_gives_finite_gradients_everywhere():
    m = _model().float().train()
    x, t = _inputs(S=3)
    y = m(x.float(), torch.tensor([0, 1, 5]), torch.tensor([False, False, True]), t.float())
    y[:, 2].square().mean().backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    absent = {f"{k}.{m_}.{w}" for k in ("patch_embed", "heads") for m_ in ("oar", "body", "prior") for w in ("weight", "bias")}
    assert {n for n, g in grads.items() if g is None} == absent  # modalities not in the batch are not touched
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    # every other weight moves, except the heads of the condition slots (their outputs are not in the loss)
    zero = {n for n, g in grads.items() if g is not None and g.abs().sum() == 0}
    assert zero == {f"heads.{m_}.{w}" for m_ in ("ct", "ptv") for w in ("weight", "bias")}


def test_config_presets_and_parameter_counts():
    entry = MODELS.get("diffkt3d")
    assert entry.task == "diffkt3d"
    cfg = entry.make_config()
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.patch, cfg.latent_channels) == (192, 6, 6, (2, 2, 2), 4)
    assert cfg.rope_dims == (4, 10, 10, 8) and cfg.ffn == 768
    assert entry.make_config(**cfg.to_dict()) == cfg
    assert count_parameters(entry.build()) == 3_058_368
    paper = entry.make_config(**PAPER_SIZE)
    assert paper.rope_dims == (16, 38, 38, 36) and paper.ffn == 8960
    with torch.device("meta"):  # counted without allocating 4.5 GB
        big = DiffKT3D(paper)
    assert count_parameters(big) == 1_127_262_912  # Wan 2.1 1.3B less its text embedding and cross-attention
    assert sum(p.numel() for p in big.blocks.parameters()) == 30 * 36_991_232
    for bad, match in [({"dim": 100, "heads": 3}, "heads"), ({"patch": (0, 2, 2)}, "patch"),
                       ({"modalities": ("ct", "ct")}, "distinct"), ({"rope_slot_dim": 3}, "even"),
                       ({"depth": 0}, "depth"), ({"width": 3}, "unknown key")]:
        with pytest.raises(ConfigError, match=match):
            entry.make_config(**bad)
