"""ddpm.py: the schedule's Gaussian identities, the samplers against an exact oracle, and learning."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from ddpm import (DDPM, Config, UNet, cosine_beta_schedule, discretized_gaussian_log_likelihood,
                  linear_beta_schedule, normal_kl)


class Zero(nn.Module):
    """A foreign network f(x_t, t, y) that predicts 0: the schedule tests need no U-Net."""

    def forward(self, x, t, y=None):
        return x * 0


def diffusion(T=1000, schedule="linear", target="eps", clip_x0=True, net=None, **kw):
    return DDPM(Config(timesteps=T, schedule=schedule, target=target, clip_x0=clip_x0, **kw),
                net=Zero() if net is None else net)


LINEAR = diffusion(1000, "linear")
COSINE = diffusion(1000, "cosine")


@pytest.mark.parametrize("d", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_schedule_is_valid(d):
    e = d.exact                                  # the float64 schedule (the buffers: its float32 copy)
    assert len(e["betas"]) == 1000 and ((e["betas"] > 0) & (e["betas"] < 1)).all()
    assert (e["alphas_cumprod"][1:] < e["alphas_cumprod"][:-1]).all()
    snr = e["alphas_cumprod"] / (1 - e["alphas_cumprod"])
    assert (snr[1:] < snr[:-1]).all()
    assert torch.equal(e["alphas_cumprod"], torch.cumprod(1 - e["betas"], 0))   # T betas, not T + 1
    for name, exact in e.items():
        assert exact.dtype == torch.float64 and torch.equal(getattr(d, name), exact.float())


def test_linear_end_points_and_cosine_formula():
    b = linear_beta_schedule(1000)
    assert b[0].item() == pytest.approx(1e-4, abs=1e-12) and b[-1].item() == pytest.approx(0.02, abs=1e-12)
    assert torch.allclose(b[1:] - b[:-1], torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    # Nichol & Dhariwal eq. 17, written out independently: abar(t) = f(t) / f(0)
    T, s = 1000, 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    abar = torch.cumprod(1 - cosine_beta_schedule(T), 0)
    for t in [1, 10, 250, 500, 900, 990]:
        assert abar[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-9)


@settings(max_examples=30, deadline=None)
@given(t=st.integers(0, 999), cosine=st.booleans())
def test_closed_form_equals_composed_steps(t, cosine):
    """q(x_t|x_0) of eq. 4 equals t+1 composed steps of eq. 2 (0-based t): mean coefficient and variance."""
    d = COSINE if cosine else LINEAR
    coef, var = 1.0, 0.0
    for s in range(t + 1):                       # x_s = sqrt(1 - b_s) x_{s-1} + sqrt(b_s) e
        b = d.exact["betas"][s].item()
        coef, var = coef * math.sqrt(1 - b), (1 - b) * var + b
    assert d.exact["sqrt_alphas_cumprod"][t].item() == pytest.approx(coef, rel=1e-9)
    assert d.exact["sqrt_one_minus_alphas_cumprod"][t].item() ** 2 == pytest.approx(var, rel=1e-9, abs=1e-15)
    x0, noise = torch.tensor([[[[0.7]]]]), torch.tensor([[[[-1.3]]]])
    x_t = d.q_sample(x0, torch.tensor([t]), noise)
    assert x_t.item() == pytest.approx(coef * 0.7 - math.sqrt(var) * 1.3, rel=1e-5, abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(t=st.integers(1, 999), x0=st.floats(-1, 1), x_t=st.floats(-3, 3), cosine=st.booleans())
def test_posterior_is_bayes_rule(t, x0, x_t, cosine):
    """q(x_{t-1}|x_t, x_0) from Bayes' rule: prior N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}) times the
    likelihood N(x_t; sqrt(alpha_t) x_{t-1}, beta_t), computed here in float64 from scratch."""
    d = COSINE if cosine else LINEAR
    abar_prev, beta = d.exact["alphas_cumprod"][t - 1].item(), d.exact["betas"][t].item()
    precision = 1 / (1 - abar_prev) + (1 - beta) / beta
    var = 1 / precision
    mean = var * (math.sqrt(abar_prev) * x0 / (1 - abar_prev) + math.sqrt(1 - beta) * x_t / beta)
    m, v, logv = d.q_posterior_mean_variance(torch.tensor([[[[x0]]]], dtype=torch.float64),
                                             torch.tensor([[[[x_t]]]], dtype=torch.float64), torch.tensor([t]))
    assert v.item() == pytest.approx(var, rel=1e-5)
    assert math.exp(logv.item()) == pytest.approx(var, rel=1e-5)
    assert m.item() == pytest.approx(mean, rel=1e-4, abs=1e-5)


def test_first_step_posterior_is_x0():
    m, v, _ = LINEAR.q_posterior_mean_variance(torch.full((1, 1, 1, 1), 0.3), torch.full((1, 1, 1, 1), -2.0),
                                               torch.tensor([0]))
    assert v.item() == 0 and m.item() == pytest.approx(0.3, abs=1e-6)


@pytest.mark.parametrize("low_discrepancy", [True, False], ids=["low-discrepancy", "independent"])
def test_training_sees_every_step_including_the_last(low_discrepancy):
    seen = []

    class Recorder(nn.Module):
        def forward(self, x, t, y=None):
            seen.append(t)
            return x * 0

    torch.manual_seed(0)
    d = diffusion(10, net=Recorder(), low_discrepancy=low_discrepancy)
    for _ in range(50):
        d.loss(torch.zeros(32, 1, 2, 2))
    seen = torch.cat(seen)
    assert seen.min() == 0 and seen.max() == 9 and len(seen.unique()) == 10


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 64), T=st.integers(1, 1000), seed=st.integers(0, 1000))
def test_low_discrepancy_steps_fill_every_stratum_of_the_batch(n, T, seed):
    """Kingma et al.'s sampler: the n continuous draws (u + i/n) mod 1 are 1/n apart, so the n
    steps, sorted, are T/n apart up to the rounding down: every gap floor(T/n) or ceil(T/n),
    and the batch covers 0..T-1 evenly (n <= T; beyond, each step is used n/T times or one
    more). Independent draws (the classic sampler) break this almost surely."""
    torch.manual_seed(seed)
    t = diffusion(T, low_discrepancy=True).draw_steps(n, "cpu")
    assert t.dtype == torch.long and t.shape == (n,) and 0 <= t.min() and t.max() < T
    if n <= T:
        gaps = set(t.sort().values.diff().tolist())
        assert gaps <= {T // n, -(-T // n)}, (gaps, T, n)
    else:
        counts = torch.bincount(t, minlength=T)
        assert counts.min() >= n // T and counts.max() <= -(-n // T)


def test_low_discrepancy_steps_are_each_uniform():
    """...and yet each image's step alone is uniform over 0..T-1 (the shared offset u is), so
    the expected loss is Algorithm 1's: 40,000 batches of 3 over T = 10, every (position, step)
    frequency within 0.008 of 1/10 (5 standard errors)."""
    torch.manual_seed(0)
    d = diffusion(10, low_discrepancy=True)
    t = torch.stack([d.draw_steps(3, "cpu") for _ in range(40_000)])      # (40000, 3)
    freq = torch.stack([torch.bincount(t[:, i], minlength=10) for i in range(3)]) / len(t)
    assert (freq - 0.1).abs().max() < 0.008, freq


def test_adagn_scales_and_shifts_the_normalised_features():
    """Dhariwal & Nichol's AdaGN inside a residual block: GroupNorm(h) (1 + s) + b with [s, b]
    the embedding's projection, computed here by hand; without adagn, Ho et al.'s block adds the
    projection before the norm."""
    from ddpm import ResBlock
    torch.manual_seed(0)
    x, emb = torch.randn(3, 8, 5, 5), torch.randn(3, 16)
    for adagn in (True, False):
        block = ResBlock(8, 12, 16, 0.0, adagn=adagn)
        h = block.conv1(F.silu(block.norm1(x)))
        e = block.to_scale_shift(emb)[:, :, None, None]
        g = block.norm2
        if adagn:
            assert e.shape[1] == 24
            plain = F.group_norm(h, g.num_groups, g.weight, g.bias, g.eps)
            h = plain * (1 + e[:, :12]) + e[:, 12:]
        else:
            h = F.group_norm(h + e, g.num_groups, g.weight, g.bias, g.eps)
        want = block.skip(x) + block.conv2(F.silu(h))
        torch.testing.assert_close(block(x, emb), want)


class Affine(nn.Module):
    """A foreign network with a fixed random answer, recording what it saw."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a, self.b = torch.randn(2, generator=g)
        self.seen = []

    def forward(self, x, t, y=None):
        out = self.a * x + self.b * torch.sin(t.float())[:, None, None, None]
        self.seen.append((x, t, out))
        return out


