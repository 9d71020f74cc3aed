"""compare.py: its figures are right on cases with known answers, its intervals cover what they
claim, every rule gives each of its outcomes on hand-made numbers, and the whole pipeline (--quick)
runs end to end."""
import json, math, os, re, subprocess, sys, zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import common
from conftest import write_idx
import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rotation(d, seed):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 6), seed=st.integers(0, 10 ** 6))
def test_frechet_of_commuting_gaussians_is_the_closed_form(d, seed):
    g = torch.Generator().manual_seed(seed)
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    a, b = torch.rand(d, generator=g, dtype=torch.float64) * 3, torch.rand(d, generator=g, dtype=torch.float64) * 3
    q = rotation(d, seed)           # same eigenvectors: S1 S2 = S2 S1, and W2^2 has a closed form
    s1, s2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    expected = ((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    assert compare.frechet_gaussians(mu1, s1, mu2, s2) == pytest.approx(float(expected), rel=1e-7, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 6), seed=st.integers(0, 10 ** 6))
def test_trace_sqrt_product_for_any_covariances(d, seed):
    g = torch.Generator().manual_seed(seed)
    m1, m2 = (torch.randn(d, d + 2, generator=g, dtype=torch.float64) for _ in range(2))
    s1, s2 = m1 @ m1.T, m2 @ m2.T   # generic: they do not commute
    # S1 S2 is similar to a PSD matrix: real eigenvalues >= 0; tr sqrt = sum of their square roots
    eig = np.linalg.eigvals((s1 @ s2).numpy())
    assert np.abs(eig.imag).max() < 1e-6 * np.abs(eig).max()
    expected = np.sqrt(np.clip(eig.real, 0, None)).sum()
    assert float(compare.trace_sqrt_product(s1, s2)) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_samples():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    fd = lambda a, b: compare.frechet_gaussians(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))
    assert fd(x[:10000], x[10000:]) < 0.01                                  # same law: near 0
    shifted = x[10000:] * 2 + torch.tensor([1.0, 0, 0], dtype=torch.float64)   # N(e1, 4 I) vs N(0, I)
    assert fd(x[:10000], shifted) == pytest.approx(1 + 3 * (2 - 1) ** 2, rel=0.03)


def figures(real, fake, pred=None, labels=None, reps=0, seed=0):
    """measure() on feature sets directly (every image the same edge energy)."""
    ref = compare.Reference(real, torch.ones(len(real)), 10, reps)
    pred = torch.zeros(len(fake), dtype=torch.long) if pred is None else pred
    return compare.measure(ref, fake, pred, torch.ones(len(fake)), labels, seed)


def test_precision_and_recall():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 4, generator=g, dtype=torch.float64)
    pr = lambda fake: [float(figures(real, fake)[k][0]) for k in ("precision", "recall")]
    assert pr(real.clone()) == [1.0, 1.0]
    assert pr(real + 100) == [0.0, 0.0]
    # samples from one corner of the real data: faithful (precision 1) but not diverse (low recall)
    p, r = pr(real[real[:, 0] > 1.0])
    assert p == 1.0 and r < 0.5
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]], dtype=torch.float64)   # the k-NN radii
    assert compare.kth_radius(torch.cdist(x, x), 1).tolist() == [1, 1, 2, 3, 4]
    assert compare.kth_radius(torch.cdist(x, x), 2).tolist() == [3, 2, 3, 4, 7]


def test_half_samples_are_distinct_points():
    """Row 0 is every index; every other row n // 2 distinct indices (a copy of a point would be
    its own nearest neighbour), the rows differ, and a seed repeats them."""
    rows = compare.halves(101, 20, seed=3)
    assert torch.equal(rows[0], torch.arange(101))
    assert all(len(r) == 50 and len(set(r.tolist())) == 50 and r.max() < 101 for r in rows[1:])
    assert len({tuple(r.tolist()) for r in rows[1:]}) == 20
    assert all(torch.equal(a, b) for a, b in zip(rows, compare.halves(101, 20, seed=3)))


def test_precision_and_recall_of_a_collapsed_generator():
    """Near-copies of one real image: every sample lies in the real manifold (precision 1) but
    covers almost none of it (recall at most (k + 1) / N). With the radii exchanged the figures
    swap roles."""
    g = torch.Generator().manual_seed(1)
    real = torch.randn(300, 4, generator=g, dtype=torch.float64)
    m = figures(real, real[:1] + 1e-3 * torch.randn(300, 4, generator=g, dtype=torch.float64))
    assert float(m["precision"][0]) == 1.0 and float(m["recall"][0]) <= 4 / 300


