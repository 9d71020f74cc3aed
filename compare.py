"""compare.py: the four families side by side: same data, same machine, same training budgets.

    python compare.py --data mnist --data-dir ../shared/data/mnist-small   # the study
    python compare.py --quick                                               # the pipeline, minutes

The study trains each family through its own command line at each budget of --budgets (default 1,
2 and 4 minutes; each point a run of its own, --lanes runs at a time on one thread each): vae.py,
pixelcnn.py, ddpm.py with its defaults, ddpm.py with Ho et al.'s unweighted loss and each target
(eps, x0), ldm.py (the budget in total, half per stage) and a VQ-VAE with a PixelCNN prior over its
codes (vae.py --codebook 32, then pixelcnn.py --codes: half the budget per stage). At the largest
budget every family is trained with --seeds seeds, and ddpm.py and ldm.py again on only the first
--small-data training images (--train-limit; claim 9). Each run then draws --num-samples samples
and is measured against the same real images:

* training: images seen (every stage), wall time of the whole job (LDM's encoding pass included);
* likelihood in bits/dim per test image (first --eval-images): PixelCNN exact, the VAE's
  importance-weighted bound (Burda et al. 2016), DDPM's variational bound (Ho et al. 2020, eq. 5),
  the VQ-VAE's two-stage bound with the learned and the uniform prior (van den Oord et al. 2017);
* sample quality in the features of a small classifier trained here (the judge; NOT Inception
  features, so not comparable with published FID or KID): the Frechet distance (Heusel et al.
  2017), KID (Binkowski et al. 2018) on features standardised by the real set's mean and
  deviation, precision and recall (Kynkaanniemi et al. 2019, k = 3), class accuracy of
  class-conditional samples, the entropy of the judge's class histogram, the within-class spread,
  and an edge ratio of 3x3-median-filtered images (blur below 1; the filter removes per-pixel
  sampling noise before edges are measured);
* sampling: sequential network evaluations per image, seconds per 100 images (batches of 100).

Real images: the first half of the test split is the reference every set is measured against; the
second half, which neither the judge nor any model trained on, is measured like a model: the floor.
Every figure has a 95% interval over --reps resamples that redraw both the reference and the sample
set (half-samples, see `measure`), and a comparison of two models is an interval of their difference
over the same resamples. Ten claims of the seed articles and one of the VQ-VAE paper get a verdict
per budget from the rules in the section "The rules". A rerun keeps every finished job whose spec
(judge included) is unchanged. Writes <out>/compare.md, compare.json, compare.png and two plots.
"""

import argparse, datetime, hashlib, json, math, os, platform, re, shlex, subprocess, sys, time, zlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common, ddpm, ldm, pixelcnn, vae

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = {"vae": vae, "pixelcnn": pixelcnn, "ddpm": ddpm, "ldm": ldm}


def launch(script, argv):
    """The one way a script is run here: its own command line, in this process."""
    print(f"compare: python {script}.py " + shlex.join(argv), flush=True)
    try:
        SCRIPTS[script].main(argv)
    except SystemExit as e:
        if e.code:
            raise common.UserError(f"{script}.py {argv[0]} failed (exit {e.code}); see above")


# ----------------------------------------------------------------------------------------------
# The judge: a small classifier; its 64 features are where samples are compared

class Classifier(nn.Module):
    """Three conv layers and a 64-d feature layer."""

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

    @property
    def classes(self):
        return self.head[1].out_features

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


def identity(state, settings):
    """The judge's identity: a hash of its weights and its training settings."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for k in sorted(state):
        h.update(k.encode() + state[k].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def load_judge(path):
    """The judge in a classifier.pt, with its identity."""
    blob = common.load_checkpoint(path, "classifier")
    judge = Classifier(blob["config"]["channels"], blob["config"]["num_classes"])
    common.load_weights(judge, blob["model"], path)
    judge.id, judge.accuracy = identity(blob["model"], blob["settings"]), blob["test_accuracy"]
    return judge.eval()


def get_judge(args, out, train_x, train_y, test_x, test_y):
    """The judge kept in <out>/classifier.pt if it was trained with these settings, else trained
    anew on the training split (the test split stays unseen: it holds the reference and floor)."""
    path, some = os.path.join(out, "classifier.pt"), slice(0, args.judge_images)
    settings = dict(epochs=args.classifier_epochs, seed=args.seed, images=len(train_x[some]),
                    data=args.data, shape=list(train_x.shape[1:]))
    kept = common.load_checkpoint(path, "classifier") if os.path.exists(path) else {}
    if kept.get("settings") == settings:
        return load_judge(path)
    start = time.time()
    judge = train_classifier(train_x[some], train_y[some], args.classifier_epochs, args.seed)
    acc = float((judge.embed(test_x)[1] == test_y.long()).double().mean())
    print(f"compare: classifier trained in {time.time() - start:.0f}s, test accuracy {acc:.4f}")
    config = dict(channels=train_x.shape[1], num_classes=int(train_y.max()) + 1)
    common.save_checkpoint(path, "classifier", config, model=judge.state_dict(),
                           settings=settings, test_accuracy=acc)
    return load_judge(path)


# ----------------------------------------------------------------------------------------------
# Distances and shapes in the judge's features

def trace_sqrt_product(s1, s2):
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2, as tr((S1^(1/2) S2 S1^(1/2))^(1/2)): the inner
    matrix is symmetric PSD and similar to S1 S2, so its eigenvalues are real and >= 0."""
    w, v = torch.linalg.eigh(s1)
    root = (v * w.clamp(min=0).sqrt()) @ v.T
    return torch.linalg.eigvalsh(root @ s2 @ root).clamp(min=0).sqrt().sum()


