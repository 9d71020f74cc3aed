"""compare.py: the four families side by side: same data, same machine, same training budgets.

    python compare.py --data mnist --data-dir ../shared/data/mnist-small   # the study, ~45 min
    python compare.py --quick                                               # the pipeline, ~1 min

The full study trains each family through its own command line (so every number is what a user of
the scripts gets) at each budget of --budgets (default 1, 2 and 4 minutes; each point a run of its
own, two runs at a time on one thread each): vae.py, pixelcnn.py, ddpm.py with its defaults, ddpm.py
with Ho et al.'s unweighted loss and each target (eps, x0: claim 6 is about that loss), ldm.py (the
same budget in total, half per stage), a VQ-VAE with a PixelCNN prior over its codes (vae.py
--codebook 32, then pixelcnn.py --codes: half the budget per stage), and at the largest budget
ddpm.py and ldm.py again on only --small-data training images (claim 9). Then, per run, on the
same test images:

* training: images seen, images/s;
* likelihood in bits/dim of the 8-bit pixels, per image on the first --eval-images test images:
  PixelCNN exact, VAE importance-weighted bound (Burda et al. 2016), DDPM variational bound (Ho et
  al. 2020, eq. 5) with its decoder's floor, the VQ-VAE's two-stage bound with the learned prior
  and with the uniform one (van den Oord et al. 2017);
* sample quality of --num-samples samples (500) in the feature space of a small classifier trained
  here on the same train split (NOT Inception features: not comparable with published FID or KID):
  KID (Binkowski et al. 2018, unbiased), the Frechet distance (Heusel et al. 2017's formula),
  precision and recall (Kynkaanniemi et al. 2019, k = 3), class accuracy of class-conditional
  samples, and the edge ratio (RMS edge strength against real's: blur below 1, speckle above);
  each with a 95% interval over the samples (exact binomial for shares, bootstrap otherwise), and
  real training images measured the same way as the floor;
* sampling: sequential network evaluations per image, seconds per 100 images (median and range
  over batches of 100).

Ten claims of the seed articles and one of the VQ-VAE paper get a verdict per budget (supported,
contradicted, depends, tie), each by a rule written in its function's docstring. A rerun keeps
every finished job (resumable). It writes <out>/compare.md (tables, curves, verdicts, commands,
machine, date), compare.json, compare.png and compare-curves.svg; the runs stay in <out>/runs/.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import ddpm
import ldm
import pixelcnn
import vae

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------------------------
# The judge: a small classifier, and distances in its feature space

class Classifier(nn.Module):
    """Three conv layers and a 64-d feature layer; its features define the Frechet distance."""

    def __init__(self, channels, num_classes, width=32, features=64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Linear(32 * width, features), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(features, num_classes))

    def forward(self, x):  # x: uint8 (B, C, H, W)
        h = self.body(x.float() / 127.5 - 1)
        return self.head(h), h

    @torch.no_grad()
    def embed(self, x, batch=500):
        """uint8 images -> (features (N, 64) float64, predicted class (N,))."""
        self.eval()
        outs = [self(x[i:i + batch]) for i in range(0, len(x), batch)]
        return torch.cat([h for _, h in outs]).double(), torch.cat([o.argmax(1) for o, _ in outs])


def train_classifier(images, labels, epochs, seed, batch=128):
    """Adam, a few epochs, random shifts of up to 2 pixels (so a slightly off-centre sample is
    still read by its shape)."""
    torch.manual_seed(seed)
    model = Classifier(images.shape[1], int(labels.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * math.ceil(len(images) / batch)
    for step in range(steps):
        idx = common.batch_indices(step, batch, len(images), seed)
        x = F.pad(images[idx], (2, 2, 2, 2))
        dx, dy = torch.randint(0, 5, (2,)).tolist()
        x = x[..., dy:dy + images.shape[2], dx:dx + images.shape[3]]
        for group in opt.param_groups:
            group["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = F.cross_entropy(model(x)[0], labels[idx].long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def trace_sqrt_product(s1, s2):
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2, as tr((S1^(1/2) S2 S1^(1/2))^(1/2)): the inner
    matrix is symmetric PSD and similar to S1 S2, so its eigenvalues are real and >= 0."""
    w, v = torch.linalg.eigh(s1)
    root = (v * w.clamp(min=0).sqrt()) @ v.T
    return torch.linalg.eigvalsh(root @ s2 @ root).clamp(min=0).sqrt().sum()