@settings(max_examples=40, deadline=None)
@given(gamma=st.one_of(st.floats(0.05, 50), st.just(math.inf)),
       target=st.sampled_from(["eps", "x0", "v"]), seed=st.integers(0, 1000))
def test_min_snr_loss_is_the_clipped_snr_weight_on_the_x0_error(gamma, target, seed):
    """Hang et al.: in every parameterisation the Min-SNR loss of one image is
    min(SNR_t, gamma) ||x0 - x0^||^2 (mean over pixels), x0^ the network's x0 prediction;
    gamma = inf is the eps loss ||eps - eps^||^2 whatever the target."""
    net = Affine(seed)
    d = diffusion(1000, "cosine", target, net=net, min_snr_gamma=gamma)
    torch.manual_seed(seed)
    x0 = torch.rand(16, 1, 3, 3) * 2 - 1
    loss, _ = d.loss(x0)
    x_t, t, out = (v.double() for v in net.seen[0])
    abar = d.alphas_cumprod[t.long()][:, None, None, None]
    x0_hat = {"eps": (x_t - (1 - abar).sqrt() * out) / abar.sqrt(), "x0": out,
              "v": abar.sqrt() * x_t - (1 - abar).sqrt() * out}[target]
    snr = (abar / (1 - abar)).flatten()
    per_image = ((x0.double() - x0_hat) ** 2).flatten(1).mean(1)
    expected = (snr.clamp(max=gamma) * per_image).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=2e-4)
    if gamma == math.inf:
        eps = (x_t - abar.sqrt() * x0.double()) / (1 - abar).sqrt()
        eps_hat = (x_t - abar.sqrt() * x0_hat) / (1 - abar).sqrt()
        assert loss.item() == pytest.approx(((eps - eps_hat) ** 2).mean().item(), rel=2e-4)


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_min_snr_off_is_the_plain_mse_of_the_target(target):
    net = Affine(3)
    d = diffusion(1000, "linear", target, net=net, min_snr_gamma=0.0)
    torch.manual_seed(1)
    x0 = torch.rand(16, 1, 3, 3) * 2 - 1
    loss, _ = d.loss(x0)
    x_t, t, out = net.seen[0]
    abar = d.alphas_cumprod[t][:, None, None, None].float()
    eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
    want = {"eps": eps, "x0": x0, "v": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[target]
    assert loss.item() == pytest.approx(((out - want) ** 2).mean().item(), rel=1e-4)


@settings(max_examples=20, deadline=None)
@given(t=st.integers(0, 999), seed=st.integers(0, 1000))
def test_parameterisations_convert_exactly(t, seed):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.rand(2, 1, 3, 3, generator=g, dtype=torch.float64) * 2 - 1, torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64)
    tt = torch.tensor([t, t])
    x_t = LINEAR.q_sample(x0, tt, eps)
    assert torch.allclose(LINEAR.predict_x0_from_eps(x_t, tt, eps), x0, atol=1e-6 / LINEAR.sqrt_alphas_cumprod[t].item())
    assert torch.allclose(LINEAR.predict_eps_from_x0(x_t, tt, x0), eps, atol=1e-6 / LINEAR.sqrt_one_minus_alphas_cumprod[t].item())
    v = LINEAR.v_target(x0, tt, eps)
    assert torch.allclose(LINEAR.predict_x0_from_v(x_t, tt, v), x0, atol=1e-9)
    for target, out in (("eps", eps), ("x0", x0), ("v", v)):
        d = diffusion(1000, "linear", target)
        assert torch.allclose(d.to_eps(x_t, tt, out), eps, atol=1e-5 / LINEAR.sqrt_one_minus_alphas_cumprod[t].item())


