import pytest
import torch

from rtgen.diffusion import NoiseSchedule, add_noise, convert, diffusion_loss, sample, target, to_x0_eps


def test_linear_schedule_is_the_papers():
    s = NoiseSchedule()
    betas = 1 - s.alphas_cumprod / torch.cat([torch.ones(1, dtype=torch.float64), s.alphas_cumprod[:-1]])
    assert torch.allclose(betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), atol=1e-7)
    c = NoiseSchedule("cosine").alphas_cumprod
    assert (c.diff() < 0).all() and c[0] > 0.99 and c[-1] < 1e-3
    with pytest.raises(ValueError):
        NoiseSchedule("quadratic")


@pytest.mark.parametrize("src", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("dst", ["epsilon", "sample", "v_prediction"])
def test_parameterisation_conversions_are_exact(src, dst):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64), torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64)
    ab = NoiseSchedule().alpha_bar(torch.tensor([0, 10, 300, 700, 999]))
    x_t = add_noise(x0, eps, ab)
    assert torch.allclose(convert(target(x0, eps, ab, src), x_t, ab, src, dst), target(x0, eps, ab, dst), atol=1e-9)
    x0_back, eps_back = to_x0_eps(target(x0, eps, ab, src), x_t, ab, src)
    assert torch.allclose(x0_back, x0, atol=1e-8) and torch.allclose(eps_back, eps, atol=1e-8)


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_loss_is_zero_for_an_oracle_and_respects_the_mask(prediction):
    s = NoiseSchedule()
    x0 = torch.randn(4, 1, 8, 8, dtype=torch.float64)

    def oracle(x_t, t):  # knows x0, so it can give the exact target at any x_t
        ab = s.alpha_bar(t)
        eps = (x_t - ab.sqrt().view(-1, 1, 1, 1) * x0) / (1 - ab).sqrt().view(-1, 1, 1, 1)
        return target(x0, eps, ab, prediction)

    assert diffusion_loss(oracle, x0, s, prediction).item() == pytest.approx(0.0, abs=1e-12)
    mask = torch.zeros(4, 1, 8, 8)
    mask[..., :4, :] = 1

    def wrong_outside(x_t, t):
        out = oracle(x_t, t).clone()
        out[..., 4:, :] += 10.0
        return out

    assert diffusion_loss(wrong_outside, x0, s, prediction, mask=mask).item() == pytest.approx(0.0, abs=1e-12)
    assert diffusion_loss(wrong_outside, x0, s, prediction).item() > 1.0


@pytest.mark.parametrize("sampler,steps", [("ddpm", 1000), ("ddim", 10), ("dpmpp", 10), ("ode", 10)])
def test_samplers_reach_a_point_mass(sampler, steps):
    g = torch.Generator().manual_seed(0)
    x = sample(lambda x, t: torch.full_like(x, 0.37), (2, 1, 4, 4), NoiseSchedule(), sampler, steps, "sample", generator=g)
    assert torch.allclose(x, torch.full_like(x, 0.37), atol=1e-5)


@pytest.mark.parametrize("sampler,steps,tol", [("ddpm", 1000, 0.03), ("dpmpp", 50, 0.03), ("ddim", 200, 0.05)])
def test_samplers_recover_a_gaussian_with_its_optimal_denoiser(sampler, steps, tol):
    s, sd = NoiseSchedule(), 0.5
    ab = s.alphas_cumprod

    def optimal_x0(x, t):  # E[x0 | x_t] for x0 ~ N(0, sd^2)
        a = ab[t.long()].view(-1, 1, 1, 1).float()
        return a.sqrt() * sd**2 / (a * sd**2 + 1 - a) * x

    x = sample(optimal_x0, (4000, 1, 1, 1), s, sampler, steps, "sample", generator=torch.Generator().manual_seed(0))
    assert abs(x.std().item() - sd) < tol * sd * 2 and abs(x.mean().item()) < 0.05