def frechet_gaussians(mu1, s1, mu2, s2):
    """Frechet (2-Wasserstein) distance between N(mu1, S1) and N(mu2, S2), squared:
    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))  (Dowson & Landau 1982; Heusel et al.
    2017).
    """
    d = ((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * trace_sqrt_product(s1, s2)
    return float(d.clamp(min=0))


def frechet_distance(f1, f2):
    """The distance above between Gaussians fitted to two feature sets (N, D)."""
    f1, f2 = f1.double(), f2.double()
    return frechet_gaussians(f1.mean(0), torch.cov(f1.T), f2.mean(0), torch.cov(f2.T))


def manifold_hits(real, fake, k=3):
    """Kynkaanniemi et al. 2019: each set's manifold is the union of balls reaching each point's
    k-th nearest neighbour in its own set. Returns (for each fake point: inside the real
    manifold?, for each real point: inside the fake manifold?) as 0/1 floats."""
    radius = lambda f: torch.cdist(f, f).kthvalue(k + 1, dim=1).values   # k + 1: itself is at 0
    real, fake = real.double(), fake.double()
    d = torch.cdist(fake, real)                                           # (fake, real)
    inside_real = (d <= radius(real)[None, :]).any(1).double()     # each fake point in a real ball
    inside_fake = (d.T <= radius(fake)[None, :]).any(1).double()   # each real point in a fake ball
    return inside_real, inside_fake


def precision_recall(real, fake, k=3):
    """Precision: the share of fake points inside the real manifold (fidelity); recall: the
    share of real points inside the fake manifold (diversity)."""
    inside_real, inside_fake = manifold_hits(real, fake, k)
    return float(inside_real.mean()), float(inside_fake.mean())


def edge_energy(x):
    """Per image: the mean squared difference of vertical neighbours plus that of horizontal
    neighbours (uint8 images, [0, 1] units)."""
    x = x.float() / 255
    return (((x[..., 1:, :] - x[..., :-1, :]) ** 2).flatten(1).mean(1)
            + ((x[..., 1:] - x[..., :-1]) ** 2).flatten(1).mean(1))


def edge_strength(x):
    """Root-mean-square difference of neighbouring pixels. Squared, so blur lowers it: a unit
    step spread over k pixels has k steps of 1/k, k (1/k)^2 = 1/k in energy (the mean absolute
    difference would stay 1); speckle noise raises it."""
    return float(edge_energy(x).mean()) ** 0.5


# ----------------------------------------------------------------------------------------------
# Uncertainty: each figure of the full study with a 95% interval over the samples drawn

LEVEL = 0.95


def binomial_interval(k, n, level=LEVEL):
    """Clopper & Pearson's exact interval for a share k / n: the p at which P(X >= k) = a and the
    p at which P(X <= k) = a, X ~ Binomial(n, p), a = (1 - level) / 2 (found by bisection)."""
    a = (1 - level) / 2

    def cdf(j, p):                                    # P(X <= j)
        logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                + i * math.log(p) + (n - i) * math.log1p(-p) for i in range(j + 1)]
        top = max(logs)
        return math.exp(top) * sum(math.exp(v - top) for v in logs)

    def root(f):                                      # f increasing on (0, 1)
        lo, hi = 0.0, 1.0
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
        return (lo + hi) / 2
    lower = 0.0 if k == 0 else root(lambda p: 1 - cdf(k - 1, p) - a)
    upper = 1.0 if k == n else root(lambda p: a - cdf(k, p))
    return lower, upper


def kid_at(real, fake):
    """Kernel Inception Distance's estimator (Binkowski et al. 2018, in the judge's features, not
    Inception's): the unbiased MMD^2 with the cubic kernel k(a, b) = (a.b / d + 1)^3, pairs of a
    sample with itself left out. Returns a function of indices into fake (a resample; copies
    of one sample are left out like the pair (i, i)) -> the estimate; real is held fixed."""
    d = real.shape[1]
    kern = lambda a, b: (a.double() @ b.double().T / d + 1) ** 3
    krr, kff, kfr = kern(real, real), kern(fake, fake), kern(fake, real).mean(1)
    n = len(real)
    rr = (krr.sum() - krr.diagonal().sum()) / (n * (n - 1))

    def at(idx):
        pair = idx[:, None] != idx[None, :]
        return float(rr + (kff[idx][:, idx] * pair).sum() / pair.sum() - 2 * kfr[idx].mean())
    return at


def kid(real, fake):
    return kid_at(real, fake)(torch.arange(len(fake)))


def bootstrap(stat, n, reps=200, seed=0, level=LEVEL):
    """Percentile interval of stat(indices) over reps resamples of n items with replacement."""
    g = torch.Generator().manual_seed(seed)
    vals = sorted(stat(torch.randint(0, n, (n,), generator=g)) for _ in range(reps))
    return vals[math.floor(reps * (1 - level) / 2)], vals[math.ceil(reps * (1 + level) / 2) - 1]


def real_reference(judge, test_x, n):
    """What every set of n samples is measured against: the features of the whole test split
    (Frechet distance), of at most 2,000 of its images (KID), of its first n (precision and
    recall at equal sizes), and its mean edge energy."""
    feats, _ = judge.embed(test_x)
    return dict(
        feats=feats, kid=feats[:2000], ref=feats[:n], edges=float(edge_energy(test_x).mean())
    )


def measure(judge, real, images, labels=None, reps=200, seed=0):
    """Sample quality, each figure [value, low, high] (95%): class accuracy, precision and recall
    with exact binomial intervals; Frechet distance, KID and the edge ratio (root edge energy
    against real's: 1 = real's, below = blur, above = speckle) by bootstrap over the samples.
    Only the samples' uncertainty: the real side is the same for every model compared."""
    feats, pred = judge.embed(images)
    n, out = len(feats), {}
    if labels is not None:
        k = int((pred.cpu() == labels.cpu()).sum())
        out["accuracy"] = [k / n, *binomial_interval(k, n)]
    for name, hits in zip(("precision", "recall"), manifold_hits(real["ref"], feats)):
        k = int(hits.sum())
        out[name] = [k / len(hits), *binomial_interval(k, len(hits))]
    mu, cov = real["feats"].mean(0), torch.cov(real["feats"].T)
    energy = edge_energy(images).double()
    stats = dict(fd=lambda i: frechet_gaussians(mu, cov, feats[i].mean(0), torch.cov(feats[i].T)),
                 kid=kid_at(real["kid"], feats),
                 edge_ratio=lambda i: float(energy[i].mean() / real["edges"]) ** 0.5)
    for name, stat in stats.items():
        out[name] = [stat(torch.arange(n)), *bootstrap(stat, n, reps, seed)]
    return out


# ----------------------------------------------------------------------------------------------
# Labelled picture: a 3x5 pixel font, enough for the panel titles

_FONT = {  # 3 x 5 pixels, rows top to bottom
    "A": ".#. #.# ### #.# #.#",
    "B": "##. #.# ##. #.# ##.",
    "C": ".## #.. #.. #.. .##",
    "D": "##. #.# #.# #.# ##.",
    "E": "### #.. ##. #.. ###",
    "F": "### #.. ##. #.. #..",
    "G": ".## #.. #.# #.# .##",
    "H": "#.# #.# ### #.# #.#",
    "I": "### .#. .#. .#. ###",
    "J": "..# ..# ..# #.# .#.",
    "K": "#.# #.# ##. #.# #.#",
    "L": "#.. #.. #.. #.. ###",
    "M": "#.# ### ### #.# #.#",
    "N": "##. #.# #.# #.# #.#",
    "O": ".#. #.# #.# #.# .#.",
    "P": "##. #.# ##. #.. #..",
    "Q": ".#. #.# #.# ##. .##",
    "R": "##. #.# ##. #.# #.#",
    "S": ".## #.. .#. ..# ##.",
    "T": "### .#. .#. .#. .#.",
    "U": "#.# #.# #.# #.# ###",
    "V": "#.# #.# #.# #.# .#.",
    "W": "#.# #.# ### ### #.#",
    "X": "#.# #.# .#. #.# #.#",
    "Y": "#.# #.# .#. .#. .#.",
    "Z": "### ..# .#. #.. ###",
    "0": "### #.# #.# #.# ###",
    "1": ".#. ##. .#. .#. ###",
    "2": "##. ..# .#. #.. ###",
    "3": "##. ..# .#. ..# ##.",
    "4": "#.# #.# ### ..# ..#",
    "5": "### #.. ##. ..# ##.",
    "6": ".## #.. ### #.# ###",
    "7": "### ..# .#. .#. .#.",
    "8": "### #.# ### #.# ###",
    "9": "### #.# ### ..# ##.",
    "-": "... ... ### ... ...",
    "=": "... ### ... ### ...",
    ".": "... ... ... ... .#.",
    "(": ".#. #.. #.. #.. .#.",
    ")": ".#. ..# ..# ..# .#.",
    " ": "... ... ... ... ...",
}


def label_image(text, width, scale=2):
    """A uint8 strip (5 * scale + 6 rows, width columns) with `text` in white on grey."""
    strip = torch.full((5 * scale + 6, width), 128, dtype=torch.uint8)
    x = 3
    for ch in text.upper():
        bits = _FONT.get(ch, _FONT[" "]).replace(" ", "")
        glyph = torch.tensor([b == "#" for b in bits], dtype=torch.uint8).reshape(5, 3) * 255
        glyph = glyph.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
        if x + glyph.shape[1] > width:
            break
        strip[3 : 3 + 5 * scale, x : x + glyph.shape[1]] = torch.maximum(
            strip[3 : 3 + 5 * scale, x : x + glyph.shape[1]], glyph
        )
        x += 4 * scale
    return strip


def panels(named_images, nrow):
    """Grids side by side, each under its title: (title, uint8 (N, C, H, W)) -> one picture."""
    cols = []
    for title, images in named_images:
        grid = torch.as_tensor(common.make_grid(images[:nrow * nrow], nrow))
        if grid.dim() == 3:
            grid = grid.permute(2, 0, 1)                                   # (3, H, W)
        else:
            grid = grid[None]
        label = label_image(title, grid.shape[-1])[None].expand(grid.shape[0], -1, -1)
        cols.append(torch.cat([label, grid], 1))
    height = max(c.shape[1] for c in cols)
    cols = [F.pad(c, (0, 8, 0, height - c.shape[1]), value=255) for c in cols]
    picture = torch.cat(cols, 2)
    return picture[0].numpy() if picture.shape[0] == 1 else picture.permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------------------------
# Running the scripts

def data_flags(args):
    return ["--data", args.data] + (["--data-dir", args.data_dir] if args.data_dir else [])


def run_measured(cmd, what, quiet=False, env=None, cpu=None):
    """Run cmd as its own process (pinned to CPU core `cpu` where the system allows it); return its
    peak resident memory in MB (one-line error if it fails)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL if quiet else None, env=env)
    if cpu is not None and hasattr(os, "sched_setaffinity"):   # before torch starts its threads
        try:
            os.sched_setaffinity(proc.pid, {cpu})
        except OSError:                                         # no such core: run unpinned
            pass
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise common.UserError(f"{what} failed (exit {proc.returncode}); see its message above")
    return usage.ru_maxrss / (
        2**20 if sys.platform == "darwin" else 2**10
    )  # bytes on macOS, KB on Linux


def run_script(args, script, mode, out, flags):
    """Run `script.py --<mode>` as its own process; return its peak resident memory in MB."""
    cmd = [
        sys.executable,
        os.path.join(HERE, script + ".py"),
        f"--{mode}",
        *data_flags(args),
        "--out",
        out,
        "--device",
        args.device,
        "--seed",
        str(args.seed),
        *flags,
    ]
    print("compare: python " + " ".join(cmd[1:]), flush=True)
    return run_measured(cmd, f"{script}.py --{mode}")


def train_rates(out):
    """Median training images/s of each stage in <out>/metrics.jsonl (a stage restarts at a lower
    step)."""
    stages, last = [], None
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if last is None or rec["step"] < last:
                stages.append([])
            stages[-1].append(rec["images_per_s"])
            last = rec["step"]
    median = lambda v: sorted(v[1:] or v)[
        len(v[1:] or v) // 2
    ]  # the first interval holds the warm-up
    return [median(s) for s in stages]


# ----------------------------------------------------------------------------------------------
# Sampling: the default sampler, and the rule of the sampler table

FAST = ("dpm", 10)   # ddpm.py's default sampler and steps (README: "Fast sampling")


def reaches(q, ref):
    """The quality rule of the sampler table: accuracy at least ref's minus 0.01, Frechet distance
    at most 1.1x ref's, recall at least ref's minus 0.05 (diversity: few steps can keep the
    accuracy and lose the variety)."""
    return (q["accuracy"] >= ref["accuracy"] - 0.01 and q["fd"] <= 1.1 * ref["fd"]
            and q["recall"] >= ref["recall"] - 0.05)


# ----------------------------------------------------------------------------------------------
# The quality of one sample set, without intervals (--score, --curve, --samplers)

def within_class_spread(feats, pred):
    """Mean distance between two samples the classifier puts in the same class (feature space),
    averaged over pairs: what collapses when a model draws near-copies of one image per class."""
    total, pairs = 0.0, 0
    for c in pred.unique():
        f = feats[pred == c]
        if len(f) > 1:
            total += float(torch.cdist(f, f).sum())       # the zero diagonal adds nothing
            pairs += len(f) * (len(f) - 1)
    return total / max(pairs, 1)


def quality(judge, real_feats, real_ref, images, labels):
    """real_feats: features of the whole test split (for the Frechet distance); real_ref: (features,
    predictions) of as many test images as there are samples (for precision, recall and spread)."""
    feats, pred = judge.embed(images)
    p, r = precision_recall(real_ref[0], feats)
    return dict(
        fd=frechet_distance(real_feats, feats),
        precision=p,
        recall=r,
        edge_ratio=None,
        spread_ratio=within_class_spread(feats, pred) / within_class_spread(*real_ref),
        accuracy=(
            float((pred.cpu() == labels.cpu()).double().mean()) if labels is not None else None
        ),
    )


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {threads} threads"


# ----------------------------------------------------------------------------------------------
# The rules: each claim's verdict from the measured figures and their intervals

def better(a, b, higher=True):
    """+1 if a is better than b beyond the uncertainty (their 95% intervals do not overlap),
    -1 if worse, 0 if the difference is inside it (a tie). a, b: [value, low, high]."""
    if a[1] > b[2]:
        return 1 if higher else -1
    if a[2] < b[1]:
        return -1 if higher else 1
    return 0


def verdict(parts):
    """parts: one per part of a claim, +1 it holds beyond the uncertainty, -1 its opposite does,
    0 a tie. supported: some part holds and none is contradicted; contradicted: the reverse;
    depends: some parts hold and some are contradicted; tie: every part a tie."""
    if 1 in parts and -1 in parts:
        return "depends"
    return "supported" if 1 in parts else ("contradicted" if -1 in parts else "tie")


def paired_mean_interval(a, b, reps=200, seed=0):
    """[mean, low, high] of a_i - b_i over the same images (paired bootstrap)."""
    d = torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)
    stat = lambda i: float(d[i].mean())
    return [float(d.mean()), *bootstrap(stat, len(d), reps, seed)]


def difference(a, b):
    """a - b for two [value, low, high] from independent samples: the interval's ends are the
    worst cases (wider than needed, so a difference that clears it is a clear one)."""
    return [a[0] - b[0], a[1] - b[2], a[2] - b[1]]


def f3(v, digits=2, scale=1.0):
    """[value, low, high] -> 'value (low-high)'."""
    return f"{v[0] * scale:.{digits}f} ({v[1] * scale:.{digits}f}-{v[2] * scale:.{digits}f})"


kid3 = lambda v: f3(v, 1)           # KID in the judge's features (large: they are not normalised)
HOLDS = {1: "holds", 0: "tie", -1: "does not hold"}


def claim_pixelcnn_faster(m):
    """PixelCNN's samples need one network step per pixel (784 in sequence), so "a single pass"
    is false by construction and the best verdict is depends: depends if its cached sampler is
    faster than DDPM's default sampler beyond the timing spread, contradicted if slower, tie
    inside the spread."""
    t, e = m["seconds_per_100"], m["evals"]
    s = better(t["pixelcnn"], t["ddpm"], higher=False)
    return ({1: "depends", 0: "tie", -1: "contradicted"}[s],
            f"{e['pixelcnn']} sequential network steps per image, not one pass; seconds per 100 "
            f"images: PixelCNN {f3(t['pixelcnn'], 1)}, DDPM {f3(t['ddpm'], 1)} ({FAST[0]}, "
            f"{FAST[1]} steps).")


def claim_fewer_evaluations(m):
    """Take DDPM's default sampler if its samples are not worse than DDIM-50's beyond the
    uncertainty on class accuracy, KID and recall, else DDIM-50; supported if PixelCNN needs at
    least 10x as many sequential network evaluations per image, contradicted if no more,
    depends in between."""
    q, e = m["quality"], m["evals"]
    reached = all(better(q["ddpm"][k], q["ddpm-ddim"][k], k != "kid") >= 0
                  for k in ("accuracy", "kid", "recall"))
    key = "ddpm" if reached else "ddpm-ddim"
    ratio = e["pixelcnn"] / e[key]
    v = "supported" if ratio >= 10 else ("contradicted" if ratio <= 1 else "depends")
    name = f"{FAST[0]} {FAST[1]} steps" if reached else "DDIM 50 steps"
    return v, (f"DDPM's {name} ({e[key]} evaluations per image with guidance; the default "
               f"sampler {'reaches' if reached else 'does not reach'} DDIM-50's quality: "
               f"accuracy {f3(q['ddpm']['accuracy'])} vs {f3(q['ddpm-ddim']['accuracy'])}, KID "
               f"{kid3(q['ddpm']['kid'])} vs {kid3(q['ddpm-ddim']['kid'])}) against PixelCNN's "
               f"{e['pixelcnn']}: {ratio:.0f}x.")


def claim_ldm_cheaper(m):
    """Two parts. Sampling: holds if LDM (decoder included) is at least 2x faster than DDPM with
    the same sampler beyond the timing spread, fails if it is less than 2x faster beyond it.
    Training: both had the same training time, so holds if LDM's samples are not worse (KID)
    beyond the uncertainty (similar or better quality for the same cost), fails if worse."""
    t, q = m["seconds_per_100"], m["quality"]
    sampling = better([2 * v for v in t["ldm"]], t["ddpm"], higher=False)
    quality = 1 if better(q["ldm"]["kid"], q["ddpm"]["kid"], higher=False) >= 0 else -1
    return verdict([sampling, quality]), (
        f"seconds per 100 samples LDM {f3(t['ldm'], 1)} vs DDPM {f3(t['ddpm'], 1)} (2x faster: "
        f"{HOLDS[sampling]}); same training time, KID LDM {kid3(q['ldm']['kid'])} vs DDPM "
        f"{kid3(q['ddpm']['kid'])} (not worse: {HOLDS[quality]}).")


def claim_vae(m):
    """Three parts, all on samples x ~ p(x|z) (the decoder's mean is blurry by construction,
    shown for reference). Fastest: the VAE's sampling time below every other family's beyond
    the spread. Blurrier: its edge ratio below 1 (real's) and below DDPM's beyond the intervals;
    fails if above either. Less faithful: lower precision and higher KID than DDPM (one beyond
    the uncertainty and the other not better); fails if the reverse."""
    t, q = m["seconds_per_100"], m["quality"]
    others = [t[k] for k in ("pixelcnn", "ddpm", "ldm")]
    fastest = min(better(t["vae"], o, higher=False) for o in others)
    e, de = q["vae"]["edge_ratio"], q["ddpm"]["edge_ratio"]
    lower = better(e, de, higher=False)
    blurrier = 1 if e[2] < 1 and lower == 1 else (-1 if e[1] > 1 or lower == -1 else 0)
    faithful = verdict([better(q["vae"]["precision"], q["ddpm"]["precision"]),
                        better(q["vae"]["kid"], q["ddpm"]["kid"], higher=False)])
    less = {"supported": -1, "contradicted": 1}.get(faithful, 0)
    return verdict([fastest, blurrier, less]), (
        f"fastest ({f3(t['vae'], 2)} s per 100): {HOLDS[fastest]}; edge ratio vs real "
        f"{f3(e)} (decoder mean {f3(q['vae-mean']['edge_ratio'])}) vs DDPM's {f3(de)}, blurrier: "
        f"{HOLDS[blurrier]}; precision {f3(q['vae']['precision'])} vs "
        f"{f3(q['ddpm']['precision'])}, "
        f"KID {kid3(q['vae']['kid'])} vs {kid3(q['ddpm']['kid'])}, less faithful: "
        f"{HOLDS[less]}."
    )


def claim_likelihood(m):
    """PixelCNN's figure is its exact -log p(x); the VAE's (importance-weighted, K samples) and
    DDPM's (variational bound) are upper bounds on theirs. On the same test images, per part
    (VAE, DDPM): holds if PixelCNN's bits/dim are lower beyond the paired-bootstrap interval of
    the difference, fails if higher (then that model is better even by its bound)."""
    b = m["bits_per_dim"]
    parts, text = [], []
    for other in ("vae", "ddpm"):
        d = paired_mean_interval(b["pixelcnn"], b[other])
        parts.append(1 if d[2] < 0 else (-1 if d[1] > 0 else 0))
        text.append(f"{other} {sum(b[other]) / len(b[other]):.3f} (PixelCNN minus it: {f3(d, 3)})")
    pix = sum(b["pixelcnn"]) / len(b["pixelcnn"])
    return verdict(parts), (
        f"bits/dim on the same {len(b['pixelcnn'])} test images: PixelCNN {pix:.3f} (exact); "
        + "; ".join(text) + f". DDPM's bound includes its decoder's floor L_0 = "
        f"{m['decoder_floor_bpd']:.3f} bits/dim, which even a perfect denoiser pays.")


def claim_eps(m):
    """Ho et al.'s unweighted loss with each target, the same budget and sampler: per figure
    (KID, class accuracy, recall) holds if eps is better beyond the uncertainty, fails if x0 is."""
    q = m["quality"]
    eps, x0 = q["ddpm-eps"], q["ddpm-x0"]
    parts = [better(eps["kid"], x0["kid"], higher=False), better(eps["accuracy"], x0["accuracy"]),
             better(eps["recall"], x0["recall"])]
    return verdict(parts), (
        f"eps vs x0: KID {kid3(eps['kid'])} vs {kid3(x0['kid'])}; accuracy "
        f"{f3(eps['accuracy'])} vs {f3(x0['accuracy'])}; recall {f3(eps['recall'])} vs "
        f"{f3(x0['recall'])}.")


GUIDED = ("ddpm-w0", "ddpm", "ddpm-w3")


def claim_guidance(m):
    """Class accuracy with guidance w = 3 against the conditional model alone (w = 0), exact
    binomial intervals: supported if higher beyond them, contradicted if lower."""
    q = m["quality"]
    s = better(q["ddpm-w3"]["accuracy"], q["ddpm-w0"]["accuracy"])
    return verdict([s]), (
        "w = 0 / 1 / 3: accuracy " + " / ".join(f3(q[k]["accuracy"]) for k in GUIDED)
        + "; recall " + " / ".join(f3(q[k]["recall"]) for k in GUIDED) + ".")


def claim_pixelcnn_converges(m):
    """Faster convergence read as further along after the same training time: holds if
    PixelCNN's KID is lower than DDPM's at this budget beyond the uncertainty, fails if higher.
    Struggles with diversity: holds if its recall is lower than DDPM's, fails if higher."""
    q = m["quality"]
    ahead = better(q["pixelcnn"]["kid"], q["ddpm"]["kid"], higher=False)
    struggles = -better(q["pixelcnn"]["recall"], q["ddpm"]["recall"])
    return verdict([ahead, struggles]), (
        f"KID PixelCNN {kid3(q['pixelcnn']['kid'])} vs DDPM {kid3(q['ddpm']['kid'])} "
        f"(faster: {HOLDS[ahead]}); recall {f3(q['pixelcnn']['recall'])} vs "
        f"{f3(q['ddpm']['recall'])} (struggles: {HOLDS[struggles]}).")


def claim_ldm_data(m):
    """Needs less data (where the --small-data runs exist): holds if LDM's KID rises less than
    DDPM's from all training images to --small-data, beyond the intervals of the two rises
    (worst-case ends), fails if it rises more. Converges faster: holds if LDM's KID is lower than
    DDPM's after the same training time, fails if higher."""
    q = m["quality"]
    faster = better(q["ldm"]["kid"], q["ddpm"]["kid"], higher=False)
    parts = [faster]
    text = (f"same training time, KID LDM {kid3(q['ldm']['kid'])} vs DDPM "
            f"{kid3(q['ddpm']['kid'])} (faster: {HOLDS[faster]})")
    if "ldm-small" in q and "ddpm-small" in q:
        rise = {k: difference(q[f"{k}-small"]["kid"], q[k]["kid"]) for k in ("ldm", "ddpm")}
        less = better(rise["ldm"], rise["ddpm"], higher=False)
        parts.append(less)
        text += (f"; KID rise from all training images to the few: LDM {kid3(rise['ldm'])}, DDPM "
                 f"{kid3(rise['ddpm'])} (less data: {HOLDS[less]})")
    return verdict(parts), text + "."


def claim_mode_collapse(m):
    """VAE mode collapse: holds if the VAE's recall (the share of real images its samples cover)
    is below the real-data floor's (train images drawn like samples) beyond the intervals, fails
    if not below. Diffusion diverse: holds if DDPM's recall is not below the floor's, fails if
    it is."""
    q = m["quality"]
    collapse = 1 if better(q["vae"]["recall"], q["real"]["recall"]) == -1 else -1
    diverse = 1 if better(q["ddpm"]["recall"], q["real"]["recall"]) >= 0 else -1
    return verdict([collapse, diverse]), (
        f"recall VAE {f3(q['vae']['recall'])}, DDPM {f3(q['ddpm']['recall'])}, real images "
        f"{f3(q['real']['recall'])} (VAE collapses: {HOLDS[collapse]}; DDPM diverse: "
        f"{HOLDS[diverse]}).")


def claim_learned_prior(m):
    """The VQ-VAE's bound -log p(x | z_q(x)) - log p(z_q(x)) on the same test images, with the
    PixelCNN prior over the codes and with the uniform prior (h w log K): holds if the learned
    prior's is lower beyond the paired-bootstrap interval of the difference, fails if higher."""
    b, u = m["bits_per_dim"]["vq"], m["uniform_bits_per_dim"]
    d = paired_mean_interval(b, u)
    return verdict([1 if d[2] < 0 else (-1 if d[1] > 0 else 0)]), (
        f"bits/dim on the same {len(b)} test images: learned prior {sum(b) / len(b):.3f}, uniform "
        f"{sum(u) / len(u):.3f}; learned minus uniform {f3(d, 3)}.")


CLAIMS = [  # (the seed articles' claim, its rule)
    ("PixelCNN generates faster than diffusion, in a single pass.", claim_pixelcnn_faster),
    (
        "Diffusion generates in far fewer network evaluations than an autoregressive model.",
        claim_fewer_evaluations,
    ),
    (
        "Latent diffusion trains and samples far cheaper than pixel-space diffusion at similar "
        "sample quality.",
        claim_ldm_cheaper,
    ),
    (
        "VAEs sample fastest, but their samples are blurrier and less faithful than diffusion's.",
        claim_vae,
    ),
    (
        "PixelCNN's exact likelihood is lower than the VAE's and diffusion's bounds.",
        claim_likelihood,
    ),
    ("Predicting the noise works better than predicting the clean image.", claim_eps),
    ("Classifier-free guidance makes samples match their class better.", claim_guidance),
    (
        "PixelCNN converges faster in training but struggles with image diversity.",
        claim_pixelcnn_converges,
    ),
    (
        "Latent diffusion needs less data and converges faster than pixel-space diffusion.",
        claim_ldm_data,
    ),
    (
        "VAEs may suffer from mode collapse; diffusion is robust to it, with diverse outputs.",
        claim_mode_collapse,
    ),
    (
        "A VQ-VAE's bound is tighter with a learned autoregressive prior over its codes than with "
        "the uniform prior it trains with (van den Oord et al. 2017).",
        claim_learned_prior,
    ),
]


def verdicts(m):
    """[(claim, verdict, why)] for one budget's measurements m."""
    return [(claim, *rule(m)) for claim, rule in CLAIMS]


# ----------------------------------------------------------------------------------------------
# The full study: every family at every budget, each point a training run of its own

FAMILIES = {  # name: (script, training flags)
    "vae": ("vae", []),
    "pixelcnn": ("pixelcnn", []),
    "ddpm": ("ddpm", ["--conditional"]),         # ddpm.py's defaults: v target, Min-SNR-5
    # claim 6 is about Ho et al.'s unweighted loss: the two targets with it
    "ddpm-eps": ("ddpm", ["--conditional", "--target", "eps", "--min-snr", "0"]),
    "ddpm-x0": ("ddpm", ["--conditional", "--target", "x0", "--min-snr", "0"]),
    "ldm": ("ldm", ["--conditional"]),
    "vq": ("vq", ["--codebook", "32"]),         # vae.py's stage, then pixelcnn.py --codes RUN
}
TINY = {"vae": ["--width", "8", "--latent", "4"], "pixelcnn": ["--width", "8", "--layers", "2"],
        "ddpm": ["--width", "8", "--timesteps", "50"],
        "ldm": ["--ae-width", "8", "--width", "8", "--ae-steps", "8", "--timesteps", "50"]}
TINY["vq"] = TINY["vae"]


def plan(args):
    """The jobs: one per family and budget (a budget is minutes of training, or steps with
    --quick; LDM gets it in total, half per stage), and DDPM and LDM on --small-data training
    images at the largest budget. The longest first, so the lanes end together."""
    jobs = []
    for b in sorted(args.budgets, reverse=True):
        for name, (script, flags) in FAMILIES.items():
            for small in ((False, True) if b == max(args.budgets) and name in ("ddpm", "ldm")
                          else (False,)):
                amount = b / 2 if script in ("ldm", "vq") else b
                budget = (["--steps", str(max(1, int(amount)))] if args.quick
                          else ["--minutes", f"{amount:g}"])
                jobs.append(dict(
                    id=f"{name}{'-small' if small else ''}-{b:g}{'steps' if args.quick else 'min'}",
                    name=name + ("-small" if small else ""), script=script, budget=b, small=small,
                    largest=b == max(args.budgets),
                    flags=flags + budget + (TINY[script] if args.quick else []),
                    **({"prior": budget + (TINY["pixelcnn"] if args.quick else [])}
                       if name == "vq" else {})))  # the prior's flags: only in its job's spec
    return jobs


def write_idx(path, array):
    """An IDX file (the MNIST format), gzipped: uint8 images (N, H, W) or labels (N,)."""
    import gzip
    import struct
    import numpy as np
    array = np.ascontiguousarray(array, dtype=np.uint8)
    head = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    common.atomic_write(path, lambda f: f.write(gzip.compress(head + array.tobytes(), 6)), "wb")


def small_data(args, out, train_x, train_y, test_x, test_y):
    """A folder of IDX files holding the first --small-data training images and the test split."""
    folder = os.path.join(out, f"data-{args.small_data}")
    os.makedirs(folder, exist_ok=True)
    k = args.small_data
    for prefix, x, y in (("train", train_x[:k], train_y[:k]), ("t10k", test_x, test_y)):
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), x[:, 0].numpy())
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), y.numpy())
    return folder


