"""The command line of every script, end to end on tiny data written by the tests; bad input
ends in one line; each model file works when copied alone."""
import json, math, os, shutil, subprocess, sys

import numpy as np
import pytest

import common
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {  # flags that make each model small and each command take seconds
    "ddpm": ["--width", "8", "--timesteps", "10", "--eval-images", "6", "--num-samples", "4", "--ddim-steps", "3"],
    "vae": ["--width", "8", "--latent", "4", "--iw-samples", "20", "--num-samples", "4"],
    "pixelcnn": ["--width", "8", "--layers", "2", "--num-samples", "2"],
    "ldm": ["--ae-width", "8", "--width", "8", "--ae-steps", "3", "--timesteps", "10", "--num-samples", "4",
            "--ddim-steps", "3"],
}


def run(script, *args, cwd=ROOT):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(cwd, script + ".py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """A 40 / 12 image MNIST-format folder (IDX files with labels) made of built-in digits."""
    d = tmp_path_factory.mktemp("mnist")
    x, y = common.synthetic_digits(52, seed=9)
    for prefix, sl in (("train", slice(0, 40)), ("t10k", slice(40, 52))):
        common.write_idx(d / f"{prefix}-images-idx3-ubyte.gz", x[sl, 0].numpy())
        common.write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", y[sl].numpy().astype(np.uint8))
    return str(d)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["ddpm", "vae", "pixelcnn", "ldm"])
def test_train_sample_eval(script, mnist_dir, tmp_path):
    out = str(tmp_path / "run")
    extra = ["--binarize"] if script in ("vae", "pixelcnn") else []
    r = run(script, "--train", "--sample", "--eval", "--data", "mnist", "--data-dir", mnist_dir, "--out", out,
            "--steps", "3", "--batch-size", "8", *TINY[script], *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "step 3/3" in r.stdout and os.path.exists(os.path.join(out, "metrics.jsonl"))
    metrics = json.load(open(os.path.join(out, "eval.json")))
    if "bits_per_dim" in metrics and "nll_nats" in metrics:
        assert metrics["bits_per_dim"] == pytest.approx(metrics["nll_nats"] / (784 * math.log(2)), rel=1e-9)
    samples = np.load(os.path.join(out, "samples.npz"))
    assert samples["images"].dtype == np.uint8 and samples["images"].shape[1:] == (1, 28, 28)
    if script in ("ddpm", "ldm"):                       # class-conditional: labels saved, balanced
        assert samples["labels"].tolist() == [0, 1, 2, 3]
    # resume: the finished run continues to its final step and stops there
    r = run(script, "--train", "--resume", "--data", "mnist", "--data-dir", mnist_dir, "--out", out,
            "--steps", "3", "--batch-size", "8", *TINY[script], *extra)
    assert r.returncode == 0, r.stderr[-2000:]


def one_line_error(r, *words):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize("script", ["ddpm", "vae", "pixelcnn", "ldm"])
def test_bad_flags_are_one_line_errors(script, tmp_path):
    one_line_error(run(script, "--train", "--steps", "-5"), "--steps", "must be > 0")
    one_line_error(run(script, "--train", "--batch-size", "many"), "--batch-size")
    one_line_error(run(script, "--train", "--data", "nosuch"), "unknown data set")
    one_line_error(run(script, "--sample", "--out", str(tmp_path / "none")), "no checkpoint")
    one_line_error(run(script), "nothing to do")
    if not torch.cuda.is_available():
        one_line_error(run(script, "--train", "--device", "cuda"), "cuda")


def test_missing_data_and_wrong_model_and_size(tmp_path, mnist_dir):
    one_line_error(run("ddpm", "--train", "--data", "mnist", "--data-dir", str(tmp_path / "empty")),
                   "train-images-idx3-ubyte.gz")
    out = str(tmp_path / "v")
    assert run("vae", "--train", "--data", "mnist", "--data-dir", mnist_dir, "--out", out, "--steps", "1",
               *TINY["vae"]).returncode == 0
    one_line_error(run("ddpm", "--sample", "--out", out), "'vae'")
    one_line_error(run("pixelcnn", "--eval", "--out", out), "'vae'")
    np.save(tmp_path / "small.npy", np.zeros((20, 12, 12), np.uint8))
    one_line_error(run("vae", "--eval", "--data", str(tmp_path / "small.npy"), "--out", out), "(1, 12, 12)", "(1, 28, 28)")
    with open(os.path.join(out, "ckpt.pt"), "r+b") as f:       # a corrupt checkpoint
        f.truncate(100)
    one_line_error(run("vae", "--eval", "--out", out), "corrupt")


@pytest.mark.parametrize("files,code", [
    (["ddpm.py"], "m = ddpm.UNet(ddpm.Config()); d = ddpm.GaussianDiffusion(); "
                  "x = d.ddim_sample(m, (1, 1, 28, 28), steps=2); print(tuple(x.shape))"),
    (["vae.py"], "m = vae.VAE(vae.Config()); print(tuple(m.sample(1).shape))"),
    (["pixelcnn.py"], "m = pixelcnn.AutoregressiveModel(pixelcnn.Config(image_size=4, layers=1, width=4)); "
                      "print(tuple(m.logits(torch.zeros(1, 1, 4, 4, dtype=torch.long)).shape[-2:]))"),
    (["ldm.py", "ddpm.py"], "m = ldm.LatentDiffusion(ldm.Config()); print(tuple(m.decode(torch.zeros(1, 4, 7, 7)).shape))"),
])
def test_model_file_works_copied_alone(files, code, tmp_path):
    for f in files:
        shutil.copy(os.path.join(ROOT, f), tmp_path)
    name = files[0][:-3]
    r = subprocess.run([sys.executable, "-c", f"import torch, {name}; {code}"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=""))
    assert r.returncode == 0, r.stderr[-1500:]
    assert "28, 28)" in r.stdout or "(4, 4)" in r.stdout
    assert not os.path.exists(tmp_path / "common.py")


@pytest.mark.slow
@pytest.mark.parametrize("script", ["ddpm", "vae", "pixelcnn", "ldm"])
def test_two_processes_train_like_one_with_accum(script, mnist_dir, tmp_path):
    """torchrun, 2 gloo processes, global batch 8: one checkpoint (rank 0's), and the same weights as
    1 process with --accum 2 (the same 2 shards of each batch, seeded the same way)."""
    flags = ["--train", "--data", "mnist", "--data-dir", mnist_dir, "--steps", "3", "--batch-size", "8",
             "--log-every", "1e9", "--device", "cpu", *TINY[script]]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    r1 = run(script, *flags, "--accum", "2", "--out", one)
    assert r1.returncode == 0, r1.stderr[-2000:]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                         os.path.join(ROOT, script + ".py"), *flags, "--out", two], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert r2.stdout.count("step 3/3") == (2 if script == "ldm" else 1)      # rank 0 alone logs
    assert sorted(f for f in os.listdir(two) if ".pt" in f) == sorted(f for f in os.listdir(one) if ".pt" in f)
    for f in (f for f in os.listdir(one) if f.endswith(".pt")):
        a = torch.load(os.path.join(one, f), weights_only=True)
        b = torch.load(os.path.join(two, f), weights_only=True)
        assert a["step"] == b["step"] == 3
        for part in ("model", "ema"):
            for k in (a[part] or {}):
                assert torch.allclose(a[part][k].float(), b[part][k].float(), atol=1e-6), (f, part, k)
    if script == "ddpm":   # the check can fail: without --accum the noise is drawn otherwise
        assert run(script, *flags, "--out", str(tmp_path / "plain")).returncode == 0
        a, c = (torch.load(os.path.join(d, "ckpt.pt"), weights_only=True) for d in (one, str(tmp_path / "plain")))
        assert max((a["model"][k].float() - c["model"][k].float()).abs().max() for k in a["model"]) > 1e-5


@pytest.mark.slow
def test_resume_under_torchrun(mnist_dir, tmp_path):
    """A 2-process run stopped after step 1 and resumed under torchrun ends where an uninterrupted
    run ends (1 process, --accum 2: the same shards). The stop is made by writing the planned total
    (3 steps) into the step-1 checkpoint, as an interruption would have left it; at step 0 the learning
    rate does not depend on the total, so the first step is the uninterrupted run's first step."""
    flags = ["--train", "--data", "mnist", "--data-dir", mnist_dir, "--batch-size", "8", "--log-every", "1e9",
             "--device", "cpu", *TINY["ddpm"]]
    full, two = str(tmp_path / "full"), str(tmp_path / "two")
    assert run("ddpm", *flags, "--accum", "2", "--steps", "3", "--out", full).returncode == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                os.path.join(ROOT, "ddpm.py"), *flags, "--out", two]
    r = subprocess.run(torchrun + ["--steps", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    path = os.path.join(two, "ckpt.pt")
    blob = torch.load(path, weights_only=True)
    assert blob["step"] == 1
    blob["total_steps"] = 3
    torch.save(blob, path)
    r = subprocess.run(torchrun + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("resumed from") == 1 and "step 3/3" in r.stdout      # rank 0 alone logs
    a, b = (torch.load(os.path.join(d, "ckpt.pt"), weights_only=True) for d in (full, two))
    assert a["step"] == b["step"] == 3
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.allclose(a[part][k].float(), b[part][k].float(), atol=1e-6), (part, k)


def test_bf16_training_falls_and_evaluation_stays_fp32(mnist_dir, tmp_path):
    out = str(tmp_path / "p")
    r = run("pixelcnn", "--train", "--data", "mnist", "--data-dir", mnist_dir, "--out", out, "--steps", "40",
            "--batch-size", "8", "--lr", "0.05", "--log-every", "1e-9", "--precision", "bf16", *TINY["pixelcnn"])
    assert r.returncode == 0, r.stderr[-2000:]
    losses = [json.loads(line)["loss"] for line in open(os.path.join(out, "metrics.jsonl"))]
    assert len(losses) == 40 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < 0.95 * np.mean(losses[:5])    # from ln 256 = 5.5 nats per sub-pixel, down
    # (40 steps, all inside the 200-step warm-up: 5.4 -> 5.0 here; the noise between steps is ~0.01)
    scores = []
    for precision in ("fp32", "bf16"):
        r = run("pixelcnn", "--eval", "--data", "mnist", "--data-dir", mnist_dir, "--out", out, "--precision", precision)
        assert r.returncode == 0, r.stderr[-2000:]
        scores.append(json.load(open(os.path.join(out, "eval.json"))))
    assert scores[0] == scores[1]    # evaluation ignores --precision: bit for bit the fp32 numbers


@pytest.mark.slow
def test_compiled_training_is_the_eager_run(mnist_dir, tmp_path):
    """--compile runs the loss through torch.compile (about 25 s to compile here) and trains the same
    weights as eager. The VAE's loss draws its reparameterization noise inside the compiled graph: with
    inductor's own random numbers (fallback_random off) the weights differ by ~6e-5 after 3 steps."""
    flags = ["--train", "--data", "mnist", "--data-dir", mnist_dir, "--steps", "3", "--batch-size", "8",
             "--log-every", "1e9", "--device", "cpu", "--binarize", *TINY["vae"]]
    eager, compiled = str(tmp_path / "eager"), str(tmp_path / "compiled")
    assert run("vae", *flags, "--out", eager).returncode == 0
    r = run("vae", *flags, "--compile", "--out", compiled)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "torch.compile: the first step took" in r.stdout and "step 3/3" in r.stdout
    a, b = (torch.load(os.path.join(d, "ckpt.pt"), weights_only=True) for d in (eager, compiled))
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