def test_sampling_is_deterministic_for_a_seed():
    den = lambda x, t: 0.1 * x  # noqa: E731
    a = sample(den, (1, 1, 4, 4), sampler="ddpm", steps=50, generator=torch.Generator().manual_seed(5))
    b = sample(den, (1, 1, 4, 4), sampler="ddpm", steps=50, generator=torch.Generator().manual_seed(5))
    c = sample(den, (1, 1, 4, 4), sampler="ddpm", steps=50, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("sampler,steps", [("ddpm", 1000), ("ddim", 10), ("dpmpp", 10)])
@pytest.mark.parametrize("prediction", ["sample", "epsilon"])
def test_clip_bounds_predicted_clean_samples_to_the_data_range(sampler, steps, prediction):
    s = NoiseSchedule()
    ab = s.alphas_cumprod

    def far_out(x, t):  # a denoiser whose implied x0 is 5, far outside [-1, 1]
        x0 = torch.full_like(x, 5.0)
        if prediction == "sample":
            return x0
        a = ab[t.long()].view(-1, 1, 1, 1).float()
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    kw = dict(generator=torch.Generator().manual_seed(0))
    free = sample(far_out, (2, 1, 4, 4), s, sampler, steps, prediction, **kw)
    kw = dict(generator=torch.Generator().manual_seed(0))
    clipped = sample(far_out, (2, 1, 4, 4), s, sampler, steps, prediction, clip=1.0, **kw)
    assert free.min() > 4.9
    assert torch.allclose(clipped, torch.ones_like(clipped), atol=1e-3)


def test_clip_is_refused_where_diffusers_cannot_apply_it():
    with pytest.raises(ValueError, match="Heun"):
        sample(lambda x, t: x, (1, 1, 2, 2), sampler="ode", steps=2, clip=1.0)
    with pytest.raises(ValueError, match=r"\[-1, 1\] only"):
        sample(lambda x, t: x, (1, 1, 2, 2), sampler="dpmpp", steps=2, clip=0.5)


def test_trajectory_gives_the_same_samples_with_per_step_outputs_and_log_probs():
    """RL post-training needs each step's model output and, for stochastic steps, log p(x_{t-1} | x_t)."""
    import math

    from rtgen.diffusion.samplers import _ddim_step_std, make_scheduler

    schedule = NoiseSchedule("linear", 1000)
    def denoise(x_t, t):  # the exact x0-predictor of a point mass at 0.3
        return torch.full_like(x_t, 0.3)

    plain = sample(denoise, (2, 1, 4, 4), schedule, "ddim", 8, "sample", eta=1.0, generator=torch.Generator().manual_seed(5))
    x, traj = sample(denoise, (2, 1, 4, 4), schedule, "ddim", 8, "sample", eta=1.0,
                     generator=torch.Generator().manual_seed(5), return_trajectory=True)
    assert torch.equal(x, plain)
    assert len(traj.timesteps) == len(traj.states) == len(traj.outputs) == len(traj.log_probs) == 8
    # each log-probability is the Gaussian density of the step actually taken around the step's mean
    sched = make_scheduler("ddim", schedule, "sample")
    sched.set_timesteps(8)
    states = traj.states + [x]
    for i, t in enumerate(traj.timesteps[:-1]):  # the last step has zero variance when ending at alpha_bar = 1
        mean = sched.step(traj.outputs[i], t, states[i], eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
        std = float(_ddim_step_std(sched, t, 1.0))
        expected = (-0.5 * ((states[i + 1] - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
        assert torch.allclose(traj.log_probs[i].float(), expected, rtol=1e-3, atol=1e-2)
    _, det = sample(denoise, (1, 1, 4, 4), schedule, "ddim", 4, "sample", return_trajectory=True)
    assert det.log_probs is None and len(det.outputs) == 4  # deterministic steps have no density


def test_a_partial_strength_refines_its_start_within_the_low_noise_steps():
    """SDEdit: from `start` noised to strength * T, all steps below it; a low strength keeps the start,
    strength 1 forgets it (a Gaussian data prior N(0, 0.5^2) and its optimal denoiser)."""
    s, sd = NoiseSchedule(), 0.5
    ab = s.alphas_cumprod

    def optimal_x0(x, t):
        a = ab[t.long()].view(-1, 1, 1, 1).float()
        return a.sqrt() * sd**2 / (a * sd**2 + 1 - a) * x

    start = torch.full((2000, 1, 1, 1), 2.0)
    x, traj = sample(optimal_x0, start.shape, s, "ddim", 10, "sample", generator=torch.Generator().manual_seed(0),
                     start=start, strength=0.05, return_trajectory=True)
    assert len(traj.timesteps) == 10 and max(int(t) for t in traj.timesteps) <= 0.05 * s.timesteps
    far = sample(optimal_x0, start.shape, s, "ddim", 10, "sample", generator=torch.Generator().manual_seed(0))
    assert x.mean().item() > 1.5 and abs(far.mean().item()) < 0.05
    with pytest.raises(ValueError, match="needs a start and the ddim sampler"):
        sample(optimal_x0, start.shape, s, "ode", 10, "sample", start=start, strength=0.5)
