"""compare.py: the Frechet distance and precision/recall are right on cases with known answers,
and the whole pipeline (--quick) runs end to end and writes its three files."""
import json, os, re, subprocess, sys

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
    for name in ("compare.md", "compare.json", "compare.png"):
        assert (out / name).stat().st_size > 0
    r = json.loads((out / "compare.json").read_text())
    assert len(r["verdicts"]) == 7
    assert all(v[1] in ("supported", "contradicted", "depends") for v in r["verdicts"])
    assert r["sampling"]["ddpm-ancestral"]["evals_per_image"] == 2 * 50   # T steps x 2 for guidance
    assert r["sampling"]["ddpm-fast"]["evals_per_image"] == 2 * compare.FAST[1]
    assert "the fastest DDPM sampler at DDIM-5's quality" in r["verdicts"][1][2]
    assert r["sampling"]["pixelcnn"]["evals_per_image"] == 28 * 28
    assert 0 <= r["likelihood"]["pixelcnn"]["bits_per_dim"] <= 8.5
    md = (out / "compare.md").read_text()
    assert "| PixelCNN |" in md and "not Inception FID" in md
    # --reuse: no training again, the same models (so the same likelihoods)
    again = subprocess.run([sys.executable, os.path.join(ROOT, "compare.py"), "--quick", "--reuse", "--data", "mnist",
                            "--data-dir", str(d), "--out", str(out)], capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert not [line for line in again.stdout.splitlines() if line.startswith("compare: python") and "--train" in line]
    assert json.loads((out / "compare.json").read_text())["likelihood"] == r["likelihood"]
    # --score: the test split itself scores as the classifier's test accuracy, distance 0, P = R = 1
    np.savez(tmp_path / "real.npz", images=x[240:].numpy(), labels=y[240:].numpy())
    scored = subprocess.run([sys.executable, os.path.join(ROOT, "compare.py"), "--score", str(tmp_path / "real.npz"),
                             "--data", "mnist", "--data-dir", str(d), "--out", str(out)], capture_output=True, text=True)
    assert scored.returncode == 0, scored.stderr
    s = json.loads((tmp_path / "real_score.json").read_text())
    assert s["accuracy"] == pytest.approx(r["classifier"]["test_accuracy"]) and s["fd"] < 1e-6
    assert s["precision"] == s["recall"] == 1.0
    # --samplers: every sampler of the quick DDPM at 2 and 3 evaluations, and ancestral at T = 50
    table = subprocess.run([sys.executable, os.path.join(ROOT, "compare.py"), "--samplers", str(out / "runs" / "ddpm"),
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
