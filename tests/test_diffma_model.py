"""DiffMa backbone: spiral orders per block, AdaLN-Zero, long skips, baselines' scans, Table 1 sizes."""

import pytest
import torch

from rtgen.models import MODELS, build_model
from rtgen.models.diffma import SCANS, SIZES, DiffMa, DiffMaConfig, ScanMixer, zigzag
from rtgen.ssm.orders import spiral

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(**kw) -> DiffMa:
    torch.manual_seed(0)
    cfg = {"in_channels": 4, "ct_channels": 3, "latent_size": 8, "patch_size": 2, "hidden_size": 16, "depth": 3,
           "d_state": 4, "attention_head_dim": 8}
    return DiffMa(DiffMaConfig(**{**cfg, **kw}))


def _wake(model: DiffMa) -> DiffMa:
    """Give the zero-initialised layers small random weights, as after some training."""
    torch.manual_seed(1)
    zeros = [b.adaLN[-1] for b in model.blocks] + [model.final.adaLN[-1], model.final.linear]
    with torch.no_grad():
        for lin in zeros:
            lin.weight.normal_(0, 0.1)
            lin.bias.normal_(0, 0.1)
    return model


def _inputs(b=2):
    torch.manual_seed(2)
    return torch.randn(b, 4, 8, 8), torch.tensor([3.0, 700.0])[:b], torch.randn(b, 3, 8, 8)


def _contiguous(perm: torch.Tensor, W: int) -> bool:
    r, c = perm // W, perm % W
    return bool(((r.diff().abs() + c.diff().abs()) == 1).all())


def test_block_i_scans_spiral_phi_i_mod_8_in_both_modes_with_exact_inverses():
    model = _tiny(depth=10, latent_size=12)  # 6 x 6 tokens; blocks 8 and 9 wrap to Phi_0 and Phi_1
    L = 36
    for i, block in enumerate(model.blocks):
        assert block.scheme == i % 8
        inward, outward = block.mixer.orders
        assert torch.equal(inward, spiral(6, 6, i % 8, "in")) and torch.equal(outward, inward.flip(0))
        for perm, inv in zip(block.mixer.orders, block.mixer.inverses):
            assert sorted(perm.tolist()) == list(range(L))
            assert _contiguous(perm, 6)
            assert torch.equal(perm[inv], torch.arange(L)) and torch.equal(inv[perm], torch.arange(L))
    assert len({tuple(b.mixer.orders[0].tolist()) for b in model.blocks[:8]}) == 8


@pytest.mark.parametrize("H,W", [(4, 6), (5, 7), (6, 6)])
def test_zigzag_schemes_are_eight_distinct_contiguous_paths(H, W):
    paths = [zigzag(H, W, k) for k in range(8)]
    for p in paths:
        assert sorted(p.tolist()) == list(range(H * W)) and _contiguous(p, W)
    assert len({tuple(p.tolist()) for p in paths}) == 8
    assert zigzag(3, 3, 0).tolist() == [0, 1, 2, 5, 4, 3, 6, 7, 8]


def test_scan_is_causal_along_the_spiral_and_lands_back_on_the_grid():
    """Output token perm[j] may depend only on tokens perm[:j + 1]: the scan really follows the
    spiral and the inverse permutation puts each output back on its own token."""
    torch.manual_seed(0)
    perm = spiral(4, 4, 3, "in")
    mixer = ScanMixer(8, [perm], (4, 4), d_state=4, expand=1, fusion="sum")
    u = torch.randn(1, 16, 8, requires_grad=True)
    for j in (0, 5, 15):
        (grad,) = torch.autograd.grad(mixer(u)[0, perm[j]].sum(), u)
        depends = set((grad[0].abs().sum(-1) > 0).nonzero().flatten().tolist())
        assert depends == set(perm[: j + 1].tolist())


@pytest.mark.parametrize("scan", SCANS)
def test_every_scan_outputs_zero_at_init_and_the_latent_shape(scan):
    model = _tiny(scan=scan)
    x, t, ct = _inputs()
    out = model(x, t, ct)
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(x))
    woken = _wake(model)(x, t, ct)
    assert woken.shape == x.shape and woken.abs().sum() > 0


def test_adaln_zero_gates_start_at_zero():
    model = _tiny()
    c = torch.randn(3, 16)
    for block in model.blocks:
        shift, scale, gate = block.adaLN(c).chunk(3, dim=-1)
        assert torch.equal(gate, torch.zeros_like(gate)) and torch.equal(shift, gate) and torch.equal(scale, gate)
        tokens = torch.randn(3, 16, 16)
        assert torch.equal(block(tokens, c, torch.randn(3, 16, 16), torch.rand(3, 16)), tokens)  # identity at init