def test_within_class_spread_and_entropy_see_near_copies_and_missing_classes():
    g = torch.Generator().manual_seed(0)
    feats, pred = torch.randn(40, 3, generator=g, dtype=torch.float64), torch.arange(40) % 4
    copies = feats[:1].repeat(40, 1) + 1e-3 * torch.randn(40, 3, generator=g, dtype=torch.float64)
    spread = lambda f, p: float(figures(f, f, p)["spread"][0])
    assert spread(copies, pred) < 0.01 * spread(feats, pred)
    two = torch.tensor([[0.0, 0.0], [3.0, 4.0], [9.0, 9.0]], dtype=torch.float64)
    assert spread(two, torch.tensor([1, 1, 2])) == pytest.approx(5.0)   # one pair, distance 5
    assert compare.entropy(torch.arange(50) % 10, 10) == pytest.approx(math.log(10))
    assert compare.entropy(torch.zeros(50, dtype=torch.long), 10) == 0.0
    assert compare.entropy(torch.arange(50) % 5, 10) == pytest.approx(math.log(5))


def test_edge_ratio_sees_blur_but_not_per_pixel_noise():
    """A blur lowers the edge energy; isolated per-pixel noise (a model's sampling noise), which
    raises a plain neighbour difference, is removed by the median filter before edges count."""
    x, _ = common.synthetic_digits(16, seed=0)
    blurred = torch.nn.functional.avg_pool2d(x.float(), 3, 1, 1).round().to(torch.uint8)
    assert compare.edge_energy(blurred).mean() < 0.8 * compare.edge_energy(x).mean()
    g = torch.Generator().manual_seed(0)
    speckle = (torch.rand(blurred.shape, generator=g) < 0.03) * 255
    noisy = torch.maximum(blurred, speckle.to(torch.uint8))
    plain = lambda v: float(((v.float()[..., 1:] - v.float()[..., :-1]) ** 2).mean())
    assert plain(noisy) > plain(x)                           # unfiltered: the noise looks sharp
    assert compare.edge_energy(noisy).mean() < 0.85 * compare.edge_energy(x).mean()


def test_kid_is_the_unbiased_mmd_of_the_cubic_kernel_on_standardised_features():
    """Row 0 of the KID equals the formula written out pair by pair on features standardised by
    the reference's mean and deviation, and over many draws from one law its mean is 0 within its
    standard error (the plain average over all pairs is biased upwards and fails this)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 2, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g, dtype=torch.float64)
    za, zb = (a - a.mean(0)) / a.std(0), (b - a.mean(0)) / a.std(0)
    k = lambda u, v: (float(u @ v) / 2 + 1) ** 3
    aa = sum(k(za[i], za[j]) for i in range(4) for j in range(4) if i != j) / 12
    bb = sum(k(zb[i], zb[j]) for i in range(3) for j in range(3) if i != j) / 6
    ab = sum(k(zb[i], za[j]) for i in range(3) for j in range(4)) / 12
    assert float(figures(a, b)["kid"][0]) == pytest.approx(aa + bb - 2 * ab, rel=1e-12)
    draws = torch.tensor([float(figures(torch.randn(50, 4, generator=g, dtype=torch.float64),
                                        torch.randn(20, 4, generator=g, dtype=torch.float64))["kid"][0])
                          for _ in range(300)])
    assert abs(float(draws.mean())) < 3 * float(draws.std()) / 300 ** 0.5
    shifted = figures(torch.randn(200, 4, generator=g, dtype=torch.float64),
                      torch.randn(200, 4, generator=g, dtype=torch.float64) + 1)["kid"][0]
    assert shifted > 10 * float(draws.std())


@settings(max_examples=10, deadline=None)
@given(dim=st.integers(0, 3), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 10 ** 6))
def test_standardised_kid_does_not_depend_on_a_features_scale(dim, scale, seed):
    """Scaling one feature of both sets by any factor leaves KID and its resamples unchanged
    (on raw features a feature's scale would weigh it in the kernel)."""
    g = torch.Generator().manual_seed(seed)
    real, fake = torch.randn(30, 4, generator=g, dtype=torch.float64), torch.randn(20, 4, generator=g, dtype=torch.float64) + 0.5
    s = torch.ones(4, dtype=torch.float64)
    s[dim] = scale
    assert torch.allclose(figures(real, fake, reps=20)["kid"], figures(real * s, fake * s, reps=20)["kid"],
                          rtol=1e-7, atol=1e-9)


def test_the_real_images_against_themselves():
    """The reference scored as if it were samples: Frechet distance 0, KID at most 0, precision and
    recall 1, edge ratio 1, accuracy the judge's own; each figure inside its interval."""
    x, y = common.synthetic_digits(200, seed=5)
    judge = compare.train_classifier(x, y, epochs=1, seed=0)
    m = compare.measure_images(judge, compare.reference(judge, x, 200), x, y.long())
    iv = {k: compare.interval(v) for k, v in m.items()}
    assert iv["fd"][0] < 1e-6 and iv["kid"][0] <= 0      # the cross term pairs each image with itself
    assert iv["precision"][0] == iv["recall"][0] == 1.0 and iv["edges"][0] == pytest.approx(1.0)
    assert iv["accuracy"][0] == pytest.approx(float((judge.embed(x)[1] == y).double().mean()))
    assert all(v[1] <= v[0] <= v[2] for v in iv.values())


def test_interval_centres_the_resamples_on_the_estimate():
    v = torch.tensor([10.0] + [1.0 + 0.01 * i for i in range(101)], dtype=torch.float64)
    lo, hi = compare.interval(v)[1:]          # resamples 1.00..2.00, mean 1.5: shifted by 8.5
    assert lo == pytest.approx(10 - 0.5 + 0.025, abs=1e-9) and hi == pytest.approx(10 + 0.5 - 0.025, abs=1e-9)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, generator=g, dtype=torch.float64)
    lo, hi = compare.interval(compare.resample_means(x, 1000))[1:]
    assert (hi - lo) / 2 == pytest.approx(1.96 * float(x.std()) / 20, rel=0.15)


