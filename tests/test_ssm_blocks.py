import pytest
import torch

from rtgen.ssm import CROSS_SCAN, ORDER_NAMES, Mamba, Mamba2, VisionSSM, inverse, spiral, token_order


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (5, 1), (4, 4), (5, 5), (3, 7), (6, 4), (8, 5)])
def test_orders_are_permutations_with_exact_inverses(shape):
    n = shape[0] * shape[1]
    x = torch.randn(2, n, 3)
    for name in ORDER_NAMES:
        perm = token_order(name, shape)
        assert sorted(perm.tolist()) == list(range(n)), name
        assert torch.equal(x[:, perm][:, inverse(perm)], x), name


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (5, 1), (2, 2), (4, 4), (5, 5), (3, 7), (7, 3), (6, 4), (9, 8)])
def test_spirals_are_contiguous_and_cover_every_cell(shape):
    H, W = shape
    seen = set()
    for k in range(8):
        for mode in ("in", "out"):
            p = spiral(H, W, k, mode)
            r, c = p // W, p % W
            assert sorted(p.tolist()) == list(range(H * W))
            assert ((r.diff().abs() + c.diff().abs()) == 1).all(), (shape, k, mode)
        assert torch.equal(spiral(H, W, k, "out"), spiral(H, W, k, "in").flip(0))
        seen.add(tuple(spiral(H, W, k, "in").tolist()))
    if H > 1 and W > 1:
        assert len(seen) == 8  # eight distinct schemes


def test_outward_spiral_starts_at_the_centre():
    for k in range(8):
        assert spiral(5, 5, k, "out")[0].item() == 12  # (2, 2) of a 5 x 5 grid
        r, c = divmod(spiral(6, 6, k, "out")[0].item(), 6)
        assert r in (2, 3) and c in (2, 3)


def test_cross_scan_and_snake():
    assert token_order("column", (2, 3)).tolist() == [0, 3, 1, 4, 2, 5]
    assert token_order("snake", (2, 3)).tolist() == [0, 1, 2, 5, 4, 3]
    assert token_order("reversed", (2, 3)).tolist() == [5, 4, 3, 2, 1, 0]
    assert len(CROSS_SCAN) == 4
    assert token_order("raster", (2, 2, 3)).tolist() == list(range(12))
    with pytest.raises(ValueError, match="unknown token order"):
        token_order("zigzag", (2, 2))


@pytest.mark.parametrize("make", [lambda: Mamba(16), lambda: Mamba(16, bidirectional=True), lambda: Mamba2(16, d_state=8, headdim=8, chunk_size=8)])
def test_blocks_keep_shapes(make):
    block = make()
    x = torch.randn(2, 21, 16)
    assert block(x).shape == x.shape


def test_mamba_initialisation_matches_official():
    m = Mamba(32, d_state=16)
    A = -torch.exp(m.forward_ssm.A_log)
    assert torch.allclose(A[0], -torch.arange(1, 17, dtype=torch.float32)) and torch.all(m.forward_ssm.D == 1)
    dt = torch.nn.functional.softplus(m.forward_ssm.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert m.forward_ssm.conv1d.groups == m.d_inner
    bi = Mamba(32, bidirectional=True)
    assert bi.backward_ssm is not None and bi.backward_ssm.A_log is not bi.forward_ssm.A_log


def test_mamba_is_causal_and_bimamba_is_not():
    x = torch.randn(1, 30, 16)
    x2 = x.clone()
    x2[:, 20:] += 1.0
    m, bi = Mamba(16), Mamba(16, bidirectional=True)
    assert torch.allclose(m(x)[:, :20], m(x2)[:, :20], atol=1e-6)
    assert not torch.allclose(bi(x)[:, :20], bi(x2)[:, :20], atol=1e-4)


def test_vision_wrapper_2d_and_3d_with_orders():
    v = VisionSSM(8, "mamba2", orders=CROSS_SCAN, share=False, d_state=8, headdim=8, chunk_size=8)
    assert len(v.blocks) == 4
    assert v(torch.randn(2, 8, 5, 6)).shape == (2, 8, 5, 6)
    v3 = VisionSSM(8, "bimamba", orders=("spiral2_out",))
    assert v3(torch.randn(1, 8, 3, 4, 5)).shape == (1, 8, 3, 4, 5)


@pytest.mark.parametrize("kind", ["mamba", "bimamba", "mamba2"])
def test_blocks_train_on_a_toy_sequence_task(kind):
    """Predict a running (causal) mean of the input channels: needs memory along the sequence."""
    torch.manual_seed(0)
    kw = dict(d_state=8, headdim=8, chunk_size=8) if kind == "mamba2" else {}
    from rtgen.ssm.vision import BLOCKS

    model = torch.nn.Sequential(torch.nn.Linear(4, 16), BLOCKS[kind](16, **kw), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(16, 40, 4)
    target = (x.cumsum(1) / torch.arange(1, 41).view(1, -1, 1)).sum(-1, keepdim=True)
    losses = []
    for _ in range(80):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.4 * losses[0], losses[::10]
