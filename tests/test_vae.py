"""vae.py: KL, reparameterization, the ELBO as a bound on an exact log-likelihood, decoders, learning."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from vae import (VAE, Config, bernoulli_log_prob, discretized_logistic_log_prob,
                 discretized_logistic_sample, elbo, gaussian_kl,
                 gaussian_log_prob, iwae_bound, log_importance_weights, reparameterize)

floats = st.floats(-2, 2)


@settings(max_examples=15, deadline=None)
@given(mu=st.lists(floats, min_size=1, max_size=4), seed=st.integers(0, 100))
def test_analytic_kl_matches_monte_carlo_and_is_nonnegative(mu, seed):
    g = torch.Generator().manual_seed(seed)
    mu = torch.tensor([mu], dtype=torch.float64)
    logvar = torch.rand(mu.shape, generator=g, dtype=torch.float64) * 3 - 2
    kl = gaussian_kl(mu, logvar)
    assert kl.item() >= 0
    torch.manual_seed(seed)
    z = reparameterize(mu, logvar, 50000)                          # E_q[log q(z) - log p(z)]
    samples = gaussian_log_prob(z, mu, logvar) - gaussian_log_prob(z, torch.zeros_like(mu), torch.zeros_like(logvar))
    stderr = samples.std().item() / math.sqrt(len(samples))
    assert abs(samples.mean().item() - kl.item()) < 5 * stderr + 1e-9


def test_kl_is_zero_exactly_at_the_prior():
    assert gaussian_kl(torch.zeros(3, 5), torch.zeros(3, 5)).abs().max().item() == 0
    assert (gaussian_kl(torch.tensor([[1e-3, 0.0]]), torch.zeros(1, 2)) > 0).all()
    assert (gaussian_kl(torch.zeros(1, 2), torch.tensor([[0.0, 1e-2]])) > 0).all()


def test_reparameterized_samples_have_the_moments_and_gradients():
    torch.manual_seed(0)
    mu = torch.tensor([[1.5, -0.5]], requires_grad=True)
    logvar = torch.tensor([[0.0, math.log(0.25)]], requires_grad=True)
    z = reparameterize(mu, logvar, 100000)
    assert torch.allclose(z.mean((0, 1)), torch.tensor([1.5, -0.5]), atol=0.01)
    assert torch.allclose(z.var((0, 1)), torch.tensor([1.0, 0.25]), rtol=0.02)
    z.pow(2).sum().backward()
    assert mu.grad.abs().min() > 0 and logvar.grad.abs().min() > 0


class PPCA:
    """Probabilistic PCA: z ~ N(0, I_2), x = W z + b + sigma e in R^5; log p(x) is exact,
    N(x; b, W W^T + sigma^2 I). W has orthogonal columns, so the true posterior is diagonal:
    q*(z|x) = N(M^-1 W^T (x - b), sigma^2 M^-1), M = W^T W + sigma^2 I."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(5, 2, generator=g, dtype=torch.float64))
        self.W, self.b, self.sigma = q * torch.tensor([2.0, 0.7], dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64), 0.5

    def log_px_given_z(self, x, z):
        mean = z @ self.W.T + self.b
        return gaussian_log_prob(x, mean, torch.full_like(mean, 2 * math.log(self.sigma)))

    def log_px(self, x):
        cov = self.W @ self.W.T + self.sigma ** 2 * torch.eye(5, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def posterior(self, x):
        m = torch.diag(self.W.T @ self.W) + self.sigma ** 2
        return ((x - self.b) @ self.W) / m, torch.log(self.sigma ** 2 / m).expand(len(x), 2)


@settings(max_examples=12, deadline=None)
@given(shift=st.lists(floats, min_size=2, max_size=2), logvar=st.lists(st.floats(-3, 1), min_size=2, max_size=2),
       seed=st.integers(0, 100))
def test_elbo_is_below_log_px_for_any_encoder(shift, logvar, seed):
    model = PPCA()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 5, generator=g, dtype=torch.float64) * 2
    mu = torch.tensor([shift], dtype=torch.float64)
    lv = torch.tensor([logvar], dtype=torch.float64)
    torch.manual_seed(seed)
    k = 20000
    bound, _, _ = elbo(model.log_px_given_z, x.expand(k, 5), mu.expand(k, 2), lv.expand(k, 2))  # k one-sample ELBOs
    stderr = bound.std().item() / math.sqrt(k)
    assert bound.mean().item() <= model.log_px(x).item() + 4 * stderr


