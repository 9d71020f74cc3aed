"""compare.py: the four families side by side: same data, same machine, same training budget.

    python compare.py --data mnist --data-dir ../shared/data/mnist-small   # about half an hour here
    python compare.py --quick                                               # the whole pipeline in about a minute

It trains vae.py, pixelcnn.py, ddpm.py --target eps, ddpm.py --target x0 (both with --min-snr 0,
Ho et al.'s unweighted loss, which the eps-vs-x0 claim is about) and ldm.py for --minutes each,
through their own command lines (so every number below is what a user of those scripts gets), then
measures them on the same test images:

* size and speed: parameters, training images/s, peak memory (the training process's resident set);
* likelihood in bits/dim of the 8-bit pixels: PixelCNN exact, VAE importance-weighted bound (Burda
  et al. 2016), DDPM variational bound (Ho et al. 2020, eq. 5) of p(x) through the null label; LDM n/a;
* sample quality in the feature space of a small classifier trained here on the same train split:
  the Frechet distance between real and generated features (the formula of Heusel et al. 2017's
  FID, but NOT Inception features: not comparable with published FIDs), precision and recall
  (Kynkaanniemi et al. 2019, k = 3: fidelity and diversity), the classifier's accuracy on the
  class-conditional samples, and edge strength relative to real images (blur shows up below 1);
* sampling cost: sequential network evaluations per image, wall time for --num-samples images.

It writes <out>/compare.md (the tables, the claims with verdicts, the command, the machine, the
date), compare.json and compare.png, and keeps the runs in <out>/runs/ for --reuse.
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
    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))   (Dowson & Landau 1982; Heusel et al. 2017)."""
    d = ((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * trace_sqrt_product(s1, s2)
    return float(d.clamp(min=0))


def frechet_distance(f1, f2):
    """The distance above between Gaussians fitted to two feature sets (N, D)."""
    f1, f2 = f1.double(), f2.double()
    return frechet_gaussians(f1.mean(0), torch.cov(f1.T), f2.mean(0), torch.cov(f2.T))


def precision_recall(real, fake, k=3):
    """Kynkaanniemi et al. 2019: each set's manifold is the union of balls reaching each point's
    k-th nearest neighbour in its own set. Precision: the share of fake points inside the real
    manifold (fidelity); recall: the share of real points inside the fake manifold (diversity)."""
    radius = lambda f: torch.cdist(f, f).kthvalue(k + 1, dim=1).values   # k + 1: itself is at 0
    d = torch.cdist(fake.double(), real.double())                        # (fake, real)
    precision = (d <= radius(real.double())[None, :]).any(1).double().mean()
    recall = (d.T <= radius(fake.double())[None, :]).any(1).double().mean()
    return float(precision), float(recall)


def edge_strength(x):
    """Root-mean-square difference of neighbouring pixels (uint8 images, [0, 1] units). Squared, so
    blur lowers it: a unit step spread over k pixels has k steps of 1/k, k (1/k)^2 = 1/k in energy
    (the mean absolute difference would stay 1)."""
    x = x.float() / 255
    return float(((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean() + ((x[..., 1:] - x[..., :-1]) ** 2).mean()) ** 0.5


# ----------------------------------------------------------------------------------------------
# Labelled picture: a 3x5 pixel font, enough for the panel titles

_FONT = {  # 3 x 5 pixels, rows top to bottom
    "A": ".#. #.# ### #.# #.#", "B": "##. #.# ##. #.# ##.", "C": ".## #.. #.. #.. .##", "D": "##. #.# #.# #.# ##.",
    "E": "### #.. ##. #.. ###", "F": "### #.. ##. #.. #..", "G": ".## #.. #.# #.# .##", "H": "#.# #.# ### #.# #.#",
    "I": "### .#. .#. .#. ###", "J": "..# ..# ..# #.# .#.", "K": "#.# #.# ##. #.# #.#", "L": "#.. #.. #.. #.. ###",
    "M": "#.# ### ### #.# #.#", "N": "##. #.# #.# #.# #.#", "O": ".#. #.# #.# #.# .#.", "P": "##. #.# ##. #.. #..",
    "Q": ".#. #.# #.# ##. .##", "R": "##. #.# ##. #.# #.#", "S": ".## #.. .#. ..# ##.", "T": "### .#. .#. .#. .#.",
    "U": "#.# #.# #.# #.# ###", "V": "#.# #.# #.# #.# .#.", "W": "#.# #.# ### ### #.#", "X": "#.# #.# .#. #.# #.#",
    "Y": "#.# #.# .#. .#. .#.", "Z": "### ..# .#. #.. ###", "0": "### #.# #.# #.# ###", "1": ".#. ##. .#. .#. ###",
    "2": "##. ..# .#. #.. ###", "3": "##. ..# .#. ..# ##.", "4": "#.# #.# ### ..# ..#", "5": "### #.. ##. ..# ##.",
    "6": ".## #.. ### #.# ###", "7": "### ..# .#. .#. .#.", "8": "### #.# ### #.# ###", "9": "### #.# ### ..# ##.",
    "-": "... ... ### ... ...", "=": "... ### ... ### ...", ".": "... ... ... ... .#.", "(": ".#. #.. #.. #.. .#.",
    ")": ".#. ..# ..# ..# .#.", " ": "... ... ... ... ...",
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
        strip[3:3 + 5 * scale, x:x + glyph.shape[1]] = torch.maximum(strip[3:3 + 5 * scale, x:x + glyph.shape[1]], glyph)
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


def run_measured(cmd, what, quiet=False, env=None):
    """Run cmd as its own process; return its peak resident memory in MB (one-line error if it fails)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL if quiet else None, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise common.UserError(f"{what} failed (exit {proc.returncode}); see its message above")
    return usage.ru_maxrss / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)   # bytes on macOS, KB on Linux


def run_script(args, script, mode, out, flags):
    """Run `script.py --<mode>` as its own process; return its peak resident memory in MB."""
    cmd = [sys.executable, os.path.join(HERE, script + ".py"), f"--{mode}", *data_flags(args), "--out", out,
           "--device", args.device, "--seed", str(args.seed), *flags]
    print("compare: python " + " ".join(cmd[1:]), flush=True)
    return run_measured(cmd, f"{script}.py --{mode}")


def train_rates(out):
    """Median training images/s of each stage in <out>/metrics.jsonl (a stage restarts at a lower step)."""
    stages, last = [], None
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if last is None or rec["step"] < last:
                stages.append([])
            stages[-1].append(rec["images_per_s"])
            last = rec["step"]
    median = lambda v: sorted(v[1:] or v)[len(v[1:] or v) // 2]  # the first interval holds the warm-up
    return [median(s) for s in stages]


def train_all(args, runs):
    budget = ["--steps", "15"] if args.quick else ["--minutes", str(args.minutes)]
    half = ["--steps", "8"] if args.quick else ["--minutes", str(args.minutes / 2)]
    tiny = args.quick
    cond = ["--conditional"]   # the diffusion models learn the classes (for guidance and accuracy)
    simple = ["--min-snr", "0"]  # DDPM: Ho et al.'s unweighted loss, so claim 6 compares targets as they did
    plan = {  # name: (script, flags); LDM gets the same total budget, half for each stage
        "vae": ("vae", budget + (["--width", "8", "--latent", "4"] if tiny else [])),
        "pixelcnn": ("pixelcnn", budget + (["--width", "8", "--layers", "2"] if tiny else [])),
        "ddpm": ("ddpm", budget + cond + simple + ["--target", "eps"] + (["--width", "8", "--timesteps", "50"] if tiny else [])),
        "ddpm-x0": ("ddpm", budget + cond + simple + ["--target", "x0"] + (["--width", "8", "--timesteps", "50"] if tiny else [])),
        "ldm": ("ldm", half + cond + (["--ae-width", "8", "--width", "8", "--ae-steps", "8", "--timesteps", "50"] if tiny else [])),
    }
    stats = {}
    for name, (script, flags) in plan.items():
        out = os.path.join(runs, name)
        path = os.path.join(out, "train.json")
        if args.reuse and os.path.exists(path) and os.path.exists(os.path.join(out, "ckpt.pt")):
            print(f"compare: --reuse: {out}")
            with open(path) as f:
                stats[name] = json.load(f)
            continue
        for stale in ("metrics.jsonl", "eval.json"):
            if os.path.exists(os.path.join(out, stale)):
                os.remove(os.path.join(out, stale))
        start = time.time()
        peak = run_script(args, script, "train", out, flags)
        stats[name] = dict(command=f"python {script}.py --train " + " ".join(data_flags(args) + flags),
                           seconds=time.time() - start, peak_rss_mb=peak, images_per_s=train_rates(out))
        common.write_metrics(out, stats[name], "train.json")
    return stats


def likelihoods(args, runs):
    """bits/dim on the first --eval-images test images, each script's own --eval."""
    n = ["--eval-images", str(args.eval_images)]
    jobs = {"pixelcnn": ("pixelcnn", n), "vae": ("vae", n + ["--iw-samples", str(args.iw_samples)]),
            "ddpm": ("ddpm", n + ["--null-label", "--batch-size", "25"]), "ldm": ("ldm", n)}
    out = {}
    for name, (script, flags) in jobs.items():
        path = os.path.join(runs, name, "eval.json")
        if not (args.reuse and os.path.exists(path)):
            run_script(args, script, "eval", os.path.join(runs, name), flags)
        with open(path) as f:
            out[name] = json.load(f)
    return out


# ----------------------------------------------------------------------------------------------
# Sampling, timed

def timed(fn):
    start = time.time()
    x = fn()
    return x, time.time() - start


FAST = ("dpm", 10)   # ddpm.py's default sampler and steps (README: "Fast sampling")


def reaches(q, ref):
    """The quality rule of the sampler table: accuracy at least ref's minus 0.01, Frechet distance
    at most 1.1x ref's, recall at least ref's minus 0.05 (diversity: few steps can keep the
    accuracy and lose the variety)."""
    return (q["accuracy"] >= ref["accuracy"] - 0.01 and q["fd"] <= 1.1 * ref["fd"]
            and q["recall"] >= ref["recall"] - 0.05)


def draw_all(args, runs, num_classes):
    """Returns {name: dict(images uint8, labels or None, seconds, n_timed, evals)} for every
    sampler, each model called through its sample(n, y, ...)."""
    dev, n, slow = args.device, args.num_samples, min(args.slow_images, args.num_samples)
    balanced = lambda k: torch.arange(k, device=dev) % num_classes
    res = {}

    def record(name, fn, k, evals, labels=None, keep=True):
        torch.manual_seed(args.seed)
        x, seconds = timed(fn)
        images = common.from_unit(x).cpu() if keep else None
        res[name] = dict(images=images, labels=labels, seconds=seconds, n_timed=k, evals=evals)
        print(f"compare: {name}: {k} images in {seconds:.1f}s", flush=True)

    model = vae.load(os.path.join(runs, "vae"), dev)
    record("vae", lambda: model.sample(n), n, 1)

    model = pixelcnn.load(os.path.join(runs, "pixelcnn"), dev)
    gen = lambda: torch.Generator().manual_seed(args.seed)
    pixels = model.cfg.channels * model.cfg.image_size ** 2
    record("pixelcnn", lambda: model.sample(n, generator=gen()), n, pixels)
    record("pixelcnn-naive", lambda: model.sample(slow, generator=gen(), naive=True), slow, pixels,
           keep=False)

    for name in ("ddpm", "ddpm-x0"):
        model = ddpm.load(os.path.join(runs, name), dev)
        for w in ((1.0, 0.0, 3.0) if name == "ddpm" else (1.0,)):
            key = name if w == 1.0 else f"{name}-w{w:g}"
            calls = args.ddim_steps * (2 if w else 1)           # guidance: two evaluations a step
            record(key, lambda: model.sample(n, balanced(n), "ddim", args.ddim_steps, guidance=w),
                   n, calls, balanced(n))
        if name == "ddpm":
            record("ddpm-ancestral", lambda: model.sample(slow, balanced(slow), "ddpm"),
                   slow, model.cfg.timesteps * 2, keep=False)
            sampler, steps = FAST
            calls = (2 * steps - 1 if sampler == "heun" else steps) * 2
            record("ddpm-fast", lambda: model.sample(n, balanced(n), sampler, steps, guidance=1.0),
                   n, calls, balanced(n))

    model = ldm.load(os.path.join(runs, "ldm"), dev)
    record("ldm", lambda: model.sample(n, balanced(n), "ddim", args.ddim_steps), n,
           args.ddim_steps * 2, balanced(n))
    return res


# ----------------------------------------------------------------------------------------------
# The report

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
    return dict(fd=frechet_distance(real_feats, feats), precision=p, recall=r, edge_ratio=None,
                spread_ratio=within_class_spread(feats, pred) / within_class_spread(*real_ref),
                accuracy=float((pred.cpu() == labels.cpu()).double().mean()) if labels is not None else None)


def fmt(v, digits=2, none="n/a"):
    if v is None:
        return none
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def verdicts(r):
    """Each claim of the seed articles, judged by the numbers in r (see the rules in each line)."""
    t = {k: v["seconds_per_100"] for k, v in r["sampling"].items()}
    e = {k: v["evals_per_image"] for k, v in r["sampling"].items()}
    q, lk, tr = r["quality"], r["likelihood"], r["training"]
    out = []
    # 1. faster, in a single pass
    faster = t["pixelcnn"] < t["ddpm"]
    out.append(("PixelCNN generates faster than diffusion, in a single pass.",
                "depends" if faster else "contradicted",
                f"not a single pass: {e['pixelcnn']} sequential steps per image (one per pixel); with the cached "
                f"sampler 100 images take {t['pixelcnn']:.1f} s against DDPM's {t['ddpm']:.1f} s (DDIM, {r['ddim_steps']} steps) "
                f"and {t['ddpm-ancestral']:.0f} s ({r['timesteps']} ancestral steps); the naive PixelCNN sampler takes "
                f"{t['pixelcnn-naive']:.0f} s. Only training and likelihood evaluation are single-pass."))
    # 2. fewer network evaluations: the fastest DDPM sampler that reaches DDIM-50's quality
    fast = "ddpm-fast" if reaches(q["ddpm-fast"], q["ddpm"]) else "ddpm"
    label = (f"{FAST[0]} {FAST[1]} steps (reaches DDIM-{r['ddim_steps']}'s quality: accuracy "
             f"{fmt(q['ddpm-fast']['accuracy'])} vs {fmt(q['ddpm']['accuracy'])}, Frechet distance "
             f"{q['ddpm-fast']['fd']:.1f} vs {q['ddpm']['fd']:.1f})" if fast == "ddpm-fast" else
             f"DDIM {r['ddim_steps']} steps ({FAST[0]} {FAST[1]} steps does not reach its quality here: "
             f"Frechet distance {q['ddpm-fast']['fd']:.1f} vs {q['ddpm']['fd']:.1f})")
    out.append(("Diffusion generates in far fewer network evaluations than an autoregressive model.",
                "depends" if e[fast] < e["pixelcnn"] < e["ddpm-ancestral"] else
                ("supported" if e["ddpm-ancestral"] < e["pixelcnn"] else "contradicted"),
                f"the fastest DDPM sampler at DDIM-{r['ddim_steps']}'s quality, {label}: {e[fast]} "
                f"network evaluations per image (guidance doubles each step), ancestral DDPM: "
                f"{e['ddpm-ancestral']}, PixelCNN: {e['pixelcnn']} (H x W x C); it depends on the "
                f"sampler, and on what one evaluation costs (a cached PixelCNN step touches a few "
                f"rows, a U-Net call the whole image)."))
    # 3. LDM cheaper at similar quality: >= 2x cheaper in both, FD at most 25% worse
    train_x = tr["ldm"]["images_per_s"][-1] / tr["ddpm"]["images_per_s"][0]
    sample_x = t["ddpm"] / t["ldm"]
    similar = q["ldm"]["fd"] <= 1.25 * q["ddpm"]["fd"]
    cheaper = train_x >= 2 and sample_x >= 2
    out.append(("Latent diffusion trains and samples far cheaper than pixel-space diffusion at similar sample quality.",
                "supported" if cheaper and similar else ("depends" if cheaper or similar else "contradicted"),
                f"LDM's diffusion stage trains at {train_x:.1f}x DDPM's images/s and samples {sample_x:.1f}x faster "
                f"(same sampler); Frechet distance {q['ldm']['fd']:.1f} vs {q['ddpm']['fd']:.1f}, class accuracy "
                f"{fmt(q['ldm']['accuracy'])} vs {fmt(q['ddpm']['accuracy'])} (rule: supported if both >= 2x "
                f"and FD at most 25% worse)."))
    # 4. VAE fastest, blurrier, less faithful
    fastest = t["vae"] == min(t[k] for k in ("vae", "pixelcnn", "ddpm", "ldm"))
    blurrier = q["vae"]["edge_ratio"] < q["ddpm"]["edge_ratio"]
    less_faithful = q["vae"]["fd"] > q["ddpm"]["fd"] and q["vae"]["precision"] < q["ddpm"]["precision"]
    n_true = fastest + blurrier + less_faithful
    out.append(("VAEs sample fastest, but their samples are blurrier and less faithful than diffusion's.",
                "supported" if n_true == 3 else ("contradicted" if n_true == 0 else "depends"),
                f"fastest: {'yes' if fastest else 'no'} ({t['vae']:.2f} s per 100); edge strength vs real "
                f"{q['vae']['edge_ratio']:.2f} vs DDPM's {q['ddpm']['edge_ratio']:.2f}; Frechet distance "
                f"{q['vae']['fd']:.1f} vs {q['ddpm']['fd']:.1f}, precision {q['vae']['precision']:.2f} vs "
                f"{q['ddpm']['precision']:.2f}."))
    # 5. exact likelihood vs bounds
    b = {k: lk[k]["bits_per_dim"] for k in ("pixelcnn", "vae", "ddpm")}
    best = min(b, key=b.get)
    out.append(("PixelCNN gives an exact likelihood; diffusion and VAE give bounds.",
                "supported",
                f"by construction: PixelCNN {b['pixelcnn']:.3f} bits/dim is exact; VAE {b['vae']:.3f} (IWAE, "
                f"K={lk['vae'].get('iw_samples')}) and DDPM {b['ddpm']:.3f} (variational bound) are upper bounds on "
                f"their models' -log p(x). Lowest here: {best}. All on the same {lk['pixelcnn']['images']} test images."))
    # 6. eps vs x0: fidelity (FD, accuracy) and diversity (spread within a class) both count
    eps, x0 = q["ddpm"], q["ddpm-x0"]
    wins = (eps["fd"] < x0["fd"]) + ((eps["accuracy"] or 0) >= (x0["accuracy"] or 0)) + (eps["spread_ratio"] >= x0["spread_ratio"])
    out.append(("Predicting the noise works better than predicting the clean image.",
                {3: "supported", 0: "contradicted"}.get(wins, "depends"),
                f"same budget and sampler: Frechet distance {eps['fd']:.1f} (eps) vs {x0['fd']:.1f} (x0); class "
                f"accuracy {fmt(eps['accuracy'])} vs {fmt(x0['accuracy'])}; spread within a class vs real "
                f"{eps['spread_ratio']:.2f} vs {x0['spread_ratio']:.2f} (below 1: near-copies); edge strength "
                f"{eps['edge_ratio']:.2f} vs {x0['edge_ratio']:.2f}."))
    # 7. guidance
    g = [(w, q[k]) for w, k in ((0, "ddpm-w0"), (1, "ddpm"), (3, "ddpm-w3"))]
    accs = [v["accuracy"] or 0 for _, v in g]
    out.append(("Classifier-free guidance makes samples match their class better.",
                "supported" if accs[2] > accs[0] else "contradicted",
                "guidance w = 0 / 1 / 3: class accuracy " + " / ".join(f"{a:.2f}" for a in accs) +
                "; recall " + " / ".join(f"{v['recall']:.2f}" for _, v in g) +
                "; spread within a class vs real " + " / ".join(f"{v['spread_ratio']:.2f}" for _, v in g) +
                "; Frechet distance " + " / ".join(f"{v['fd']:.1f}" for _, v in g) + "."))
    return out


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def report(args, r, out):
    rows = [("VAE", "vae", "vae", "vae"), ("PixelCNN", "pixelcnn", "pixelcnn", "pixelcnn"),
            ("DDPM", "ddpm", "ddpm", "ddpm"), ("DDPM, x0 target", "ddpm-x0", "ddpm-x0", None),
            ("LDM", "ldm", "ldm", "ldm")]
    q, s, tr, lk = r["quality"], r["sampling"], r["training"], r["likelihood"]
    L = [f"# Four families compared on `{args.data}`", "",
         f"Command: `{r['command']}`  ", f"Machine: {r['machine']}  ", f"Date: {r['date']}", "",
         f"Training budget: {r['budget']} per model (LDM: the same total, half per stage). Sample quality from "
         f"{args.num_samples} samples per model (DDPM and LDM: DDIM, {args.ddim_steps} steps, guidance 1; class-"
         f"conditional models draw each class equally often), in the features of a classifier trained here "
         f"(test accuracy {r['classifier']['test_accuracy']:.3f}): **not Inception FID**. Likelihoods on the first "
         f"{args.eval_images} test images, 8-bit pixels.", "",
         "| model | parameters | train img/s | peak MB | bits/dim | Frechet dist. | precision | recall | spread vs real | class acc. | edges vs real | evals / image | s / 100 images |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for title, key, tkey, lkey in rows:
        rate = " / ".join(f"{v:.0f}" for v in tr[tkey]["images_per_s"])
        bpd = (fmt(lk[lkey].get("bits_per_dim"), 3, "n/a (no likelihood: first-stage PSNR "
                                                      f"{lk[lkey].get('psnr_db', 0):.1f} dB)") if lkey else "-")
        L.append(f"| {title} | {r['parameters'][key] / 1e6:.2f}M | {rate} | {tr[tkey]['peak_rss_mb']:.0f} | {bpd} | "
                 f"{q[key]['fd']:.1f} | {q[key]['precision']:.2f} | {q[key]['recall']:.2f} | {q[key]['spread_ratio']:.2f} | "
                 f"{fmt(q[key]['accuracy'])} | "
                 f"{q[key]['edge_ratio']:.2f} | {s[key]['evals_per_image']} | {s[key]['seconds_per_100']:.1f} |")
    fl = q["real"]
    L += [f"| real train images (the floor) | | | | | {fl['fd']:.1f} | {fl['precision']:.2f} | {fl['recall']:.2f} | "
          f"{fl['spread_ratio']:.2f} | "
          f"{fmt(fl['accuracy'])} | 1.00 | | |", "",
          "LDM's training rate is stage 1 / stage 2. bits/dim: PixelCNN exact; VAE the importance-weighted bound; DDPM "
          "the variational bound on p(x) (null label). Peak MB: resident memory of the training process.", "",
          "## Sampling cost", "", "| sampler | sequential network evaluations per image | seconds per 100 images |",
          "|---|---|---|"]
    names = {"vae": "VAE (decoder)", "pixelcnn": "PixelCNN, cached (fast)", "pixelcnn-naive": "PixelCNN, naive",
             "ddpm": f"DDPM, DDIM {args.ddim_steps} steps", "ddpm-fast": f"DDPM, {FAST[0]} {FAST[1]} steps (the default)",
             "ddpm-ancestral": "DDPM, ancestral (all T steps)",
             "ldm": f"LDM, DDIM {args.ddim_steps} steps (+ decoder)"}
    for key, title in names.items():
        v = s[key]
        note = "" if v["n_timed"] >= 100 else f" (timed on {v['n_timed']}, scaled)"
        L.append(f"| {title} | {v['evals_per_image']} | {v['seconds_per_100']:.1f}{note} |")
    L += ["", "## The claims", ""]
    for i, (claim, verdict, why) in enumerate(r["verdicts"], 1):
        L.append(f"{i}. *{claim}* **{verdict.capitalize()}.** {why}")
    L += ["", "![samples](compare.png)", ""]
    common.atomic_write(os.path.join(out, "compare.md"), lambda f: f.write("\n".join(L)), "w")
    print("\n".join(L))


def get_judge(args, out, train_x, train_y, test_x, test_y):
    """The classifier in <out>/classifier.pt (trained first if absent or without --reuse), and the
    features of the test split."""
    path = os.path.join(out, "classifier.pt")
    num_classes = int(train_y.max()) + 1
    if (args.reuse or args.score or args.curve or args.samplers) and os.path.exists(path):
        blob = common.load_checkpoint(path, "classifier")
        judge = Classifier(train_x.shape[1], num_classes)
        common.load_weights(judge, blob["model"], path)
    else:
        start = time.time()
        judge = train_classifier(train_x[:3000] if args.quick else train_x, train_y, args.classifier_epochs, args.seed)
        print(f"compare: classifier trained in {time.time() - start:.0f}s")
    real_feats, pred = judge.embed(test_x)
    acc = float((pred == test_y.long()).double().mean())
    common.save_checkpoint(path, "classifier", dict(channels=train_x.shape[1], num_classes=num_classes),
                           model=judge.state_dict(), test_accuracy=acc)
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
        raise common.UserError(f"--score {args.score}: images are {tuple(images.shape[1:])} {images.dtype}, "
                               f"the data set's are {tuple(test_x.shape[1:])} uint8")
    q = quality(judge, real_feats, judge.embed(test_x[:len(images)]), images, labels)
    q["edge_ratio"] = edge_strength(images) / edge_strength(test_x[:1000])
    common.write_metrics(os.path.dirname(args.score) or ".", dict(samples=args.score, images=len(images), **q),
                         os.path.splitext(os.path.basename(args.score))[0] + "_score.json")


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
        run_script(args, "ldm", "train", os.path.dirname(stage1), ["--stage", "autoencoder"] + flags)
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
            run_script(args, "ldm", "train", run, ["--stage", "diffusion", "--steps", str(steps)] + flags)
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
            x = model.sample(n, y, name, steps, guidance=args.guidance, noise=x_T.clone())
        seconds = time.time() - start
        q = quality(judge, real_feats, real_ref, common.from_unit(x).cpu(), y.cpu())
        nfe = 2 * steps - 1 if name == "heun" else steps
        rows.append(dict(sampler=name, steps=steps, nfe=nfe, seconds_per_100=seconds * 100 / n,
                         accuracy=q["accuracy"], fd=q["fd"], precision=q["precision"], recall=q["recall"]))
        print(f"compare: samplers: {rows[-1]}", flush=True)
    meta = dict(command=args.command, run=args.samplers, machine=machine(), precision=args.precision,
                samples=n, guidance=args.guidance)
    sampler_report(args.out, meta, rows)


def sampler_report(out, meta, rows):
    """<out>/samplers.json and samplers.md: the table, and the setting with the fewest network
    evaluations that reaches DDIM-50's quality (rule: `reaches`)."""
    ref = next((r for r in rows if r["sampler"] == "ddim" and r["steps"] == 50), None)
    good = [r for r in rows if ref and reaches(r, ref)]
    best = min(good, key=lambda r: r["nfe"]) if good else None
    common.write_metrics(out, dict(meta, rows=rows, reaches_ddim50=best), "samplers.json")
    names = {"ddim": "DDIM", "dpm": "DPM-Solver++(2M)", "heun": "Heun", "ddpm": "ancestral (Algorithm 2)"}
    L = ["# Samplers: quality against network evaluations", "", f"Command: `{meta['command']}`  ",
         f"Run: `{meta['run']}`; machine: {meta['machine']}; {meta['precision']}; {meta['samples']} "
         f"class-conditional samples from the same x_T, guidance {meta['guidance']:g} (each evaluation "
         f"is then two network passes, batched)", "",
         "| sampler | steps | network evaluations per image | seconds per 100 images | class accuracy "
         "| Frechet dist. | precision | recall |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {names[r['sampler']]} | {r['steps']} | {r['nfe']} | {r['seconds_per_100']:.1f} | "
                 f"{r['accuracy']:.3f} | {r['fd']:.1f} | {r['precision']:.2f} | {r['recall']:.2f} |")
    rule = ("accuracy at least DDIM-50's minus 0.01, Frechet distance at most 1.1x DDIM-50's, recall "
            "at least DDIM-50's minus 0.05")
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


def svg_plot(curves, w=420, h=300, pad=50):
    """Two panels (class accuracy; log10 Frechet distance) against thousands of images seen."""
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
    xmax = max([r["images_seen"] for _, c in curves for r in c["rows"]] + [1]) / 1000
    fds = [math.log10(max(r["fd"], 1e-3)) for _, c in curves for r in c["rows"]] or [0.0]
    panels = [("class accuracy", lambda r: r["accuracy"], 0.0, 1.0),
              ("log10 Frechet distance", lambda r: math.log10(max(r["fd"], 1e-3)),
               math.floor(min(fds)), math.ceil(max(fds)) + (min(fds) == max(fds)))]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{h + 20 * len(curves)}" '
           f'font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>']
    for k, (title, value, lo, hi) in enumerate(panels):
        x0, y0 = k * w + pad, h - pad                             # the panel's origin in pixels
        sx = lambda v: x0 + (w - 1.5 * pad) * v / xmax
        sy = lambda v: y0 - (h - 2 * pad) * (v - lo) / (hi - lo)
        out.append(f'<text x="{x0}" y="{pad - 15}">{title}</text>')
        out.append(f'<path d="M{x0} {pad - 5} V{y0} H{sx(xmax)}" stroke="black" fill="none"/>')
        for i in range(5):
            xv, yv = xmax * i / 4, lo + (hi - lo) * i / 4
            out.append(f'<text x="{sx(xv)}" y="{y0 + 15}" text-anchor="middle">{xv:.3g}k</text>')
            out.append(f'<text x="{x0 - 5}" y="{sy(yv) + 4}" text-anchor="end">{yv:.2g}</text>')
        out.append(f'<text x="{sx(xmax / 2)}" y="{y0 + 32}" text-anchor="middle">'
                   f'training images seen (thousands)</text>')
        for j, (name, c) in enumerate(curves):
            pts = [(sx(r["images_seen"] / 1000), sy(value(r))) for r in c["rows"]]
            color, dash = colors[j % len(colors)], "6,3" if j >= len(colors) else "none"
            out.append(f'<polyline points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in pts)}" '
                       f'stroke="{color}" fill="none" stroke-width="2" stroke-dasharray="{dash}"/>')
            out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}"/>' for a, b in pts]
    for j, (name, c) in enumerate(curves):
        dashed = " (dashed)" if j >= len(colors) else ""
        out.append(f'<text x="{pad}" y="{h + 15 + 20 * j}" fill="{colors[j % len(colors)]}">'
                   f'{name}{dashed}: {c["script"]}.py {" ".join(c["flags"])}</text>')
    return "\n".join(out + ["</svg>", ""])


def compare(args):
    tag = os.path.splitext(os.path.basename(args.data))[0]
    out = args.out or os.path.join("results", tag + ("-quick" if args.quick else ""))
    if args.curve or args.samplers:      # every curve in one folder shares the judge kept there
        out = os.path.dirname(os.path.abspath(args.out))
    runs = os.path.join(out, "runs")
    os.makedirs(runs, exist_ok=True)
    train_x, train_y = common.load_data(args.data, "train", args.data_dir)
    test_x, test_y = common.load_data(args.data, "test", args.data_dir)
    if train_y is None or test_y is None:
        raise common.UserError(f"compare.py needs labels (its judge is a classifier); {args.data} has none")
    num_classes = int(train_y.max()) + 1
    r = dict(command=args.command, machine=machine(), date=datetime.date.today().isoformat(),
             budget="15 steps (--quick)" if args.quick else f"{args.minutes:g} minutes", ddim_steps=args.ddim_steps)

    judge, real_feats, r["classifier"] = get_judge(args, out, train_x, train_y, test_x, test_y)
    if args.score:
        return score(args, judge, real_feats, test_x)
    if args.curve:
        return curve(args, judge, real_feats, test_x)
    if args.samplers:
        os.makedirs(args.out, exist_ok=True)
        return samplers(args, judge, real_feats, test_x)
    r["training"] = train_all(args, runs)
    r["likelihood"] = likelihoods(args, runs)
    with torch.no_grad():
        drawn = draw_all(args, runs, num_classes)
    r["parameters"] = {}
    for name, module in (("vae", vae), ("pixelcnn", pixelcnn), ("ldm", ldm), ("ddpm", ddpm),
                         ("ddpm-x0", ddpm)):
        model = module.load(os.path.join(runs, name))
        r["parameters"][name] = sum(p.numel() for p in model.parameters())

    n = args.num_samples
    real_ref = judge.embed(test_x[:n])
    real_edges = edge_strength(test_x[:1000])
    r["quality"], r["sampling"] = {}, {}
    floor_x, floor_y = train_x[:n], train_y[:n]
    for name, v in [("real", dict(images=floor_x, labels=floor_y.long()))] + list(drawn.items()):
        if v["images"] is not None:
            q = quality(judge, real_feats, real_ref, v["images"], v.get("labels"))
            q["edge_ratio"] = edge_strength(v["images"]) / real_edges
            r["quality"][name] = q
        if name != "real":
            r["sampling"][name] = dict(evals_per_image=v["evals"], seconds=v["seconds"], n_timed=v["n_timed"],
                                       seconds_per_100=v["seconds"] * 100 / v["n_timed"])
    r["timesteps"] = ddpm.load(os.path.join(runs, "ddpm")).cfg.timesteps
    r["verdicts"] = verdicts(r)
    common.write_metrics(out, r, "compare.json")
    titles = [("real", "real"), ("vae", "VAE"), ("pixelcnn", "PixelCNN"), ("ddpm", "DDPM"),
              ("ddpm-x0", "DDPM x0"), ("ldm", "LDM")]
    pics = [(title, (floor_x if key == "real" else drawn[key]["images"]).cpu()) for key, title in titles]
    common.write_png(os.path.join(out, "compare.png"), panels(pics, min(10, int(math.sqrt(n)))))
    report(args, r, out)
    print(f"compare: wrote {out}/compare.md, compare.json, compare.png")


# ----------------------------------------------------------------------------------------------

def main(argv=None):
    p = common.Parser(prog="compare.py", description=__doc__.strip().splitlines()[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--data", default="digits", help="a labelled data set (as in the model scripts)")
    a("--data-dir", default=None)
    a("--out", default=None, help="default results/<data>")
    a("--minutes", type=common.positive(float), default=4.0, help="training budget per model")
    a("--reuse", action="store_true", help="reuse the runs (and classifier) already in <out>")
    a("--quick", action="store_true", help="tiny models and a few steps: the pipeline in about a minute")
    a("--num-samples", type=common.positive(int), default=100, help="samples per model for quality and timing")
    a("--slow-images", type=common.positive(int), default=10,
      help="images timed for the slow samplers (DDPM ancestral, PixelCNN naive), scaled to 100")
    a("--eval-images", type=common.positive(int), default=50, help="test images for the likelihoods")
    a("--iw-samples", type=common.positive(int), default=1000, help="K of the VAE's importance-weighted bound")
    a("--ddim-steps", type=common.positive(int), default=50)
    a("--classifier-epochs", type=common.positive(int), default=12)
    a("--device", default="auto")
    a("--seed", type=int, default=0)
    a("--score", metavar="FILE.npz", default=None,
      help="only score a samples .npz written by a script (classifier features; trained first if needed)")
    a("--curve", choices=["ddpm", "ldm"], default=None,
      help="only this script's quality against training images seen, along one run (needs --out)")
    a("--at", type=common.positive(int), nargs="+", default=[300, 600, 900, 1200, 1800],
      help="--curve: the training steps at which to measure")
    a("--flags", default="", help="--curve: the script's training flags (one quoted string)")
    a("--precision", choices=["fp32", "bf16"], default="fp32",
      help="--curve: training precision; --samplers: sampling precision")
    a("--samplers", metavar="RUN", default=None,
      help="only the sampler table of a trained class-conditional ddpm.py or ldm.py run folder (needs --out)")
    a("--nfe", type=common.positive(int), nargs="+", default=[5, 10, 20, 50],
      help="--samplers: network evaluations per image to compare at")
    a("--guidance", type=float, default=1.0, help="--samplers: classifier-free guidance scale")
    args = p.parse_args(argv)
    if args.curve and not args.out:
        p.error("--curve needs --out (the curve's folder; the curves-<script>.svg plot is drawn beside it)")
    if args.samplers and not args.out:
        p.error("--samplers needs --out (the table's folder; the judge classifier is kept beside it)")
    args.command = "python compare.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.num_samples, args.slow_images, args.eval_images = 20, 2, 8
        args.iw_samples, args.ddim_steps, args.classifier_epochs = 20, 5, 1
    try:
        args.device = common.pick_device(args.device)
        compare(args)
    except common.UserError as e:
        p.exit(1, f"{p.prog}: error: {e}\n")
    except KeyboardInterrupt:
        p.exit(130, f"{p.prog}: interrupted; run again with --reuse to keep the finished models\n")


if __name__ == "__main__":
    main()