def job_spec(args, out, job, small_dir):
    data = (["--data", "mnist", "--data-dir", small_dir] if job["small"] else data_flags(args))
    return dict(
        job,
        out=os.path.join(out, "runs", job["id"]),
        judge=os.path.join(out, "classifier.pt"),
        data=data,
        device=args.device,
        seed=args.seed,
        num_samples=args.num_samples,
        slow_images=args.slow_images,
        eval_images=args.eval_images,
        iw_samples=args.iw_samples,
        ddim_steps=args.ddim_steps,
        full_data=[args.data, args.data_dir],
    )


def finished(spec):
    path = os.path.join(spec["out"], "job.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        done = json.load(f)
    return done if done.get("spec") == spec else None


def run_jobs(args, specs):
    """Each job in its own process (compare.py --job), --lanes at a time, each on one thread;
    a job already finished with the same spec is kept (so a rerun resumes the study)."""
    todo = [s for s in specs if not finished(s)]
    print(f"compare: {len(specs) - len(todo)} of {len(specs)} jobs already done; {len(todo)} to "
          f"run, {args.lanes} at a time, one thread each", flush=True)
    running, start = [], time.time()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        while todo or running:
            while todo and len(running) < args.lanes:
                spec = todo.pop(0)
                os.makedirs(spec["out"], exist_ok=True)
                path = os.path.join(spec["out"], "spec.json")
                common.atomic_write(path, lambda f: f.write(json.dumps(spec)), "w")
                log = open(os.path.join(spec["out"], "log.txt"), "w")
                cmd = [sys.executable, os.path.join(HERE, "compare.py"), "--job", path]
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                running.append((spec, proc, log))
                print(f"compare: started {spec['id']} ({time.time() - start:.0f} s)", flush=True)
            time.sleep(0.5)
            for item in list(running):
                spec, proc, log = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                log.close()
                if proc.returncode:
                    tail = open(log.name).read().strip().splitlines()[-1:] or ["(no output)"]
                    raise common.UserError(f"job {spec['id']} failed (exit {proc.returncode}): "
                                           f"{tail[0]}; its log: {log.name}")
                print(f"compare: finished {spec['id']} ({time.time() - start:.0f} s)", flush=True)
    finally:
        for _, proc, _ in running:
            proc.kill()
    return {s["id"]: finished(s) for s in specs}


def run_job(path):
    """One job, in its own process: train the script through its command line, then draw and
    time its samples, measure their quality and (PixelCNN, VAE, DDPM, VQ-VAE) the test bits/dim
    per image through the model's nll (the VQ-VAE: both stages in turn, then its two bounds).
    Writes <run>/job.json (with the spec, so a rerun can keep it)."""
    import numpy as np
    with open(path) as f:
        spec = json.load(f)
    import resource
    out, dev, n = spec["out"], spec["device"], spec["num_samples"]
    torch.set_num_threads(1)
    both = ["--train", *spec["data"], "--device", dev, "--seed", str(spec["seed"])]
    first = os.path.join(out, "vq-vae")               # the two-stage model's first stage
    stages = [(spec["script"], [*both, "--out", out, *spec["flags"]])]
    if spec["script"] == "vq":
        stages = [("vae", [*both, "--out", first, *spec["flags"]]),
                  ("pixelcnn", [*both, "--out", out, "--codes", first, *spec["prior"]])]
    for folder in (out, first):
        for stale in ("metrics.jsonl", "ckpt.pt", "autoencoder.pt"):
            if os.path.exists(os.path.join(folder, stale)):
                os.remove(os.path.join(folder, stale))
    modules = {"vae": vae, "pixelcnn": pixelcnn, "ddpm": ddpm, "ldm": ldm}
    start = time.time()
    for script, argv in stages:   # the script's own command line, in this process (no start-up)
        print(f"compare: python {script}.py " + " ".join(argv), flush=True)
        try:
            modules[script].main(argv)
        except SystemExit as e:
            if e.code:
                raise common.UserError(f"{script}.py --train failed (exit {e.code}); see above")
    seconds = time.time() - start
    module = modules[stages[-1][0]]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss     # KB on Linux, bytes on macOS
    peak /= 2 ** 20 if sys.platform == "darwin" else 2 ** 10
    model = module.load(out, dev)
    blob = common.load_checkpoint(os.path.join(out, "ckpt.pt"), stages[-1][0])
    run_args = argparse.Namespace(precision=blob.get("precision", "fp32"), device=dev)
    test_x, test_y = common.load_data(spec["full_data"][0], "test", spec["full_data"][1])
    train_x, train_y = common.load_data(spec["full_data"][0], "train", spec["full_data"][1])
    judge = Classifier(test_x.shape[1], int(test_y.max()) + 1)
    blob_judge = common.load_checkpoint(spec["judge"], "classifier")
    common.load_weights(judge, blob_judge["model"], spec["judge"])
    real = real_reference(judge, test_x, n)
    classes = getattr(model.cfg, "num_classes", 0)
    labels = (torch.arange(n) % classes) if classes else None

    draws = {}                                  # key: (function of (k, labels), evals, timed on)
    if spec["script"] == "vae":
        draws["vae"] = (lambda k, y: model.sample(k, mean=False), 1, n)
        draws["vae-mean"] = (lambda k, y: model.sample(k), 1, n)
    elif spec["script"] == "vq":            # codes from the prior, decoded as vae.py samples
        vq = vae.load(first, dev)
        gen = torch.Generator().manual_seed(spec["seed"])
        codes = lambda k: model.to_int(model.sample(k, generator=gen))[:, 0]
        draws["vq"] = (lambda k, y: vq.decode_codes(codes(k), mean=False),
                       model.cfg.image_size ** 2 + 1, n)
    elif spec["script"] == "pixelcnn":
        pixels = model.cfg.channels * model.cfg.image_size ** 2
        gen = torch.Generator().manual_seed(spec["seed"])
        draws["pixelcnn"] = (lambda k, y: model.sample(k, generator=gen), pixels, n)
        if spec["largest"]:
            draws["pixelcnn-naive"] = (
                lambda k, y: model.sample(k, generator=gen, naive=True),
                pixels,
                min(spec["slow_images"], n),
            )
    else:
        fast = lambda w: (
            lambda k, y: model.sample(k, y.to(dev), sampler=FAST[0], steps=FAST[1], guidance=w)
        )
        draws[spec["name"]] = (fast(1.0), 2 * FAST[1], n)
        if spec["name"] == "ddpm":
            draws["ddpm-w0"] = (fast(0.0), FAST[1], n)
            draws["ddpm-w3"] = (fast(3.0), 2 * FAST[1], n)
            steps = spec["ddim_steps"]
            draws["ddpm-ddim"] = (
                lambda k, y: model.sample(k, y.to(dev), sampler="ddim", steps=steps),
                2 * steps,
                n,
            )
            if spec["largest"]:
                draws["ddpm-ancestral"] = (lambda k, y: model.sample(k, y.to(dev), sampler="ddpm"),
                                           2 * model.cfg.timesteps, min(spec["slow_images"], n))
    command = "; ".join(f"python {script}.py " + " ".join(argv) for script, argv in stages)
    seen = blob["step"] * blob["batch_size"]
    if spec["script"] == "vq":                    # the two stages' images, as their time is
        b1 = common.load_checkpoint(os.path.join(first, "ckpt.pt"), "vae")
        seen += b1["step"] * b1["batch_size"]
    result = dict(training=dict(command=command,
                                seconds=seconds, peak_rss_mb=peak,
                                steps=blob["step"], images_seen=seen,
                                images_per_s=train_rates(out)[-1], precision=run_args.precision),
                  parameters=sum(p.numel() for p in model.parameters()),
                  quality={}, seconds_per_100={}, evals={})
    pictures = {}
    for key, (draw, evals, k) in draws.items():
        torch.manual_seed(spec["seed"])
        times, images = [], []
        for i in range(0, k, 100):                 # timed per 100 images: the spread of the times
            j = min(i + 100, k)
            begin = time.time()
            with torch.no_grad(), common.autocast(run_args):
                x = draw(j - i, None if labels is None else labels[i:j])
            times.append((time.time() - begin) * 100 / (j - i))
            images.append(common.from_unit(x.float()).cpu())
        result["seconds_per_100"][key] = [sorted(times)[len(times) // 2], min(times), max(times)]
        result["evals"][key] = evals
        if k == n:
            images = torch.cat(images)
            result["quality"][key] = measure(judge, real, images, labels, seed=spec["seed"])
            pictures[key] = images[:100].numpy()
        print(f"compare: {key}: {result['seconds_per_100'][key][0]:.2f} s per 100", flush=True)
    if spec["name"] == "vae":                     # the real-data floor, measured like samples
        result["quality"]["real"] = measure(judge, real, train_x[-n:], train_y[-n:].long(),
                                            seed=spec["seed"])
    if spec["name"] in ("vae", "pixelcnn", "ddpm"):
        x = common.to_unit(test_x[:spec["eval_images"]]).to(dev)
        dims = x[0].numel() * math.log(2)
        with torch.no_grad():
            extra = {"k": spec["iw_samples"]} if spec["name"] == "vae" else {}
            nats = torch.cat([model.nll(x[i:i + 25], **extra) for i in range(0, len(x), 25)])
        result["bits_per_dim"] = (nats.double().cpu() / dims).tolist()
        if spec["name"] == "ddpm":
            with torch.no_grad():
                floor = model.decoder_floor(x)
            result["decoder_floor_bpd"] = float(floor.double().cpu().mean() / dims)
    if spec["name"] == "vq":                      # the same test images; learned and uniform prior
        x = common.to_unit(test_x[:spec["eval_images"]]).to(dev)
        dims = x[0].numel() * math.log(2)
        with torch.no_grad():
            rec, prior = (torch.cat(t) for t in zip(*[pixelcnn.two_stage_bound(
                model, vq, x[i:i + 25], vq.encode_codes(x[i:i + 25])[:, None]) for i in
                range(0, len(x), 25)]))
        uniform = math.log(vq.cfg.codebook) * model.cfg.image_size ** 2
        result["bits_per_dim"] = ((rec + prior).double().cpu() / dims).tolist()
        result["uniform_bits_per_dim"] = ((rec.double().cpu() + uniform) / dims).tolist()
    np.savez_compressed(os.path.join(out, "pictures.npz"), **pictures)
    common.write_metrics(out, dict(spec=spec, **result), "job.json")


def by_budget(done):
    """{budget: m}: the measurements of every job at that budget, merged (names as in the rules)."""
    m = {}
    for job in done.values():
        b = m.setdefault(job["spec"]["budget"], dict(quality={}, seconds_per_100={}, evals={},
                                                     bits_per_dim={}, training={}, parameters={}))
        for k in ("quality", "seconds_per_100", "evals"):
            b[k].update(job[k])
        b["training"][job["spec"]["name"]] = job["training"]
        b["parameters"][job["spec"]["name"]] = job["parameters"]
        if "bits_per_dim" in job:
            b["bits_per_dim"][job["spec"]["name"]] = job["bits_per_dim"]
        for k in ("decoder_floor_bpd", "uniform_bits_per_dim"):
            if k in job:
                b[k] = job[k]
    return dict(sorted(m.items()))


def get_judge(args, out, train_x, train_y, test_x, test_y):
    """The classifier in <out>/classifier.pt (trained first if absent), and the
    features of the test split."""
    path = os.path.join(out, "classifier.pt")
    num_classes = int(train_y.max()) + 1
    if os.path.exists(path):           # the judge is the study's instrument: kept once trained
        blob = common.load_checkpoint(path, "classifier")
        judge = Classifier(train_x.shape[1], num_classes)
        common.load_weights(judge, blob["model"], path)
    else:
        start = time.time()
        judge = train_classifier(
            train_x[:3000] if args.quick else train_x, train_y, args.classifier_epochs, args.seed
        )
        print(f"compare: classifier trained in {time.time() - start:.0f}s")
    real_feats, pred = judge.embed(test_x)
    acc = float((pred == test_y.long()).double().mean())
    common.save_checkpoint(
        path,
        "classifier",
        dict(channels=train_x.shape[1], num_classes=num_classes),
        model=judge.state_dict(),
        test_accuracy=acc,
    )
    print(f"compare: classifier test accuracy {acc:.4f}")
    return judge, real_feats, dict(test_accuracy=acc)


def score(args, judge, real_feats, test_x):
    """--score FILE.npz: the sample-quality numbers of any samples.npz the scripts wrote."""
    import numpy as np
    try:
        blob = np.load(args.score)
        images = torch.from_numpy(blob["images"])
        labels = torch.from_numpy(blob["labels"]).long() if "labels" in blob else None
    except (OSError, KeyError, ValueError) as e:
        raise common.UserError(f"--score {args.score}: not a samples .npz with 'images' ({e})")
    if images.shape[1:] != test_x.shape[1:] or images.dtype != torch.uint8:
        raise common.UserError(
            f"--score {args.score}: images are {tuple(images.shape[1:])} {images.dtype}, "
            f"the data set's are {tuple(test_x.shape[1:])} uint8"
        )
    q = quality(judge, real_feats, judge.embed(test_x[:len(images)]), images, labels)
    q["edge_ratio"] = edge_strength(images) / edge_strength(test_x[:1000])
    common.write_metrics(
        os.path.dirname(args.score) or ".",
        dict(samples=args.score, images=len(images), **q),
        os.path.splitext(os.path.basename(args.score))[0] + "_score.json",
    )


# ----------------------------------------------------------------------------------------------
# Restoration with a trained ddpm.py run (--restore): pictures and PSNR against baselines

def gaussian_blur(x, std):
    """x blurred by a Gaussian of `std` pixels (a 2 * ceil(3 std) + 1 tap separable kernel)."""
    r = math.ceil(3 * std)
    taps = torch.arange(-r, r + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-taps ** 2 / (2 * std ** 2))
    k = (k / k.sum()).repeat(x.shape[1], 1, 1, 1)                     # (C, 1, 1, 2r + 1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k, groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.transpose(2, 3), groups=x.shape[1])


def consistency(x, low, f):
    """Per image, the mean |block means of x - low|: how far x is from explaining its input."""
    return (F.avg_pool2d(x, f) - low).abs().flatten(1).mean(1)


def psnr(x, ref):
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2), per image."""
    mse = ((x.clamp(-1, 1) - ref) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(4 / mse.clamp(min=1e-12))


def restore(args, test_x, test_y):
    """--restore RUN: what a trained ddpm.py run restores on the first --eval-images test images,
    written to <out>/restoration.json with pictures beside it. A generative run: inpainting of
    the bottom half (inpaint.png, RePaint with --resample), zero-shot super-resolution by ILVR
    (superres.png; PSNR against bilinear upsampling) and SDEdit-style denoising at three noise
    levels (denoise.png; PSNR against the best of three Gaussian blurs on the same images). A
    super-resolution run (--task sr): PSNR and consistency (mean |block means - input|) of its
    outputs, of bilinear upsampling and, with --zero-shot RUN, of ILVR on that generative run
    (at most 32 images: T steps each). The outputs go to sr_*.npz for --score (digit kept).
    --null-label: class-conditional models get the "no class" label, so the input decides."""
    model = ddpm.load(args.restore, args.device)
    cfg, out = model.cfg, args.out or args.restore
    if tuple(test_x.shape[1:]) != (cfg.channels, cfg.image_size, cfg.image_size):
        raise common.UserError(f"--restore {args.restore}: the model's images are not "
                               f"{tuple(test_x.shape[1:])} (C, H, W) like {args.data}'s")
    n = min(args.eval_images, len(test_x))
    x0 = common.to_unit(test_x[:n]).to(args.device)
    labels = lambda m, k: (test_y[:k].to(args.device)
                           if m.cfg.num_classes and not args.null_label else None)
    kept = lambda m, k: test_y[:k] if m.cfg.num_classes else None     # saved with the outputs
    f, kw = cfg.sr_factor or args.factor, dict(guidance=args.guidance)
    if cfg.image_size % f:
        raise common.UserError(f"--factor {f} does not divide the image size {cfg.image_size}")
    torch.manual_seed(args.seed)
    low = F.avg_pool2d(x0, f)
    bilinear = F.interpolate(low, scale_factor=f, mode="bilinear", align_corners=False)
    report = dict(run=args.restore, images=n, factor=f, null_label=args.null_label,
                  psnr_bilinear=psnr(bilinear, x0).mean().item(),
                  consistency_bilinear=consistency(bilinear, low, f).mean().item())
    zero_shot = ddpm.load(args.zero_shot, args.device) if args.zero_shot else None
    if cfg.sr_factor:
        trained = model.sample(n, labels(model, n), sampler=FAST[0], steps=FAST[1], low=low, **kw)
        report.update(psnr_trained=psnr(trained, x0).mean().item(),
                      consistency_trained=consistency(trained, low, f).mean().item())
        common.save_images(out, "sr_trained", trained, 16, kept(model, n))
        common.save_images(out, "sr_bilinear", bilinear, 16, kept(model, n))
    else:
        zero_shot = model
    if zero_shot is not None:
        zcfg = zero_shot.cfg
        if zcfg.sr_factor or (zcfg.channels, zcfg.image_size) != (cfg.channels, cfg.image_size):
            raise common.UserError(f"--zero-shot {args.zero_shot}: needs a generative (not --task "
                                   f"sr) model of the same images")
        k = min(n, 32) if cfg.sr_factor else n
        ilvr = zero_shot.super_resolve(low[:k], f, y=labels(zero_shot, k), **kw)
        report.update(psnr_zero_shot=psnr(ilvr, x0[:k]).mean().item(), zero_shot_images=k,
                      consistency_zero_shot=consistency(ilvr, low[:k], f).mean().item())
        common.save_images(out, "sr_zero_shot", ilvr, 16, kept(zero_shot, k))
        up = low[:8].repeat_interleave(f, -2).repeat_interleave(f, -1)
        grid = torch.stack([up, bilinear[:8], ilvr[:8], x0[:8]], 1).flatten(0, 1)
        common.save_images(out, "superres", grid, 4)
    if not cfg.sr_factor:
        y = labels(model, n)
        mask = torch.ones_like(x0[:6])
        mask[..., cfg.image_size // 2:, :] = 0
        fills = model.inpaint(x0[:6].repeat(2, 1, 1, 1), mask.repeat(2, 1, 1, 1), resample=
                              args.resample, y=None if y is None else y[:6].repeat(2), **kw)
        rows = torch.stack([x0[:6], x0[:6] * mask - (1 - mask)] + list(fills.chunk(2)), 1)
        common.save_images(out, "inpaint", rows.flatten(0, 1), 4)
        report["denoising"], rows = {}, []
        for sigma in (0.1, 0.2, 0.4):                             # noise std in [-1, 1] units
            noisy = x0 + sigma * torch.randn_like(x0)
            clean = model.denoise_image(noisy, sigma, y=y, **kw)
            blurs = {std: psnr(gaussian_blur(noisy, std), x0).mean().item() for std in (0.5, 1, 2)}
            best = max(blurs, key=blurs.get)     # the baseline's best blur on these very images
            report["denoising"][f"{sigma:g}"] = dict(
                step=model.noise_level_step(sigma), psnr_noisy=psnr(noisy, x0).mean().item(),
                psnr_blur=blurs[best], blur_std_pixels=best,
                psnr_denoised=psnr(clean, x0).mean().item())
            rows += [noisy[:8].clamp(-1, 1), clean[:8], x0[:8]]
        common.save_images(out, "denoise", torch.stack(rows, 1).flatten(0, 1), 9)
    report["note"] = ("PSNR in dB of images in [-1, 1] against the test images; consistency: mean "
                      "|block means of the output - the low-resolution input|; outputs in sr_*.npz")
    common.write_metrics(out, report, "restoration.json")


# ----------------------------------------------------------------------------------------------
# Curves: sample quality against training images seen, along one run (--curve)

def curve(args, judge, real_feats, test_x):
    """--curve ddpm|ldm: sample quality after each number of training steps in --at, scored on
    --num-samples class-conditional DDIM samples. ddpm: one run taken in stages, each resuming
    the last (with ddpm.py's constant learning rate that is the uninterrupted run: the resume is
    exact; with --lr-schedule cosine in --flags, a run per point, as for ldm). ldm: its
    diffusion stage has a cosine learning rate that ends with the run, so each point is its
    own stage-2 run, all on one stage-1 autoencoder trained first. Training images
    seen (steps x batch; LDM: stage 2's) is the axis every machine shares; the seconds are this
    machine's. Writes <out>/curve.json, then the table and plot of every curve beside it."""
    import numpy as np
    import shutil
    path = os.path.join(args.out, "curve.json")
    flags = ["--conditional", "--precision", args.precision] + shlex.split(args.flags)
    old = {}
    if args.reuse and os.path.exists(path):
        with open(path) as f:
            old = {row["steps"]: row for row in json.load(f)["rows"]}
    elif os.path.isdir(args.out):                           # a new curve starts new runs
        for name in os.listdir(args.out):
            if name in ("run", "stage1") or name.startswith("run-"):
                shutil.rmtree(os.path.join(args.out, name))
    stage1 = os.path.join(args.out, "stage1", "autoencoder.pt")
    if args.curve == "ldm" and not os.path.exists(stage1):
        run_script(
            args, "ldm", "train", os.path.dirname(stage1), ["--stage", "autoencoder"] + flags
        )
    # ddpm.py with its constant learning rate: one run in stages; a schedule that ends with the
    # run (ldm.py, ddpm.py --lr-schedule cosine): a run of its own per point
    staged = args.curve == "ddpm" and not re.search(r"--lr-schedule[ =]cosine", args.flags)
    rows = []
    for steps in sorted(set(args.at)):
        if steps in old:
            rows.append(old[steps])
            continue
        if staged:
            run = os.path.join(args.out, "run")
            resume = ["--resume"] if os.path.exists(os.path.join(run, "ckpt.pt")) else []
            run_script(args, "ddpm", "train", run, ["--steps", str(steps)] + resume + flags)
        elif args.curve == "ddpm":
            run = os.path.join(args.out, f"run-{steps}")
            run_script(args, "ddpm", "train", run, ["--steps", str(steps)] + flags)
        else:
            run = os.path.join(args.out, f"run-{steps}")
            os.makedirs(run, exist_ok=True)
            shutil.copy(stage1, run)
            run_script(
                args, "ldm", "train", run, ["--stage", "diffusion", "--steps", str(steps)] + flags
            )
        start = time.time()
        run_script(args, args.curve, "sample", run, flags + [
            "--sampler", "ddim", "--ddim-steps", str(args.ddim_steps),
            "--num-samples", str(args.num_samples)])
        seconds = time.time() - start
        blob = common.load_checkpoint(os.path.join(run, "ckpt.pt"), args.curve)
        drawn = np.load(os.path.join(run, "samples.npz"))
        images, labels = torch.from_numpy(drawn["images"]), torch.from_numpy(drawn["labels"]).long()
        q = quality(judge, real_feats, judge.embed(test_x[:len(images)]), images, labels)
        rows.append(dict(steps=steps, images_seen=steps * blob["batch_size"],
                         train_seconds=blob["elapsed"], sample_seconds=seconds,
                         accuracy=q["accuracy"], fd=q["fd"], precision=q["precision"],
                         recall=q["recall"]))
        print(f"compare: curve {args.out}: {rows[-1]}", flush=True)
        common.write_metrics(args.out, dict(
            command=args.command, script=args.curve, flags=flags, machine=machine(),
            images_per_s=train_rates(run)[-1], samples=args.num_samples, rows=rows), "curve.json")
    plot_curves(os.path.dirname(os.path.abspath(args.out)))


# ----------------------------------------------------------------------------------------------
# Samplers: quality against network evaluations, on one trained model (--samplers RUN)

def sampler_settings(nfes, timesteps):
    """(sampler, steps) for each budget of network evaluations per image: DDIM and DPM-Solver++
    make one per step, Heun two per step but one on the last (2 steps - 1); then ancestral."""
    out = [("ddim", n) for n in nfes] + [("dpm", n) for n in nfes]
    out += [("heun", (n + 1) // 2) for n in nfes]
    return out + [("ddpm", timesteps)]


def samplers(args, judge, real_feats, test_x):
    """--samplers RUN: every sampler of a trained ddpm.py or ldm.py run at --nfe network evaluations
    per image (and ancestral at all T steps), from the same x_T and labels, under --precision;
    seconds per 100 images on this machine, class accuracy, Frechet distance, precision, recall.
    Writes <out>/samplers.json and samplers.md."""
    import ldm
    module = ldm if os.path.exists(os.path.join(args.samplers, "autoencoder.pt")) else ddpm
    model = module.load(args.samplers, args.device)
    diffusion = model.diffusion if module is ldm else model
    n, cfg = args.num_samples, model.cfg
    classes = cfg.num_classes
    if not classes:
        raise common.UserError(f"--samplers {args.samplers}: an unconditional model; the accuracy "
                               f"needs one trained with --conditional")
    y = (torch.arange(n) % classes).to(args.device)
    shape = (n, diffusion.cfg.channels, diffusion.cfg.image_size, diffusion.cfg.image_size)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed)).to(args.device)
    real_ref = judge.embed(test_x[:n])
    rows = []
    run_args = argparse.Namespace(precision=args.precision, device=args.device)
    for name, steps in sampler_settings(args.nfe, diffusion.cfg.timesteps):
        torch.manual_seed(args.seed)                      # the ancestral sampler's noise
        start = time.time()
        with torch.no_grad(), common.autocast(run_args):
            x = model.sample(
                n, y, sampler=name, steps=steps, guidance=args.guidance, noise=x_T.clone()
            )
        seconds = time.time() - start
        q = quality(judge, real_feats, real_ref, common.from_unit(x).cpu(), y.cpu())
        nfe = 2 * steps - 1 if name == "heun" else steps
        rows.append(
            dict(
                sampler=name,
                steps=steps,
                nfe=nfe,
                seconds_per_100=seconds * 100 / n,
                accuracy=q["accuracy"],
                fd=q["fd"],
                precision=q["precision"],
                recall=q["recall"],
            )
        )
        print(f"compare: samplers: {rows[-1]}", flush=True)
    meta = dict(
        command=args.command,
        run=args.samplers,
        machine=machine(),
        precision=args.precision,
        samples=n,
        guidance=args.guidance,
    )
    sampler_report(args.out, meta, rows)


def sampler_report(out, meta, rows):
    """<out>/samplers.json and samplers.md: the table, and the setting with the fewest network
    evaluations that reaches DDIM-50's quality (rule: `reaches`)."""
    ref = next((r for r in rows if r["sampler"] == "ddim" and r["steps"] == 50), None)
    good = [r for r in rows if ref and reaches(r, ref)]
    best = min(good, key=lambda r: r["nfe"]) if good else None
    common.write_metrics(out, dict(meta, rows=rows, reaches_ddim50=best), "samplers.json")
    names = {
        "ddim": "DDIM",
        "dpm": "DPM-Solver++(2M)",
        "heun": "Heun",
        "ddpm": "ancestral (Algorithm 2)",
    }
    L = [
        "# Samplers: quality against network evaluations",
        "",
        f"Command: `{meta['command']}`  ",
        f"Run: `{meta['run']}`; machine: {meta['machine']}; {meta['precision']}; {meta['samples']} "
        f"class-conditional samples from the same x_T, guidance {meta['guidance']:g} (each "
        f"evaluation is then two network passes, batched)",
        "",
        "| sampler | steps | network evaluations per image | seconds per 100 images "
        "| class accuracy | Frechet dist. | precision | recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        L.append(
            f"| {names[r['sampler']]} | {r['steps']} | {r['nfe']} | {r['seconds_per_100']:.1f} | "
            f"{r['accuracy']:.3f} | {r['fd']:.1f} | {r['precision']:.2f} | {r['recall']:.2f} |"
        )
    rule = (
        "accuracy at least DDIM-50's minus 0.01, Frechet distance at most 1.1x DDIM-50's, recall "
        "at least DDIM-50's minus 0.05"
    )
    L += ["", f"Reaches DDIM-50's quality ({rule}) with the fewest evaluations: " +
          (f"{names[best['sampler']]}, {best['steps']} steps, {best['nfe']} evaluations, "
           f"{best['seconds_per_100']:.1f} s per 100 images." if best else "none."), ""]
    common.atomic_write(os.path.join(out, "samplers.md"), lambda f: f.write("\n".join(L)), "w")
    print(f"compare: wrote {out}/samplers.md and samplers.json")


def plot_curves(folder):
    """<folder>/curves.md (a table per curve, with its command) and curves-<script>.svg
    (accuracy and Frechet distance against training images seen) from every
    <folder>/*/curve.json."""
    curves = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name, "curve.json")
        if os.path.exists(path):
            with open(path) as f:
                curves.append((name, json.load(f)))
    L = [f"# Sample quality against training images seen", ""]
    for name, c in curves:
        L += [f"## {name}", "", f"Command: `{c['command']}`  ", f"Machine: {c['machine']}, "
              f"{c['images_per_s']:.0f} training images/s; {c['samples']} samples per point", "",
              "| steps | images seen | training minutes | class accuracy | Frechet dist. | "
              "precision | recall |", "|---|---|---|---|---|---|---|"]
        L += [f"| {r['steps']} | {r['images_seen']:,} | {r['train_seconds'] / 60:.1f} | "
              f"{r['accuracy']:.3f} | {r['fd']:.1f} | {r['precision']:.2f} | {r['recall']:.2f} |"
              for r in c["rows"]]
        L.append("")
    common.atomic_write(os.path.join(folder, "curves.md"), lambda f: f.write("\n".join(L)), "w")
    for script in sorted({c["script"] for _, c in curves}):   # one plot per script: own x scale
        mine = [(name, c) for name, c in curves if c["script"] == script]
        common.atomic_write(os.path.join(folder, f"curves-{script}.svg"),
                            lambda f: f.write(svg_plot(mine)), "w")
    print(f"compare: wrote {folder}/curves.md and curves-<script>.svg")


def svg_plot(curves, panels=None, x_key="images_seen", x_scale=1000,
             x_label="training images seen (thousands)", x_unit="k", w=420, h=300, pad=50):
    """Two panels against x (default: class accuracy and log10 Frechet distance against
    thousands of images seen); panels: [(title, value of a row, low, high)]."""
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
    xmax = max([r[x_key] for _, c in curves for r in c["rows"]] + [1]) / x_scale
    if panels is None:
        fds = [math.log10(max(r["fd"], 1e-3)) for _, c in curves for r in c["rows"]] or [0.0]
        panels = [("class accuracy", lambda r: r["accuracy"], 0.0, 1.0),
                  ("log10 Frechet distance", lambda r: math.log10(max(r["fd"], 1e-3)),
                   math.floor(min(fds)), math.ceil(max(fds)) + (min(fds) == max(fds)))]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{h + 20 * len(curves)}" '
        f'font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>'
    ]
    for k, (title, value, lo, hi) in enumerate(panels):
        x0, y0 = k * w + pad, h - pad                             # the panel's origin in pixels
        sx = lambda v: x0 + (w - 1.5 * pad) * v / xmax
        sy = lambda v: y0 - (h - 2 * pad) * (v - lo) / (hi - lo)
        out.append(f'<text x="{x0}" y="{pad - 15}">{title}</text>')
        out.append(f'<path d="M{x0} {pad - 5} V{y0} H{sx(xmax)}" stroke="black" fill="none"/>')
        for i in range(5):
            xv, yv = xmax * i / 4, lo + (hi - lo) * i / 4
            out.append(
                f'<text x="{sx(xv)}" y="{y0 + 15}" text-anchor="middle">{xv:.3g}{x_unit}</text>'
            )
            out.append(f'<text x="{x0 - 5}" y="{sy(yv) + 4}" text-anchor="end">{yv:.2g}</text>')
        out.append(f'<text x="{sx(xmax / 2)}" y="{y0 + 32}" text-anchor="middle">{x_label}</text>')
        for j, (name, c) in enumerate(curves):
            pts = [(sx(r[x_key] / x_scale), sy(value(r))) for r in c["rows"]]
            color, dash = colors[j % len(colors)], "6,3" if j >= len(colors) else "none"
            out.append(f'<polyline points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in pts)}" '
                       f'stroke="{color}" fill="none" stroke-width="2" stroke-dasharray="{dash}"/>')
            out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}"/>' for a, b in pts]
    for j, (name, c) in enumerate(curves):
        dashed = " (dashed)" if j >= len(colors) else ""
        out.append(f'<text x="{pad}" y="{h + 15 + 20 * j}" fill="{colors[j % len(colors)]}">'
                   f'{name}{dashed}: {c["script"]}.py {" ".join(c["flags"])}</text>')
    return "\n".join(out + ["</svg>", ""])