def test_elbo_is_exact_at_the_true_posterior():
    model = PPCA()
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mu, logvar = model.posterior(x)
    log_w = log_importance_weights(model.log_px_given_z, x, mu, logvar, 50)
    exact = model.log_px(x)
    assert torch.allclose(log_w, exact.expand(50, 6), atol=1e-4)      # every weight equals p(x)
    assert torch.allclose(iwae_bound(log_w), exact, atol=1e-4)
    torch.manual_seed(0)
    bound, rec, kl = elbo(model.log_px_given_z, x.repeat(4000, 1), mu.repeat(4000, 1), logvar.repeat(4000, 1))
    bound = bound.reshape(4000, 6)                                      # analytic-KL form: unbiased, noisy
    stderr = bound.std(0) / 4000 ** 0.5
    assert ((bound.mean(0) - exact).abs() < 4 * stderr).all()


def test_iwae_is_above_elbo_and_converges_to_log_px():
    model = PPCA()
    x = torch.randn(50, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 1.5
    mu, logvar = model.posterior(x)
    mu, logvar = mu + 0.6, logvar + 0.8                                     # a poor encoder
    exact = model.log_px(x)
    torch.manual_seed(0)
    gaps = []
    for k in [1, 10, 100, 3000]:
        log_w = log_importance_weights(model.log_px_given_z, x, mu, logvar, k)
        assert (iwae_bound(log_w) >= log_w.mean(0) - 1e-12).all()           # L_k >= the ELBO estimate
        gaps.append((exact - iwae_bound(log_w)).mean().item())
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3] > -0.01
    assert gaps[3] < 0.05 and gaps[0] > 0.5


@settings(max_examples=25, deadline=None)
@given(mean=st.floats(-1.5, 1.5), log_scale=st.floats(-6, 1))
def test_logistic_decoder_sums_to_one(mean, log_scale):
    x = (torch.arange(256, dtype=torch.float64) / 127.5 - 1).reshape(256, 1, 1, 1)
    params = torch.tensor([mean, log_scale], dtype=torch.float64).reshape(1, 2, 1, 1).expand(256, 2, 1, 1)
    total = torch.logsumexp(discretized_logistic_log_prob(x, params), 0).exp().item()
    assert total == pytest.approx(1.0, abs=1e-5)


def test_bernoulli_decoder_sums_to_one():
    logits = torch.randn(1, 1, 2, 2)
    xs = torch.tensor([[[[a, b], [c, d]]] for a in (0., 1.) for b in (0., 1.) for c in (0., 1.) for d in (0., 1.)])
    assert torch.logsumexp(bernoulli_log_prob(xs, logits.expand(16, 1, 2, 2)), 0).exp().item() == pytest.approx(1, abs=1e-6)


@pytest.mark.slow
def test_training_raises_the_test_elbo():
    import common
    torch.manual_seed(0)
    x, _ = common.synthetic_digits(600, seed=5)
    train, test = common.binarize(x[:500]), common.binarize(x[500:])     # exactly -1 and 1
    model = VAE(Config(latent=8, width=16, likelihood="bernoulli"))

    def test_elbo():
        with torch.no_grad():
            return model.elbo(test)[0].mean().item()

    before = test_elbo()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for step in range(150):
        loss, _ = model.loss(train[torch.randint(0, 500, (64,))])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = test_elbo()
    assert before < -500 and after > before + 250     # from ~ -543 nats (uniform pixels) to < 290


def test_conditional_vae_uses_its_labels_and_bounds_agree():
    """A class-conditional VAE: the label changes the decoder's output; the IWAE bound with k = 1
    is the one-sample ELBO estimate, and with many samples it is no looser (in expectation)."""
    torch.manual_seed(0)
    model = VAE(Config(latent=4, width=8, num_classes=3, likelihood="bernoulli")).eval()
    torch.nn.init.normal_(model.decoder.class_emb.weight, std=1.0)
    z = torch.randn(2, 4)
    with torch.no_grad():
        assert not torch.allclose(model.decode(z, torch.tensor([0, 0])), model.decode(z, torch.tensor([1, 1])))
    x = torch.randint(0, 2, (5, 1, 28, 28)).float() * 2 - 1
    y = torch.tensor([0, 1, 2, 0, 1])
    with pytest.raises(ValueError, match="labels"):
        model.loss(x)                                                  # a conditional model needs y
    torch.manual_seed(1)
    elbo_many = torch.stack([model.elbo(x, y)[0] for _ in range(200)]).mean(0)
    torch.manual_seed(2)
    iwae = -model.nll(x, y, k=200)
    assert (iwae >= elbo_many - 1.0).all() and (iwae - elbo_many).mean() > 0