@pytest.mark.parametrize("d", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_ddim_eta_one_is_the_ddpm_posterior_variance(d):
    for i in [1, 2, 10, 500, 999]:
        abar_prev, sigma = d.ddim_abar_sigma(i, i - 1, eta=1.0)
        assert abar_prev == d.exact["alphas_cumprod"][i - 1].item()
        assert sigma ** 2 == pytest.approx(d.exact["posterior_variance"][i].item(), rel=1e-9)
    assert d.ddim_abar_sigma(0, -1, 0.0) == (1.0, 0.0)       # the last step lands on x_0, no noise


class Oracle(nn.Module):
    """The exact optimal eps-predictor for data x_0 ~ N(m, s^2) (each pixel independent):
    x_t = a x_0 + b eps is Gaussian, so E[eps | x_t] = b (x_t - a m) / (a^2 s^2 + b^2).
    Its schedule is computed here from the betas, independently of the DDPM it serves."""

    def __init__(self, betas, m, s):
        super().__init__()
        abar = torch.cumprod(1 - betas, 0)
        self.a, self.b, self.m, self.s = abar.sqrt(), (1 - abar).sqrt(), m, s

    def forward(self, x, t, y=None):
        a, b = self.a[t].reshape(-1, 1, 1, 1), self.b[t].reshape(-1, 1, 1, 1)
        return (b * (x - a * self.m) / (a ** 2 * self.s ** 2 + b ** 2)).float()


# -- the fast samplers against the probability-flow ODE's closed-form endpoint

def ode_setup(m=0.3, s=0.5, n=2000, target="eps", clip_x0=False):
    """Data N(m, s^2) per pixel (spread: DDIM is not exact), the exact oracle, and float64 x_T.
    The probability-flow ODE keeps each sample's quantile z of the marginal
    x_t ~ N(alpha_t m, alpha_t^2 s^2 + sigma_t^2), so from x_T its state at the last step t = 0 is
    known; every sampler ends with the model's x0_hat there, so that is the exact endpoint."""
    betas = linear_beta_schedule(1000)
    d = diffusion(1000, "linear", target=target, clip_x0=clip_x0, net=Oracle(betas, m, s))
    abar = torch.cumprod(1 - betas, 0)
    x_T = torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = (x_T - abar[-1].sqrt() * m) / (abar[-1] * s ** 2 + 1 - abar[-1]).sqrt()
    x_0 = abar[0].sqrt() * m + (abar[0] * s ** 2 + 1 - abar[0]).sqrt() * z
    a0, b0 = abar[0].sqrt(), (1 - abar[0]).sqrt()           # x0_hat = (x - b0 eps_hat) / a0
    exact = (x_0 - b0 * Oracle(betas, m, s)(x_0, torch.zeros(n, dtype=torch.long)).double()) / a0
    return d, x_T, exact


def run_sampler(d, name, steps, x_T, **kw):
    return d.sample(len(x_T), sampler=name, steps=steps, noise=x_T.clone(), **kw)


@pytest.mark.parametrize("name,order", [("ddim", 1), ("dpm", 2), ("heun", 2)])
def test_fast_samplers_converge_at_their_order(name, order):
    """Doubling the steps from 40 to 80 divides the endpoint error by 2^order: about 2 for DDIM
    (Euler), about 4 for DPM-Solver++(2M) and Heun. (Measured: 1.99, 3.79, 4.06. Planted bugs: Heun
    with the end slope alone gives 2.18; DPM-Solver++ extrapolating with 1/r for 1/(2r), 3.23.)"""
    d, x_T, exact = ode_setup()
    e40, e80 = ((run_sampler(d, name, n, x_T) - exact).abs().max().item() for n in (40, 80))
    assert e40 > 1e-4                                       # the test sees a discretisation error
    low, high = (1.8, 2.2) if order == 1 else (3.5, 4.5)
    assert low < e40 / e80 < high, (e40, e80)


def test_deterministic_samplers_agree_at_many_steps():
    d, x_T, exact = ode_setup()
    outs = {n: run_sampler(d, n, 1000, x_T) for n in ("ddim", "dpm", "heun")}
    for name, x in outs.items():
        assert (x - exact).abs().max().item() < 0.01, name
    assert (outs["dpm"] - outs["heun"]).abs().max().item() < 1e-3   # both second order (2e-4)


def test_dpm_solver_with_one_or_two_steps_is_ddim():
    """Its first step is first order (DDIM's) and its last, to sigma = 0, is x0_hat, as DDIM's.
    Every sampler runs down to one step."""
    d, x_T, _ = ode_setup()
    for steps in (1, 2):   # the same step written two ways: equal to rounding (measured 2e-9)
        assert torch.allclose(run_sampler(d, "dpm", steps, x_T), run_sampler(d, "ddim", steps, x_T),
                              rtol=0, atol=1e-7)
    assert not torch.allclose(run_sampler(d, "dpm", 3, x_T), run_sampler(d, "ddim", 3, x_T), atol=1e-3)
    # Heun with one step is one Euler step to sigma = 0: DDIM's single step too (to 5e-5: Heun
    # works on x_t / alpha, about 150 x_t at t = T, so float32 rounding there is larger)
    assert torch.allclose(run_sampler(d, "heun", 1, x_T), run_sampler(d, "ddim", 1, x_T), rtol=0, atol=2e-4)


class AsTarget(nn.Module):
    """An eps network's output re-expressed as x0 or v (computed here from the betas)."""

    def __init__(self, net, betas, target):
        super().__init__()
        abar = torch.cumprod(1 - betas, 0)
        self.net, self.a, self.b, self.target = net, abar.sqrt(), (1 - abar).sqrt(), target

    def forward(self, x, t, y=None):
        eps = self.net(x, t, y).double()
        a, b = self.a[t].reshape(-1, 1, 1, 1), self.b[t].reshape(-1, 1, 1, 1)
        x0 = (x - b * eps) / a
        return x0 if self.target == "x0" else a * eps - b * x0


@pytest.mark.parametrize("name", ["ddim", "dpm", "heun", "ddpm"])
@pytest.mark.parametrize("target", ["x0", "v"])
def test_every_sampler_reads_every_target(name, target):
    d, x_T, _ = ode_setup(n=200)
    betas = linear_beta_schedule(1000)
    other = diffusion(1000, "linear", target=target, clip_x0=False, net=AsTarget(d.net, betas, target))
    torch.manual_seed(1)
    a = run_sampler(d, name, 7, x_T)
    torch.manual_seed(1)
    b = run_sampler(other, name, 7, x_T)
    assert torch.allclose(a, b, atol=1e-4)


class TwoClassOracle(nn.Module):
    """Gaussian data with a mean per label (label 2: the "no class" mean)."""

    def __init__(self, betas):
        super().__init__()
        self.means = [Oracle(betas, m, 0.5) for m in (-0.5, 0.5, 0.0)]

    def forward(self, x, t, y):
        out = torch.stack([o(x, t) for o in self.means])              # (3, B, 1, 1, 1)
        return out[y, torch.arange(len(x))]


@pytest.mark.parametrize("name", ["ddim", "dpm", "heun"])
def test_fast_samplers_use_classifier_free_guidance(name):
    """With guidance w every sampler runs on (1 + w) eps(x, y) - w eps(x, no class): the same as
    an unguided model whose network returns that combination."""
    betas, w = linear_beta_schedule(1000), 2.0
    guided = diffusion(1000, "linear", clip_x0=False, net=TwoClassOracle(betas), num_classes=2)
    mixed = lambda x, t, y: (1 + w) * guided.net(x, t, y) - w * guided.net(x, t, torch.full_like(y, 2))
    plain = diffusion(1000, "linear", clip_x0=False, net=mixed, num_classes=2)
    x_T = torch.randn(64, 1, 1, 1, generator=torch.Generator().manual_seed(2))
    y = torch.arange(64) % 2
    a = guided.sample(64, y, sampler=name, steps=6, guidance=w, noise=x_T.clone())
    b = plain.sample(64, y, sampler=name, steps=6, guidance=0.0, noise=x_T.clone())
    assert torch.allclose(a, b, atol=1e-5)
    assert (a[y == 1].mean() - a[y == 0].mean()).item() > 1.5       # guidance pushes the classes apart


@pytest.mark.parametrize("name", ["ddim", "dpm", "heun"])
def test_fast_samplers_end_on_the_clipped_x0(name):
    """With clip_x0 and data far outside [-1, 1], every sampler ends on x0_hat clipped (denoise
    recomputes eps_hat from the clipped x0_hat, so Heun's last Euler step lands on it too)."""
    d, x_T, _ = ode_setup(m=0.0, s=3.0, n=500, clip_x0=True)
    x = run_sampler(d, name, 8, x_T)
    assert x.abs().max().item() <= 1 + 1e-5 and (x.abs() > 0.999).float().mean().item() > 0.3


def test_the_default_sampler_is_the_one_compare_py_measures():
    """ddpm.py's and ldm.py's default sampler and steps (library and command line) are compare.FAST."""
    import inspect
    import compare
    import ddpm
    import ldm
    for fn in (DDPM.sample, ldm.LatentDiffusion.sample):
        params = inspect.signature(fn).parameters
        assert (params["sampler"].default, params["steps"].default) == compare.FAST
    for module in (ddpm, ldm):
        src = inspect.getsource(module.main)
        assert f'add_sampler_flags(p, "{compare.FAST[0]}", {compare.FAST[1]})' in src


def test_samplers_report_progress_each_step():
    d, x_T, _ = ode_setup(n=4)
    for name, steps, calls in (("ddim", 5, 5), ("dpm", 5, 5), ("heun", 5, 5), ("ddpm", 5, 1000)):
        seen = []
        run_sampler(d, name, steps, x_T, progress=lambda k, n: seen.append((k, n)))
        assert seen == [(k + 1, calls) for k in range(calls)], name


@pytest.mark.parametrize("sampler", ["ancestral-small", "ancestral-large", "ddim-50", "ddim-eta1-100"])
def test_samplers_with_oracle_reproduce_the_data(sampler):
    torch.manual_seed(0)
    m, s = 0.3, 0.5
    d = diffusion(1000, "linear", clip_x0=False, net=Oracle(linear_beta_schedule(1000), m, s))
    shape = (20000, 1, 1, 1)
    if sampler.startswith("ancestral"):
        x = d.p_sample_loop(shape, variance=sampler.split("-")[1])
    elif sampler == "ddim-50":
        x = d.ddim_sample(shape, steps=50, eta=0.0)
    else:
        x = d.ddim_sample(shape, steps=100, eta=1.0)
    tol = 0.03 if sampler == "ancestral-large" else 0.015   # b_t variances are a little too wide (Ho et al. 3.2)
    assert x.mean().item() == pytest.approx(m, abs=tol)
    assert x.std().item() == pytest.approx(s, abs=2 * tol)


def test_guidance_zero_is_the_conditional_model():
    torch.manual_seed(0)
    d = DDPM(Config(image_size=8, width=16, mults=(1, 2), num_classes=3, target="eps"))
    net = d.net
    nn.init.normal_(net.conv_out.weight, std=0.1)
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([5, 50, 500, 999]), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, 3))
        assert torch.allclose(d.predict_eps(x, t, y=y, guidance=0.0), cond, atol=1e-6)
        assert torch.allclose(d.predict_eps(x, t, y=y, guidance=2.0), 3 * cond - 2 * uncond, atol=1e-5)
        assert torch.allclose(d.predict_eps(x, t, guidance=2.0), uncond, atol=1e-6)   # no labels: p(x)
        assert not torch.allclose(cond, uncond, atol=1e-4)   # the label really changes the output


