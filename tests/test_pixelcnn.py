"""pixelcnn.py: causality by gradients, the blind spot, normalisation, samplers, learning."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from pixelcnn import Config, PixelCNN

S = 8


def make(arch="gated", channels=1, classes=0, levels=256, layers=3, width=12, size=S, seed=0):
    torch.manual_seed(seed)
    return PixelCNN(Config(image_size=size, channels=channels, arch=arch, width=width,
                                      layers=layers, levels=levels, num_classes=classes))


def input_gradient(model, r, c, ch, seed, classes=0):
    """d(sum of the logits of sub-pixel (ch, r, c)) / d(input), for a random input: (C, S, S)."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    x = torch.rand(2, cfg.channels, cfg.image_size, cfg.image_size, generator=g).mul(2).sub(1).requires_grad_()
    y = torch.randint(0, classes, (2,), generator=g) if classes else None
    out = model.net(x, y)
    per = out.shape[1] // cfg.channels
    out[:, ch * per:(ch + 1) * per, r, c].sum().backward()
    return x.grad.abs().sum(0)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(arch=st.sampled_from(["gated", "pixelcnn"]), channels=st.sampled_from([1, 3]), classes=st.sampled_from([0, 4]),
       r=st.integers(0, S - 1), c=st.integers(0, S - 1), ch=st.integers(0, 2), seed=st.integers(0, 1000))
def test_causality(arch, channels, classes, r, c, ch, seed):
    """The output for sub-pixel (ch, r, c) has zero gradient w.r.t. every input at (r, c) or later
    in raster order, and at (r, c) itself w.r.t. channels ch and later (R -> G -> B)."""
    ch = ch % channels
    model = make(arch, channels, classes, seed=seed % 7)
    grad = input_gradient(model, r, c, ch, seed, classes)
    later = torch.zeros(S, S, dtype=torch.bool)
    later.view(-1)[r * S + c + 1:] = True
    assert grad[:, later].sum().item() == 0
    assert grad[ch:, r, c].sum().item() == 0
    if ch > 0 and arch == "gated":   # earlier colours of the same pixel are seen (the original's ReLUs
        assert grad[:ch, r, c].min().item() > 0         # can all be dead for one input: no check there)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(r=st.integers(1, S - 1), c=st.integers(0, S - 1), seed=st.integers(0, 1000))
def test_gated_has_no_blind_spot(r, c, seed):
    """With receptive fields larger than the image, every earlier pixel reaches the output."""
    model = make("gated", layers=5, seed=seed % 5)
    grad = input_gradient(model, r, c, 0, seed)[0]
    earlier = torch.zeros(S, S, dtype=torch.bool)
    earlier.view(-1)[:r * S + c] = True
    assert grad[earlier].min().item() > 0


def test_original_pixelcnn_has_the_blind_spot():
    """Same depth, original masked convolutions: pixels up and to the right are never seen."""
    model = make("pixelcnn", layers=5)
    r, c = 6, 2
    grad = sum(input_gradient(model, r, c, 0, seed)[0] for seed in range(4))
    earlier = torch.zeros(S, S, dtype=torch.bool)
    earlier.view(-1)[:r * S + c] = True
    blind = earlier & (grad == 0)
    assert blind.any()
    rows, cols = blind.nonzero().unbind(1)
    assert (cols > c).all() and (rows < r).all()                    # the blind spot is up and right
    assert grad[r - 1, c + 1] > 0 and grad[r, c - 1] > 0             # while the neighbours are seen


@pytest.mark.parametrize("arch", ["gated", "pixelcnn"])
def test_256_way_likelihood_sums_to_one(arch):
    """On 1x1 images, exp(model.log_prob(x)) over all 256 values of x sums to 1: the whole
    likelihood path (logits reshape, cross-entropy axis, sum) is a normalised distribution."""
    model = make(arch, classes=3, size=1).eval()
    x = torch.arange(256).reshape(256, 1, 1, 1)
    with torch.no_grad():
        logp = model.log_prob(x / 127.5 - 1, torch.full((256,), 2, dtype=torch.long)).double()
    assert torch.logsumexp(logp, 0).exp().item() == pytest.approx(1.0, abs=1e-6)
    assert logp.std() > 0                                     # a real distribution, not uniform


