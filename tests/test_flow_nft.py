"""Rectified-flow schedule and samplers, the ScardNFT (DiffusionNFT) objective on a toy with a known reward, LoRA."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from rtgen.diffusion.flow import (
    FlowSchedule,
    flow_loss,
    flow_matching_loss,
    gaussian_velocity,
    sample_flow,
)
from rtgen.diffusion.nft import (
    RunningDispersion,
    nft_loss,
    nft_objective,
    nft_step_loss,
    optimality_from_rewards,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops: intra-op threads only add synchronisation (20x slower on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------- schedule

@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_flow_identities_and_shift(shift):
    s = FlowSchedule(shift=shift)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(6, 2, 4, 4, generator=g, dtype=torch.float64)
    t = s.sample_t(6, g, dtype=torch.float64)
    x_t = s.add_noise(x0, eps, t)
    v = s.velocity_target(x0, eps)
    assert torch.allclose(s.to_x0(x_t, v, t), x0, atol=1e-12) and torch.allclose(s.to_eps(x_t, v, t), eps, atol=1e-12)
    assert torch.equal(s.add_noise(x0, eps, 0.0), x0) and torch.equal(s.add_noise(x0, eps, 1.0), eps)

    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    st = s.shift_t(u)
    assert st[0] == 0 and st[-1] == 1 and (st.diff() > 0).all()
    if shift > 1:
        assert (st[1:-1] > u[1:-1]).all()  # more time at high noise
    grid = s.inference_times(7)
    assert grid[0] == 1 and grid[-1] == 0 and (grid.diff() < 0).all() and len(grid) == 8
    ln = FlowSchedule(shift, t_sampling="logit_normal").sample_t(1000, torch.Generator().manual_seed(1))
    assert ((ln > 0) & (ln < 1)).all()
    with pytest.raises(ValueError):
        FlowSchedule(t_sampling="cosine")


def test_flow_matching_loss_oracle_and_weights():
    s = FlowSchedule(shift=3.0)
    x0 = torch.randn(4, 1, 5, 5, dtype=torch.float64)

    def oracle(x_t, t):  # knows x0: v = (x_t - x0) / t
        return (x_t - x0) / t.view(-1, 1, 1, 1)

    assert flow_loss(oracle, x0, s, generator=torch.Generator().manual_seed(0)).item() == pytest.approx(0, abs=1e-10)
    eps = torch.randn_like(x0)
    pred = eps - x0
    pred[1] += 1.0  # only sample 1 is wrong
    assert flow_matching_loss(pred, x0, eps).item() == pytest.approx(0.25)
    assert flow_matching_loss(pred, x0, eps, weight=torch.tensor([1.0, 0, 1, 1])).item() == pytest.approx(0)
    mask = torch.zeros_like(x0)
    mask[1, :, :2] = 1
    assert flow_matching_loss(pred, x0, eps, weight=mask).item() == pytest.approx(1.0)


# ---------------------------------------------------------------- samplers

@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sampler_is_exact_on_a_linear_field(method, shift):
    x_star = torch.tensor([[0.7, -1.3, 2.0]], dtype=torch.float64)

    def v(x, t):  # data = the single point x*: v(x_t, t) = (x_t - x*) / t exactly
        return (x - x_star) / t.view(-1, 1)

    x, traj = sample_flow(v, (5, 3), FlowSchedule(shift), steps=4, method=method, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(0), return_trajectory=True)
    assert torch.allclose(x, x_star.expand(5, 3), atol=1e-12)
    assert len(traj.states) == 4 and float(traj.timesteps[0]) == 1.0
    assert torch.equal(traj.states[0], torch.randn((5, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64))


def test_heun_and_dpmpp_beat_euler_on_gaussian_data():
    mu, sigma = 1.5, 0.5  # data N(mu, sigma^2): the exact ODE maps z to mu + sigma z
    z = torch.randn(500, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    err = {m: (sample_flow(gaussian_velocity(mu, sigma), z, FlowSchedule(), 8, m) - (mu + sigma * z)).abs().max().item()
           for m in ("euler", "heun", "dpmpp")}
    assert err["heun"] < err["euler"] / 4 and err["dpmpp"] < err["euler"] / 3, err
    e16 = (sample_flow(gaussian_velocity(mu, sigma), z, FlowSchedule(), 16, "heun") - (mu + sigma * z)).abs().max().item()
    assert e16 < err["heun"] / 3  # second order: halving dt divides the error by about 4


def test_euler_matches_diffusers_flow_match_euler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    s, steps = FlowSchedule(shift=3.0), 6
    field = gaussian_velocity(0.5, 0.8)
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    ours = sample_flow(field, z, s, steps, "euler")
    sched = FlowMatchEulerDiscreteScheduler(shift=s.shift)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps))  # diffusers shifts these itself
    assert torch.allclose(sched.sigmas.double(), s.inference_times(steps), atol=1e-6)
    x = z.clone()
    for i, ts in enumerate(sched.timesteps):
        x = sched.step(field(x, sched.sigmas[i].expand(4)), ts, x).prev_sample
    assert torch.allclose(ours, x, atol=1e-5)


# ---------------------------------------------------------------- NFT pieces

def test_optimality_from_rewards():
    R = torch.tensor([1.0, 3.0, 10.0, 10.0, 5.0])
    r = optimality_from_rewards(R, group=torch.tensor([0, 0, 1, 1, 2]), dispersion=2.0)
    assert torch.allclose(r, torch.tensor([0.25, 0.75, 0.5, 0.5, 0.5]))
    r = optimality_from_rewards(R, group=["a", "a", "b", "b", "c"])  # pooled std over cases with 2+: sqrt(1/2)
    assert torch.allclose(r, torch.tensor([0.0, 1.0, 0.5, 0.5, 0.5]))
    assert torch.allclose(optimality_from_rewards(R, torch.tensor([0, 0, 1, 1, 2]), "case"), torch.tensor([0.0, 1, .5, .5, .5]))
    assert ((optimality_from_rewards(torch.randn(50)) >= 0) & (optimality_from_rewards(torch.randn(50)) <= 1)).all()

    run = RunningDispersion(momentum=0.5)
    run.update(torch.tensor([0.0, 2.0]))
    assert run.value() == pytest.approx(1.0)
    r = optimality_from_rewards(torch.tensor([0.0, 6.0]), dispersion=run)  # batch spread 3 -> Z = 0.5 * 1 + 0.5 * 3
    assert run.value() == pytest.approx(2.0) and torch.allclose(r, torch.tensor([0.0, 1.0]))  # 1/2 -+ 3/4, clipped
    per = RunningDispersion(per_case=True).update(torch.tensor([0.0, 2.0, 0.0, 8.0]), [7, 7, 9, 9])
    assert torch.allclose(per.value([7, 9, 11]), torch.tensor([1.0, 4.0, per.z], dtype=torch.float64))


def test_nft_loss_definition_and_gradient_direction():
    g = torch.Generator().manual_seed(0)
    v_old, v_tgt = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    v_theta = (v_old + 0.1 * torch.randn(3, 4, generator=g)).requires_grad_(True)
    r, beta = torch.tensor([1.0, 0.0, 0.3]), 0.2
    loss = nft_loss(v_theta, v_old, v_tgt, r, beta)
    vp, vn = (1 - beta) * v_old + beta * v_theta, (1 + beta) * v_old - beta * v_theta
    manual = (r * (vp - v_tgt).pow(2).mean(1) + (1 - r) * (vn - v_tgt).pow(2).mean(1)).mean()
    assert torch.allclose(loss, manual)
    loss.backward()
    step = -v_theta.grad
    # a positive sample (r = 1) pulls v_theta towards its target, a negative one (r = 0) pushes it away
    assert (step[0] * (v_tgt[0] - v_theta[0])).sum() > 0
    assert (step[1] * (v_tgt[1] - v_theta[1])).sum() < 0
    # at r = 1/2 the gradient is 2 beta^2 (v_theta - v_old) / n: a pull towards the old policy only
    w = v_theta.detach().clone().requires_grad_(True)
    nft_loss(w, v_old, v_tgt, torch.full((3,), 0.5), beta).backward()
    assert torch.allclose(w.grad, 2 * beta**2 * (w - v_old) / 12, atol=1e-7)


def test_nft_objective_adds_the_parts():
    net = nn.Linear(2, 2)
    fn = lambda x, t: net(x) * (1 + t.view(-1, 1))
    x, ref, r = torch.randn(4, 2), torch.randn(3, 2), torch.rand(4)
    s = FlowSchedule(2.0)
    total, parts = nft_objective(fn, fn, x, r, s, beta=0.1, lam=0.5, reference=ref, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    l_nft = nft_step_loss(fn, fn, x, r, s, 0.1, generator=g)
    l_diff = flow_loss(fn, ref, s, generator=g)
    assert torch.allclose(parts["nft"], l_nft) and torch.allclose(parts["diffusion"], l_diff)
    assert torch.allclose(total, l_diff + 0.5 * l_nft)


def test_nft_in_x0_units_is_the_velocity_loss_weighted_by_t_squared():
    """prediction="sample": the implicit policies mix x0 predictions and regress the sample; at the same
    draws that is the velocity-space loss (through v = (x_t - x0) / t) times t^2, per sample, so the
    gradient is the same policy update without the 1/t^2 blow-up at small t."""
    from rtgen.diffusion.flow import as_velocity

    net = nn.Linear(3, 3)
    x0_fn = lambda x, t: net(x) * (1 + t.view(-1, 1))
    old_fn = lambda x, t: 0.8 * x0_fn(x, t)
    x, r, s = torch.randn(5, 3), torch.tensor([1.0, 0.0, 0.5, 0.2, 0.9]), FlowSchedule(3.0)
    got = nft_step_loss(x0_fn, old_fn, x, r, s, 0.7, generator=torch.Generator().manual_seed(0), prediction="sample")
    g = torch.Generator().manual_seed(0)
    t = s.sample_t(5, g, x.device, x.dtype)
    g = torch.Generator().manual_seed(0)
    weight = t.pow(2)
    want = nft_step_loss(as_velocity(x0_fn, "sample"), as_velocity(old_fn, "sample"), x, r, s, 0.7, weight=weight,
                         generator=g)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="prediction"):
        nft_step_loss(x0_fn, old_fn, x, r, s, prediction="noise")


# ---------------------------------------------------------------- NFT on a toy with a known reward

class _ToyVelocity(nn.Module):
    def __init__(self, hidden=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x, t):
        t = t.reshape(-1, 1).to(x)
        return self.net(torch.cat([x, torch.sin(torch.pi * t), t], 1))


@pytest.fixture(scope="module")
def bimodal_policy():
    """A tiny velocity MLP flow-matched to 1/2 N(-2, 0.3^2) + 1/2 N(2, 0.3^2)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = _ToyVelocity()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(300):
        x0 = torch.where(torch.rand(256, 1, generator=g) < 0.5, -2.0, 2.0) + 0.3 * torch.randn(256, 1, generator=g)
        loss = flow_loss(model, x0, FlowSchedule(), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _positive_fraction(model):
    z = torch.randn(1000, 1, generator=torch.Generator().manual_seed(123))
    return (sample_flow(model, z, FlowSchedule(), 10) > 0).float().mean().item()


def _nft_rounds(model, reward, rounds=2, inner=10, n=256, beta=0.1):
    """Rounds of: sample with the current policy (10 Euler steps), score, freeze it as v_old, NFT steps."""
    model = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(rounds):
        old = copy.deepcopy(model).requires_grad_(False)
        x = sample_flow(old, (n, 1), FlowSchedule(), 10, generator=g)
        r = optimality_from_rewards(reward(x[:, 0]))
        for _ in range(inner):
            loss, _ = nft_objective(model, old, x, r, FlowSchedule(), beta=beta, generator=g)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def test_nft_moves_the_policy_towards_the_reward(bimodal_policy):
    before = _positive_fraction(bimodal_policy)
    assert 0.35 < before < 0.65, before  # both modes before
    up = _positive_fraction(_nft_rounds(bimodal_policy, lambda x: (x > 0).float()))
    down = _positive_fraction(_nft_rounds(bimodal_policy, lambda x: (x < 0).float()))
    assert up > 0.8 and down < 0.2, (before, up, down)
    flat = _positive_fraction(_nft_rounds(bimodal_policy, lambda x: torch.ones_like(x)))  # r = 1/2: no signal
    assert abs(flat - before) < 0.05, (before, flat)


# ---------------------------------------------------------------- LoRA

class _Block(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        from rtgen.layers.attention import SelfAttention

        self.attn = SelfAttention(dim, 8)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.modulation = nn.Linear(4, 2 * dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, c):
        scale, shift = self.modulation(c)[:, None].chunk(2, -1)
        x = x + self.attn(self.norm(x) * (1 + scale) + shift)
        return x + self.ffn(self.norm(x))


def test_lora_freeze_merge_and_state_round_trip():
    pytest.importorskip("peft")
    from rtgen.layers.lora import (
        add_lora,
        freeze_base,
        load_lora_state_dict,
        lora_state_dict,
        merge_lora,
    )

    torch.manual_seed(0)
    model = nn.Sequential(*[_Block() for _ in range(2)])
    fwd = lambda m, x, c: m[1](m[0](x, c), c)
    x, c = torch.randn(2, 5, 16), torch.randn(2, 4)
    base_out = fwd(model, x, c)
    base_state = copy.deepcopy(model.state_dict())
    base_keys = set(base_state)

    add_lora(model, rank=4, alpha=8, target_modules=["qkv", "out", "ffn.0", "ffn.2"])
    assert torch.allclose(fwd(model, x, c), base_out, atol=1e-6)  # B = 0 at init
    trainable = freeze_base(model, trainable=["modulation"])
    assert trainable and all(("lora_" in n) or ("modulation" in n) for n in trainable)
    assert sum("lora_A" in n for n in trainable) == 8 and sum("modulation" in n for n in trainable) == 4
    assert all(not p.requires_grad for n, p in model.named_parameters() if n not in trainable)

    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    tuned = fwd(model, x, c)
    assert not torch.allclose(tuned, base_out, atol=1e-3)

    state = lora_state_dict(model)
    assert state and all("lora_" in k for k in state)
    other = nn.Sequential(*[_Block() for _ in range(2)])  # a fresh copy: base checkpoint, then the adapters
    other.load_state_dict(base_state)
    add_lora(other, rank=4, alpha=8, target_modules=["qkv", "out", "ffn.0", "ffn.2"])
    load_lora_state_dict(other, state)
    assert torch.allclose(fwd(other, x, c), tuned, atol=1e-6)
    with pytest.raises(KeyError):
        load_lora_state_dict(other, {k: v for k, v in list(state.items())[1:]})

    merge_lora(model)
    assert set(model.state_dict()) == base_keys  # the original module tree again
    assert torch.allclose(fwd(model, x, c), tuned, atol=1e-5)