def test_backward_reaches_every_trainable_parameter_and_skips_the_frozen_embedder():
    model = _tiny()
    x, t, ct = _inputs()
    (model(x, t, ct) - x).square().mean().backward()  # an epsilon-regression loss with target x
    assert model.final.linear.weight.grad.abs().sum() > 0  # at init only the zero layer learns (as DiT)
    model.zero_grad(set_to_none=True)
    (_wake(model)(x, t, ct) - x).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    model.zero_grad(set_to_none=True)
    model.embedder.freeze()
    (model(x, t, ct) - x).square().mean().backward()
    assert all(p.grad is None for p in model.embedder.parameters())
    assert model.blocks[0].cond.weight.grad.abs().sum() > 0


def test_condition_time_and_soft_mask_change_the_prediction():
    model = _wake(_tiny()).eval()
    x, t, ct = _inputs()
    ref = model(x, t, ct)
    assert not torch.allclose(ref, model(x, t, ct + 1))
    assert not torch.allclose(ref, model(x, t + 50, ct))
    cond = model.embedder(ct)
    assert torch.allclose(ref, model.denoise(x, t, cond))
    assert not torch.allclose(ref, model.denoise(x, t, cond._replace(mask=torch.ones_like(cond.mask))))
    assert torch.allclose(model(x[:1], t[0], ct[:1]), ref[:1], atol=1e-6)  # a scalar t is broadcast


def test_ct_input_gives_each_token_its_own_ct_patch_from_the_first_layer():
    """ct_input: with the blocks' gates still closed, the CT reaches the output only through the input
    embedding, so changing one CT patch changes that patch of the prediction and no other."""
    x, t, ct = _inputs()
    for ct_input in (False, True):
        model = _tiny(ct_input=ct_input)
        with torch.no_grad():
            model.final.linear.weight.normal_(0, 0.1)
        model.eval()
        ref, moved = ct.clone(), ct.clone()
        moved[:, :, 0:2, 0:2] += 1.0  # the first 2 x 2 patch
        delta = (model(x, t, moved) - model(x, t, ref)).abs()
        if not ct_input:
            assert delta.max() == 0  # gates closed: the CT has no path yet
        else:
            assert delta[:, :, 0:2, 0:2].min() > 0 and delta[:, :, 2:, :].max() == 0 and delta[:, :, :, 2:].max() == 0


def test_long_skips_fusion_and_bad_sizes():
    assert len(_tiny(depth=5).skips) == 2 and len(_tiny(depth=4).skips) == 2
    cbam, plain = _tiny(fusion="cbam"), _tiny(fusion="sum")
    per_block = sum(p.numel() for p in cbam.parameters()) - sum(p.numel() for p in plain.parameters())
    assert per_block == 3 * 2 * 7 * 7  # one 7x7 conv on [mean; max] per block
    assert len(_tiny(scan="cross4").blocks[0].mixer.ssms) == 4
    model = _tiny()
    with pytest.raises(ValueError, match="built for a 8 x 8 latent"):
        model(torch.randn(1, 4, 12, 12), torch.tensor([1.0]), torch.randn(1, 3, 12, 12))
    with pytest.raises(ValueError, match="built for 8 x 8 latents"):
        model.denoise(torch.randn(1, 4, 12, 12), torch.tensor([1.0]), model.embedder(torch.randn(1, 3, 8, 8)))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        DiffMaConfig(latent_size=10, patch_size=4)


def test_registered_presets():
    assert MODELS.get("diffma_b").make_config().depth == 8
    assert MODELS.get("diffma_xxl").make_config().hidden_size == 512
    assert MODELS.get("diffma_dit").make_config().scan == "attention"
    assert MODELS.get("diffma_zigma").make_config(depth=13).scan == "zigzag"
    assert all(MODELS.get(n).task == "image_synthesis" for n in ("diffma", "diffma_vim", "diffma_vmamba"))
    model = build_model("diffma_tiny", in_channels=4, ct_channels=4, latent_size=8)
    assert model(torch.randn(1, 4, 8, 8), torch.tensor([10.0]), torch.randn(1, 4, 8, 8)).shape == (1, 4, 8, 8)


# Paper Table 1 (D = 512, 4 x 28 x 28 latents): millions of parameters by size and patch size.
TABLE_1 = {"s": {7: 10.16, 4: 9.95, 2: 9.88}, "b": {7: 18.57, 4: 18.37, 2: 18.29},
           "l": {7: 35.39, 4: 35.19, 2: 35.11}, "xl": {7: 60.61, 4: 60.42, 2: 60.35},
           "xxl": {7: 119.50, 4: 119.22, 2: 119.30}}


@pytest.mark.parametrize("size", list(SIZES))
def test_parameter_counts_match_table_1(size):
    """Within 6 % (see the module docstring: per block 2.22 M here against the paper's 2.10 M);
    the largest and smallest patch of each size (each build takes about a second, even on meta)."""
    for patch in (7, 2):
        paper = TABLE_1[size][patch]
        with torch.device("meta"):
            model = DiffMa(MODELS.get(f"diffma_{size}").make_config(
                in_channels=4, ct_channels=4, latent_size=28, patch_size=patch))
        assert model.cfg.depth == SIZES[size]
        assert abs(model.backbone_parameters() / 1e6 / paper - 1) < 0.06, (size, patch, model.backbone_parameters())