@pytest.mark.parametrize("arch", ["gated", "pixelcnn"])
def test_binary_joint_sums_to_one(arch):
    model = make(arch, size=2, levels=2).eval()
    x = torch.tensor([[(i >> k) & 1 for k in range(4)] for i in range(16)]).reshape(16, 1, 2, 2)
    with torch.no_grad():
        logp = model.log_prob(x.float() * 2 - 1).double()                  # {0, 1} -> {-1, 1}
        assert torch.logsumexp(logp, 0).exp().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("levels,expected", [(256, 8.0), (2, 1.0)])
def test_constant_logits_score_the_uniform_rate(levels, expected):
    model = make(levels=levels)
    last = model.net.head[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    x = torch.randint(0, levels, (4, 1, S, S)) / (levels - 1) * 2 - 1
    nll, logs = model.loss(x)
    assert logs["bits_per_dim"] == pytest.approx(expected, abs=1e-6)   # 8 bits/dim, or ln 2 nats = 1 bit


@pytest.mark.parametrize("channels,classes,levels,layers,size,n", [
    (1, 0, 256, 3, S, 3), (3, 4, 256, 3, S, 3), (1, 3, 2, 3, S, 3), (1, 0, 256, 1, 12, 32), (3, 0, 2, 2, 11, 3)])
def test_fast_sampler_equals_naive(channels, classes, levels, layers, size, n):
    """The cached sampler gives the naive sampler's images. The last two cases have images larger
    than the reach of the stacks (1 + layers + 3 rows and columns), so the cached sampler crops
    rows above and columns to the left, and its windows must still be right. The row or column
    at the very edge of the reach has a small influence on a pixel, so a window one row short
    changes only some images: 32 of them (a window one row short changed 3 to 8 of 32 here)."""
    model = make("gated", channels, classes, levels, layers=layers, size=size, seed=1).eval()
    reach = 3 + layers                                    # the 7x7 first layer reaches 3, others 1
    assert size > reach + 1 or size == S
    y = torch.arange(n) % classes if classes else None
    naive = model.sample(n, y, generator=torch.Generator().manual_seed(7), naive=True)
    fast = model.sample(n, y, generator=torch.Generator().manual_seed(7))
    assert torch.equal(naive, fast)
    assert len(naive.unique()) > 1
    grid = torch.arange(levels) / (levels - 1) * 2 - 1                # the API's values
    assert torch.isin(fast, grid).all()


def test_completion_keeps_the_given_pixels():
    model = make("gated", seed=2).eval()
    given_ = torch.randint(0, 256, (2, 1, S, S)) / 127.5 - 1
    start = 3 * S + 2                                               # the first 26 pixels are given
    for naive in (False, True):
        out = model.sample(2, known=given_, start=start, generator=torch.Generator().manual_seed(3),
                           naive=naive)
        assert torch.equal(out.flatten(1)[:, :start], given_.flatten(1)[:, :start])
        assert not torch.equal(out.flatten(1)[:, start:], given_.flatten(1)[:, start:])


@pytest.mark.slow
def test_learns_a_distribution_of_known_entropy():
    """4x4 binary images, uniform over 4 fixed patterns: the entropy is ln 4 = 1.386 nats per image.
    A few seconds of training bring the NLL close to it."""
    torch.manual_seed(0)
    patterns = torch.randint(0, 2, (4, 1, 4, 4))
    patterns[:, 0, 0, :2] = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])   # all four differ early
    model = make("gated", levels=2, size=4, layers=3, width=16)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for step in range(300):
        x = patterns[torch.randint(0, 4, (64,))] * 2.0 - 1
        loss, _ = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        nll = model.nll(patterns * 2.0 - 1).mean().item()
    assert nll == pytest.approx(math.log(4), abs=0.1)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(r=st.integers(0, 6), c=st.integers(0, 6), seed=st.integers(0, 1000))
def test_a_prior_over_codes_is_causal_and_its_samplers_agree(r, c, seed):
    """A prior over a VQ-VAE's 7x7 code grid is this PixelCNN with one channel of K = 16 levels:
    the output at (r, c) sees no code at (r, c) or after it, and the cached sampler draws the
    naive sampler's codes, each one of the K."""
    model = make("gated", 1, 0, 16, size=7, seed=seed % 5)
    grad = input_gradient(model, r, c, 0, seed)
    later = torch.zeros(7, 7, dtype=torch.bool)
    later.view(-1)[r * 7 + c:] = True
    assert grad[:, later].sum().item() == 0
    if seed % 5 == 0 and r == c == 3:
        naive = model.eval().sample(3, generator=torch.Generator().manual_seed(1), naive=True)
        fast = model.sample(3, generator=torch.Generator().manual_seed(1))
        assert torch.equal(naive, fast) and model.to_int(fast).max() < 16
