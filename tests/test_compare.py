"""compare.py: the Frechet distance and precision/recall are right on cases with known answers,
and the whole pipeline (--quick) runs end to end and writes its three files."""
import json, math, os, re, subprocess, sys

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
    assert compare.frechet_distance(x[:10000], x[10000:]) < 0.01            # same law: near 0
    shifted = x[10000:] * 2 + torch.tensor([1.0, 0, 0], dtype=torch.float64)   # N(e1, 4 I) vs N(0, I)
    assert compare.frechet_distance(x[:10000], shifted) == pytest.approx(1 + 3 * (2 - 1) ** 2, rel=0.03)


def test_precision_and_recall():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 4, generator=g)
    assert compare.precision_recall(real, real.clone()) == (1.0, 1.0)
    assert compare.precision_recall(real, real + 100) == (0.0, 0.0)
    # samples from one corner of the real data: faithful (precision 1) but not diverse (low recall)
    corner = real[real[:, 0] > 1.0]
    p, r = compare.precision_recall(real, corner)
    assert p == 1.0 and r < 0.5


def test_edge_strength_sees_blur():
    x, _ = common.synthetic_digits(16, seed=0)
    blurred = torch.nn.functional.avg_pool2d(x.float(), 3, 1, 1).round().to(torch.uint8)
    assert compare.edge_strength(blurred) < 0.8 * compare.edge_strength(x)


