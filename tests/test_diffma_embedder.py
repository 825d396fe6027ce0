"""DiffMa's vision embedder: the soft mask, the cross InfoNCE loss (eq. 7-8) and freezing."""

import math

import numpy as np
import pytest
import torch

from rtgen.models.diffma_embedder import VisionEmbedder, cross_info_nce

pytestmark = pytest.mark.usefixtures("one_thread")


def _embedder(soft_mask: bool = True) -> VisionEmbedder:
    torch.manual_seed(0)
    return VisionEmbedder(in_channels=3, dim=16, patch_size=2, grid=(4, 4), soft_mask=soft_mask)


def test_soft_mask_is_a_token_weight_in_0_1_that_scales_the_embeddings():
    emb, ct = _embedder(), torch.randn(5, 3, 8, 8)
    out = emb(ct)
    e = emb.embed_tokens(ct)
    assert out.mask.shape == (5, 16) and out.tokens.shape == (5, 16, 16) and out.pooled.shape == (5, 16)
    assert (out.mask > 0).all() and (out.mask < 1).all()
    assert torch.allclose(out.tokens, e * out.mask.unsqueeze(-1))
    assert not torch.allclose(out.tokens, e)  # the mask really changes the condition
    assert torch.allclose(out.pooled, e.mean(1))
    assert not torch.allclose(out.mask[0], out.mask[1])  # weights follow the CT content


def test_without_soft_mask_the_embeddings_pass_unchanged():
    emb, ct = _embedder(soft_mask=False), torch.randn(2, 3, 8, 8)
    out = emb(ct)
    assert torch.equal(out.mask, torch.ones(2, 16))
    assert torch.equal(out.tokens, emb.embed_tokens(ct))
    assert emb.attention is None


def test_patches_align_with_the_latent_grid():
    emb = _embedder()
    ct = torch.zeros(1, 3, 8, 8)
    ct[0, :, 2:4, 6:8] = 1.0  # patch (row 1, col 3) = token 1 * 4 + 3
    e = emb.embed_tokens(ct)
    bias_only = emb.embed.bias.expand(16, -1)
    changed = (e[0] - bias_only).abs().sum(-1) > 0
    assert changed.nonzero().flatten().tolist() == [7]
    with pytest.raises(ValueError, match="built for a 8 x 8 latent"):
        emb(torch.zeros(1, 3, 12, 12))


def test_info_nce_two_samples_by_hand():
    # rows [2, 0] and [3, 4] normalise to [1, 0] and [0.6, 0.8]: cosine 0.6; tau 0.5 -> S = [[2, 1.2], [1.2, 2]],
    # each row's loss -2 + log(e^2 + e^1.2) = log(1 + e^-0.8)
    tokens = torch.tensor([[[2.0], [0.0]], [[3.0], [4.0]]])
    expected = math.log(1 + math.exp(-0.8))
    assert cross_info_nce(tokens, tau=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_three_samples_against_numpy():
    rng = np.random.default_rng(3)
    a, b, tau = rng.normal(size=(3, 2, 2)), rng.normal(size=(3, 2, 2)), 0.2

    def numpy_loss(x, y):
        x = x.reshape(3, -1) / np.linalg.norm(x.reshape(3, -1), axis=1, keepdims=True)
        y = y.reshape(3, -1) / np.linalg.norm(y.reshape(3, -1), axis=1, keepdims=True)
        s = x @ y.T / tau
        return float(np.mean([-s[k, k] + np.log(np.exp(s[k]).sum()) for k in range(3)]))

    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    assert cross_info_nce(ta, tau=tau).item() == pytest.approx(numpy_loss(a, a), rel=1e-9)
    assert cross_info_nce(ta, tau=tau, other=tb).item() == pytest.approx(numpy_loss(a, b), rel=1e-9)
    with pytest.raises(ValueError, match="at least two"):
        cross_info_nce(ta[:1])


def test_info_nce_trains_the_embedder_then_freeze_stops_it():
    emb = _embedder()
    loss = cross_info_nce(emb(torch.randn(4, 3, 8, 8)).tokens, tau=0.1)
    loss.backward()
    for name, p in emb.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name  # the conv and the mask's MLP both learn
    assert emb.freeze() is emb and not emb.training
    assert not any(p.requires_grad for p in emb.parameters())
    assert emb(torch.randn(2, 3, 8, 8)).tokens.grad_fn is None