@settings(max_examples=25, deadline=None)
@given(mean=st.floats(-1, 1), log_scale=st.floats(-5, 0), k=st.integers(1, 254))
def test_logistic_decoder_is_the_logistic_mass_of_each_bin(mean, log_scale, k):
    """An interior value x = k / 127.5 - 1 gets sigmoid((x + 1/255 - m) / s) - sigmoid((x - 1/255 - m) / s),
    the edge values the tails: a logistic of scale s, not 1 / s (which also sums to one)."""
    x = torch.tensor([k / 127.5 - 1, -1.0, 1.0], dtype=torch.float64).reshape(3, 1, 1, 1)
    params = torch.tensor([mean, log_scale], dtype=torch.float64).reshape(1, 2, 1, 1).expand(3, 2, 1, 1)
    got = discretized_logistic_log_prob(x, params).exp()
    s = math.exp(log_scale)
    cdf = lambda v: 1 / (1 + math.exp(-(v - mean) / s))
    xk = k / 127.5 - 1
    expected = [cdf(xk + 1 / 255) - cdf(xk - 1 / 255), cdf(-1 + 1 / 255), 1 - cdf(1 - 1 / 255)]
    for g, e in zip(got.tolist(), expected):
        if e > 1e-5:                                  # above that the exact difference is used
            assert g == pytest.approx(e, rel=1e-6)


@settings(max_examples=10, deadline=None)
@given(mean=st.floats(-1.2, 1.2), log_scale=st.floats(-4, -0.5))
def test_logistic_draws_land_in_each_bin_with_its_mass(mean, log_scale):
    """VAE.sample(mean=False) draws x ~ p(x|z): the frequency of every one of the 256 values,
    the two tail bins included, is the likelihood's mass of that bin (total variation < 0.012
    at a million draws, where the sampling noise alone is at most about 0.006)."""
    torch.manual_seed(0)
    n = 1_000_000
    params = torch.tensor([mean, log_scale]).reshape(1, 2, 1, 1).expand(n, 2, 1, 1)
    x = discretized_logistic_sample(params, torch.rand(n, 1, 1, 1))
    counts = torch.bincount(torch.round((x.flatten() + 1) * 127.5).long(), minlength=256)
    grid = (torch.arange(256, dtype=torch.float64) / 127.5 - 1).reshape(256, 1, 1, 1)
    mass = discretized_logistic_log_prob(grid, params[:256].double()).exp()
    assert 0.5 * (counts / n - mass).abs().sum().item() < 0.012


def test_vae_samples_are_draws_from_the_decoder_not_its_mean():
    torch.manual_seed(0)
    model = VAE(Config(width=8, latent=4)).eval()
    torch.manual_seed(1)
    means = model.sample(6)
    torch.manual_seed(1)
    draws = model.sample(6, mean=False)
    assert draws.shape == means.shape and not torch.equal(draws, means)
    assert torch.equal(torch.round((draws + 1) * 127.5) / 127.5 - 1, draws)   # on the 8-bit grid


# -- the VQ-VAE (van den Oord et al. 2017): Config(codebook=K)

from vae import VQVAE, VectorQuantizer  # noqa: E402


@given(st.integers(1, 12), st.integers(1, 5), st.integers(1, 30), st.integers(0, 2**16))
@settings(max_examples=30)
def test_quantisation_picks_the_nearest_code(codes, dim, n, seed):
    g = torch.Generator().manual_seed(seed)
    vq = VectorQuantizer(codes, dim)
    vq.codebook.copy_(torch.randn(codes, dim, generator=g))
    flat = torch.randn(n, dim, generator=g) * 2
    d = torch.cdist(flat.double(), vq.codebook.double())
    got = vq.nearest(flat)
    assert torch.allclose(d[torch.arange(n), got], d.min(1).values, atol=1e-5)


def test_straight_through_and_commitment_gradients():
    """eq. 3: the decoder's gradient at z_q passes unchanged to z_e (straight-through), and the
    commitment ||z_e - sg[z_q]||^2 pulls z_e towards z_q with gradient 2 (z_e - z_q), the
    codebook untouched by either."""
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 3).eval()
    z_e = torch.randn(2, 3, 2, 2, requires_grad=True)
    z_st, codes, commitment, _ = vq(z_e)
    z_q = vq.codebook[codes].permute(0, 3, 1, 2)
    w = torch.randn_like(z_q)
    grad, = torch.autograd.grad((z_st ** 2 * w).sum(), z_e)
    assert torch.allclose(z_st, z_q) and torch.allclose(grad, 2 * w * z_q, atol=1e-6)
    grad, = torch.autograd.grad(commitment.sum(), z_e)
    assert torch.allclose(grad, 2 * (z_e - z_q).detach(), atol=1e-6)