def test_labels_are_drawn():
    strip = compare.label_image("DDPM", 40)
    assert strip.shape == (16, 40) and (strip == 255).sum() > 20 and (strip[:, 20:] == 255).sum() > 0


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
    assert sorted(r["verdicts"]) == ["16.0", "4.0"]                   # --quick: two budgets, in steps
    verdicts = {"supported", "contradicted", "depends", "tie"}
    assert all(len(v) == 11 and {x[1] for x in v} <= verdicts for v in r["verdicts"].values())
    m = r["measured"]["16.0"]
    assert m["evals"]["ddpm-ancestral"] == 2 * 50 and m["evals"]["ddpm"] == 2 * compare.FAST[1]
    assert m["evals"]["pixelcnn"] == 28 * 28 and m["training"]["pixelcnn"]["steps"] == 16
    assert m["training"]["ldm"]["steps"] == m["training"]["vq"]["steps"] == 8  # half per stage
    assert "vae.py" in m["training"]["vq"]["command"] and "--codes" in m["training"]["vq"]["command"]
    assert len(m["bits_per_dim"]["vq"]) == len(m["uniform_bits_per_dim"]) == 8 and m["evals"]["vq"] == 50
    assert "--data-dir" in m["training"]["ddpm-small"]["command"] and "data-60" in m["training"]["ddpm-small"]["command"]
    assert "ddpm-small" not in r["measured"]["4.0"]["quality"]        # the data-size runs: largest budget
    assert 0 <= np.mean(m["bits_per_dim"]["pixelcnn"]) <= 8.5 and len(m["bits_per_dim"]["ddpm"]) == 8
    assert all(v[1] <= v[2] for q in m["quality"].values() for v in q.values())
    assert set(m["quality"]) >= {"vae", "vae-mean", "pixelcnn", "ddpm", "ddpm-ddim", "ddpm-w0", "ddpm-w3",
                                 "ddpm-eps", "ddpm-x0", "ldm", "real", "ddpm-small", "ldm-small", "vq"}
    md = (out / "compare.md").read_text()
    assert "| PixelCNN |" in md and "not Inception FID" in md and "Verdicts that change with the budget" in md
    # a rerun keeps every finished job; with one job's result gone, it runs that job alone
    again = subprocess.run([sys.executable, os.path.join(ROOT, "compare.py"), "--quick", "--reuse", "--data", "mnist",
                            "--data-dir", str(d), "--out", str(out)], capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "16 of 16 jobs already done" in again.stdout and "compare: started" not in again.stdout
    assert json.loads((out / "compare.json").read_text())["measured"] == r["measured"]
    (out / "runs" / "vae-4steps" / "job.json").unlink()
    third = subprocess.run([sys.executable, os.path.join(ROOT, "compare.py"), "--quick", "--data", "mnist",
                            "--data-dir", str(d), "--out", str(out)], capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert third.returncode == 0, third.stderr[-2000:]
    assert re.findall(r"compare: started (\S+)", third.stdout) == ["vae-4steps"]
    # --score: the test split itself scores as the classifier's test accuracy, distance 0, P = R = 1
    np.savez(tmp_path / "real.npz", images=x[240:].numpy(), labels=y[240:].numpy())
    scored = subprocess.run([sys.executable, os.path.join(ROOT, "compare.py"), "--score", str(tmp_path / "real.npz"),
                             "--data", "mnist", "--data-dir", str(d), "--out", str(out)], capture_output=True, text=True)
    assert scored.returncode == 0, scored.stderr
    s = json.loads((tmp_path / "real_score.json").read_text())
    assert s["accuracy"] == pytest.approx(r["classifier"]["test_accuracy"]) and s["fd"] < 1e-6
    assert s["precision"] == s["recall"] == 1.0
    # --samplers: every sampler of the quick DDPM at 2 and 3 evaluations, and ancestral at T = 50
    table = subprocess.run([sys.executable, os.path.join(ROOT, "compare.py"), "--samplers", str(out / "runs" / "ddpm-16steps"),
                            "--nfe", "2", "3", "--num-samples", "10", "--data", "mnist", "--data-dir", str(d),
                            "--out", str(out / "samplers")], capture_output=True, text=True, timeout=600,
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


def test_within_class_spread_sees_near_copies():
    g = torch.Generator().manual_seed(0)
    feats, pred = torch.randn(40, 3, generator=g, dtype=torch.float64), torch.arange(40) % 4
    copies = feats[pred == 0][:1].repeat(40, 1) + 1e-3 * torch.randn(40, 3, generator=g, dtype=torch.float64)
    assert compare.within_class_spread(copies, pred) < 0.01 * compare.within_class_spread(feats, pred)
    two = torch.tensor([[0.0, 0.0], [3.0, 4.0], [9.0, 9.0]], dtype=torch.float64)
    assert compare.within_class_spread(two, torch.tensor([1, 1, 2])) == pytest.approx(5.0)   # one pair, distance 5


def test_precision_and_recall_of_a_collapsed_generator():
    """A generator that draws near-copies of one real image: every sample lies in the real
    manifold (precision 1) but covers almost none of it (recall at most (k + 1) / N). With the two
    radii exchanged the figures swap roles."""
    g = torch.Generator().manual_seed(1)
    real = torch.randn(300, 4, generator=g)
    fake = real[:1] + 1e-3 * torch.randn(300, 4, generator=g)
    p, r = compare.precision_recall(real, fake, k=3)
    assert p == 1.0 and r <= 4 / 300


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


# -- uncertainty: exact binomial intervals, an unbiased KID, bootstrap intervals

def binomial_tail(k, n, p, upper):
    """P(X >= k) (upper) or P(X <= k), X ~ Binomial(n, p), summed directly."""
    ks = range(k, n + 1) if upper else range(0, k + 1)
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in ks)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), frac=st.floats(0, 1))
def test_binomial_interval_is_clopper_pearson(n, frac):
    """Each end is where its tail holds exactly 2.5%: P(X >= k | lower) = 0.025 and
    P(X <= k | upper) = 0.025; k = 0 and k = n have the closed forms 1 - 0.025^(1/n)."""
    k = round(frac * n)
    lo, hi = compare.binomial_interval(k, n)
    assert lo <= k / n <= hi
    if k == 0:
        assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-9)
    else:
        assert binomial_tail(k, n, lo, upper=True) == pytest.approx(0.025, rel=1e-6)
    if k == n:
        assert hi == 1 and lo == pytest.approx(0.025 ** (1 / n), rel=1e-9)
    else:
        assert binomial_tail(k, n, hi, upper=False) == pytest.approx(0.025, rel=1e-6)


