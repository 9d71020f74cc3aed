"""bench.py: how fast the four scripts train and sample here: fp32 vs bf16, 1 vs 2 processes.

    python bench.py                 # about 8 minutes on 2 cores: results/bench.md, bench.json
    python bench.py --quick         # tiny models, a few seconds per run: checks the pipeline

Each training figure is a real run of the script's own command line (`--train` on the built-in
digits, default model flags, for --seconds of wall-clock time; 2 processes under torchrun with the
same global batch), read from its metrics.jsonl (median images/s after the first interval), with the
peak resident memory of the process.

Model FLOPs are counted from the layers, not measured:

* FLOPs = 2 x the multiply-accumulates of every Conv2d, Linear and attention product in one
  forward pass of what a training step runs (LDM: the latent U-Net; its encoder is run once, before
  training), counted with forward hooks on one image; normalisation, activations and optimizer
  arithmetic are left out;
* a training step costs 3 forward passes (the backward pass computes gradients for activations and
  for weights, each about one forward's work: Kaplan et al. 2020, sec. 2.1);
* the ceiling is this machine's fp32 matmul rate, measured in the same run (2048 x 2048 products).

`python bench.py --recommend` times one training step of each script's default network in each
precision the CPU runs natively and in both memory layouts, in turn on the same batch in one
process (so the machine's drift falls on all alike), and prints the `--precision` and
`--memory-format` flags that are fastest here. The scripts never time themselves: their defaults
follow from the device and its CPU flags alone.

`python bench.py --against DIR` times the scripts' training here and in another checkout of the
repository (`git worktree add DIR COMMIT`), one process, --rounds runs of each alternating
(here, there, there, here, ...), or with --together both at once on one thread each:
before-and-after figures for a change, from the same session.
"""

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn as nn

import common
import compare
import ddpm
import ldm
import pixelcnn
import vae

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = {
    "ddpm": ["--width", "8", "--timesteps", "20"],
    "vae": ["--width", "8", "--latent", "4"],
    "pixelcnn": ["--width", "8", "--layers", "2"],
    "ldm": ["--ae-width", "8", "--width", "8", "--timesteps", "20"],
}
VARIANTS = {"pixelcnn-masked": ["--arch", "pixelcnn"], "pixelcnn-attention": ["--attention", "1"]}