def test_codebook_moving_average_is_its_formula():
    """App. A.1 on a hand-sized case: two codes in 1-d, decay g = 0.5, smoothing eps = 0.1:
    N <- g N + (1 - g) n, m <- g m + (1 - g) sum z_e, e = m / ((N + eps) / (sum N + K eps) sum N)."""
    vq = VectorQuantizer(2, 1, decay=0.5, eps=0.1)
    vq.codebook.copy_(torch.tensor([[0.0], [8.0]]))
    vq.sums.copy_(vq.codebook)
    vq.update(torch.tensor([[1.0], [3.0], [10.0]]), torch.tensor([0, 0, 1]))
    counts = torch.tensor([0.5 * 1 + 0.5 * 2, 0.5 * 1 + 0.5 * 1])           # [1.5, 1.0]
    sums = torch.tensor([0.5 * 0 + 0.5 * 4, 0.5 * 8 + 0.5 * 10])            # [2.0, 9.0]
    smoothed = (counts + 0.1) / (counts.sum() + 2 * 0.1) * counts.sum()
    assert torch.allclose(vq.counts, counts) and torch.allclose(vq.sums[:, 0], sums)
    assert torch.allclose(vq.codebook[:, 0], sums / smoothed, atol=1e-6)


def test_codebook_finds_separated_clusters():
    """Three well-separated clusters, three codes from a random start (this seed's): the moving
    averages settle on the cluster means. A learning test: from a worse start two codes can share
    a cluster for good; the restart rule itself is checked by the next test."""
    torch.manual_seed(0)
    means = torch.tensor([[-5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])
    vq = VectorQuantizer(3, 2, decay=0.9).train()
    for _ in range(300):
        flat = means[torch.randint(0, 3, (64,))] + 0.1 * torch.randn(64, 2)
        vq(flat.T.reshape(1, 2, 8, 8))
    found = sorted(vq.codebook.tolist())
    assert torch.allclose(torch.tensor(found), torch.tensor(sorted(means.tolist())), atol=0.1), found


@pytest.mark.parametrize("likelihood", ["bernoulli", "logistic"])
def test_vq_bound_is_reconstruction_plus_uniform_prior(likelihood):
    """nll under the uniform prior is exactly -log p(x | z_q(x)) + h w log K, for both decoders;
    VAE(Config(codebook=K)) is the VQ-VAE, its codes index the codebook and decode to images."""
    torch.manual_seed(0)
    model = VAE(Config(codebook=16, latent=4, width=8, likelihood=likelihood)).eval()
    assert type(model) is VQVAE
    x = torch.randint(0, 256, (3, 1, 28, 28)) / 127.5 - 1
    x = x.sign() if likelihood == "bernoulli" else x
    codes = model.encode_codes(x)
    assert codes.shape == (3, 7, 7) and codes.dtype == torch.int64 and 0 <= codes.min() <= codes.max() < 16
    z_q = model.quantizer.codebook[codes].permute(0, 3, 1, 2)
    rec = model.log_px_given_z(model.data(x), z_q)
    assert torch.allclose(model.nll(x), -rec + 49 * math.log(16), rtol=1e-6)
    images = model.sample(5)
    assert images.shape == (5, 1, 28, 28) and images.min() >= -1 and images.max() <= 1
    assert torch.equal(model.reconstruct(x), model.decode_codes(codes))


def test_vq_vae_training_lowers_its_bound():
    """A few dozen Adam steps on 64 built-in digits lower the VQ-VAE's bound and use several codes."""
    import common
    torch.manual_seed(0)
    x = common.binarize(common.synthetic_digits(64, seed=5)[0])
    model = VAE(Config(codebook=32, latent=8, width=16, likelihood="bernoulli"))
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    before = model.eval().nll(x).mean().item()
    model.train()
    for _ in range(60):
        loss, logs = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.eval().nll(x).mean().item()
    assert after < before - 100 and logs["codes_used"] >= 4


def test_an_unused_code_restarts_on_the_data():
    """Not in the paper: a code no encoder output has chosen for a while (its smoothed count
    below 1e-3) restarts at one of the batch's z_e; a used code keeps its moving average."""
    torch.manual_seed(0)
    vq = VectorQuantizer(2, 2, decay=0.9).train()
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0]]))
    vq.sums.copy_(vq.codebook)
    for step in range(100):
        vq(0.1 * torch.randn(1, 2, 4, 4))
        if step == 10:
            assert vq.codebook[1].norm() > 100                  # unused, but not yet for long
    assert vq.codebook[1].norm() < 1 and vq.codebook[0].norm() < 0.2