def test_kid_is_the_unbiased_mmd_of_the_cubic_kernel():
    """On three and four points the estimate equals the formula written out pair by pair, and
    over many draws from one law its mean is 0 within its standard error (the plain average
    over all pairs, diagonal included, is biased upwards and fails this)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    k = lambda u, v: (float(u @ v) / 2 + 1) ** 3
    aa = sum(k(a[i], a[j]) for i in range(3) for j in range(3) if i != j) / 6
    bb = sum(k(b[i], b[j]) for i in range(4) for j in range(4) if i != j) / 12
    ab = sum(k(a[i], b[j]) for i in range(3) for j in range(4)) / 12
    assert compare.kid(a, b) == pytest.approx(aa + bb - 2 * ab, rel=1e-12)
    draws = torch.tensor([compare.kid(torch.randn(50, 4, generator=g), torch.randn(20, 4, generator=g))
                          for _ in range(400)])
    assert abs(float(draws.mean())) < 3 * float(draws.std()) / 20
    shifted = compare.kid(torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g) + 1)
    assert shifted > 10 * float(draws.std())


def test_bootstrap_interval_of_a_mean_is_about_two_standard_errors():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, generator=g, dtype=torch.float64)
    lo, hi = compare.bootstrap(lambda i: float(x[i].mean()), len(x), reps=1000)
    se = float(x.std()) / 20
    assert lo < float(x.mean()) < hi
    assert (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.15)


def test_measure_of_the_real_images_themselves():
    """Test images scored as if they were samples: distances 0 inside their intervals, precision
    and recall 1, edge ratio exactly 1, accuracy the judge's own."""
    x, y = common.synthetic_digits(200, seed=5)
    judge = compare.train_classifier(x, y, epochs=1, seed=0)
    real = compare.real_reference(judge, x, 200)
    m = compare.measure(judge, real, x, y.long())
    assert m["fd"][0] < 1e-6 and m["kid"][1] <= 1e-9 <= m["kid"][2] + 1e-9
    assert m["precision"][0] == m["recall"][0] == 1.0 and m["edge_ratio"][0] == pytest.approx(1.0)
    _, pred = judge.embed(x)
    assert m["accuracy"][0] == pytest.approx(float((pred == y).double().mean()))
    # every interval holds its value, but the Frechet distance's: resampling adds spread, so its
    # bootstrap sits above a distance near 0 (biased upwards; the rules use the KID for that)
    assert all(v[1] <= v[0] <= v[2] for k, v in m.items() if k != "fd") and m["fd"][1] > m["fd"][0]


# -- the rules: hand-made numbers, every outcome

def test_better_needs_intervals_apart_and_verdict_combines_parts():
    assert compare.better([0.9, 0.85, 0.95], [0.5, 0.4, 0.6]) == 1
    assert compare.better([0.9, 0.85, 0.95], [0.5, 0.4, 0.6], higher=False) == -1
    assert compare.better([0.5, 0.4, 0.6], [0.9, 0.85, 0.95]) == -1
    assert compare.better([0.7, 0.55, 0.8], [0.5, 0.4, 0.6]) == 0          # overlap: a tie
    v = compare.verdict
    assert v([1, 1]) == v([1, 0]) == "supported" and v([-1, 0]) == v([-1]) == "contradicted"
    assert v([1, -1, 0]) == "depends" and v([0, 0]) == "tie"


def iv(v, spread=0.01):
    return [v, v - spread, v + spread]