def frechet_gaussians(mu1, s1, mu2, s2):
    """Frechet (2-Wasserstein) distance between N(mu1, S1) and N(mu2, S2), squared:
    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))  (Dowson & Landau 1982; Heusel et al.
    2017)."""
    d = ((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * trace_sqrt_product(s1, s2)
    return float(d.clamp(min=0))


def cubic_kernel(a, b):
    """KID's kernel k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018)."""
    return (a @ b.T / a.shape[1] + 1) ** 3


def off_diagonal_mean(m, mask=None):
    """Mean of a square matrix's entries off its diagonal (within mask): pairs of two points."""
    keep = ~torch.eye(len(m), dtype=torch.bool)
    keep = keep if mask is None else keep & mask
    return (m * keep).sum() / keep.sum().clamp(min=1)


def kth_radius(d, k):
    """Distance from each point to its k-th nearest other point, d: the set's own (n, n)
    distances: Kynkaanniemi et al.'s ball around each point."""
    return d.kthvalue(min(k + 1, len(d)), 1).values          # k + 1: the point itself is at 0


def median3(x):
    """3x3 median filter (edges replicated) of uint8 images, in [0, 1] floats."""
    x = F.pad(x.float() / 255, (1, 1, 1, 1), mode="replicate")
    return x.unfold(2, 3, 1).unfold(3, 3, 1).flatten(-2).median(-1).values


def edge_energy(x):
    """Per image: the mean squared difference of vertical neighbours plus that of horizontal
    neighbours, after the 3x3 median filter. Squared, so blur lowers it (a unit step spread over k
    pixels keeps 1/k of its energy); the median first removes isolated per-pixel noise (a model's
    sampling noise would otherwise count as sharpness), applied alike to real images."""
    x = median3(x)
    return (((x[..., 1:, :] - x[..., :-1, :]) ** 2).flatten(1).mean(1)
            + ((x[..., 1:] - x[..., :-1]) ** 2).flatten(1).mean(1)).double()


def entropy(pred, classes):
    """Entropy (nats) of the class histogram of the predictions: log(classes) when balanced."""
    p = torch.bincount(pred, minlength=classes).double() / len(pred)
    return max(0.0, float(-(p * p.clamp(min=1e-300).log()).sum()))


# ----------------------------------------------------------------------------------------------
# Measuring sets of images: every figure with its bootstrap resamples

LEVEL = 0.95
STATS = ("fd", "kid", "precision", "recall", "accuracy", "entropy", "spread", "edges")


class Reference:
    """The real images every set is measured against, and their figures on each half-sample r
    (row 0: the whole set; rows 1..reps: n // 2 images drawn without replacement, seeded, so every
    job draws the reference's alike). KID's features are standardised by the reference's mean
    and deviation (a unit dead on real images keeps its scale), so no feature's scale decides."""

    def __init__(self, feats, edges, classes, reps, seed=0, k=3):
        self.f, self.edges, sd = feats, edges, feats.std(0)
        self.mu, self.sd = self.f.mean(0), torch.where(sd > 1e-12, sd, torch.ones_like(sd))
        self.k, self.reps, self.classes = k, reps, classes
        self.idx = halves(len(self.f), reps, seed)
        d, kern = torch.cdist(self.f, self.f), cubic_kernel(*[self.standard(self.f)] * 2)
        sub = lambda m, j: m.index_select(0, j).index_select(1, j)
        self.radius = [kth_radius(sub(d, j), k) for j in self.idx]
        self.kid = [off_diagonal_mean(sub(kern, j)) for j in self.idx]
        self.gauss = [(self.f[j].mean(0), torch.cov(self.f[j].T)) for j in self.idx]

    def standard(self, f):
        return (f - self.mu) / self.sd


def halves(n, reps, seed):
    """Row 0: all n indices; rows 1..reps: n // 2 of them without replacement (seeded)."""
    g = torch.Generator().manual_seed(seed)
    half = max(n // 2, 2)
    return [torch.arange(n)] + [torch.randperm(n, generator=g)[:half] for _ in range(reps)]


def reference(judge, images, reps):
    """The Reference of real images, in the judge's features."""
    return Reference(judge.embed(images)[0], edge_energy(images), judge.classes, reps)


def measure_images(judge, ref, images, labels=None, seed=0):
    return measure(ref, *judge.embed(images), edge_energy(images), labels, seed)


def measure(ref, f, pred, energy, labels=None, seed=0):
    """{figure: tensor (reps + 1,)}: row 0 the figure of the whole set against the whole
    reference, row r that of half-sample r of the set (its own seed) against half-sample r of the
    reference. Half-samples, not the bootstrap's draws with replacement: a copy of a point would
    be its own nearest neighbour, shrinking every k-NN radius. For a mean, the spread over half
    samples drawn without replacement equals its spread at the full size ((n - m) / (m (n - 1))
    = 1 / n at m = n / 2); `interval` centres it on the estimate. The figures: Frechet distance,
    KID (unbiased, standardised features), precision (share of the set inside the reference's
    k-NN balls) and recall (share of the reference inside the set's), class accuracy (with
    labels), class entropy, within-class spread (mean distance of two samples the judge puts in
    one class: near-copies lower it) and the edge ratio (root of mean edge energy against the
    reference's)."""
    z, z_ref = ref.standard(f), ref.standard(ref.f)
    d_ff, d_fr = torch.cdist(f, f), torch.cdist(f, ref.f)
    k_ff, k_fr = cubic_kernel(z, z), cubic_kernel(z, z_ref)
    same = pred[:, None] == pred[None, :]
    right = None if labels is None else (pred.cpu() == labels.cpu()).double()
    out = {k: [] for k in STATS if k != "accuracy" or labels is not None}
    for r, (i, j) in enumerate(zip(halves(len(f), ref.reps, seed), ref.idx)):
        sub = lambda m, a, b: m.index_select(0, a).index_select(1, b)
        d, dff = sub(d_fr, i, j), sub(d_ff, i, i)
        out["fd"].append(frechet_gaussians(*ref.gauss[r], f[i].mean(0), torch.cov(f[i].T)))
        kid = ref.kid[r] + off_diagonal_mean(sub(k_ff, i, i)) - 2 * sub(k_fr, i, j).mean()
        out["kid"].append(float(kid))
        out["precision"].append(float((d <= ref.radius[r][None]).any(1).double().mean()))
        out["recall"].append(float((d.T <= kth_radius(dff, ref.k)[None]).any(1).double().mean()))
        if right is not None:
            out["accuracy"].append(float(right[i].mean()))
        out["entropy"].append(entropy(pred[i], ref.classes))
        out["spread"].append(float(off_diagonal_mean(dff, sub(same, i, i))))
        out["edges"].append(float(energy[i].mean() / ref.edges[j].mean()) ** 0.5)
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}


def resample_means(values, reps, seed=0):
    """(reps + 1,): the mean of values, then the means of reps bootstrap resamples (with
    replacement: a mean has no neighbours to copy)."""
    v = torch.as_tensor(values, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, len(v), (reps, len(v)), generator=g)
    return torch.cat([v.mean()[None], v[draws].mean(1)])


def interval(v):
    """[estimate, low, high]: row 0, and the 2.5% and 97.5% quantiles of the resamples' figures
    less their mean, added to it (a figure whose value depends on the set's size, like the
    Frechet distance of a half-sample, keeps its spread and loses that bias)."""
    if len(v) < 2:
        return [float(v[0])] * 3
    a = (1 - LEVEL) / 2
    q = torch.quantile(v[1:], torch.tensor([a, 1 - a], dtype=v.dtype)) - v[1:].mean() + v[0]
    return [float(v[0]), float(q[0]), float(q[1])]


def set_seed(name, seed):
    """Each set's own resampling seed: a function of its name and its run's seed."""
    return zlib.crc32(name.encode()) + 7919 * seed


# ----------------------------------------------------------------------------------------------
# The rules. Every comparison is an interval of a difference over the same resamples, read by one
# of two rules: `better` (the interval excludes 0) or `not_worse` (the interval within a margin: a
# claim's "similar quality" or "reaches" is read as not worse, since better is similar or better);
# a claim is supported only if every part holds, contradicted if a part fails, undecided otherwise
# (an undecided part is neutral, never counted for or against).

# The margins of `not_worse`: shares and entropy in absolute terms; the Frechet distance, KID and
# the within-class spread as a fraction of the other set's value.
MARGIN = dict(accuracy=0.03, precision=0.05, recall=0.05, entropy=0.05, fd=0.15, kid=0.15,
              spread=0.05)
RELATIVE = ("fd", "kid", "spread")
LOWER_IS_BETTER = ("fd", "kid", "seconds")


def better(d, higher=True):
    """Read an interval d = [A - B, low, high]: +1 if A is better than B (the 95% interval of the
    difference excludes 0 on A's side), -1 if B is better, 0 if undecided."""
    sign = 1 if higher else -1
    return sign if d[1] > 0 else (-sign if d[2] < 0 else 0)


def not_worse(d, margin, higher=True):
    """+1 if A is not worse than B by more than the margin (the interval's worse end inside it:
    a one-sided test at 2.5%), -1 if A is worse by more than the margin (the whole interval
    beyond it), 0 if undecided."""
    lo, hi = (d[1], d[2]) if higher else (-d[2], -d[1])
    return 1 if lo > -margin else (-1 if hi < -margin else 0)


def verdict(parts):
    """supported if every part holds, contradicted if a part fails, else undecided."""
    return "supported" if all(p == 1 for p in parts) else (
        "contradicted" if -1 in parts else "undecided")


class Measured:
    """One budget (and seed) of the study: figures of every set and the intervals of their
    differences over the same resamples."""

    def __init__(self, stats, evals, bits, training, extra):
        self.stats, self.evals, self.bits, self.training, self.extra = (
            stats, evals, bits, training, extra)

    def has(self, *names):
        return all(n in self.stats for n in names)

    def get(self, a, stat):
        return interval(self.stats[a][stat])

    def diff(self, a, b, stat, scale=1.0):
        """Interval of scale x figure(A) - figure(B)."""
        return interval(scale * self.stats[a][stat] - self.stats[b][stat])

    def margin(self, stat, b):
        """The margin of a stat when compared against set b (RELATIVE stats: a share of b's
        value; KID, which is near 0 for good models, never less than 0.01)."""
        m = MARGIN[stat] * (abs(float(self.stats[b][stat][0])) if stat in RELATIVE else 1)
        return max(m, 0.01) if stat == "kid" else m

    def paired(self, a, b, reps, seed=0):
        """Interval of the mean per-image difference of bits/dim (the same test images)."""
        d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
        return interval(resample_means(d, reps, seed))


def fmt(v, digits=2):
    """[value, low, high] -> 'value (low, high)'."""
    return f"{v[0]:.{digits}f} ({v[1]:.{digits}f}, {v[2]:.{digits}f})"


DIGITS = dict(fd=1, kid=3, seconds=2, spread=2, entropy=2)
OUTCOME = {1: "holds", 0: "undecided", -1: "fails"}


def part(outcome, text):
    return outcome, f"{text}: {OUTCOME[outcome]}"


def compare_stat(m, a, b, stat):
    """A better than B on one figure, by `better`; with the text."""
    d = m.diff(a, b, stat)
    k = DIGITS.get(stat, 2)
    return part(better(d, stat not in LOWER_IS_BETTER),
                f"{stat} {a} {fmt(m.get(a, stat), k)} vs {b} {fmt(m.get(b, stat), k)}, "
                f"difference {fmt(d, k)}")


def reaches(m, a, b, stats=("accuracy", "fd", "recall")):
    """A reaches B's quality: on each figure not worse than B by more than its margin."""
    parts = []
    for stat in stats:
        d, k = m.diff(a, b, stat), DIGITS.get(stat, 2)
        parts.append(part(not_worse(d, m.margin(stat, b), stat not in LOWER_IS_BETTER),
                          f"{stat} {fmt(m.get(a, stat), k)} vs {fmt(m.get(b, stat), k)}, "
                          f"difference {fmt(d, k)}, margin {m.margin(stat, b):.{k}f}"))
    return parts


def collapses(m, a, floor="real"):
    """Mode collapse of set a against the real floor, the same rule for every family: +1 if its
    class entropy or its within-class spread is worse than the floor's by more than the margin,
    -1 if both are within the margin (or better), 0 otherwise."""
    e = not_worse(m.diff(a, floor, "entropy"), m.margin("entropy", floor))
    s = not_worse(m.diff(a, floor, "spread"), m.margin("spread", floor))
    return 1 if -1 in (e, s) else (-1 if e == s == 1 else 0)


FAST = ("dpm", 10)   # ddpm.py's default sampler and steps (README: "Fast sampling")


def claim_pixelcnn_faster(m):
    """Two parts. Single pass: holds if PixelCNN makes one network evaluation per image, fails
    otherwise (it makes one per pixel: fails by construction, so the claim is never supported).
    Faster: PixelCNN's (cached) seconds per 100 images below DDPM's default sampler's, by `better`
    over resamples of the timed batches."""
    e = m.evals["pixelcnn"]
    return [part(1 if e == 1 else -1, f"{e} sequential network evaluations per image"),
            compare_stat(m, "pixelcnn", "ddpm", "seconds")]


def claim_fewer_evaluations(m):
    """DDPM's default sampler (dpm, 10 steps: 20 evaluations with guidance, against PixelCNN's
    784) must reach DDIM-50's quality: by `reaches`, not worse than DDIM-50 by more than the
    margin on class accuracy, Frechet distance and recall. The counts are reported, not judged."""
    (o, text), *rest = reaches(m, "ddpm", "ddpm-ddim")
    e = m.evals
    return [(o, f"evaluations per image DDPM {e['ddpm']}, DDIM-50 {e['ddpm-ddim']}, PixelCNN "
                f"{e['pixelcnn']} (not judged); {text}"), *rest]


def claim_ldm_cheaper(m):
    """Three parts, LDM against DDPM, both class-conditional with the same labels and the same
    sampler. Sampling: LDM (decoder included) at least 2x faster, by `better` on 2 x LDM's
    seconds against DDPM's. Training: the whole job's wall time (both stages and the encoding
    pass between them) not above DDPM's by more than 5%. Quality at that cost: by `reaches`, LDM
    not worse than DDPM by more than the margin on class accuracy, Frechet distance and KID."""
    t = {k: m.training[k]["seconds"] for k in ("ldm", "ddpm")}
    seen = {k: m.training[k]["images_seen"] for k in ("ldm", "ddpm")}
    d = m.diff("ldm", "ddpm", "seconds", scale=2)
    return [part(better(d, higher=False), f"2 x LDM's seconds per 100 minus DDPM's {fmt(d)}"),
            part(1 if t["ldm"] <= 1.05 * t["ddpm"] else -1,
                 f"training wall time LDM {t['ldm']:.0f} s ({seen['ldm']:,} images seen in both "
                 f"stages) vs DDPM {t['ddpm']:.0f} s ({seen['ddpm']:,})")
            ] + reaches(m, "ldm", "ddpm", ("accuracy", "fd", "kid"))


def claim_vae(m):
    """All unconditional: the VAE's samples x ~ p(x|z) (its decoder mean is shown in the tables,
    never judged) against DDPM's samples without a label (the "no class" input). Fastest: its
    seconds per 100 below each other family's (`better`). Blurrier: its median-filtered edge ratio
    below DDPM's (`better`: DDPM's above). Less faithful: its precision below DDPM's and its
    Frechet distance above (`better`, two parts)."""
    parts = [compare_stat(m, "vae", k, "seconds") for k in ("pixelcnn", "ddpm", "ldm", "vq")]
    parts += [compare_stat(m, "ddpm-uncond", "vae", k) for k in ("edges", "precision", "fd")]
    return parts


def claim_likelihood(m, reps):
    """PixelCNN's figure is its exact -log p(x); the VAE's (importance-weighted) and DDPM's
    (variational bound) are upper bounds on theirs. Per part (VAE, DDPM): PixelCNN's bits/dim
    lower on the same test images, by `better` on the paired-bootstrap interval of the mean
    per-image difference."""
    out = []
    for other in ("vae", "ddpm"):
        d = m.paired(m.bits["pixelcnn"], m.bits[other], reps)
        out.append(part(better(d, higher=False), f"PixelCNN {np.mean(m.bits['pixelcnn']):.3f} "
                        f"minus {other} {np.mean(m.bits[other]):.3f} bits/dim: {fmt(d, 3)} (DDPM's "
                        f"decoder floor L_0 {m.extra.get('decoder_floor_bpd', 0):.3f})"))
    return out


def claim_eps(m):
    """Ho et al.'s unweighted loss with each target, class-conditional, same budget and sampler:
    eps better than x0 on class accuracy, Frechet distance, precision and recall (`better`, four
    parts)."""
    return [compare_stat(m, "ddpm-eps", "ddpm-x0", s) for s in ("accuracy", "fd", "precision",
                                                                 "recall")]


def claim_guidance(m):
    """Class accuracy with guidance w = 3 above the conditional model alone (w = 0), `better`."""
    return [compare_stat(m, "ddpm-w3", "ddpm-w0", "accuracy")]


def claim_pixelcnn_converges(m):
    """Unconditional PixelCNN against DDPM without a label, after the same training time. Faster
    convergence: a lower Frechet distance (`better`). Struggles with diversity: a lower recall
    (`better`, DDPM's recall above PixelCNN's)."""
    return [compare_stat(m, "pixelcnn", "ddpm-uncond", "fd"),
            compare_stat(m, "ddpm-uncond", "pixelcnn", "recall")]


def claim_ldm_data(m):
    """Class-conditional LDM against DDPM. Converges faster: a lower Frechet distance after the
    same training time (`better`). Needs less data (the largest budget, where both also train on
    only --small-data images, passed over many times): LDM's rise in Frechet distance from all
    training images to the few is below DDPM's, by `better` on the interval of the difference of
    the two rises over the same resamples; undecided at the other budgets (not measured)."""
    parts = [compare_stat(m, "ldm", "ddpm", "fd")]
    if m.has("ldm-small", "ddpm-small"):
        s = {k: m.stats[k]["fd"] for k in ("ldm", "ddpm", "ldm-small", "ddpm-small")}
        rise = lambda k: interval(s[f"{k}-small"] - s[k])
        d = interval((s["ldm-small"] - s["ldm"]) - (s["ddpm-small"] - s["ddpm"]))
        parts.append(part(better(d, higher=False), f"rise in fd with --small-data images: LDM "
                          f"{fmt(rise('ldm'), 1)}, DDPM {fmt(rise('ddpm'), 1)}, LDM's minus "
                          f"DDPM's {fmt(d, 1)}"))
    else:
        parts.append(part(0, "less data: not measured at this budget"))
    return parts


def claim_mode_collapse(m):
    """Unconditional samples of every family against the real floor by `collapses` (class
    entropy or within-class spread worse than the floor's by more than the margin). VAE
    collapses: holds if it collapses, fails if neither figure is worse than the floor's. Diffusion
    diverse: holds if DDPM without a label does not collapse, fails if it does."""
    c = {k: collapses(m, k) for k in UNCONDITIONAL if k in m.stats}
    word = {1: "collapses", 0: "undecided", -1: "does not collapse"}
    text = "; ".join(f"{k}: entropy {fmt(m.get(k, 'entropy'))}, spread {fmt(m.get(k, 'spread'))}, "
                     f"{word[v]}" for k, v in c.items())
    return [part(c["vae"], f"VAE collapses ({text}; real floor: entropy "
                 f"{fmt(m.get('real', 'entropy'))}, spread {fmt(m.get('real', 'spread'))})"),
            part(-c["ddpm-uncond"], "DDPM diverse")]


def claim_learned_prior(m, reps):
    """The VQ-VAE's bound -log p(x | z_q(x)) - log p(z_q(x)) on the same test images with the
    PixelCNN prior over its codes below the bound with the uniform prior (h w log K): `better` on
    the paired-bootstrap interval of the mean per-image difference."""
    b, u = m.bits["vq"], m.extra["uniform_bits_per_dim"]
    d = m.paired(b, u, reps)
    return [part(better(d, higher=False), f"learned prior {np.mean(b):.3f}, uniform "
                 f"{np.mean(u):.3f} bits/dim; learned minus uniform {fmt(d, 3)}")]


UNCONDITIONAL = ("vae", "pixelcnn", "ddpm-uncond", "ldm-uncond", "vq")
CLAIMS = [  # (the seed articles' claim, its rule in one sentence, the rule)
    ("PixelCNN generates faster than diffusion, in a single pass.", "fails by construction (784 "
     "sequential evaluations per image, not one); measured: PixelCNN's seconds per 100 below "
     "DDPM's default sampler's", claim_pixelcnn_faster),
    ("Diffusion generates in far fewer network evaluations than an autoregressive model.",
     "DDPM's 10-step default sampler not worse than DDIM-50 beyond the margins on accuracy, "
     "Frechet distance and recall", claim_fewer_evaluations),
    ("Latent diffusion trains and samples far cheaper than pixel-space diffusion at similar "
     "sample quality.", "LDM 2x faster to sample, its whole job at most 5% longer than DDPM's, its "
     "samples not worse beyond the margins on accuracy, Frechet distance and KID",
     claim_ldm_cheaper),
    ("VAEs sample fastest, but their samples are blurrier and less faithful than diffusion's.",
     "the VAE's p(x\\|z) samples the fastest, with a lower filtered edge ratio, lower precision "
     "and higher Frechet distance than DDPM's unconditional samples", claim_vae),
    ("PixelCNN's exact likelihood is lower than the VAE's and diffusion's bounds.",
     "PixelCNN's bits/dim below the VAE's and DDPM's bounds on the same images (paired)",
     claim_likelihood),
    ("Predicting the noise works better than predicting the clean image.", "eps better than x0 "
     "on accuracy, Frechet distance, precision and recall", claim_eps),
    ("Classifier-free guidance makes samples match their class better.", "accuracy with "
     "guidance w = 3 above w = 0", claim_guidance),
    ("PixelCNN converges faster in training but struggles with image diversity.",
     "unconditional PixelCNN: lower Frechet distance and lower recall than DDPM's unconditional "
     "samples", claim_pixelcnn_converges),
    ("Latent diffusion needs less data and converges faster than pixel-space diffusion.",
     "LDM's Frechet distance below DDPM's, and its rise from all training images to "
     "--small-data below DDPM's (a difference of differences)", claim_ldm_data),
    ("VAEs may suffer from mode collapse; diffusion is robust to it, with diverse outputs.",
     "the VAE's class entropy or within-class spread below the real floor's beyond the margin, "
     "neither below it for DDPM's unconditional samples", claim_mode_collapse),
    ("A VQ-VAE's bound is tighter with a learned autoregressive prior over its codes than with "
     "the uniform prior it trains with (van den Oord et al. 2017).", "the learned prior's bound "
     "below the uniform prior's on the same images (paired)", claim_learned_prior),
]


def judge_claims(m, reps):
    """[(verdict, parts)] per claim for one budget's (and seed's) measurements."""
    out = []
    for _, _, rule in CLAIMS:
        parts = rule(m, reps) if rule in (claim_likelihood, claim_learned_prior) else rule(m)
        out.append((verdict([o for o, _ in parts]), parts))
    return out


def across_seeds(results):
    """Per claim, each part read across seeds: it holds (fails) only if it holds (fails) with
    every seed, else it is undecided; then the claim's verdict from those parts. Returns (that
    verdict, each seed's verdict, each part's outcomes seed by seed)."""
    out = []
    for per_seed in zip(*results):
        outcomes = list(zip(*[[o for o, _ in parts] for _, parts in per_seed]))
        parts = [p[0] if len(set(p)) == 1 else 0 for p in outcomes]
        out.append((verdict(parts), [v for v, _ in per_seed], outcomes))
    return out


# ----------------------------------------------------------------------------------------------
# The study: every family at every budget, each point a training run of its own

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


def plan(args, out, judge):
    """The jobs' specs: one per family and budget (minutes, or steps with --quick; LDM and the
    VQ-VAE get it in total, half per stage); at the largest budget --seeds seeds of each, and
    DDPM and LDM also on the first --small-data training images. The longest first."""
    top, unit, jobs = max(args.budgets), "steps" if args.quick else "min", []
    for b in sorted(args.budgets, reverse=True):
        for s in range(args.seeds if b == top else 1):
            for name, (script, flags) in FAMILIES.items():
                for small in (False, True) if b == top and name in ("ddpm", "ldm") else (False,):
                    amount = b / 2 if script in ("ldm", "vq") else b
                    budget = (["--steps", str(max(1, int(amount)))] if args.quick
                              else ["--minutes", f"{amount:g}"])
                    tiny = TINY[script] if args.quick else []
                    limit = ["--train-limit", str(args.small_data)] if small else []
                    key = name + "-small" * small
                    job = f"{key}-{b:g}{unit}" + (f"-seed{s}" if s else "")
                    jobs.append(dict(
                        id=job, name=key, script=script, budget=b, seed=args.seed + s,
                        slow=b == top and s == 0, flags=flags + budget + tiny + limit,
                        out=os.path.join(out, "runs", job),
                        **({"prior": budget + (TINY["pixelcnn"] if args.quick else [])}
                           if name == "vq" else {}),   # the prior's flags: only in its spec
                        judge=os.path.join(out, "classifier.pt"), judge_id=judge.id,
                        data=data_flags(args), device=args.device, reps=args.reps,
                        num_samples=args.num_samples, slow_images=args.slow_images,
                        eval_images=args.eval_images, iw_samples=args.iw_samples,
                        ddim_steps=args.ddim_steps))
    return jobs


def data_flags(args):
    return ["--data", args.data] + (["--data-dir", args.data_dir] if args.data_dir else [])


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
            for item in [r for r in running if r[1].poll() is not None]:
                spec, proc, log = item
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
    return [finished(s) for s in specs]


def draws(spec, model, first, labels):
    """{set: (draw(k, labels) -> images in [-1, 1], evaluations per image, images to draw)}."""
    n, dev, seed = spec["num_samples"], spec["device"], spec["seed"]
    gen = torch.Generator().manual_seed(seed)
    if spec["script"] == "vae":
        return {"vae": (lambda k, y: model.sample(k, mean=False), 1, n),
                "vae-mean": (lambda k, y: model.sample(k), 1, n)}
    if spec["script"] == "vq":                 # codes from the prior, decoded as vae.py samples
        vq = vae.load(first, dev)
        codes = lambda k: model.to_int(model.sample(k, generator=gen))[:, 0]
        return {"vq": (lambda k, y: vq.decode_codes(codes(k), mean=False),
                       model.cfg.image_size ** 2 + 1, n)}
    if spec["script"] == "pixelcnn":
        pixels = model.cfg.channels * model.cfg.image_size ** 2
        out = {"pixelcnn": (lambda k, y: model.sample(k, generator=gen), pixels, n)}
        if spec["slow"]:
            out["pixelcnn-naive"] = (lambda k, y: model.sample(k, generator=gen, naive=True),
                                     pixels, min(spec["slow_images"], n))
        return out
    fast = lambda w: (lambda k, y: model.sample(k, None if y is None else y.to(dev),
                                                sampler=FAST[0], steps=FAST[1], guidance=w))
    name = spec["name"]
    out = {name: (fast(1.0), 2 * FAST[1], n)}
    if name in ("ddpm", "ldm"):                # without a label: the "no class" input
        out[name + "-uncond"] = (lambda k, y: fast(0.0)(k, None), FAST[1], n)
    if name == "ddpm":
        out["ddpm-w0"], out["ddpm-w3"] = (fast(0.0), FAST[1], n), (fast(3.0), 2 * FAST[1], n)
        steps = spec["ddim_steps"]
        out["ddpm-ddim"] = (lambda k, y: model.sample(k, y.to(dev), sampler="ddim", steps=steps),
                            2 * steps, n)
        if spec["slow"]:
            out["ddpm-ancestral"] = (lambda k, y: model.sample(k, y.to(dev), sampler="ddpm"),
                                     2 * model.cfg.timesteps, min(spec["slow_images"], n))
    return out


def run_job(path):
    """One job, in its own process: train the script(s) through their command line, draw and time
    the samples (per batch of 100), measure every set against the reference with its resamples,
    and (PixelCNN, VAE, DDPM, VQ-VAE) the test bits/dim per image. Writes <run>/stats.npz,
    pictures.npz and job.json (with the spec, so a rerun can keep it)."""
    with open(path) as f:
        spec = json.load(f)
    out, dev, n, reps = spec["out"], spec["device"], spec["num_samples"], spec["reps"]
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
    start = time.time()
    for script, argv in stages:
        launch(script, argv)
    seconds = time.time() - start
    script = stages[-1][0]
    model = SCRIPTS[script].load(out, dev)
    blobs = [common.load_checkpoint(os.path.join(out, "ckpt.pt"), script)]
    if spec["script"] in ("ldm", "vq"):                # the first stage's images seen count too
        blobs.append(common.load_checkpoint(*(
            (os.path.join(out, "autoencoder.pt"), "ldm-autoencoder") if spec["script"] == "ldm"
            else (os.path.join(first, "ckpt.pt"), "vae"))))
    run_args = argparse.Namespace(precision=blobs[0].get("precision", "fp32"), device=dev)
    data = dict(zip(spec["data"][::2], spec["data"][1::2]))
    test_x, test_y = common.load_data(data["--data"], "test", data.get("--data-dir"))
    judge = load_judge(spec["judge"])
    if judge.id != spec["judge_id"]:
        raise common.UserError(f"{spec['judge']} is not the judge this job was planned with")
    half = min(n, len(test_x) // 2)   # the reference; the floor: the next half
    ref = reference(judge, test_x[:half], reps)
    classes = getattr(model.cfg, "num_classes", 0)
    labels = (torch.arange(n) % classes) if classes else None
    result = dict(training=dict(
        command="; ".join(f"python {s}.py " + shlex.join(a) for s, a in stages), seconds=seconds,
        steps=blobs[0]["step"], images_seen=sum(b["step"] * b["batch_size"] for b in blobs),
        precision=run_args.precision), evals={}, bits_per_dim={})
    stats, pictures = {}, {}
    for key, (draw, evals, k) in draws(spec, model, first, labels).items():
        torch.manual_seed(spec["seed"])
        times, images = [], []
        for i in range(0, k, 100):
            j = min(i + 100, k)
            begin = time.time()
            with torch.no_grad(), common.autocast(run_args):
                x = draw(j - i, None if labels is None or key.endswith("uncond") else labels[i:j])
            times.append((time.time() - begin) * 100 / (j - i))
            images.append(common.from_unit(x.float()).cpu())
        result["evals"][key] = evals
        stats[key] = dict(seconds=resample_means(times, reps, set_seed(key, spec["seed"])))
        if k == n:
            images = torch.cat(images)
            given = None if labels is None or key.endswith("uncond") else labels
            stats[key].update(measure_images(judge, ref, images, given,
                                             set_seed(key, spec["seed"])))
            pictures[key] = images[:100].numpy()
        print(f"compare: {key}: {float(stats[key]['seconds'][0]):.2f} s per 100", flush=True)
    x = common.to_unit(test_x[:spec["eval_images"]]).to(dev)
    dims, chunks = x[0].numel() * math.log(2), range(0, len(x), 25)
    with torch.no_grad():
        if spec["name"] in ("vae", "pixelcnn", "ddpm"):
            extra = {"k": spec["iw_samples"]} if spec["name"] == "vae" else {}
            nats = torch.cat([model.nll(x[i:i + 25], **extra) for i in chunks])
            result["bits_per_dim"][spec["name"]] = (nats.double().cpu() / dims).tolist()
        if spec["name"] == "ddpm":
            result["decoder_floor_bpd"] = float(model.decoder_floor(x).double().mean() / dims)
        if spec["name"] == "vq":                  # the same test images; learned and uniform prior
            vq = vae.load(first, dev)
            rec, prior = (torch.cat(t).double().cpu() for t in zip(*[pixelcnn.two_stage_bound(
                model, vq, x[i:i + 25], vq.encode_codes(x[i:i + 25])[:, None]) for i in chunks]))
            uniform = math.log(vq.cfg.codebook) * model.cfg.image_size ** 2
            result["bits_per_dim"]["vq"] = ((rec + prior) / dims).tolist()
            result["uniform_bits_per_dim"] = ((rec + uniform) / dims).tolist()
    flat = {f"{key}/{stat}": v.numpy() for key, d in stats.items() for stat, v in d.items()}
    common.atomic_write(os.path.join(out, "stats.npz"), lambda f: np.savez(f, **flat), "wb")
    common.atomic_write(os.path.join(out, "pictures.npz"),
                        lambda f: np.savez_compressed(f, **pictures), "wb")
    common.write_metrics(out, dict(spec=spec, **result), "job.json")


def load_stats(out):
    with np.load(os.path.join(out, "stats.npz")) as blob:
        stats = {}
        for k in blob.files:
            key, stat = k.split("/")
            stats.setdefault(key, {})[stat] = torch.from_numpy(blob[k])
    return stats


def gather(done, floor):
    """{(budget, seed): Measured}: every finished job's sets at that budget and seed, merged,
    with the real floor's figures."""
    m = {}
    for job in done:
        spec = job["spec"]
        b = m.setdefault((spec["budget"], spec["seed"]), Measured(
            dict(real=floor), {}, {}, {}, {}))
        b.stats.update(load_stats(spec["out"]))
        b.evals.update(job["evals"])
        b.bits.update(job["bits_per_dim"])
        b.training[spec["name"]] = job["training"]
        for k in ("decoder_floor_bpd", "uniform_bits_per_dim"):
            if k in job:
                b.extra[k] = job[k]
    return dict(sorted(m.items()))


# ----------------------------------------------------------------------------------------------
# One sample set, one model: --score, --samplers, --curve

def point(stats):
    """The figures of a set as drawn (row 0 of measure's resamples)."""
    return {k: float(v[0]) for k, v in stats.items()}


def score(args, judge, test_x):
    """--score FILE.npz: the figures of any samples.npz the scripts wrote, against as many test
    images (with --reps, their intervals too)."""
    try:
        blob = np.load(args.score)
        images = torch.from_numpy(blob["images"])
        labels = torch.from_numpy(blob["labels"]).long() if "labels" in blob else None
    except (OSError, KeyError, ValueError) as e:
        raise common.UserError(f"--score {args.score}: not a samples .npz with 'images' ({e})")
    if images.shape[1:] != test_x.shape[1:] or images.dtype != torch.uint8:
        raise common.UserError(f"--score {args.score}: images are {tuple(images.shape[1:])} "
                               f"{images.dtype}, the data's are {tuple(test_x.shape[1:])} uint8")
    stats = measure_images(judge, reference(judge, test_x[:len(images)], args.reps), images, labels)
    common.write_metrics(os.path.dirname(args.score) or ".", dict(
        samples=args.score, images=len(images), judge=judge.id,
        **{k: interval(v) if args.reps else float(v[0]) for k, v in stats.items()}),
        os.path.splitext(os.path.basename(args.score))[0] + "_score.json")


def sampler_settings(nfes, timesteps):
    """(sampler, steps) for each budget of network evaluations per image: DDIM and DPM-Solver++
    make one per step, Heun two per step but one on the last (2 steps - 1); then ancestral."""
    out = [("ddim", n) for n in nfes] + [("dpm", n) for n in nfes]
    out += [("heun", (n + 1) // 2) for n in nfes]
    return out + [("ddpm", timesteps)]


SAMPLER_NAMES = {"ddim": "DDIM", "dpm": "DPM-Solver++(2M)", "heun": "Heun",
                 "ddpm": "ancestral (Algorithm 2)"}


def samplers(args, judge, test_x):
    """--samplers RUN: every sampler of a trained class-conditional ddpm.py or ldm.py run at --nfe
    network evaluations per image (and ancestral at all T steps), from the same x_T and labels,
    under --precision: seconds per 100 images here, class accuracy, Frechet distance, precision,
    recall; the fewest evaluations that reach DDIM-50's quality by `reaches`. Writes
    <out>/samplers.json and samplers.md."""
    module = ldm if os.path.exists(os.path.join(args.samplers, "autoencoder.pt")) else ddpm
    model = module.load(args.samplers, args.device)
    diffusion = model.diffusion if module is ldm else model
    n, classes = args.num_samples, model.cfg.num_classes
    if not classes:
        raise common.UserError(f"--samplers {args.samplers}: an unconditional model; the accuracy "
                               f"needs one trained with --conditional")
    y = (torch.arange(n) % classes).to(args.device)
    shape = (n, diffusion.cfg.channels, diffusion.cfg.image_size, diffusion.cfg.image_size)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed)).to(args.device)
    ref, rows, stats = reference(judge, test_x[:n], args.reps), [], {}
    run_args = argparse.Namespace(precision=args.precision, device=args.device)
    for name, steps in sampler_settings(args.nfe, diffusion.cfg.timesteps):
        torch.manual_seed(args.seed)                      # the ancestral sampler's noise
        start = time.time()
        with torch.no_grad(), common.autocast(run_args):
            x = model.sample(n, y, sampler=name, steps=steps, guidance=args.guidance,
                             noise=x_T.clone())
        seconds = time.time() - start
        key = f"{name}-{steps}"
        x = common.from_unit(x).cpu()
        stats[key] = measure_images(judge, ref, x, y.cpu(), set_seed(key, 0))
        rows.append(dict(sampler=name, steps=steps, nfe=2 * steps - 1 if name == "heun" else steps,
                         seconds_per_100=seconds * 100 / n, **point(stats[key])))
        print(f"compare: samplers: {rows[-1]}", flush=True)
    m = Measured(stats, {}, {}, {}, {})
    best = None
    if "ddim-50" in stats:
        for r in sorted(rows, key=lambda r: r["nfe"]):
            parts = reaches(m, f"{r['sampler']}-{r['steps']}", "ddim-50")
            r["reaches_ddim50"] = verdict([o for o, _ in parts])
            best = best or (r if r["reaches_ddim50"] == "supported" else None)
    common.write_metrics(args.out, dict(command=args.command, run=args.samplers, machine=machine(),
                                        precision=args.precision, samples=n, judge=judge.id,
                                        guidance=args.guidance, rows=rows, reaches_ddim50=best),
                         "samplers.json")
    L = ["# Samplers: quality against network evaluations", "", f"Command: `{args.command}`  ",
         f"Run: `{args.samplers}`; machine: {machine()}; {args.precision}; {n} class-conditional "
         f"samples from the same x_T, guidance {args.guidance:g} (each evaluation is then two "
         f"network passes, batched)", "",
         "| sampler | steps | network evaluations per image | seconds per 100 images | class "
         "accuracy | Frechet dist. | precision | recall | reaches DDIM-50 |", "|---|" * 9]
    L += [f"| {SAMPLER_NAMES[r['sampler']]} | {r['steps']} | {r['nfe']} | "
          f"{r['seconds_per_100']:.1f} | {r['accuracy']:.3f} | {r['fd']:.1f} | "
          f"{r['precision']:.2f} | {r['recall']:.2f} | {r.get('reaches_ddim50', '')} |"
          for r in rows]
    L += ["", f"Reaches DDIM-50 (rule `reaches`: {reaches.__doc__.strip()} Margins: "
          f"{margin_text()}) with the fewest evaluations: " + (
              f"{SAMPLER_NAMES[best['sampler']]}, {best['steps']} steps, {best['nfe']} "
              f"evaluations." if best else "none."), ""]
    common.atomic_write(os.path.join(args.out, "samplers.md"), lambda f: f.write("\n".join(L)), "w")
    print(f"compare: wrote {args.out}/samplers.md and samplers.json")


def curve(args, judge, test_x):
    """--curve ddpm|ldm: sample quality after each number of training steps in --at, scored on
    --num-samples class-conditional DDIM samples. ddpm: one run taken in stages, each resuming
    the last (with ddpm.py's constant learning rate that is the uninterrupted run: the resume is
    exact; with --lr-schedule cosine in --flags, a run per point, as for ldm). ldm: its
    diffusion stage has a cosine learning rate that ends with the run, so each point is its
    own stage-2 run, all on one stage-1 autoencoder trained first. Training images seen (steps x
    batch; LDM: stage 2's) is the axis every machine shares; the seconds are this machine's.
    Writes <out>/curve.json, then the table and plot of every curve beside it."""
    import shutil
    path = os.path.join(args.out, "curve.json")
    flags = ["--conditional", "--precision", args.precision] + shlex.split(args.flags)
    base = [*data_flags(args), "--device", args.device, "--seed", str(args.seed)]
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
        launch("ldm", ["--train", *base, "--out", os.path.dirname(stage1), "--stage",
                       "autoencoder", *flags])
    staged = args.curve == "ddpm" and "cosine" not in " ".join(flags)   # one run in stages
    ref, rows = reference(judge, test_x[:args.num_samples], 0), []
    for steps in sorted(set(args.at)):
        if steps in old:
            rows.append(old[steps])
            continue
        run = os.path.join(args.out, "run" if staged else f"run-{steps}")
        more = (["--resume"] if staged and os.path.exists(os.path.join(run, "ckpt.pt")) else [])
        if args.curve == "ldm":
            os.makedirs(run, exist_ok=True)
            shutil.copy(stage1, run)
            more = ["--stage", "diffusion"]
        launch(args.curve, ["--train", *base, "--out", run, "--steps", str(steps), *more, *flags])
        start = time.time()
        launch(args.curve, ["--sample", *base, "--out", run, *flags, "--sampler", "ddim",
                            "--ddim-steps", str(args.ddim_steps), "--num-samples",
                            str(args.num_samples)])
        seconds = time.time() - start
        blob = common.load_checkpoint(os.path.join(run, "ckpt.pt"), args.curve)
        drawn = np.load(os.path.join(run, "samples.npz"))
        q = point(measure_images(judge, ref, torch.from_numpy(drawn["images"]),
                          torch.from_numpy(drawn["labels"]).long()))
        rows.append(dict(steps=steps, images_seen=steps * blob["batch_size"],
                         train_seconds=blob["elapsed"], sample_seconds=seconds,
                         **{k: q[k] for k in ("accuracy", "fd", "precision", "recall")}))
        print(f"compare: curve {args.out}: {rows[-1]}", flush=True)
        common.write_metrics(args.out, dict(
            command=args.command, script=args.curve, flags=flags, machine=machine(),
            images_per_s=train_rates(run)[-1], samples=args.num_samples, rows=rows), "curve.json")
    plot_curves(os.path.dirname(os.path.abspath(args.out)))


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


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = [f for f in ("avx512_bf16", "amx_tile") if f in common.cpu_flags()]
    return (f"{cpu} ({', '.join(flags) or 'no bf16 flags'}), {os.cpu_count()} cores, torch "
            f"{torch.__version__}")


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
# The report

ROWS = [  # (title, set, training run)
    ("VAE, samples x ~ p(x\\|z)", "vae", "vae"),
    ("VAE, decoder mean (not judged)", "vae-mean", "vae"),
    ("PixelCNN", "pixelcnn", "pixelcnn"),
    (f"DDPM ({FAST[0]} {FAST[1]} steps, guidance 1)", "ddpm", "ddpm"),
    ("DDPM, no label", "ddpm-uncond", "ddpm"),
    ("DDPM, DDIM 50 steps", "ddpm-ddim", "ddpm"),
    ("DDPM, guidance w = 0", "ddpm-w0", "ddpm"),
    ("DDPM, guidance w = 3", "ddpm-w3", "ddpm"),
    ("DDPM eps, unweighted loss", "ddpm-eps", "ddpm-eps"),
    ("DDPM x0, unweighted loss", "ddpm-x0", "ddpm-x0"),
    ("LDM", "ldm", "ldm"),
    ("LDM, no label", "ldm-uncond", "ldm"),
    ("VQ-VAE (K = 32) + PixelCNN prior", "vq", "vq"),
    ("DDPM, --small-data training images", "ddpm-small", "ddpm-small"),
    ("LDM, --small-data training images", "ldm-small", "ldm-small"),
    ("held-out real test images (the floor)", "real", None),
]
COLUMNS = [("Frechet dist.", "fd"), ("KID", "kid"), ("precision", "precision"),
           ("recall", "recall"), ("class acc.", "accuracy"), ("class entropy", "entropy"),
           ("within-class spread", "spread"), ("edges vs real", "edges")]


def margin_text():
    return ", ".join(f"{k} {v:g}" + (" x the other's value" if k in RELATIVE else "")
                     for k, v in MARGIN.items()) + " (KID at least 0.01)"


def budget_table(m):
    L = ["| model | images seen | train min | bits/dim | " + " | ".join(t for t, _ in COLUMNS)
         + " | s / 100 images | evals / image |", "|---" * (len(COLUMNS) + 6) + "|"]
    for title, key, run in ROWS:
        if key not in m.stats:
            continue
        tr, s = m.training.get(run), m.stats[key]
        cells = [f"{tr['images_seen']:,}", f"{tr['seconds'] / 60:.1f}"] if tr else ["", ""]
        cells.append(f"{np.mean(m.bits[key]):.3f}" if key in m.bits else "")
        cells += [fmt(interval(s[c]), DIGITS.get(c, 2)) if c in s else "n/a" for _, c in COLUMNS]
        cells += [fmt(interval(s["seconds"])) if "seconds" in s else "", str(m.evals.get(key, ""))]
        L.append(f"| {title} | " + " | ".join(cells) + " |")
    return L


def seed_table(by_seed):
    """The figures of every set at the largest budget, seed by seed (estimates)."""
    seeds = list(by_seed)
    L = ["| model | " + " | ".join(f"{t} (seeds {', '.join(map(str, seeds))})" for t, _ in
                                   COLUMNS[:5]) + " |", "|---" * 6 + "|"]
    for title, key, _ in ROWS:
        if key == "real" or not all(key in m.stats for m in by_seed.values()):
            continue
        cells = [" / ".join(f"{float(m.stats[key][c][0]):.{DIGITS.get(c, 2)}f}"
                            for m in by_seed.values()) if c in by_seed[seeds[0]].stats[key]
                 else "n/a" for _, c in COLUMNS[:5]]
        L.append(f"| {title} | " + " | ".join(cells) + " |")
    return L


def report(args, r, measured, out):
    unit = "steps" if args.quick else "min"
    budgets = sorted({b for b, _ in measured})
    top = budgets[-1]
    by_seed = {s: m for (b, s), m in measured.items() if b == top}
    L = [f"# Four families compared on `{args.data}`", "", f"Command: `{r['command']}`  ",
         f"Machine: {r['machine']}  ", f"Date: {r['date']}", "",
         f"Every model trained through its own script at each budget "
         f"({', '.join(f'{b:g}' for b in budgets)} {unit}; LDM and the VQ-VAE the same in total, "
         f"half per stage), each a run of its own, {args.lanes} runs at a time on one thread "
         f"each; at {top:g} {unit} {len(by_seed)} seeds per family. {args.num_samples} samples "
         f"per set; class-conditional models draw each class equally often. Quality in the "
         f"features of a classifier trained here on the training split (identity {r['judge']}, "
         f"test accuracy {r['judge_accuracy']:.3f}): **not Inception FID or KID**. The reference "
         f"is the first {r['reference']} test images; the floor, measured like a model, the next "
         f"{r['reference']} (never trained on). Every figure: estimate (95% interval over "
         f"{args.reps} half-samples of the samples and of the reference); the intervals "
         f"are over the samples drawn, and the seed table shows what training randomness adds. "
         f"Bits/dim on the first {args.eval_images} test images. KID on standardised features.",
         ""]
    for b in budgets:
        L += [f"## {b:g} {unit}", ""] + budget_table(measured[(b, args.seed)]) + [""]
    L += [f"## Seed spread at {top:g} {unit}", ""] + seed_table(by_seed) + [""]
    m = measured[(top, args.seed)]
    L += [f"## Sampling cost ({top:g} {unit} models)", "",
          "| sampler | sequential network evaluations per image | seconds per 100 images |",
          "|---|---|---|"]
    L += [f"| {k} | {m.evals[k]} | {fmt(interval(m.stats[k]['seconds']))}"
          f"{'' if 'fd' in m.stats[k] else f' (timed on {args.slow_images}, scaled)'} |"
          for k in m.evals]
    v = {b: r["verdicts"][f"{b:g}"] for b in budgets}
    seeds = r["verdicts_with_seeds"]
    L += ["", "## The claims", "", "Rules: A is better than B when the 95% interval of the "
          "difference A - B over the same resamples excludes 0 (`better`); A is not worse than B "
          "(a claim's \"similar quality\", \"reaches\") when the interval's worse end lies "
          "within a margin (`not_worse`). Margins: " + margin_text() + ". A claim is supported "
          "only if every part holds, contradicted if a part fails, and undecided otherwise. With "
          "seeds: a part holds (fails) only if it holds (fails) with every seed.", "",
          "| claim | rule | " + " | ".join(f"{b:g} {unit}" for b in budgets)
          + f" | {top:g} {unit}, {len(by_seed)} seeds |", "|---" * (len(budgets) + 3) + "|"]
    for i, (claim, sentence, _) in enumerate(CLAIMS):
        L.append(f"| {i + 1}. {claim} | {sentence} | " + " | ".join(
            f"**{v[b][i][0]}**" for b in budgets) + f" | **{seeds[i][0]}** |")
    L.append("")
    short = {1: "h", 0: "u", -1: "f"}
    for i, (claim, sentence, rule) in enumerate(CLAIMS):
        L += [f"{i + 1}. *{claim}* **Rule:** {sentence}. In full: {' '.join(rule.__doc__.split())}"]
        for b in budgets:
            L.append(f"   - {b:g} {unit}: **{v[b][i][0]}**. " + "; ".join(t for _, t in v[b][i][1])
                     + ".")
        per_part = ", ".join("/".join(short[o] for o in p) for p in seeds[i][2])
        L.append(f"   - {top:g} {unit}, seeds {', '.join(map(str, by_seed))}: "
                 f"{' / '.join(seeds[i][1])}; each part seed by seed (h holds, u undecided, f "
                 f"fails): {per_part}; with the seed spread: **{seeds[i][0]}**.")
    L += ["", f"![samples at {top:g} {unit}: " + ", ".join(PICTURES) + "](compare.png)", ""]
    common.atomic_write(os.path.join(out, "compare.md"), lambda f: f.write("\n".join(L)), "w")
    curves = [(key, dict(script=key, flags=[], rows=[dict(
        minutes=b, fd=float(measured[(b, args.seed)].stats[key]["fd"][0]),
        recall=float(measured[(b, args.seed)].stats[key]["recall"][0])) for b in budgets]))
        for key in CURVES]
    logs = [math.log10(max(row["fd"], 0.1)) for _, c in curves for row in c["rows"]]
    panels = [("log10 Frechet distance", lambda row: math.log10(max(row["fd"], 0.1)),
               math.floor(min(logs)), math.ceil(max(logs)) + (min(logs) == max(logs))),
              ("recall", lambda row: row["recall"], 0.0, 1.0)]
    common.atomic_write(os.path.join(out, "compare-curves.svg"), lambda f: f.write(svg_plot(
        curves, panels, "minutes", 1, f"training budget ({unit})", "")), "w")
    exact = [(key, dict(script=key, flags=[], rows=[dict(minutes=b, bpd=float(np.mean(
        measured[(b, args.seed)].bits[key]))) for b in budgets])) for key in ("vae", "pixelcnn",
                                                                               "ddpm", "vq")]
    bpds = [row["bpd"] for _, c in exact for row in c["rows"]]
    panels = [("bits/dim on the test images", lambda row: row["bpd"], math.floor(min(bpds)),
               math.ceil(max(bpds)) + (math.floor(min(bpds)) == math.ceil(max(bpds))))]
    common.atomic_write(os.path.join(out, "compare-likelihood.svg"), lambda f: f.write(svg_plot(
        exact, panels, "minutes", 1, f"training budget ({unit})", "")), "w")
    print("\n".join(L))


CURVES = ("vae", "pixelcnn", "ddpm", "ddpm-eps", "ddpm-x0", "ldm", "vq")
PICTURES = ("real", "vae", "vae-mean", "pixelcnn", "ddpm", "ddpm-uncond", "ddpm-x0", "ldm", "vq")


def picture(named, nrow):
    """Grids side by side, 8 white pixels apart, in the order of PICTURES."""
    grids = [torch.as_tensor(common.make_grid(x[:nrow * nrow], nrow)) for x in named]
    grids = [g if g.dim() == 3 else g[..., None] for g in grids]             # (H, W, C)
    height = max(g.shape[0] for g in grids)
    grids = [F.pad(g.permute(2, 0, 1), (0, 8, 0, height - g.shape[0]), value=255) for g in grids]
    picture = torch.cat(grids, 2).permute(1, 2, 0)
    return picture[..., 0].numpy() if picture.shape[-1] == 1 else picture.numpy()


def study(args, out, judge, train_x, test_x, test_y):
    """The full study: plan, run (or keep) the jobs, gather, judge, report."""
    start = time.time()
    if len(train_x) <= args.small_data:
        raise common.UserError(f"--small-data {args.small_data}: the study also trains on that "
                               f"many of the {len(train_x)} training images; pass fewer")
    specs = plan(args, out, judge)
    done = run_jobs(args, specs)
    half = min(args.num_samples, len(test_x) // 2)
    ref = reference(judge, test_x[:half], args.reps)
    floor = measure_images(judge, ref, test_x[half:2 * half], test_y[half:2 * half].long(),
                           set_seed("real", args.seed))
    measured = gather(done, floor)
    judged = {k: judge_claims(m, args.reps) for k, m in measured.items()}
    top = max(args.budgets)
    r = dict(command=args.command, machine=machine(), date=datetime.date.today().isoformat(),
             judge=judge.id, judge_accuracy=judge.accuracy, reference=half,
             verdicts={f"{b:g}": j for (b, s), j in judged.items() if s == args.seed},
             verdicts_with_seeds=across_seeds([j for (b, _), j in judged.items() if b == top]),
             figures={f"{b:g}/{s}": {k: {c: interval(v) for c, v in d.items()} for k, d in
                                     m.stats.items()} for (b, s), m in measured.items()},
             training={f"{b:g}/{s}": m.training for (b, s), m in measured.items()},
             evals={f"{b:g}/{s}": m.evals for (b, s), m in measured.items()},
             bits_per_dim={f"{b:g}/{s}": {k: float(np.mean(v)) for k, v in m.bits.items()}
                           for (b, s), m in measured.items()})
    common.write_metrics(out, r, "compare.json")
    pics = {"real": test_x[half:2 * half]}
    for job in specs:
        if job["budget"] == top and job["seed"] == args.seed:
            with np.load(os.path.join(job["out"], "pictures.npz")) as blob:
                pics.update({k: torch.from_numpy(blob[k]) for k in blob.files})
    n = min(10, int(math.sqrt(args.num_samples)))
    common.write_png(os.path.join(out, "compare.png"), picture([pics[k] for k in PICTURES], n))
    report(args, r, measured, out)
    print(f"compare: wrote {out}/compare.md, compare.json, compare.png, compare-curves.svg, "
          f"compare-likelihood.svg; {(time.time() - start) / 60:.1f} min (finished jobs kept)")


def compare(args):
    tag = os.path.splitext(os.path.basename(args.data))[0]
    out = args.out or os.path.join("results", tag + ("-quick" if args.quick else ""))
    if args.curve or args.samplers:      # every curve in one folder shares the judge kept there
        out = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out, exist_ok=True)
    train_x, train_y = common.load_data(args.data, "train", args.data_dir)
    test_x, test_y = common.load_data(args.data, "test", args.data_dir)
    if train_y is None or test_y is None:
        raise common.UserError(f"compare.py needs labels (its judge is a classifier); {args.data} "
                               f"has none")
    if args.restore:
        return restore(args, test_x, test_y)
    judge = get_judge(args, out, train_x, train_y, test_x, test_y)
    if args.score:
        return score(args, judge, test_x)
    if args.curve:
        return curve(args, judge, test_x)
    if args.samplers:
        os.makedirs(args.out, exist_ok=True)
        return samplers(args, judge, test_x)
    study(args, out, judge, train_x, test_x, test_y)


# ----------------------------------------------------------------------------------------------

def main(argv=None):
    p = common.Parser(prog="compare.py", description=__doc__.strip().splitlines()[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a, whole = p.add_argument, common.positive(int)
    a("--data", default="digits", help="a labelled data set (as in the model scripts)")
    a("--data-dir", default=None)
    a("--out", default=None, help="default results/<data>")
    a("--budgets", type=common.positive(float), nargs="+", default=None,
      help="training budgets per model, in minutes (--quick: steps); default 1 2 4 (--quick: 4 16)")
    a("--seeds", type=whole, default=3, help="training seeds per family at the largest budget")
    a("--lanes", type=whole, default=2, help="training runs at a time, one thread each")
    a("--small-data", type=whole, default=300,
      help="DDPM and LDM also trained on this many training images (--quick: 60)")
    a("--reps", type=int, default=1000, help="bootstrap resamples per interval (--quick: 100)")
    a("--reuse", action="store_true", help="--curve: keep the curve's finished points")
    a("--job", default=None, help=argparse.SUPPRESS)     # one job of the full study (internal)
    a("--quick", action="store_true", help="tiny models, a few steps: the pipeline in a minute")
    a("--num-samples", type=whole, default=None,
      help="samples per set (default 500; --curve, --samplers, --score: 100; --quick: 20)")
    a("--slow-images", type=whole, default=10,
      help="images timed for the slow samplers (DDPM ancestral, PixelCNN naive), scaled to 100")
    a("--eval-images", type=whole, default=50, help="test images for the likelihoods")
    a("--iw-samples", type=whole, default=1000, help="K of the VAE's importance-weighted bound")
    a("--ddim-steps", type=whole, default=50)
    a("--classifier-epochs", type=whole, default=12)
    a("--device", default="auto")
    a("--seed", type=int, default=0)
    a("--score", metavar="FILE.npz", default=None,
      help="only score a samples .npz written by a script (--reps 0: no intervals)")
    a("--curve", choices=["ddpm", "ldm"], default=None,
      help="only this script's quality against training images seen, along one run (needs --out)")
    a("--at", type=whole, nargs="+", default=[300, 600, 900, 1200, 1800],
      help="--curve: the training steps at which to measure")
    a("--flags", default="", help="--curve: the script's training flags (one quoted string)")
    a("--precision", choices=["fp32", "bf16"], default="fp32",
      help="--curve: training precision; --samplers: sampling precision")
    a("--samplers", metavar="RUN", default=None, help="only the sampler table of a trained "
      "class-conditional ddpm.py or ldm.py run folder (needs --out)")
    a("--nfe", type=whole, nargs="+", default=[5, 10, 20, 50],
      help="--samplers: network evaluations per image to compare at")
    a("--guidance", type=float, default=1.0, help="--samplers, --restore: guidance scale")
    a("--restore", metavar="RUN", default=None,
      help="only the restoration pictures and PSNR of a ddpm.py run folder (--out: default RUN)")
    a("--factor", type=int, choices=[2, 4], default=4, help="--restore: the zero-shot SR factor")
    a("--zero-shot", metavar="RUN", default=None,
      help="--restore of a super-resolution run: also ILVR with this generative ddpm.py run")
    a("--resample", type=whole, default=1, help="--restore: RePaint resampling")
    a("--null-label", action="store_true",
      help="--restore: class-conditional models get the 'no class' label (the input decides)")
    args = p.parse_args(argv)
    if args.job:
        try:
            return run_job(args.job)
        except common.UserError as e:
            p.exit(1, f"{p.prog}: error: {e}\n")
    if args.reps < 0:
        p.error(f"--reps {args.reps}: must be >= 0")
    if (args.curve or args.samplers) and not args.out:
        p.error("--curve and --samplers need --out (their folder; the judge is kept beside it)")
    default = [4, 16] if args.quick else [1, 2, 4]
    args.budgets = sorted({float(b) for b in args.budgets or default})
    full = not (args.score or args.curve or args.samplers or args.restore)
    args.num_samples = args.num_samples or (500 if full else 100)
    args.command = "python compare.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    args.judge_images = None
    if args.quick:
        args.num_samples, args.slow_images, args.eval_images, args.small_data = 20, 2, 8, 60
        args.iw_samples, args.ddim_steps, args.classifier_epochs = 20, 5, 1
        args.reps, args.judge_images, args.seeds = min(args.reps, 100), 3000, min(args.seeds, 2)
    try:
        args.device = common.pick_device(args.device)
        compare(args)
    except common.UserError as e:
        p.exit(1, f"{p.prog}: error: {e}\n")
    except KeyboardInterrupt:
        p.exit(130, f"{p.prog}: interrupted; run the same command again to go on from the "
                    f"finished jobs\n")


if __name__ == "__main__":
    main()