def matmul_tflops(dtype, n=2048, reps=3):
    """Median rate of n x n products. (Where bf16 has no fast kernel, 2048 would take minutes: pass
    a smaller n.)"""
    a = torch.randn(n, n).to(dtype)
    a @ a
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / sorted(times)[len(times) // 2] / 1e12


def train_step(model, opt, x, y, precision):
    """One training step (forward, backward, optimizer) of model.loss on (x, y), as a closure."""
    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model.loss(x, y)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return run


def write_table(args, stem, payload, lines):
    """<out>/<stem>.json (machine, payload) and <out>/<stem>.md (lines), both written atomically;
    the table printed."""
    os.makedirs(args.out, exist_ok=True)
    common.write_metrics(args.out, dict(machine=compare.machine(), **payload), stem + ".json")
    common.atomic_write(
        os.path.join(args.out, stem + ".md"), lambda f: f.write("\n".join(lines) + "\n"), "w"
    )
    print("\n".join(lines))


def interleaved_ab(*steps, reps):
    """(median seconds of each step): one warm-up call each, then reps rounds calling every step
    once in turn (a, b, a, b, ...), so a machine's drift in speed falls on all of them alike."""
    times = tuple([] for _ in steps)
    for i in range(reps + 1):
        for k, step in enumerate(steps):
            start = time.perf_counter()
            step()
            if i:
                times[k].append(time.perf_counter() - start)
    return tuple(sorted(t)[len(t) // 2] for t in times)


def recommend_flags(times, native_bf16, bf16_margin=1.1, layout_margin=1.05):
    """(precision, memory format) from {(precision, layout): seconds per step}: bf16 only where it
    is native and its faster layout is at least bf16_margin times faster than fp32's faster one
    (small networks can be slower in bf16 even there); then channels-last only if it is at least
    layout_margin times faster than nchw in that precision."""
    best = lambda p: min(times[p, f] for f in common.MEMORY_FORMATS)
    precision = "bf16" if native_bf16 and best("fp32") >= bf16_margin * best("bf16") else "fp32"
    fast = times[precision, "nchw"] >= layout_margin * times[precision, "channels-last"]
    return precision, "channels-last" if fast else "nchw"


def recommend(args):
    """--recommend: milliseconds per training step (forward, backward, common.adam) of each
    script's default network and batch, fp32 and (where the CPU has it natively) bf16, each in
    nchw and channels-last, interleaved on the same batch; then the --precision and
    --memory-format flags recommend_flags picks from them for this machine. (x: 8-bit noise as
    images; Gaussian latents for LDM's stage 2.)"""
    torch.manual_seed(0)
    q = args.quick
    nets = {"ddpm": (lambda: ddpm.DDPM(ddpm.Config(**(dict(width=8, timesteps=20) if q else {}))),
                     (32, 1, 28, 28)),
            "vae": (lambda: vae.VAE(vae.Config(**(dict(width=8, latent=4) if q else {}))),
                    (128, 1, 28, 28)),
            "pixelcnn": (lambda: pixelcnn.PixelCNN(pixelcnn.Config(
                **(dict(width=8, layers=2) if q else {}))), (16, 1, 28, 28)),
            "ldm": (lambda: ldm.LatentDiffusion(ldm.Config(
                **(dict(width=8, ae_width=8) if q else {}))).diffusion, (64, 4, 7, 7))}
    native = common.choose_precision("auto", "cpu", False, common.cpu_flags())[0] == "bf16"
    precisions = ("fp32", "bf16") if native or args.all_precisions else ("fp32",)
    reps = 3 if q else 20
    rows, L = [], ["# Training steps by precision and layout, and the flags to pass here", "",
                   f"Command: `python bench.py {' '.join(sys.argv[1:])}`  ",
                   f"Machine: {compare.machine()}  ",
                   f"Date: {datetime.date.today().isoformat()}; median of {reps} steps each, "
                   f"in turn", "", "| script | batch | ms per step: " + " | ".join(
                       f"{p} {f}" for p in precisions for f in common.MEMORY_FORMATS)
                   + " | flags to pass |", "|---|---|" + "---|" * (2 * len(precisions) + 1)]
    for name in args.models:
        build, shape = nets[name]
        x = torch.randn(shape) if name == "ldm" else common.to_unit(
            torch.randint(0, 256, shape, dtype=torch.uint8))
        ways = [(p, f) for p in precisions for f in common.MEMORY_FORMATS]
        steps = []
        for p, f in ways:
            torch.manual_seed(0)
            model = build().to(memory_format=common.MEMORY_FORMATS[f])
            steps.append(train_step(model, common.adam(model.parameters(), 1e-3), x, None, p))
        times = dict(zip(ways, interleaved_ab(*steps, reps=reps)))
        if "bf16" not in precisions:
            times.update({("bf16", f): math.inf for f in common.MEMORY_FORMATS})
        precision, layout = recommend_flags(times, native)
        flags = f"--precision {precision} --memory-format {layout}"
        rows.append(dict(script=name, batch=shape[0], flags=flags, **{
            f"{p}_{f}_s": times[p, f] for p, f in ways}))
        L.append(f"| {name}.py | {shape[0]} | " + " | ".join(
            f"{1e3 * times[w]:.1f}" for w in ways) + f" | `{flags}` |")
        print(L[-1], flush=True)
    L += ["", "bf16 only where it is native and at least 1.1x faster; channels-last only where at "
          "least 1.05x faster (bench.recommend_flags)."]
    write_table(args, "recommend", dict(reps=reps, native_bf16=native, rows=rows), L)


def against(args):
    """--against DIR: training images/s of each model here and in DIR. One process each, runs in
    the order here, there, there, here, here, ... so that a steady drift of the machine falls on
    both sides alike; or with --together both at once, one thread each, pinned to cores 0 and 1
    and swapped every round, so that even a quick drift does. The medians of each side, the
    median of the rounds' ratios and their geometric mean (over an even number of --together
    rounds, a difference between the two cores cancels in it)."""
    other = os.path.abspath(args.against)
    how = "at once, one thread each, cores swapped every round" if args.together else "alternating"
    rows, L = [], [
        "# Training images/s: this checkout against another",
        "",
        f"Command: `python bench.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {compare.machine()}  ",
        f"Date: {datetime.date.today().isoformat()}; here: {HERE}, there: {other}; "
        f"{args.rounds} runs of {args.seconds:g} s each side, {how}",
        "",
        "| model | precision | images/s here (median) | images/s there (median) | here / there, "
        "median of rounds (min - max) | geometric mean |",
        "|---|---|---|---|---|---|",
    ]
    for name in args.models:
        for precision in ("fp32",) + (() if args.no_bf16 else ("bf16",)):
            rates = {"here": [], "there": []}
            for r in range(args.rounds):
                sides = ("here", "there") if r % 2 == 0 else ("there", "here")
                def one(side):       # --together: the first side on core 0, the other on core 1
                    out = os.path.join(args.out, "against-runs", f"{name}-{precision}-{side}")
                    root = HERE if side == "here" else other
                    cpu = sides.index(side) if args.together else None
                    return train_run(
                        args, name, out, precision, 1, root, 1 if args.together else None, cpu
                    )[0]
                if args.together:
                    with ThreadPoolExecutor(2) as pool:
                        done = dict(zip(sides, pool.map(one, sides)))
                else:
                    done = {side: one(side) for side in sides}
                for side in sides:
                    rates[side].append(done[side])
            ratios = [a / b for a, b in zip(rates["here"], rates["there"])]
            med = {k: statistics.median(v) for k, v in rates.items()}
            # the geometric mean: over an even number of rounds, the cores' difference cancels
            gmean = math.exp(statistics.fmean(math.log(q) for q in ratios))
            rows.append(
                dict(
                    model=name,
                    precision=precision,
                    **rates,
                    ratio=statistics.median(ratios),
                    geometric_mean=gmean,
                )
            )
            L.append(
                f"| {name} | {precision} | {med['here']:.0f} | {med['there']:.0f} | "
                f"{statistics.median(ratios):.3f} ({min(ratios):.3f} - {max(ratios):.3f}) | "
                f"{gmean:.3f} |"
            )
            print(L[-1], flush=True)
    write_table(args, "against", dict(here=HERE, there=other, together=args.together, rows=rows), L)


def forward_flops(module, fn):
    """2 x multiply-accumulates of Conv2d, Linear and ddpm.Attention run by fn() inside `module`."""
    macs = [0]

    def hook(m, inputs, out):
        if isinstance(m, nn.Conv2d):
            macs[0] += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            macs[0] += out.numel() * m.in_features
        elif isinstance(m, ddpm.Attention):            # q k^T and (weights) v: 2 x B x (HW)^2 x C
            b, c, h, w = out.shape
            macs[0] += 2 * b * (h * w) ** 2 * c
        elif isinstance(m, pixelcnn.Attention):        # per head: q k^T (dk), weights v (width)
            b, c, h, w = out.shape
            macs[0] += b * (h * w) ** 2 * m.heads * (m.dk + c)
    kinds = (nn.Conv2d, nn.Linear, ddpm.Attention, pixelcnn.Attention)
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        fn()
    for h in handles:
        h.remove()
    return 2 * macs[0]


def train_run(args, name, out, precision, procs, root=HERE, threads=None, cpu=None):
    flags = [
        "--train",
        "--out",
        out,
        "--precision",
        precision,
        "--log-every",
        str(args.log_every),
        "--ckpt-minutes",
        "1000",
        "--device",
        "cpu",
        "--seed",
        "0",
        "--minutes",
        str(args.seconds / 60),
    ]
    script = name.split("-")[0]                   # pixelcnn-attention: pixelcnn.py --attention 1
    flags += (TINY[script] if args.quick else []) + VARIANTS.get(name, [])
    if name == "ldm":  # stage 1 as short as possible: the figure is stage 2's
        flags += ["--ae-steps", "5"]
    launcher = (
        [sys.executable]
        if procs == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(procs),
        ]
    )
    cmd = launcher + [os.path.join(root, script + ".py")] + flags
    print("bench: " + " ".join(cmd[1:]), flush=True)
    if os.path.exists(os.path.join(out, "metrics.jsonl")):
        os.remove(os.path.join(out, "metrics.jsonl"))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    peak = run_measured(cmd, f"{name}.py under bench", quiet=True, env=env, cpu=cpu)
    return compare.train_rates(out)[-1], peak


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


def flops_and_sampling(name, out, quick):
    """(parameters, FLOPs per training image, sampling images/s, sampler, PixelCNN's naive
    sampler's images/s) from the run's checkpoint, through the model's own loss and sample."""
    name = name.split("-")[0]
    module = {"ddpm": ddpm, "vae": vae, "pixelcnn": pixelcnn, "ldm": ldm}[name]
    model = module.load(out)
    x = common.to_unit(common.synthetic_digits(1, seed=0)[0])         # (1, 1, 28, 28) in [-1, 1]
    if name == "pixelcnn" and model.cfg.levels == 2:
        x = x.sign()
    classes = getattr(model.cfg, "num_classes", 0)
    y = torch.zeros(1, dtype=torch.long) if classes else None
    counted = model.diffusion if name == "ldm" else model   # LDM: its encoder runs once, before
    loss = (
        (lambda: model.latent_loss(model.moments(x), y))
        if name == "ldm"
        else (lambda: model.loss(x, y))
    )
    flops = forward_flops(counted, loss)
    n = {"vae": 1000, "ldm": 100}.get(name, 4 if quick else 20)
    labels = torch.arange(n) % classes if classes else None
    kwargs = {"ddpm": dict(sampler="ddim", steps=50, guidance=1.0)}.get(name, {})
    what = {
        "ddpm": "DDIM 50 steps, guidance 1",
        "vae": "decoder",
        "pixelcnn": "cached (fast) sampler" if getattr(model.cfg, "arch", "") == "gated" else
                    "naive sampler: the original has no cached one",
        "ldm": "DDIM 50 steps, guidance 1",
    }[name]
    start = time.time()
    with torch.no_grad():
        model.sample(n, labels, **kwargs)
    rate, naive = n / (time.time() - start), None
    if name == "pixelcnn" and model.cfg.arch == "gated":   # the reference sampler, as many images
        start = time.time()
        model.sample(n, labels, naive=True)
        naive = n / (time.time() - start)
    return sum(p.numel() for p in model.parameters()), flops, rate, what, naive


def main(argv=None):
    p = common.Parser(prog="bench.py", description=__doc__.strip().splitlines()[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", choices=["ddpm", "vae", "pixelcnn", "ldm", *VARIANTS],
                   default=["ddpm", "vae", "pixelcnn", "ldm"],
                   help="pixelcnn-masked, pixelcnn-attention: pixelcnn.py with --arch pixelcnn "
                        "or --attention 1 (not for --recommend or --against)")
    p.add_argument(
        "--seconds",
        type=common.positive(float),
        default=30.0,
        help="wall-clock time of each training run",
    )
    p.add_argument("--log-every", type=common.positive(float), default=3.0)
    p.add_argument(
        "--processes",
        type=common.positive(int),
        default=2,
        help="the data-parallel run's process count",
    )
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 runs")
    p.add_argument("--out", default="results", help="writes <out>/bench.md and bench.json")
    p.add_argument("--quick", action="store_true", help="tiny models, 3 s runs")
    p.add_argument("--recommend", action="store_true",
                   help="only each script's training step by precision and layout, interleaved, "
                        "and the flags to pass on this machine: <out>/recommend.md and .json")
    p.add_argument("--all-precisions", action="store_true",
                   help="--recommend: time bf16 even where it is not native (slow)")
    p.add_argument(
        "--against",
        metavar="DIR",
        help="only training images/s, this checkout against the one in DIR (e.g. `git worktree add "
        "DIR COMMIT`), runs alternating: <out>/against.md and against.json",
    )
    p.add_argument(
        "--rounds", type=common.positive(int), default=5, help="--against: runs of each side"
    )
    p.add_argument(
        "--together",
        action="store_true",
        help="--against: run both sides at once, one thread each on its own core (a 2-core "
        "machine's drift cancels)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.log_every = 3.0, 0.5
    try:
        if (args.recommend or args.against) and set(args.models) & set(VARIANTS):
            raise common.UserError(f"--models {' '.join(VARIANTS)}: only for the default bench")
        if args.against and not all(
            os.path.isfile(os.path.join(args.against, m + ".py")) for m in args.models
        ):
            raise common.UserError(
                f"--against {args.against}: no checkout of this repository there "
                f"(needs {', '.join(m + '.py' for m in args.models)}); make one with "
                f"`git worktree add {args.against} COMMIT`"
            )
        against(args) if args.against else recommend(args) if args.recommend else bench(args)
    except common.UserError as e:
        p.exit(1, f"{p.prog}: error: {e}\n")


def bench(args):
    n = 256 if args.quick else 2048
    ceiling = {
        "fp32": matmul_tflops(torch.float32, n),
        "bf16": matmul_tflops(torch.bfloat16, n // 2),
    }
    print(
        f"bench: matmul ceiling fp32 {ceiling['fp32']:.3f} TFLOP/s, bf16 {ceiling['bf16']:.4f} "
        f"TFLOP/s"
    )
    rows = {}
    for name in args.models:
        runs = os.path.join(args.out, "bench-runs", name)
        r = rows[name] = {}
        r["fp32"], r["peak_mb"] = train_run(args, name, runs + "-fp32", "fp32", 1)
        if not args.no_bf16:
            r["bf16"], _ = train_run(args, name, runs + "-bf16", "bf16", 1)
        if args.processes > 1:
            r["ddp"], r["ddp_peak_mb"] = train_run(
                args, name, runs + "-ddp", "fp32", args.processes
            )
        r["params"], r["flops"], r["sample_per_s"], r["sampler"], r["naive_per_s"] = \
            flops_and_sampling(name, runs + "-fp32", args.quick)
        r["train_tflops"] = 3 * r["flops"] * r["fp32"] / 1e12
        print(f"bench: {name}: {json.dumps(r)}", flush=True)
    cpu = compare.machine()
    flags = common.cpu_flags()
    bf16_flags = [f for f in flags if "bf16" in f or f.startswith("amx")] or ["none"]
    auto, why = common.choose_precision("auto", "cpu", False, flags)
    L = [
        f"# Training and sampling speed",
        "",
        f"Command: `python bench.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {cpu}; bf16-related CPU flags: {' '.join(bf16_flags)}  ",
        f"`--precision auto` by the flags here: **{auto}** ({why})  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        f"Matmul ceiling measured in this run (fp32 {n} x {n}, bf16 {n // 2} x {n // 2}): fp32 "
        f"{ceiling['fp32']:.3f} TFLOP/s, bf16 {ceiling['bf16']:.4f} TFLOP/s",
        "",
        f"| model | parameters | GFLOP per training image | fp32 images/s | model TFLOP/s (% of "
        f"fp32 ceiling) | bf16 images/s (speed-up) | "
        f"{max(args.processes, 2)} processes images/s (speed-up) | "
        f"peak MB (1 process) | sampling images/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        bf = f"{r['bf16']:.0f} ({r['bf16'] / r['fp32']:.2f}x)" if "bf16" in r else "-"
        dp = f"{r['ddp']:.0f} ({r['ddp'] / r['fp32']:.2f}x)" if "ddp" in r else "-"
        L.append(
            f"| {name} | {r['params'] / 1e6:.2f}M | {3 * r['flops'] / 1e9:.2f} | {r['fp32']:.0f} | "
            f"{r['train_tflops']:.3f} ({100 * r['train_tflops'] / ceiling['fp32']:.0f}%) | {bf} | "
            f"{dp} | {r['peak_mb']:.0f} | {r['sample_per_s']:.1f} ({r['sampler']}) |"
        )
    L += [
        "",
        "LDM: stage 2 (the latent U-Net on precomputed q(z|x) moments). FLOPs: see bench.py's "
        "docstring.",
        "",
    ] + [f"{name}: the naive sampler (the whole network per sub-pixel) draws "
         f"{r['naive_per_s']:.3f} images/s; the cached one is "
         f"{r['sample_per_s'] / r['naive_per_s']:.0f}x faster." for name, r in rows.items()
         if r["naive_per_s"]]
    os.makedirs(args.out, exist_ok=True)
    common.write_metrics(
        args.out,
        dict(
            ceiling_tflops=ceiling,
            machine=cpu,
            cpu_bf16_flags=bf16_flags,
            auto_precision=auto,
            rows=rows,
        ),
        "bench.json",
    )
    common.atomic_write(os.path.join(args.out, "bench.md"), lambda f: f.write("\n".join(L)), "w")
    print("\n".join(L))


if __name__ == "__main__":
    main()