def test_half_sample_intervals_cover_the_expected_precision_recall_and_distance():
    """A case with a known answer: real N(0, I) and generated N(0.5 e1, 1.44 I) in 8 dimensions,
    100 points each. The expected figure at that size comes from 150 independent draws; the 95%
    interval of one draw (both sets resampled) must cover it in at least 85% of 40 draws (a
    binomial interval treating the hits as independent covers recall about half as often)."""
    n, d = 100, 8
    g = torch.Generator().manual_seed(0)
    draw = lambda: (torch.randn(n, d, generator=g, dtype=torch.float64),
                    torch.randn(n, d, generator=g, dtype=torch.float64) * 1.2 + torch.eye(d)[0] * 0.5)
    keys = ("precision", "recall", "fd")
    truth = torch.tensor([[float(figures(*draw())[k][0]) for k in keys] for _ in range(150)]).mean(0)
    hits = torch.zeros(3)
    for t in range(40):
        m = figures(*draw(), reps=200, seed=t)
        hits += torch.tensor([compare.interval(m[k])[1] <= truth[i] <= compare.interval(m[k])[2]
                              for i, k in enumerate(keys)], dtype=torch.float32)
    assert (hits / 40 >= 0.85).all(), hits / 40


# -- the rules: hand-made numbers, every outcome

def test_the_two_rules_and_the_verdict():
    b, nw = compare.better, compare.not_worse
    assert b([0.2, 0.1, 0.3]) == 1 and b([-0.2, -0.3, -0.1]) == -1 and b([0.1, -0.1, 0.3]) == 0
    assert b([0.2, 0.1, 0.3], higher=False) == -1 and b([-0.2, -0.3, -0.1], higher=False) == 1
    assert nw([-0.01, -0.04, 0.02], 0.05) == 1            # worse end inside the margin
    assert nw([-0.2, -0.3, -0.1], 0.05) == -1             # wholly beyond it
    assert nw([-0.05, -0.1, 0.0], 0.05) == 0              # straddles it
    assert nw([0.01, -0.02, 0.04], 0.05, higher=False) == 1 and nw([0.2, 0.1, 0.3], 0.05, higher=False) == -1
    v = compare.verdict
    assert v([1, 1]) == "supported" and v([1, 0]) == v([0, 0]) == "undecided"
    assert v([1, -1]) == v([-1, 0]) == "contradicted"