# ----------------------------------------------------------------------------------------------
# The report

ROWS = [  # (title, quality key, training key)
    ("VAE, samples x ~ p(x\\|z)", "vae", "vae"),
    ("VAE, decoder mean", "vae-mean", "vae"),
    ("PixelCNN", "pixelcnn", "pixelcnn"),
    (f"DDPM ({FAST[0]} {FAST[1]} steps)", "ddpm", "ddpm"),
    ("DDPM, DDIM 50 steps", "ddpm-ddim", "ddpm"),
    ("DDPM, guidance w = 0", "ddpm-w0", "ddpm"),
    ("DDPM, guidance w = 3", "ddpm-w3", "ddpm"),
    ("DDPM eps, unweighted loss", "ddpm-eps", "ddpm-eps"),
    ("DDPM x0, unweighted loss", "ddpm-x0", "ddpm-x0"),
    ("LDM", "ldm", "ldm"),
    ("VQ-VAE (K = 32) + PixelCNN prior", "vq", "vq"),
    ("DDPM, --small-data training images", "ddpm-small", "ddpm-small"),
    ("LDM, --small-data training images", "ldm-small", "ldm-small"),
    ("real train images (the floor)", "real", None),
]
CURVES = ("vae", "pixelcnn", "ddpm", "ddpm-eps", "ddpm-x0", "ldm", "vq")