def measurements(**q):
    """A budget's measurements where every model ties with every other (value 0.5 +- 0.01
    everywhere, the same timings), then the figures given: q = {"model.figure": value or [v, lo, hi]}."""
    models = ["vae", "vae-mean", "pixelcnn", "ddpm", "ddpm-ddim", "ddpm-w0", "ddpm-w3", "ddpm-eps",
              "ddpm-x0", "ldm", "real"]
    figures = ["accuracy", "precision", "recall", "fd", "kid", "edge_ratio"]
    m = dict(quality={k: {f: iv(0.5) for f in figures} for k in models},
             seconds_per_100={k: iv(1.0) for k in ("vae", "pixelcnn", "ddpm", "ddpm-ddim", "ldm")},
             evals={"pixelcnn": 784, "ddpm": 20, "ddpm-ddim": 100, "vae": 1, "ldm": 20},
             bits_per_dim={k: [1.0, 1.1, 0.9, 1.0] for k in ("pixelcnn", "vae", "ddpm")},
             decoder_floor_bpd=0.3)
    for key, value in q.items():
        model, figure = key.split(".")
        target = m["seconds_per_100"] if figure == "seconds" else m["quality"][model]
        target[model if figure == "seconds" else figure] = value if isinstance(value, list) else iv(value)
    return m


def outcome(rule, **q):
    """rule's verdict on measurements(...), keywords as model__figure (ddpm_w3: model ddpm-w3)."""
    named = {k.split("__")[0].replace("_", "-") + "." + k.split("__")[1]: v for k, v in q.items()}
    return rule(measurements(**named))[0]


def test_claim_1_pixelcnn_faster_is_at_best_depends():
    r = compare.claim_pixelcnn_faster
    assert outcome(r, pixelcnn__seconds=0.2) == "depends"
    assert outcome(r, pixelcnn__seconds=5.0) == "contradicted"
    assert outcome(r) == "tie"


def test_claim_2_uses_the_default_sampler_only_where_it_reaches_ddim():
    r = compare.claim_fewer_evaluations
    assert outcome(r) == "supported"                                   # 784 / 20 >= 10
    m = measurements(**{"ddpm.accuracy": 0.2})                         # the default falls short
    m["evals"]["ddpm-ddim"] = 50
    assert r(m)[0] == "supported" and "DDIM 50" in r(m)[1]             # 784 / 50 >= 10
    m["evals"]["ddpm-ddim"] = 100
    assert r(m)[0] == "depends"                                        # 784 / 100: 7.8x
    m["evals"]["ddpm-ddim"] = 1000
    assert r(m)[0] == "contradicted"


def test_claim_3_ldm_needs_2x_faster_sampling_and_no_worse_samples():
    r = compare.claim_ldm_cheaper
    assert outcome(r, ldm__seconds=0.2) == "supported"                 # 5x faster, KID tie
    assert outcome(r, ldm__seconds=0.2, ldm__kid=0.9) == "depends"     # faster, worse samples
    assert outcome(r, ldm__seconds=0.8, ldm__kid=0.9) == "contradicted"
    assert outcome(r, ldm__seconds=0.8, ldm__kid=0.1) == "depends"     # better, not 2x faster
    assert outcome(r, ldm__seconds=[0.5, 0.3, 0.7]) == "supported"     # a tie on 2x: quality holds


def test_claim_4_vae_samples_against_ddpm():
    r = compare.claim_vae
    blur = dict(vae__seconds=0.01, vae__edge_ratio=0.8, ddpm__edge_ratio=1.0, vae__precision=0.3, vae__kid=0.9)
    assert outcome(r, **blur) == "supported"
    assert outcome(r, **dict(blur, vae__edge_ratio=1.3)) == "depends"    # speckled, not blurry
    assert outcome(r, **dict(blur, vae__edge_ratio=1.2, ddpm__edge_ratio=1.5)) == "depends"  # both speckled
    assert outcome(r, vae__seconds=3.0, vae__edge_ratio=1.3, vae__precision=0.9, vae__kid=0.1) == "contradicted"
    assert outcome(r, vae__edge_ratio=0.5, ddpm__edge_ratio=0.5) == "tie"   # both blurry alike