@settings(max_examples=30, deadline=None)
@given(mean=st.floats(-1.5, 1.5), log_scale=st.floats(-6, 1))
def test_discretized_decoder_sums_to_one(mean, log_scale):
    x = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    logp = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
    assert torch.logsumexp(logp, 0).exp().item() == pytest.approx(1.0, abs=1e-6)


def test_discretized_decoder_is_exact_in_the_tails():
    """Each bin's log mass against a direct float64 computation with math.erfc, 2 to 36 standard
    deviations from the mean on either side (masses down to 1e-280), edge bins included: no floor
    (Ho et al.'s code stops at 1e-12, -27.6 nats) and no lost digits."""
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64)
    for z in (2.0, 8.0, 20.0, 36.0):
        for side in (-1, 1):
            sigma = 0.01
            mean = x + side * z * sigma                 # the pixel z sigmas below / above the mean
            logp = discretized_gaussian_log_likelihood(x, mean, torch.full_like(x, math.log(sigma)))
            for k in range(len(x)):
                lo = -math.inf if x[k] < -0.999 else (x[k].item() - 1 / 255 - mean[k].item()) / sigma
                hi = math.inf if x[k] > 0.999 else (x[k].item() + 1 / 255 - mean[k].item()) / sigma
                if hi <= 0:   # P(lo < X < hi) = (erfc(-hi/sqrt 2) - erfc(-lo/sqrt 2)) / 2, both small
                    mass = 0.5 * (math.erfc(-hi / math.sqrt(2)) - math.erfc(-lo / math.sqrt(2)))
                else:
                    mass = 0.5 * (math.erfc(lo / math.sqrt(2)) - math.erfc(hi / math.sqrt(2)))
                assert logp[k].item() == pytest.approx(math.log(mass), rel=1e-9, abs=1e-12), (z, side, k)
    assert logp.min().item() < -600                      # far below any floor


@settings(max_examples=60, deadline=None)
@given(k=st.integers(0, 255), mean=st.floats(-40, 40), log_scale=st.floats(-12, 1))
def test_discretized_decoder_is_mirror_symmetric_everywhere(k, mean, log_scale):
    """log p(x | mean) = log p(-x | -mean) for every bin, however far in either tail (the mirror of
    an upper-tail bin is a lower-tail one, so one computed worse than the other breaks this)."""
    x = torch.tensor([k / 127.5 - 1], dtype=torch.float64)
    m, s = torch.tensor([mean], dtype=torch.float64), torch.tensor([log_scale], dtype=torch.float64)
    a = discretized_gaussian_log_likelihood(x, m, s).item()
    b = discretized_gaussian_log_likelihood(-x, -m, s).item()
    assert math.isfinite(a) and a <= 0
    assert a == pytest.approx(b, rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(k=st.integers(0, 255), mean=st.floats(-1, 1))
def test_decoder_floor_is_the_least_L0_and_its_value(k, mean):
    """decoder_floor: eq. 13 with the mean on the pixel, the least L_0 any mean in [-1, 1] (what
    clip_x0 allows) can give; and its value for a -1, 0, 1 image from the decoder's exact sigma."""
    d = DDPM(Config(image_size=1, width=8, mults=(1,), timesteps=1000))
    x = torch.tensor([k / 127.5 - 1]).reshape(1, 1, 1, 1)
    log_scale = 0.5 * d.posterior_log_variance_clipped[0]
    other = -discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), log_scale.expand_as(x))
    assert other.sum().item() >= d.decoder_floor(x).item() - 1e-6
    sigma = d.exact["posterior_variance"][1].sqrt().item()     # b~ at t = 0 is clipped to t = 1's
    edge, inner = 0.5 * math.erfc(-1 / 255 / sigma / math.sqrt(2)), math.erf(1 / 255 / sigma / math.sqrt(2))
    img = torch.tensor([-1.0, 0.0, 1.0]).reshape(1, 1, 1, 3)
    expected = -2 * math.log(edge) - math.log(inner)
    assert d.decoder_floor(img).item() == pytest.approx(expected, rel=1e-5)
    assert d.decoder_floor(img, "large").item() == pytest.approx(expected, rel=1e-5)