def budget_table(m, unit):
    L = ["| model | images seen | train img/s | bits/dim | KID | Frechet dist. | precision | "
         "recall | class acc. | edges vs real | s / 100 images | evals / image |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for title, key, tkey in ROWS:
        if key not in m["quality"]:
            continue
        q, tr = m["quality"][key], m["training"].get(tkey)
        bpd = m["bits_per_dim"].get(key)
        bpd = f"{sum(bpd) / len(bpd):.3f}" if bpd else ""
        t = m["seconds_per_100"].get(key)
        seen, rate = (f"{tr['images_seen']:,}", f"{tr['images_per_s']:.0f}") if tr else ("", "")
        L.append(f"| {title} | {seen} | {rate} | {bpd} | {kid3(q['kid'])} | "
                 f"{f3(q['fd'], 1)} | {f3(q['precision'])} | {f3(q['recall'])} | "
                 f"{f3(q['accuracy']) if 'accuracy' in q else 'n/a'} | {f3(q['edge_ratio'])} | "
                 f"{f3(t, 2) if t else ''} | {m['evals'].get(key, '')} |")
    return L


def report(args, r, out):
    import numpy as np
    unit = "steps" if args.quick else "min"
    budgets = list(r["measured"])
    top = r["measured"][budgets[-1]]
    L = [
        f"# Four families compared on `{args.data}`",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {r['machine']}  ",
        f"Date: {r['date']}",
        "",
        f"Every model trained through its own script for each budget "
        f"({', '.join(f'{b:g}' for b in budgets)} {'steps' if args.quick else 'minutes'}; LDM "
        f"the same in total, half per stage), each budget a "
        f"run of its own, {args.lanes} runs at a time on one thread each (a run's speed depends on "
        f"what the other lane runs: read the images seen beside the minutes). {args.num_samples} "
        f"samples per model and budget; "
        f"class-conditional models draw each class equally often. Quality in the features of a "
        f"classifier trained here (test accuracy {r['classifier']['test_accuracy']:.3f}): "
        f"**not Inception FID or KID**. Each figure: value (95% interval over the samples: exact "
        f"binomial for shares, bootstrap for the distances and the edge ratio); timings: median "
        f"(fastest-slowest) over batches of 100. Bits/dim on the first {args.eval_images} test "
        f"images. "
        f"The intervals cover the samples drawn, not the training run's own randomness (one run "
        f"per point).",
        "",
    ]
    for b in budgets:
        L += [f"## {b:g} {unit}", ""] + budget_table(r["measured"][b], unit) + [""]
    names = [
        ("vae", "VAE (decoder, one pass)"),
        ("pixelcnn", "PixelCNN, cached (fast)"),
        ("pixelcnn-naive", "PixelCNN, naive"),
        ("ddpm", f"DDPM, {FAST[0]} {FAST[1]} steps (the default)"),
        ("ddpm-ddim", f"DDPM, DDIM {args.ddim_steps} steps"),
        ("ddpm-ancestral", "DDPM, ancestral (all T steps)"),
        ("ldm", f"LDM, {FAST[0]} {FAST[1]} steps (+ decoder)"),
        ("vq", "VQ-VAE: PixelCNN prior over 7x7 codes, cached (+ decoder)"),
    ]
    L += [
        f"## Sampling cost ({budgets[-1]:g} {unit} models)",
        "",
        "| sampler | sequential network evaluations per image (guidance: 2 a step) "
        "| seconds per 100 images |",
        "|---|---|---|",
    ]
    L += [f"| {title} | {top['evals'][k]} | {f3(top['seconds_per_100'][k], 2)}"
          f"{'' if k in top['quality'] else f' (timed on {args.slow_images}, scaled)'} |"
          for k, title in names if k in top["evals"]]
    L += [
        "",
        "## Sample quality and likelihood against training time",
        "",
        "![curves](compare-curves.svg)",
        "",
        "![likelihood](compare-likelihood.svg)",
        "",
        "| model | "
        + " | ".join(f"{b:g} {unit}: images seen, KID, bits/dim" for b in budgets)
        + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for key in CURVES:
        cells = []
        for b in budgets:
            m = r["measured"][b]
            bpd = m["bits_per_dim"].get(key)
            cells.append(f"{m['training'][key]['images_seen']:,}, {kid3(m['quality'][key]['kid'])}"
                         + (f", {sum(bpd) / len(bpd):.3f}" if bpd else ""))
        L.append(f"| {key} | " + " | ".join(cells) + " |")
    L += [
        "",
        "## The claims",
        "",
        "| claim | " + " | ".join(f"{b:g} {unit}" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for i, (claim, _) in enumerate(CLAIMS):
        L.append(f"| {i + 1}. {claim} | " + " | ".join(
            f"**{r['verdicts'][b][i][1]}**" for b in budgets) + " |")
    flips = [
        i + 1 for i in range(len(CLAIMS)) if len({r["verdicts"][b][i][1] for b in budgets}) > 1
    ]
    L += [
        "",
        "Verdicts that change with the budget: "
        + (", ".join(f"claim {i}" for i in flips) or "none")
        + ".",
        "",
        "Rules: a figure is better than another only when their 95% intervals do not overlap "
        "(else a tie); a claim of several parts is supported when some part holds and none is "
        "contradicted, contradicted in the reverse case, depends when parts go both ways, and a "
        "tie when every part is one.",
        "",
    ]
    for i, (claim, rule) in enumerate(CLAIMS):
        L += [f"{i + 1}. *{claim}* Rule: {' '.join(rule.__doc__.split())}"]
        L += [
            f"   - {b:g} {unit}: **{r['verdicts'][b][i][1]}**. {r['verdicts'][b][i][2]}"
            for b in budgets
        ]
    L += ["", f"![samples at {budgets[-1]:g} {unit}](compare.png)", ""]
    common.atomic_write(os.path.join(out, "compare.md"), lambda f: f.write("\n".join(L)), "w")
    curves = [(key, dict(script=key, flags=[], rows=[dict(
        minutes=b, kid=r["measured"][b]["quality"][key]["kid"][0],
        recall=r["measured"][b]["quality"][key]["recall"][0]) for b in budgets])) for key in CURVES]
    logs = [math.log10(max(row["kid"], 0.1)) for _, c in curves for row in c["rows"]]
    panels = [("log10 KID", lambda row: math.log10(max(row["kid"], 0.1)),
               math.floor(min(logs)), math.ceil(max(logs)) + (min(logs) == max(logs))),
              ("recall", lambda row: row["recall"], 0.0, 1.0)]
    common.atomic_write(os.path.join(out, "compare-curves.svg"), lambda f: f.write(svg_plot(
        curves, panels, "minutes", 1, f"training budget ({unit})", "")), "w")
    exact = [
        (
            key,
            dict(
                script=key,
                flags=[],
                rows=[
                    dict(minutes=b, bpd=float(np.mean(r["measured"][b]["bits_per_dim"][key])))
                    for b in budgets
                ],
            ),
        )
        for key in ("vae", "pixelcnn", "ddpm", "vq")
    ]
    bpds = [row["bpd"] for _, c in exact for row in c["rows"]]
    panels = [("bits/dim on the test images", lambda row: row["bpd"], math.floor(min(bpds)),
               math.ceil(max(bpds)) + (math.floor(min(bpds)) == math.ceil(max(bpds))))]
    common.atomic_write(os.path.join(out, "compare-likelihood.svg"), lambda f: f.write(svg_plot(
        exact, panels, "minutes", 1, f"training budget ({unit})", "")), "w")
    print("\n".join(L))


def compare(args):
    tag = os.path.splitext(os.path.basename(args.data))[0]
    out = args.out or os.path.join("results", tag + ("-quick" if args.quick else ""))
    if args.curve or args.samplers:      # every curve in one folder shares the judge kept there
        out = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out, exist_ok=True)
    train_x, train_y = common.load_data(args.data, "train", args.data_dir)
    test_x, test_y = common.load_data(args.data, "test", args.data_dir)
    if train_y is None or test_y is None:
        raise common.UserError(
            f"compare.py needs labels (its judge is a classifier); {args.data} has none"
        )
    if args.restore:
        return restore(args, test_x, test_y)
    r = dict(command=args.command, machine=machine(), date=datetime.date.today().isoformat())
    judge, real_feats, r["classifier"] = get_judge(args, out, train_x, train_y, test_x, test_y)
    if args.score:
        return score(args, judge, real_feats, test_x)
    if args.curve:
        return curve(args, judge, real_feats, test_x)
    if args.samplers:
        os.makedirs(args.out, exist_ok=True)
        return samplers(args, judge, real_feats, test_x)
    if len(train_x) <= args.small_data:
        raise common.UserError(
            f"--small-data {args.small_data}: the study also trains on that many of "
            f"the training images, and {args.data} has only {len(train_x)}; pass fewer"
        )
    small_dir = small_data(args, out, train_x, train_y, test_x, test_y)
    specs = [job_spec(args, out, job, small_dir) for job in plan(args)]
    done = run_jobs(args, specs)
    r["measured"] = by_budget(done)
    r["verdicts"] = {b: verdicts(m) for b, m in r["measured"].items()}
    common.write_metrics(out, r, "compare.json")
    import numpy as np
    top = max(r["measured"])
    pics = {}
    for job in specs:
        if job["budget"] == top:
            with np.load(os.path.join(job["out"], "pictures.npz")) as blob:
                pics.update({k: torch.from_numpy(blob[k]) for k in blob.files})
    titles = [("real", "real"), ("vae", "VAE"), ("vae-mean", "VAE mean"), ("pixelcnn", "PixelCNN"),
              ("ddpm", "DDPM"), ("ddpm-x0", "DDPM x0"), ("ldm", "LDM"), ("vq", "VQ-VAE")]
    n = min(10, int(math.sqrt(args.num_samples)))
    pics["real"] = train_x[-n * n:]
    common.write_png(os.path.join(out, "compare.png"), panels([(t, pics[k]) for k, t in titles], n))
    report(args, r, out)
    print(f"compare: wrote {out}/compare.md, compare.json, compare.png, compare-curves.svg, "
          f"compare-likelihood.svg")


# ----------------------------------------------------------------------------------------------

def main(argv=None):
    p = common.Parser(prog="compare.py", description=__doc__.strip().splitlines()[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--data", default="digits", help="a labelled data set (as in the model scripts)")
    a("--data-dir", default=None)
    a("--out", default=None, help="default results/<data>")
    a("--budgets", type=common.positive(float), nargs="+", default=None,
      help="training budgets per model, in minutes (--quick: steps); default 1 2 4 (--quick: 4 16)")
    a(
        "--lanes",
        type=common.positive(int),
        default=2,
        help="training runs at a time, one thread each",
    )
    a("--small-data", type=common.positive(int), default=1000,
      help="DDPM and LDM are also trained on this many training images (--quick: 60)")
    a(
        "--reuse",
        action="store_true",
        help="--score, --curve, --samplers: keep the curve's runs and the judge (the full study "
        "always keeps the judge and every finished job, so a rerun resumes it)",
    )
    a("--job", default=None, help=argparse.SUPPRESS)     # one job of the full study (internal)
    a(
        "--quick",
        action="store_true",
        help="tiny models and a few steps: the pipeline in about a minute",
    )
    a("--num-samples", type=common.positive(int), default=None,
      help="samples per model and budget (default 500; --curve, --samplers: 100; --quick: 20)")
    a("--slow-images", type=common.positive(int), default=10,
      help="images timed for the slow samplers (DDPM ancestral, PixelCNN naive), scaled to 100")
    a(
        "--eval-images",
        type=common.positive(int),
        default=50,
        help="test images for the likelihoods",
    )
    a(
        "--iw-samples",
        type=common.positive(int),
        default=1000,
        help="K of the VAE's importance-weighted bound",
    )
    a("--ddim-steps", type=common.positive(int), default=50)
    a("--classifier-epochs", type=common.positive(int), default=12)
    a("--device", default="auto")
    a("--seed", type=int, default=0)
    a(
        "--score",
        metavar="FILE.npz",
        default=None,
        help="only score a samples .npz written by a script (classifier features; trained first "
        "if needed)",
    )
    a("--curve", choices=["ddpm", "ldm"], default=None,
      help="only this script's quality against training images seen, along one run (needs --out)")
    a("--at", type=common.positive(int), nargs="+", default=[300, 600, 900, 1200, 1800],
      help="--curve: the training steps at which to measure")
    a("--flags", default="", help="--curve: the script's training flags (one quoted string)")
    a("--precision", choices=["fp32", "bf16"], default="fp32",
      help="--curve: training precision; --samplers: sampling precision")
    a(
        "--samplers",
        metavar="RUN",
        default=None,
        help="only the sampler table of a trained class-conditional ddpm.py or ldm.py run folder "
        "(needs --out)",
    )
    a("--nfe", type=common.positive(int), nargs="+", default=[5, 10, 20, 50],
      help="--samplers: network evaluations per image to compare at")
    a(
        "--guidance",
        type=float,
        default=1.0,
        help="--samplers, --restore: classifier-free guidance scale",
    )
    a("--restore", metavar="RUN", default=None,
      help="only the restoration pictures and PSNR of a ddpm.py run folder (--out: default RUN)")
    a("--factor", type=int, choices=[2, 4], default=4, help="--restore: the zero-shot SR factor")
    a("--zero-shot", metavar="RUN", default=None,
      help="--restore of a super-resolution run: also ILVR with this generative ddpm.py run")
    a("--resample", type=common.positive(int), default=1, help="--restore: RePaint resampling")
    a("--null-label", action="store_true",
      help="--restore: class-conditional models get the 'no class' label (the input decides)")
    args = p.parse_args(argv)
    if args.job:
        try:
            return run_job(args.job)
        except common.UserError as e:
            p.exit(1, f"{p.prog}: error: {e}\n")
    args.budgets = sorted(
        {float(b) for b in args.budgets or ([4, 16] if args.quick else [1, 2, 4])}
    )
    full = not (args.score or args.curve or args.samplers or args.restore)
    args.num_samples = args.num_samples or (500 if full else 100)
    if args.curve and not args.out:
        p.error(
            "--curve needs --out (the curve's folder; the curves-<script>.svg plot is drawn "
            "beside it)"
        )
    if args.samplers and not args.out:
        p.error(
            "--samplers needs --out (the table's folder; the judge classifier is kept beside it)"
        )
    args.command = "python compare.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.num_samples, args.slow_images, args.eval_images, args.small_data = 20, 2, 8, 60
        args.iw_samples, args.ddim_steps, args.classifier_epochs = 20, 5, 1
    try:
        args.device = common.pick_device(args.device)
        compare(args)
    except common.UserError as e:
        p.exit(1, f"{p.prog}: error: {e}\n")
    except KeyboardInterrupt:
        p.exit(
            130,
            f"{p.prog}: interrupted; run the same command again to go on from the finished jobs\n",
        )


if __name__ == "__main__":
    main()