def test_claim_5_paired_bits_per_dim():
    r = compare.claim_likelihood
    m = measurements()
    m["bits_per_dim"] = dict(pixelcnn=[1.0, 1.2, 0.9, 1.1], vae=[1.3, 1.5, 1.2, 1.4], ddpm=[2.0, 2.2, 1.9, 2.1])
    assert r(m)[0] == "supported" and "0.300" in r(m)[1]              # the floor is stated
    m["bits_per_dim"]["vae"] = [0.8, 1.0, 0.7, 0.9]                    # the VAE's bound is lower
    assert r(m)[0] == "depends"
    m["bits_per_dim"]["ddpm"] = [1.0, 1.2, 0.9, 1.1]
    assert r(m)[0] == "contradicted"
    m["bits_per_dim"]["vae"] = [1.1, 1.1, 0.8, 1.2]                    # scattered: no clear sign
    assert r(m)[0] == "tie"


def test_claim_6_eps_against_x0_on_three_figures():
    r = compare.claim_eps
    assert outcome(r, ddpm_eps__kid=0.1) == "supported"
    assert outcome(r, ddpm_x0__kid=0.1, ddpm_x0__recall=0.9) == "contradicted"
    assert outcome(r, ddpm_eps__kid=0.1, ddpm_x0__recall=0.9) == "depends"
    assert outcome(r) == "tie"


def test_claim_7_guidance_accuracy():
    r = compare.claim_guidance
    assert outcome(r, ddpm_w3__accuracy=0.9) == "supported"
    assert outcome(r, ddpm_w0__accuracy=0.9) == "contradicted"
    assert outcome(r, ddpm_w3__accuracy=[0.6, 0.45, 0.7]) == "tie"


def test_claims_8_to_10_on_convergence_data_and_diversity():
    r8, r9, r10 = compare.claim_pixelcnn_converges, compare.claim_ldm_data, compare.claim_mode_collapse
    assert outcome(r8, pixelcnn__kid=0.1, pixelcnn__recall=0.2) == "supported"
    assert outcome(r8, pixelcnn__kid=0.9, pixelcnn__recall=0.9) == "contradicted"
    assert outcome(r8, pixelcnn__kid=0.1, pixelcnn__recall=0.9) == "depends"
    assert outcome(r9, ldm__kid=0.1) == "supported" and outcome(r9) == "tie"
    m = measurements()
    m["quality"]["ldm-small"] = {"kid": iv(0.55)}                        # LDM's KID rises 0.05
    m["quality"]["ddpm-small"] = {"kid": iv(0.9)}                        # DDPM's rises 0.4
    assert r9(m)[0] == "supported"
    m["quality"]["ddpm-small"] = {"kid": iv(0.55)}
    assert r9(m)[0] == "tie"
    m["quality"]["ldm-small"] = {"kid": iv(0.9)}
    assert r9(m)[0] == "contradicted"
    assert outcome(r10, vae__recall=0.2) == "supported"                   # DDPM ties the floor
    assert outcome(r10, vae__recall=0.2, ddpm__recall=0.2) == "depends"
    assert outcome(r10, ddpm__recall=0.2) == "contradicted"


def test_claim_11_learned_prior_paired_against_uniform():
    """The two bounds differ per image by the prior's NLL minus h w log K: the paired interval
    decides, so a shift smaller than the images' own spread still counts."""
    r = compare.claim_learned_prior
    m = measurements()
    m["uniform_bits_per_dim"] = [1.0, 1.4, 0.6, 1.2, 0.8]
    m["bits_per_dim"]["vq"] = [v - 0.01 for v in m["uniform_bits_per_dim"]]
    assert r(m)[0] == "supported" and "-0.010" in r(m)[1]
    m["bits_per_dim"]["vq"] = [v + 0.01 for v in m["uniform_bits_per_dim"]]
    assert r(m)[0] == "contradicted"
    m["bits_per_dim"]["vq"] = [v + d for v, d in zip(m["uniform_bits_per_dim"], [0.1, -0.1, 0.1, -0.1, 0])]
    assert r(m)[0] == "tie"


def test_every_claim_has_a_rule_and_every_rule_is_tested():
    assert len(compare.CLAIMS) == 11
    assert all(rule.__doc__ and rule.__name__ in open(__file__).read() for _, rule in compare.CLAIMS)


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