def test_across_seeds_a_part_holds_only_if_it_holds_with_every_seed():
    per_seed = lambda *parts: [("x", [(p, "") for p in parts])]
    out = compare.across_seeds([per_seed(1, 1), per_seed(1, 1), per_seed(1, 1)])
    assert out == [("supported", ["x", "x", "x"], [(1, 1, 1), (1, 1, 1)])]
    assert compare.across_seeds([per_seed(1, 1), per_seed(1, 0)])[0][0] == "undecided"
    assert compare.across_seeds([per_seed(1, -1), per_seed(1, -1)])[0][0] == "contradicted"
    assert compare.across_seeds([per_seed(1, -1), per_seed(1, 1)])[0][0] == "undecided"


def fig(v, spread=0.01, seed=0):
    """A figure's rows: v, then 400 resamples spread uniformly over v +- spread."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.tensor([float(v)], dtype=torch.float64),
                      v + spread * (2 * torch.rand(400, generator=g, dtype=torch.float64) - 1)])


SETS = ["vae", "vae-mean", "pixelcnn", "ddpm", "ddpm-uncond", "ddpm-ddim", "ddpm-w0", "ddpm-w3",
        "ddpm-eps", "ddpm-x0", "ldm", "ldm-uncond", "vq", "real"]


def measured(**given):
    """One budget where every set ties with every other (0.5 +- 0.01 on every figure, 1 s per 100
    images, entropy 2.3 and spread 5), then the figures given as set__figure=value (ddpm_w3: set
    ddpm-w3) or a (value, spread) pair."""
    base = dict(fd=0.5, kid=0.5, precision=0.5, recall=0.5, accuracy=0.5, entropy=2.3, spread=5.0,
                edges=0.5, seconds=1.0)
    stats = {k: {f: fig(v, seed=zlib.crc32(f"{k}{f}".encode())) for f, v in base.items()} for k in SETS}
    for key, value in given.items():
        name, figure = key.split("__")
        value, spread = value if isinstance(value, tuple) else (value, 0.01)
        stats.setdefault(name.replace("_", "-"), {})[figure] = fig(value, spread, zlib.crc32(key.encode()))
    bits = {k: [1.0, 1.1, 0.9, 1.0] for k in ("pixelcnn", "vae", "ddpm", "vq")}
    training = {k: dict(seconds=240.0, images_seen=1000) for k in ("ldm", "ddpm")}
    return compare.Measured(stats, {"pixelcnn": 784, "ddpm": 20, "ddpm-ddim": 100}, bits, training,
                            {"decoder_floor_bpd": 0.3, "uniform_bits_per_dim": [1.0, 1.1, 0.9, 1.0]})


def outcome(rule, m=None, **given):
    m = m or measured(**given)
    parts = rule(m, 200) if rule in (compare.claim_likelihood, compare.claim_learned_prior) else rule(m)
    return compare.verdict([o for o, _ in parts])


def test_claim_1_is_never_supported_a_pixel_at_a_time():
    r = compare.claim_pixelcnn_faster
    assert outcome(r, pixelcnn__seconds=0.2) == outcome(r) == outcome(r, pixelcnn__seconds=5) == "contradicted"
    m = measured(pixelcnn__seconds=0.2)
    m.evals["pixelcnn"] = 1
    assert outcome(r, m) == "supported"
    m.evals["pixelcnn"] = 784
    assert "pixelcnn 0.20" in r(m)[1][1] and r(m)[1][0] == 1


def test_claim_2_the_default_sampler_must_reach_ddim_50():
    r = compare.claim_fewer_evaluations
    assert outcome(r) == "supported"                                     # ties on every figure
    assert outcome(r, ddpm__accuracy=0.4) == "contradicted"               # 0.1 short: beyond 0.03
    assert outcome(r, ddpm__fd=0.7) == "contradicted"                     # 40% worse: beyond 15%
    assert outcome(r, ddpm__recall=(0.45, 0.06)) == "undecided"           # too uncertain to say
    assert "784" in r(measured())[0][1]                                   # the counts are reported


def test_claim_3_ldm_cheaper_sampling_training_and_quality():
    r = compare.claim_ldm_cheaper
    assert outcome(r, ldm__seconds=0.2) == "supported"                    # 5x faster, quality alike
    assert outcome(r) == "contradicted"                                   # 2 x 1 s > 1 s
    assert outcome(r, ldm__seconds=(0.5, 0.3)) == "undecided"
    assert outcome(r, ldm__seconds=0.2, ldm__kid=0.9) == "contradicted"   # worse samples
    m = measured(ldm__seconds=0.2)
    m.training["ldm"]["seconds"] = 300.0                                  # the encoding pass: 25% more
    assert outcome(r, m) == "contradicted"


def test_claim_4_vae_samples_against_unconditional_ddpm():
    r = compare.claim_vae
    blur = dict(vae__seconds=0.01, vae__edges=0.3, vae__precision=0.3, vae__fd=0.9)
    assert outcome(r, **blur) == "supported"
    assert outcome(r, **dict(blur, vae__edges=0.7)) == "contradicted"     # sharper than DDPM's
    assert outcome(r, **dict(blur, vae__seconds=2.0)) == "contradicted"   # not fastest
    assert outcome(r, **dict(blur, ddpm__edges=0.1)) == "supported"       # the conditional set: not used
    assert outcome(r, **dict(blur, vae__precision=(0.5, 0.2))) == "undecided"


def test_claim_5_paired_bits_per_dim():
    r = compare.claim_likelihood
    m = measured()
    m.bits.update(pixelcnn=[1.0, 1.2, 0.9, 1.1], vae=[1.3, 1.5, 1.2, 1.4], ddpm=[2.0, 2.2, 1.9, 2.1])
    assert outcome(r, m) == "supported" and "0.300" in r(m, 200)[1][1]   # the floor is stated
    m.bits["vae"] = [0.8, 1.0, 0.7, 0.9]                                  # the VAE's bound is lower
    assert outcome(r, m) == "contradicted"
    m.bits["vae"] = [1.1, 1.1, 0.8, 1.2]                                  # scattered: no clear sign
    assert outcome(r, m) == "undecided"
    m.bits.update(vae=[1.0, 1.4, 0.6, 1.2, 0.8], ddpm=[3.0, 3.4, 2.6, 3.2, 2.8])
    m.bits["pixelcnn"] = [v - 0.01 for v in m.bits["vae"]]   # lower on each image, by less than their spread
    assert outcome(r, m) == "supported"                                   # paired: the images matched


def test_claim_6_eps_against_x0_on_four_figures():
    r = compare.claim_eps
    good = dict(ddpm_eps__accuracy=0.9, ddpm_eps__fd=0.1, ddpm_eps__precision=0.9, ddpm_eps__recall=0.9)
    assert outcome(r, **good) == "supported"
    assert outcome(r, **dict(good, ddpm_eps__precision=0.1)) == "contradicted"
    assert outcome(r, **dict(good, ddpm_eps__precision=0.5)) == "undecided"
    assert outcome(r) == "undecided"


def test_claim_7_guidance_accuracy():
    r = compare.claim_guidance
    assert outcome(r, ddpm_w3__accuracy=0.9) == "supported"
    assert outcome(r, ddpm_w0__accuracy=0.9) == "contradicted"
    assert outcome(r, ddpm_w3__accuracy=(0.52, 0.1)) == "undecided"


def test_claim_8_pixelcnn_against_unconditional_ddpm():
    r = compare.claim_pixelcnn_converges
    assert outcome(r, pixelcnn__fd=0.1, pixelcnn__recall=0.2) == "supported"
    assert outcome(r, pixelcnn__fd=0.9, pixelcnn__recall=0.2) == "contradicted"
    assert outcome(r, pixelcnn__fd=0.1, pixelcnn__recall=0.9) == "contradicted"
    assert outcome(r, pixelcnn__fd=0.1, pixelcnn__recall=0.2, ddpm__recall=0.1) == "supported"  # not the conditional set
    assert outcome(r, pixelcnn__fd=0.1) == "undecided"


def test_claim_9_difference_of_the_two_rises():
    r = compare.claim_ldm_data
    assert outcome(r, ldm__fd=0.1) == "undecided"                         # the data part: not measured
    small = dict(ldm__fd=0.1, ldm_small__fd=0.2, ddpm_small__fd=0.9)      # rises 0.1 and 0.4
    assert outcome(r, **small) == "supported"
    m = measured(**dict(small, ldm_small__fd=0.6))                        # rises 0.5 and 0.4
    assert outcome(r, m) == "contradicted"
    m = measured(**dict(small, ldm_small__fd=(0.5, 0.3)))                 # rise 0.4 +- 0.3
    assert outcome(r, m) == "undecided"
    m = measured(ldm__fd=0.9, ldm_small__fd=0.9, ddpm_small__fd=0.9)      # less data holds, not faster
    assert outcome(r, m) == "contradicted"


def test_claim_10_one_collapse_rule_for_every_family():
    r = compare.claim_mode_collapse
    assert outcome(r, vae__entropy=1.5) == "supported"                    # classes missing
    assert outcome(r, vae__spread=3.0) == "supported"                     # near-copies within classes
    assert outcome(r) == "contradicted"                                   # the VAE alike the floor
    assert outcome(r, vae__entropy=1.5, ddpm_uncond__spread=3.0) == "contradicted"
    assert outcome(r, vae__entropy=1.5, ddpm__spread=3.0) == "supported"  # the conditional set: not used
    assert outcome(r, vae__entropy=(2.24, 0.05)) == "undecided"
    assert compare.collapses(measured(pixelcnn__spread=3.0), "pixelcnn") == 1
    assert compare.collapses(measured(), "ldm-uncond") == -1


def test_claim_11_learned_prior_paired_against_uniform():
    """The two bounds differ per image by the prior's NLL minus h w log K: the paired interval
    decides, so a shift smaller than the images' own spread still counts."""
    r = compare.claim_learned_prior
    m = measured()
    m.extra["uniform_bits_per_dim"] = [1.0, 1.4, 0.6, 1.2, 0.8]
    m.bits["vq"] = [v - 0.01 for v in m.extra["uniform_bits_per_dim"]]
    assert outcome(r, m) == "supported" and "-0.010" in r(m, 200)[0][1]
    m.bits["vq"] = [v + 0.01 for v in m.extra["uniform_bits_per_dim"]]
    assert outcome(r, m) == "contradicted"
    m.bits["vq"] = [v + d for v, d in zip(m.extra["uniform_bits_per_dim"], [0.1, -0.1, 0.1, -0.1, 0])]
    assert outcome(r, m) == "undecided"