@settings(max_examples=50, deadline=None)
@given(m1=st.floats(-3, 3), l1=st.floats(-5, 3), m2=st.floats(-3, 3), l2=st.floats(-5, 3))
def test_normal_kl_is_nonnegative_and_zero_only_at_equality(m1, l1, m2, l2):
    kl = normal_kl(*(torch.tensor(v, dtype=torch.float64) for v in (m1, l1, m2, l2))).item()
    assert kl >= -1e-12
    assert normal_kl(*(torch.tensor(v, dtype=torch.float64) for v in (m1, l1, m1, l1))).item() == pytest.approx(0, abs=1e-12)


def test_bound_terms_are_nonnegative_and_in_range():
    torch.manual_seed(0)
    d = DDPM(Config(image_size=8, width=16, mults=(1, 2), timesteps=20)).eval()
    x0 = torch.randint(0, 256, (3, 1, 8, 8)).float() / 127.5 - 1
    torch.manual_seed(0)
    prior, kls, decoder = d.bound_terms(x0)
    torch.manual_seed(0)
    assert torch.allclose(d.nll(x0), prior + kls + decoder)          # nll is the whole bound
    assert (prior >= 0).all() and (kls >= 0).all() and (decoder >= 0).all()
    # an untrained model cannot beat 8 bits per dimension by much, nor be absurdly worse
    bpd = (prior + kls + decoder) / (64 * math.log(2))
    assert ((bpd > 4) & (bpd < 40)).all()


@pytest.mark.slow
def test_learns_a_toy_distribution():
    """8x8 images, each one of two known templates (left half or top half white): after a few
    seconds of training most samples are close to a template."""
    torch.manual_seed(0)
    left = -torch.ones(1, 8, 8)
    left[:, :, :4] = 1
    top = -torch.ones(1, 8, 8)
    top[:, :4, :] = 1
    templates = torch.stack([left, top])
    d = DDPM(Config(image_size=8, width=16, mults=(1, 2), timesteps=100, schedule="cosine"))
    opt = torch.optim.Adam(d.parameters(), 2e-3)
    for step in range(400):
        x0 = templates[torch.randint(0, 2, (32,))]
        loss, _ = d.loss(x0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    d.eval()
    x = d.sample(64, sampler="ddim", steps=20)
    dist = ((x[:, None] - templates[None]) ** 2).mean((2, 3, 4)).min(1).values
    assert (dist < 0.1).float().mean() > 0.8


# ---------------------------------------------------------------- samplers against their exact law

def exact_output_law(betas, m, s, sampler, steps=None, eta=0.0):
    """Mean and variance of a sampler's output when it is driven by the exact oracle for data
    N(m, s^2), propagated step by step in float64 from the betas alone: the oracle's eps is
    affine in x_t, so every update is x' = A x + B + sigma z, and (mu, v) -> (A mu + B, A^2 v + sigma^2).
    Written from the papers' formulas, independently of ddpm.py's code."""
    betas = [float(b) for b in betas]
    T = len(betas)
    abar, prod = [], 1.0
    for b in betas:
        prod *= 1 - b
        abar.append(prod)
    mu, v = 0.0, 1.0                                              # x_T ~ N(0, 1)

    def eps_and_x0(i):                                            # eps = c1 x + c0; x0 = (x - b eps) / a
        a, b = math.sqrt(abar[i]), math.sqrt(1 - abar[i])
        c1, c0 = b / (a * a * s * s + b * b), -b * a * m / (a * a * s * s + b * b)
        return c1, c0, (1 - b * c1) / a, -b * c0 / a              # eps slope, offset; x0 slope, offset

    if sampler in ("small", "large"):                             # Ho et al. Algorithm 2
        for i in reversed(range(T)):
            c1, c0, x1, x0c = eps_and_x0(i)
            ap = abar[i - 1] if i > 0 else 1.0
            coef1 = betas[i] * math.sqrt(ap) / (1 - abar[i])      # eq. 7
            coef2 = (1 - ap) * math.sqrt(1 - betas[i]) / (1 - abar[i])
            A, B = coef1 * x1 + coef2, coef1 * x0c
            if i == 0:
                var = 0.0                                         # no noise on the last step
            elif sampler == "small":
                var = betas[i] * (1 - ap) / (1 - abar[i])         # b~_t
            else:
                var = betas[i]                                    # b_t
            mu, v = A * mu + B, A * A * v + var
    else:                                                         # Song et al. eq. 12
        seq = [round((T - 1) * (1 - k / (steps - 1))) for k in range(steps)] if steps > 1 else [T - 1]
        for i, j in zip(seq, seq[1:] + [-1]):
            c1, c0, x1, x0c = eps_and_x0(i)
            ap = abar[j] if j >= 0 else 1.0
            sigma2 = eta ** 2 * (1 - ap) / (1 - abar[i]) * (1 - abar[i] / ap)
            d = math.sqrt(max(1 - ap - sigma2, 0.0))
            A, B = math.sqrt(ap) * x1 + d * c1, math.sqrt(ap) * x0c + d * c0
            mu, v = A * mu + B, A * A * v + sigma2
    return mu, v


@pytest.mark.parametrize("sampler,steps,eta", [("small", None, 0), ("large", None, 0), ("ddim", 7, 0.0),
                                               ("ddim", 20, 1.0), ("ddim", 4, 0.5)])
def test_every_sampler_has_its_exact_output_law(sampler, steps, eta):
    """T = 20 (linear schedule scaled to 20 steps): mean and std of 100,000 samples match the exact
    law within 5 standard errors (about 0.002 and 0.0015). An off-by-one step, noise on the last
    step, an ignored variance flag or a DDIM that visits every step moves them far outside."""
    torch.manual_seed(0)
    m, s, T, n = 0.3, 0.5, 20, 100_000
    d = diffusion(T, "linear", clip_x0=False, net=Oracle(linear_beta_schedule(T), m, s), image_size=1)
    if sampler == "ddim":
        x = d.sample(n, sampler="ddim", steps=steps, eta=eta).double().flatten()   # (n,) pixels
    else:
        x = d.p_sample_loop((n, 1, 1, 1), variance=sampler).double().flatten()
    mu, var = exact_output_law(linear_beta_schedule(T), m, s, sampler, steps, eta)
    assert x.mean().item() == pytest.approx(mu, abs=5 * math.sqrt(var / n))
    assert x.std().item() == pytest.approx(math.sqrt(var), abs=5 * math.sqrt(var / (2 * n)))


def test_the_exact_laws_differ_where_the_classic_bugs_would_put_them():
    """The law test above can fail: the exact laws of the variants the bugs produce are far apart
    at T = 20 (more than 20 standard errors of the test)."""
    b = linear_beta_schedule(20)
    small, large = exact_output_law(b, 0.3, 0.5, "small"), exact_output_law(b, 0.3, 0.5, "large")
    every = exact_output_law(b, 0.3, 0.5, "ddim", 20, 0.0)
    seven = exact_output_law(b, 0.3, 0.5, "ddim", 7, 0.0)
    assert abs(math.sqrt(small[1]) - math.sqrt(large[1])) > 0.03
    assert abs(math.sqrt(every[1]) - math.sqrt(seven[1])) > 0.03 or abs(every[0] - seven[0]) > 0.03


# ---------------------------------------------------------------- KL, the bound, label dropout

@settings(max_examples=40, deadline=None)
@given(m1=st.floats(-3, 3), l1=st.floats(-5, 3), m2=st.floats(-3, 3), l2=st.floats(-5, 3))
def test_normal_kl_equals_torch_distributions(m1, l1, m2, l2):
    from torch.distributions import Normal, kl_divergence
    t = lambda v: torch.tensor(v, dtype=torch.float64)
    expected = kl_divergence(Normal(t(m1), t(l1 / 2).exp()), Normal(t(m2), t(l2 / 2).exp()))
    assert normal_kl(t(m1), t(l1), t(m2), t(l2)).item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-12)