def test_every_claim_has_a_rule_and_every_rule_is_tested():
    assert len(compare.CLAIMS) == 11
    assert all(rule.__doc__ and rule.__name__ in open(__file__).read() for _, _, rule in compare.CLAIMS)


def test_the_judges_identity_changes_with_its_weights_and_its_settings():
    judge = compare.Classifier(1, 10)
    state = judge.state_dict()
    a = compare.identity(state, dict(epochs=12))
    assert compare.identity(state, dict(epochs=12)) == a and compare.identity(state, dict(epochs=11)) != a
    state = {k: v.clone() for k, v in state.items()}
    state["head.1.bias"][0] += 1e-3
    assert compare.identity(state, dict(epochs=12)) != a


@pytest.mark.slow
def test_quick_pipeline_end_to_end(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    x, y = common.synthetic_digits(300, seed=3)
    for prefix, sl in (("train", slice(0, 240)), ("t10k", slice(240, 300))):
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", x[sl, 0].numpy())
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", y[sl].numpy().astype(np.uint8))
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "compare.py"), "--quick", "--data", "mnist",
                           "--data-dir", str(d), "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("compare.md", "compare.json", "compare.png", "compare-curves.svg", "compare-likelihood.svg"):
        assert (out / name).stat().st_size > 0
    r = json.loads((out / "compare.json").read_text())
    assert sorted(r["verdicts"]) == ["16", "4"]                       # --quick: two budgets, in steps
    verdicts = {"supported", "contradicted", "undecided"}
    assert all(len(v) == 11 and {x[0] for x in v} <= verdicts for v in r["verdicts"].values())
    assert len(r["verdicts_with_seeds"]) == 11 and all(len(s) == 2 for _, s, _ in r["verdicts_with_seeds"])
    assert sorted(r["figures"]) == ["16/0", "16/1", "4/0"]            # two seeds at the largest budget
    e, t, f = r["evals"]["16/0"], r["training"]["16/0"], r["figures"]["16/0"]
    assert e["ddpm-ancestral"] == 2 * 50 and e["ddpm"] == 2 * compare.FAST[1] and e["ddpm-uncond"] == compare.FAST[1]
    assert e["pixelcnn"] == 28 * 28 and t["pixelcnn"]["steps"] == 16 and e["vq"] == 50
    assert t["ldm"]["steps"] == t["vq"]["steps"] == 8                   # half per stage
    assert t["ldm"]["images_seen"] == 8 * 64 + 8 * 64                   # both stages count
    assert "vae.py" in t["vq"]["command"] and "--codes" in t["vq"]["command"]
    assert "--train-limit 60" in t["ddpm-small"]["command"] and "ddpm-small" not in r["training"]["4/0"]
    assert "ddpm-ancestral" not in r["evals"]["16/1"]                   # slow samplers: one seed
    assert 0 <= r["bits_per_dim"]["16/0"]["pixelcnn"] <= 8.5 and "vq" in r["bits_per_dim"]["16/0"]
    assert all(v[1] <= v[0] + 1e-9 or k in ("precision", "recall") for q in f.values() for k, v in q.items())
    assert set(f) >= {"vae", "vae-mean", "pixelcnn", "ddpm", "ddpm-uncond", "ddpm-ddim", "ddpm-w0", "ddpm-w3",
                      "ddpm-eps", "ddpm-x0", "ldm", "ldm-uncond", "real", "ddpm-small", "ldm-small", "vq"}
    assert "accuracy" in f["ddpm"] and "accuracy" not in f["ddpm-uncond"] and "accuracy" in f["real"]
    specs = [json.loads(p.read_text()) for p in (out / "runs").glob("*/spec.json")]
    assert len(specs) == 25 and {s["judge_id"] for s in specs} == {r["judge"]}
    md = (out / "compare.md").read_text()
    assert "| PixelCNN |" in md and "not Inception FID" in md and "Seed spread at 16 steps" in md
    assert md.count("**Rule:** ") == 11 and "each part seed by seed" in md
    # a rerun keeps every finished job; with one job's result gone, it runs that job alone
    again = subprocess.run([sys.executable, os.path.join(ROOT, "compare.py"), "--quick", "--reuse", "--data", "mnist",
                            "--data-dir", str(d), "--out", str(out)], capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "25 of 25 jobs already done" in again.stdout and "compare: started" not in again.stdout
    assert json.loads((out / "compare.json").read_text())["figures"] == r["figures"]
    (out / "runs" / "vae-4steps" / "job.json").unlink()
    third = subprocess.run([sys.executable, os.path.join(ROOT, "compare.py"), "--quick", "--data", "mnist",
                            "--data-dir", str(d), "--out", str(out)], capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert third.returncode == 0, third.stderr[-2000:]
    assert re.findall(r"compare: started (\S+)", third.stdout) == ["vae-4steps"]
    # a job planned with another judge is not finished: a changed judge measures again
    spec = json.loads((out / "runs" / "vae-4steps" / "job.json").read_text())["spec"]
    assert compare.finished(spec) and not compare.finished(dict(spec, judge_id="0" * 16))
    # --score: the test split itself scores as the judge's test accuracy, distance 0, P = R = 1
    np.savez(tmp_path / "real.npz", images=x[240:].numpy(), labels=y[240:].numpy())
    scored = subprocess.run([sys.executable, os.path.join(ROOT, "compare.py"), "--score", str(tmp_path / "real.npz"),
                             "--data", "mnist", "--data-dir", str(d), "--out", str(out), "--reps", "0",
                             "--classifier-epochs", "1"], capture_output=True, text=True)
    assert scored.returncode == 0, scored.stderr
    s = json.loads((tmp_path / "real_score.json").read_text())
    assert s["accuracy"] == pytest.approx(r["judge_accuracy"]) and s["fd"] < 1e-6 and s["judge"] == r["judge"]
    assert s["precision"] == s["recall"] == 1.0
    # --samplers: every sampler of the quick DDPM at 2 and 3 evaluations, and ancestral at T = 50
    table = subprocess.run([sys.executable, os.path.join(ROOT, "compare.py"), "--samplers", str(out / "runs" / "ddpm-16steps"),
                            "--nfe", "2", "3", "--num-samples", "10", "--data", "mnist", "--data-dir", str(d),
                            "--out", str(out / "samplers"), "--classifier-epochs", "1", "--reps", "50"],
                           capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert table.returncode == 0, table.stderr[-2000:]
    rows = json.loads((out / "samplers" / "samplers.json").read_text())["rows"]
    assert [(row["sampler"], row["steps"], row["nfe"]) for row in rows] == [
        ("ddim", 2, 2), ("ddim", 3, 3), ("dpm", 2, 2), ("dpm", 3, 3), ("heun", 1, 1), ("heun", 2, 3), ("ddpm", 50, 50)]
    assert rows[0]["accuracy"] == rows[2]["accuracy"] and rows[0]["fd"] == pytest.approx(rows[2]["fd"], rel=1e-3)
    assert "| DPM-Solver++(2M) | 3 | 3 |" in (out / "samplers" / "samplers.md").read_text()
    # --curve: one run in stages (the second resumes the first), scored after each, judge reused
    curve = [sys.executable, os.path.join(ROOT, "compare.py"), "--quick", "--curve", "ddpm", "--data", "mnist",
             "--data-dir", str(d), "--out", str(out / "tiny"), "--flags", "--width 8 --timesteps 10 --batch-size 8"]
    staged = subprocess.run(curve + ["--at", "2", "1"], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert staged.returncode == 0, staged.stderr[-2000:]
    assert "classifier trained" not in staged.stdout and staged.stdout.count("resumed from") == 1
    c = json.loads((out / "tiny" / "curve.json").read_text())
    assert [(row["steps"], row["images_seen"]) for row in c["rows"]] == [(1, 8), (2, 16)]
    assert all(0 <= row["accuracy"] <= 1 and row["fd"] >= 0 for row in c["rows"])
    assert "| 2 | 16 |" in (out / "curves.md").read_text() and (out / "curves-ddpm.svg").stat().st_size > 0
    # a learning rate that ends with the run (--lr-schedule cosine): a run of its own per point
    cosine = [a if a != str(out / "tiny") else str(out / "tiny-cosine") for a in curve]
    cosine[-1] += " --lr-schedule cosine"
    separate = subprocess.run(cosine + ["--at", "2", "1"], capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert separate.returncode == 0, separate.stderr[-2000:]
    assert "resumed from" not in separate.stdout
    assert (out / "tiny-cosine" / "run-1" / "ckpt.pt").exists() and (out / "tiny-cosine" / "run-2" / "ckpt.pt").exists()
    assert [row["steps"] for row in json.loads((out / "tiny-cosine" / "curve.json").read_text())["rows"]] == [1, 2]


def test_unlabelled_data_is_one_line_error(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 1, 8, 8), np.uint8))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "compare.py"), "--quick", "--data",
                           str(tmp_path / "x.npy"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "labels" in proc.stderr


def test_curve_table_and_plot_put_each_point_where_it_belongs(tmp_path):
    """Two curves' curve.json -> curves.md (a row per point) and curves.svg, whose points sit on
    the panels' scales: 0 and 1 accuracy at the bottom and top, the most images seen at the right."""
    rows = lambda acc: [dict(steps=s, images_seen=32 * s, train_seconds=6.0 * s, sample_seconds=1.0, accuracy=a,
                             fd=f, precision=0.5, recall=0.25) for s, a, f in zip((100, 200), acc, (1000.0, 10.0))]
    for name, acc in (("a", (0.0, 1.0)), ("b", (0.5, 0.75))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "curve.json").write_text(json.dumps(dict(
            command=f"python compare.py --curve ddpm --out {name}", script="ddpm", flags=["--conditional"],
            machine="a CPU", images_per_s=100.0, samples=200, rows=rows(acc))))
    compare.plot_curves(str(tmp_path))
    md = (tmp_path / "curves.md").read_text()
    assert "| 200 | 6,400 | 20.0 | 1.000 | 10.0 | 0.50 | 0.25 |" in md and "--out b" in md
    svg = (tmp_path / "curves-ddpm.svg").read_text()
    points = [tuple(float(v) for v in m) for m in re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"', svg)]
    assert len(points) == 8                                 # 2 curves x 2 points x 2 panels
    w, h, pad = 420, 300, 50
    (x1, y1), (x2, y2) = points[0], points[1]               # curve a, accuracy panel: 0 then 1
    assert (x1, y1) == (pytest.approx(pad + (w - 1.5 * pad) / 2), pytest.approx(h - pad))
    assert (x2, y2) == (pytest.approx(pad + w - 1.5 * pad), pytest.approx(pad))
    assert points[2][1] == pytest.approx(h - pad - (h - 2 * pad) / 2)   # curve b's accuracy 0.5
    fd_a = points[4:6]                                      # Frechet 1000 then 10 on a log scale 1..3
    assert fd_a[0][1] == pytest.approx(pad) and fd_a[1][1] == pytest.approx(h - pad)



def test_gaussian_blur_baseline_is_a_normalised_gaussian():
    from compare import gaussian_blur
    x = torch.zeros(1, 1, 15, 15)
    x[0, 0, 7, 7] = 1
    b = gaussian_blur(x, 1.5)
    assert b.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert b[0, 0, 7, 7].item() == pytest.approx(1 / (2 * math.pi * 1.5 ** 2), rel=0.02)
    assert torch.allclose(b, b.transpose(2, 3), atol=1e-7)
    flat = torch.full((1, 1, 6, 6), 0.3)
    assert torch.allclose(gaussian_blur(flat, 2), flat, atol=1e-6)   # edges replicated