def test_bound_terms_equal_a_direct_computation():
    """On T = 4 and 1x1x2 images, every term of the bound computed by hand: L_T = KL(q(x_T|x_0) ||
    N(0, I)); L_{t-1} = KL(q(x_{t-1}|x_t, x_0) || p(x_{t-1}|x_t)) (in that direction: with the
    "large" variance p and q have different variances, so the reverse KL differs); L_0 the Gaussian
    mass of the pixel's bin. The same x_t draws are made by reseeding."""
    from torch.distributions import Normal, kl_divergence
    m, s = 0.1, 0.4
    d = diffusion(4, "linear", clip_x0=False, net=Oracle(linear_beta_schedule(4), m, s))
    x0 = torch.tensor([[[[-1.0, 0.2]]]], dtype=torch.float64)
    torch.manual_seed(3)
    prior, kls, decoder = d.bound_terms(x0, variance="large")
    torch.manual_seed(3)
    abar = torch.cumprod(1 - d.exact["betas"], 0)
    q_T = Normal(abar[-1].sqrt() * x0, (1 - abar[-1]).sqrt())
    assert prior.item() == pytest.approx(kl_divergence(q_T, Normal(0.0, 1.0)).sum().item(), rel=1e-6)
    expected = 0.0
    for i in range(4):
        t = torch.tensor([i])
        x_t = abar[i].sqrt() * x0 + (1 - abar[i]).sqrt() * torch.randn_like(x0)
        mean, var, logvar, _ = d.p_mean_variance(x_t, t, variance="large")
        if i == 0:
            upper = Normal(mean, (0.5 * logvar).exp()).cdf(x0 + 1 / 255)
            assert x0[0, 0, 0, 0] == -1                         # the left edge bin: P(X <= -1 + 1/255)
            lower = Normal(mean, (0.5 * logvar).exp()).cdf(x0 - 1 / 255)
            mass = torch.where(x0 < -0.999, upper, upper - lower)
            assert decoder.item() == pytest.approx(-mass.log().sum().item(), rel=1e-4)
        else:
            beta = d.exact["betas"][i]
            q_mean = (beta * abar[i - 1].sqrt() * x0 + (1 - abar[i - 1]) * (1 - beta).sqrt() * x_t) / (1 - abar[i])
            q_var = beta * (1 - abar[i - 1]) / (1 - abar[i])
            q = Normal(q_mean, q_var.sqrt())
            assert var.flatten()[0].item() == pytest.approx(beta.item())     # "large": b_t
            expected += kl_divergence(q, Normal(mean, var.sqrt())).sum().item()
    assert kls.item() == pytest.approx(expected, rel=1e-5)


def test_label_dropout_rate_and_the_no_class_label():
    """Training replaces a label by "no class" (= num_classes) with probability p_uncond and
    keeps the others; a conditional model given no labels sees "no class" everywhere."""
    seen = []

    class Recorder(nn.Module):
        def forward(self, x, t, y):
            seen.append(y)
            return x * 0

    torch.manual_seed(0)
    d = diffusion(10, net=Recorder(), num_classes=5, p_uncond=0.2)
    y = torch.arange(20000) % 5
    d.loss(torch.zeros(20000, 1, 1, 1), y)
    dropped = seen[-1] == 5
    assert dropped.float().mean().item() == pytest.approx(0.2, abs=0.01)   # 7 standard errors
    assert torch.equal(seen[-1][~dropped], y[~dropped])
    d.loss(torch.zeros(8, 1, 1, 1))                                          # no labels at all
    assert (seen[-1] == 5).all()
    with pytest.raises(ValueError, match="unconditional"):
        diffusion(10, net=Recorder()).loss(torch.zeros(2, 1, 1, 1), torch.tensor([0, 1]))


@pytest.mark.parametrize("i,variance", [(0, "small"), (1, "small"), (7, "large"), (12, "small"), (19, "large")])
def test_one_reverse_step_has_its_exact_law(i, variance):
    """p_sample at step i from a fixed x_t: x_{t-1} = A x_t + B + sigma z, with A, B and sigma of
    step i (Algorithm 2, line 4; no noise at i = 0). Using the coefficients or the network of a
    neighbouring step moves the mean or the spread by far more than the tolerance."""
    torch.manual_seed(0)
    m, s, T, n, x = 0.3, 0.5, 20, 100_000, 0.7
    betas = linear_beta_schedule(T)
    d = diffusion(T, "linear", clip_x0=False, net=Oracle(betas, m, s))
    out = d.p_sample(torch.full((n, 1, 1, 1), x, dtype=torch.float64), i, variance=variance).flatten()
    abar = torch.cumprod(1 - betas, 0).tolist()
    a, b = math.sqrt(abar[i]), math.sqrt(1 - abar[i])
    eps = b * (x - a * m) / (a * a * s * s + b * b)              # the oracle at step i
    x0 = (x - b * eps) / a                                       # eq. 15
    ap, beta = (abar[i - 1] if i > 0 else 1.0), betas[i].item()
    mean = (beta * math.sqrt(ap) * x0 + (1 - ap) * math.sqrt(1 - beta) * x) / (1 - abar[i])   # eq. 7
    var = 0.0 if i == 0 else (beta * (1 - ap) / (1 - abar[i]) if variance == "small" else beta)
    if i == 0:
        assert torch.allclose(out, torch.full_like(out, mean), atol=1e-9)   # the last step: no noise
    else:
        assert out.mean().item() == pytest.approx(mean, abs=5 * math.sqrt(var / n))
        assert out.std().item() == pytest.approx(math.sqrt(var), abs=5 * math.sqrt(var / (2 * n)))


# -- restoration: inpainting, zero-shot super-resolution (ILVR), denoising (SDEdit)

def tiny_unet_ddpm(T=20, **kw):
    torch.manual_seed(0)
    return DDPM(Config(image_size=8, width=8, mults=(1, 2), timesteps=T, **kw)).eval()


def test_inpainting_keeps_the_known_pixels():
    d = tiny_unet_ddpm()
    x_known = torch.rand(3, 1, 8, 8) * 2 - 1
    mask = (torch.rand(3, 1, 8, 8) > 0.5).float()
    out = d.inpaint(x_known, mask, resample=2)
    assert torch.equal(out[mask == 1], x_known[mask == 1]) and not torch.allclose(out, x_known)


@pytest.mark.parametrize("factor", [2, 4])
def test_ilvr_output_has_the_low_resolution_input_as_its_block_means(factor):
    """ILVR's projection (eq. 6) after every step, the last included (no noise there): the
    output's factor x factor block means are the low-resolution input, whatever the network."""
    d = tiny_unet_ddpm()
    x_low = torch.rand(4, 1, 8 // factor, 8 // factor) * 2 - 1
    out = d.super_resolve(x_low, factor)
    assert out.shape == (4, 1, 8, 8)
    assert torch.allclose(torch.nn.functional.avg_pool2d(out, factor), x_low, atol=1e-5)
    assert out.flatten(1).std(1).min() > 0.05                      # not merely the blocks copied


def test_denoising_a_clean_image_at_a_tiny_noise_level_returns_it():
    d, _, _ = ode_setup(n=4)
    x = torch.rand(64, 1, 1, 1) * 2 - 1
    assert d.noise_level_step(0.005) == 0
    assert (d.denoise_image(x, 0.005) - x).abs().max().item() < 0.01


def test_denoising_draws_from_the_posterior_of_the_clean_pixel():
    """Gaussian data N(m, s^2) seen through noise of std sigma: the chain from the matching step
    (x_t = sqrt(abar_t) x_noisy) draws from p(x_0 | x_noisy) = N(m + s^2 / (s^2 + sigma^2)
    (x_noisy - m), s^2 sigma^2 / (s^2 + sigma^2)), with sigma the step's exact level."""
    m, s = 0.3, 0.5
    d, _, _ = ode_setup(m, s, n=4)
    i = d.noise_level_step(0.5)
    abar = d.exact["alphas_cumprod"][i].item()
    sigma = math.sqrt((1 - abar) / abar)
    assert abs(sigma - 0.5) < 0.01
    torch.manual_seed(0)
    out = d.denoise_image(torch.ones(20000, 1, 1, 1), 0.5)
    shrink = s ** 2 / (s ** 2 + sigma ** 2)
    assert out.mean().item() == pytest.approx(m + shrink * (1 - m), abs=0.015)
    assert out.std().item() == pytest.approx(math.sqrt(shrink) * sigma, abs=0.02)


class SROracle(nn.Module):
    """The exact eps-predictor of a super-resolution model for i.i.d. N(m, s^2) pixels: given the
    factor x factor block means L (the low-resolution image, copied up in the second half of the
    input), x_0 ~ N(L, s^2 P), P = I - (block mean), so with x_t = a x_0 + b eps,
    E[eps | x_t, L] = b (P v / (a^2 s^2 + b^2) + (I - P) v / b^2), v = x_t - a L."""

    def __init__(self, betas, s, factor):
        super().__init__()
        abar = torch.cumprod(1 - betas, 0)
        self.a, self.b, self.s, self.f = abar.sqrt(), (1 - abar).sqrt(), s, factor

    def forward(self, x, t, y=None):
        x_t, up = x.chunk(2, 1)
        a, b = self.a[t].reshape(-1, 1, 1, 1), self.b[t].reshape(-1, 1, 1, 1)
        v = x_t - a * up
        means = F.avg_pool2d(v, self.f).repeat_interleave(self.f, -2).repeat_interleave(self.f, -1)
        return (b * ((v - means) / (a ** 2 * self.s ** 2 + b ** 2) + means / b ** 2)).float()


@pytest.mark.parametrize("name", ["ddpm", "dpm"])
def test_super_resolution_model_draws_the_conditional_law(name):
    """SR3 with the exact oracle: the output is x_0 given its block means, N(L, s^2 P): every
    pixel's mean is its block's low-resolution value, its spread s sqrt(1 - 1/4), and each
    sample's block mean is L. (The network must see the low image: its input is x_t and L.)"""
    betas, s = linear_beta_schedule(1000), 0.5
    d = DDPM(Config(image_size=4, channels=1, timesteps=1000, target="eps", clip_x0=False, sr_factor=2),
             net=SROracle(betas, s, 2))
    low = torch.tensor([[[[0.4, -0.2], [0.0, 0.7]]]]).repeat(4000, 1, 1, 1)
    torch.manual_seed(0)
    x = d.sample(4000, sampler=name, steps=200, low=low)
    up = low.repeat_interleave(2, -2).repeat_interleave(2, -1)
    assert torch.allclose(x.mean(0), up[0], atol=0.03)
    assert torch.allclose(x.std(0), torch.full_like(up[0], s * math.sqrt(0.75)), atol=0.03)
    assert torch.allclose(F.avg_pool2d(x, 2), low, atol=0.02)


def test_super_resolution_network_sees_both_images_and_round_trips(tmp_path):
    d = DDPM(Config(image_size=8, width=8, mults=(1, 2), timesteps=10, sr_factor=4))
    assert d.net.conv_in.in_channels == 2
    with pytest.raises(ValueError, match="low"):
        d.sample(2)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    nn.init.normal_(d.net.conv_out.weight)                          # (zero at the start)
    loss, _ = d.loss(x)
    loss.backward()
    assert d.net.conv_in.weight.grad[:, 1].abs().sum() > 0        # the low-res channel is used
    again = DDPM(Config(**vars(d.cfg)))
    again.load_state_dict(d.state_dict())
    low = F.avg_pool2d(x, 4)
    torch.manual_seed(0)
    a = d.eval().sample(3, sampler="ddim", steps=3, low=low)
    torch.manual_seed(0)
    assert torch.equal(a, again.eval().sample(3, sampler="ddim", steps=3, low=low))


def test_super_resolution_has_no_hidden_state():
    """SR3's low-resolution images are an argument, never an attribute: the network refuses to
    run without them, and a call with one low image is not changed by an earlier call with
    another (nothing is left behind)."""
    torch.manual_seed(0)
    d = DDPM(Config(image_size=8, width=8, mults=(1, 2), timesteps=10, sr_factor=2)).eval()
    nn.init.normal_(d.net.conv_out.weight)
    x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    with pytest.raises(ValueError, match="low"):
        d.predict_eps(x_t, t)
    a, b = torch.rand(2, 1, 4, 4), -torch.rand(2, 1, 4, 4)
    with torch.no_grad():
        first = d.predict_eps(x_t, t, low=a)
        d.predict_eps(x_t, t, low=b)
        d.loss(torch.rand(2, 1, 8, 8))
        assert torch.equal(d.predict_eps(x_t, t, low=a), first)
        assert not torch.allclose(d.predict_eps(x_t, t, low=b), first)
    assert not any(torch.is_tensor(v) for k, v in vars(d).items() if not k.startswith("_"))


def test_a_checkpoint_from_before_adagn_loads_with_its_added_embedding(tmp_path):
    """Runs trained before AdaGN have no "adagn" in their config; ddpm.load rebuilds their
    network (the embedding added) and it gives the saved model's answers."""
    import dataclasses
    import common
    import ddpm
    torch.manual_seed(0)
    old = DDPM(Config(width=8, num_classes=3, adagn=False))
    nn.init.normal_(old.net.conv_out.weight)          # not the zero start: every layer counts
    config = dataclasses.asdict(old.cfg)
    del config["adagn"]
    common.save_checkpoint(str(tmp_path / "ckpt.pt"), "ddpm", config, model=old.state_dict())
    new = ddpm.load(str(tmp_path))
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 900]), torch.tensor([0, 2])
    assert not new.cfg.adagn
    torch.testing.assert_close(new.net(x, t, y), old.eval().net(x, t, y))


class ConstantX0(nn.Module):
    """A network that predicts x_0 = c for every input: with it the bound's every term has a
    closed form, the same for any x_t (the posterior means differ by coef1 (x_0 - c) alone)."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x_t, t, y=None):
        return torch.full_like(x_t, self.c)


def test_nll_is_every_term_of_the_bound_computed_by_hand():
    """Ho et al. eq. 5 written out here from the betas alone, term by term, in float64:
    L_T = KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, 1)), each L_{t-1} = KL between two Gaussians
    of variance b~_t whose means differ by coef1_t (x0 - c), and L_0 the Gaussian mass of each
    pixel's bin (eq. 13) around mean c with the clipped variance b~ of the second step; nll is
    their sum, with no term dropped and none counted twice."""
    T, c = 4, 0.1                   # cosine at T = 4: every term of the bound is sizeable
    d = DDPM(Config(image_size=2, timesteps=T, schedule="cosine", target="x0", clip_x0=False,
                    min_snr_gamma=0.0), net=ConstantX0(c))
    x0 = torch.tensor([[[[-1.0, 1.0], [54 / 127.5 - 1, 200 / 127.5 - 1]]]])
    b = cosine_beta_schedule(T)
    abar = torch.cumprod(1 - b, 0)
    x = x0.double().flatten()
    prior = 0.5 * (-torch.log(1 - abar[-1]) + (1 - abar[-1]) + abar[-1] * x ** 2 - 1).sum()
    kls = []
    for t in range(1, T):                                    # 0-based t: the paper's t + 1
        var = b[t] * (1 - abar[t - 1]) / (1 - abar[t])
        coef1 = b[t] * abar[t - 1].sqrt() / (1 - abar[t])
        kls.append((coef1 ** 2 * (x - c) ** 2 / (2 * var)).sum())
    std = math.sqrt(b[1] * (1 - abar[0]) / (1 - abar[1]))    # b~ of the second step
    tail = lambda z: 0.5 * math.erfc(z / math.sqrt(2))      # P(Z > z), exact in the tails
    decoder = 0.0
    for p in x.tolist():
        lo = -math.inf if p < -0.999 else (p - 1 / 255 - c) / std
        hi = math.inf if p > 0.999 else (p + 1 / 255 - c) / std
        mass = tail(lo) - tail(hi) if lo > 0 else tail(-hi) - tail(-lo)
        decoder -= math.log(mass)
    torch.manual_seed(0)
    got_prior, got_kls, got_decoder = d.bound_terms(x0)
    assert float(got_prior) == pytest.approx(float(prior), rel=2e-3)    # float32 logs
    assert float(got_kls) == pytest.approx(float(sum(kls)), rel=1e-5)
    assert float(got_decoder) == pytest.approx(decoder, rel=1e-5)
    assert min(float(k) for k in kls) > 0.1 and float(prior) > 1e-4     # every term counts
    total = float(prior + sum(kls)) + decoder
    assert float(d.nll(x0)) == pytest.approx(total, abs=2e-5)


class LinearEps(nn.Module):
    """eps_hat = a x_t: a predictor whose every call depends on where the sampler evaluates it."""

    def forward(self, x_t, t, y=None):
        return 0.3 * x_t


def test_every_fast_sampler_step_is_its_papers_formula():
    """Three steps (t = 9, 4, 0 of T = 10) of DDIM (eq. 12, eta = 0), DPM-Solver++(2M) (Lu et al.
    Algorithm 2: a first-order step, then the second-order one with r = h_prev / h, then
    x_0 = x0_hat) and Heun (Karras et al. Algorithm 1 in s = sigma / alpha), each written out
    here in float64 from alphas_cumprod and the predictor eps_hat = 0.3 x."""
    d = DDPM(Config(image_size=2, timesteps=10, target="eps", clip_x0=False), net=LinearEps())
    assert d.sampling_steps(3) == [9, 4, 0]
    abar = d.exact["alphas_cumprod"]
    al = lambda i: math.sqrt(abar[i]) if i >= 0 else 1.0
    sg = lambda i: math.sqrt(1 - abar[i]) if i >= 0 else 0.0
    eps = lambda x: 0.3 * x
    x0_hat = lambda x, i: (x - sg(i) * eps(x)) / al(i)
    x_T = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    steps = [(9, 4), (4, 0), (0, -1)]

    x = x_T.double()
    for i, j in steps:                                       # DDIM, eta = 0
        x = al(j) * x0_hat(x, i) + sg(j) * eps(x)
    ddim = x
    x, prev = x_T.double(), None
    lam = lambda i: math.log(al(i) / sg(i))
    for i, j in steps:                                       # DPM-Solver++(2M)
        x0 = x0_hat(x, i)
        if j < 0:
            x = x0
            break
        h = lam(j) - lam(i)
        if prev is None:
            dd = x0
        else:
            r = prev[1] / h
            dd = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev[0]
        x = sg(j) / sg(i) * x - al(j) * math.expm1(-h) * dd
        prev = (x0, h)
    dpm = x
    level = lambda i: sg(i) / al(i) if i >= 0 else 0.0
    x = x_T.double() / al(9)                                 # Heun on x~ = x / alpha
    for i, j in steps:
        slope = eps(al(i) * x)
        x_next = x + (level(j) - level(i)) * slope
        if j >= 0:
            x_next = x + (level(j) - level(i)) * (slope + eps(al(j) * x_next)) / 2
        x = x_next
    heun = x
    for name, want in (("ddim", ddim), ("dpm", dpm), ("heun", heun)):
        got = d.sample(5, sampler=name, steps=3, noise=x_T.clone()).double()
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), name
    assert not torch.allclose(ddim, dpm, atol=1e-3) and not torch.allclose(ddim, heun, atol=1e-3)
