"""The command line of every script, end to end on tiny data written by the tests; bad input
ends in one line; each model file works when copied alone."""
import json, math, os, re, shutil, subprocess, sys

import numpy as np
import pytest

import common
import pixelcnn
from conftest import write_idx
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {  # flags that make each model small and each command take seconds
    "ddpm": ["--width", "8", "--timesteps", "10", "--eval-images", "6", "--num-samples", "4", "--ddim-steps", "3",
             "--sampler", "ddpm"],   # Algorithm 2 (and its --chain picture); --ddim-steps: the old name
    "vae": ["--width", "8", "--latent", "4", "--iw-samples", "20", "--num-samples", "4"],
    "pixelcnn": ["--width", "8", "--layers", "2", "--num-samples", "2"],
    "ldm": ["--ae-width", "8", "--width", "8", "--ae-steps", "3", "--timesteps", "10", "--num-samples", "4",
            "--sample-steps", "3"],
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
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", x[sl, 0].numpy())
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", y[sl].numpy().astype(np.uint8))
    return str(d)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["ddpm", "vae", "pixelcnn", "ldm"])
def test_train_sample_eval(script, mnist_dir, tmp_path):
    out = str(tmp_path / "run")
    extra = ["--binarize"] if script in ("vae", "pixelcnn") else []
    extra += ["--chain"] if script == "ddpm" else []
    r = run(script, "--train", "--sample", "--eval", "--data", "mnist", "--data-dir", mnist_dir, "--out", out,
            "--steps", "3", "--batch-size", "8", "--conditional", *TINY[script], *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "step 3/3" in r.stdout and os.path.exists(os.path.join(out, "metrics.jsonl"))
    metrics = json.load(open(os.path.join(out, "eval.json")))
    if script != "ldm":                                 # every likelihood model reports nats and bits/dim
        assert metrics["bits_per_dim"] == pytest.approx(metrics["nll_nats"] / (784 * math.log(2)), rel=1e-9)
        assert metrics["conditional"] is True
    if script == "ddpm":                # --chain: Algorithm 2's chain; compare.py --restore scores restoration
        assert os.path.exists(os.path.join(out, "chain.png"))
        r = run("compare", "--restore", out, "--data", "mnist", "--data-dir", mnist_dir, "--eval-images", "4")
        assert r.returncode == 0, r.stderr[-2000:]
        restored = json.load(open(os.path.join(out, "restoration.json")))
        assert restored["factor"] == 4 and set(restored["denoising"]) == {"0.1", "0.2", "0.4"}
        assert all(v["blur_std_pixels"] in (0.5, 1, 2) and "psnr_blur" in v for v in restored["denoising"].values())
        assert restored["consistency_zero_shot"] < 1e-5                 # ILVR keeps the block means exactly
        for name in ("superres", "denoise", "inpaint"):
            assert os.path.exists(os.path.join(out, name + ".png"))
    samples = np.load(os.path.join(out, "samples.npz"))
    assert samples["images"].dtype == np.uint8 and samples["images"].shape[1:] == (1, 28, 28)
    n = len(samples["images"])                          # class-conditional: labels saved, balanced
    assert samples["labels"].tolist() == [i % 10 for i in range(n)]
    # resume: the finished run continues to its final step and stops there
    r = run(script, "--train", "--resume", "--data", "mnist", "--data-dir", mnist_dir, "--out", out,
            "--steps", "3", "--batch-size", "8", "--conditional", *TINY[script], *extra)
    assert r.returncode == 0, r.stderr[-2000:]



def test_super_resolution_command_line(mnist_dir, tmp_path, monkeypatch):
    """--task sr trains SR3 (its checkpoint rebuilds the 2-channel network alone); --sample
    enlarges test images (superres.png), --eval gives the bound on p(x | x downsampled) (with
    --null-label, through the "no class" label); compare.py --restore compares it with bilinear
    upsampling and, with --zero-shot RUN, with ILVR, and keeps the outputs for --score."""
    tiny = ["--data", "mnist", "--data-dir", mnist_dir, "--steps", "2", "--batch-size", "8", "--conditional",
            *TINY["ddpm"][:8]]
    gen, sr = str(tmp_path / "gen"), str(tmp_path / "sr")
    assert run("ddpm", "--train", "--out", gen, *tiny).returncode == 0
    r = run("ddpm", "--train", "--sample", "--eval", "--task", "sr", "--factor", "4", "--out", sr,
            "--num-samples", "4", "--sample-steps", "2", *tiny)
    assert r.returncode == 0, r.stderr[-2000:]
    import ddpm
    model = ddpm.load(sr)
    assert model.cfg.sr_factor == 4 and model.net.conv_in.in_channels == 2
    metrics = json.load(open(os.path.join(sr, "eval.json")))
    assert metrics["images"] == 6 and metrics["given_downsampled_by"] == 4 and metrics["conditional"] is True
    assert math.isfinite(metrics["nll_nats"]) and metrics["nll_nats"] > 0
    assert os.path.exists(os.path.join(sr, "superres.png"))
    assert np.load(os.path.join(sr, "samples.npz"))["images"].shape == (4, 1, 28, 28)
    r = run("ddpm", "--eval", "--null-label", "--out", sr, *tiny[:4])
    assert r.returncode == 0 and json.load(open(os.path.join(sr, "eval.json")))["conditional"] is False
    r = run("compare", "--restore", sr, "--zero-shot", gen, "--eval-images", "6", *tiny[:4])
    assert r.returncode == 0, r.stderr[-2000:]
    restored = json.load(open(os.path.join(sr, "restoration.json")))
    assert restored["images"] == 6 and restored["zero_shot_images"] == 6
    assert all(math.isfinite(restored[k]) for k in ("psnr_trained", "psnr_bilinear", "psnr_zero_shot",
                                                     "consistency_trained"))
    assert restored["consistency_zero_shot"] < 1e-5                  # ILVR keeps the block means exactly
    kept = np.load(os.path.join(sr, "sr_zero_shot.npz"))
    assert kept["images"].shape == (6, 1, 28, 28) and len(kept["labels"]) == 6
    assert os.path.exists(os.path.join(sr, "sr_trained.npz"))
    one_line_error(run("compare", "--restore", sr, "--zero-shot", sr, *tiny[:4]), "--zero-shot", "generative")
    # --null-label: the "no class" label, so the low-resolution input alone decides the digit. Two
    # training steps leave the zero-initialised last layer near 0, where no label shows in uint8
    # pixels, so these run in-process on the model with a random last layer.
    import compare
    real_load = ddpm.load

    def load_with_labels_that_matter(out, device="cpu"):
        model = real_load(out, device)
        torch.nn.init.normal_(model.net.conv_out.weight, std=0.5, generator=torch.Generator().manual_seed(1))
        return model
    monkeypatch.setattr(ddpm, "load", load_with_labels_that_matter)
    drawn = {}
    for flags in ([], ["--null-label"]):
        out = str(tmp_path / f"restore{len(flags)}")
        compare.main(["--restore", sr, "--out", out, "--eval-images", "6", "--device", "cpu", *tiny[:4], *flags])
        assert json.load(open(os.path.join(out, "restoration.json")))["null_label"] is bool(flags)
        drawn[len(flags)] = np.load(os.path.join(out, "sr_trained.npz"))
    assert not np.array_equal(drawn[0]["images"], drawn[1]["images"])     # the label was dropped
    assert np.array_equal(drawn[0]["labels"], drawn[1]["labels"])         # scored on the true digits


def one_line_error(r, *words, status=1):
    """Bad input ends in one line: exit status 2 for a wrong command line (argparse's), 1 for bad
    data, checkpoints or devices."""
    assert r.returncode == status, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize("script", ["ddpm", "vae", "pixelcnn", "ldm"])
def test_bad_flags_are_one_line_errors(script, tmp_path):
    """Each script's own paths (its train reading data, its sample loading a checkpoint); the
    flags every script parses the same way (common.make_parser, common.run) are checked once."""
    one_line_error(run(script, "--train", "--data", "nosuch"), "unknown data set")
    one_line_error(run(script, "--sample", "--out", str(tmp_path / "none")), "no checkpoint")
    if script != "ddpm":
        return
    one_line_error(run(script, "--train", "--steps", "-5"), "--steps", "must be > 0", status=2)
    one_line_error(run(script, "--train", "--batch-size", "many"), "--batch-size", status=2)
    one_line_error(run(script), "nothing to do", status=2)
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



def _gz(path, data):
    import gzip
    with gzip.open(path, "wb") as f:
        f.write(data)


def _raw(path):
    import gzip
    return gzip.open(path).read()


TRAIN_X, TRAIN_Y, TEST_X, TEST_Y = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                    "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
CORRUPTIONS = {   # what a damaged MNIST folder can hold -> (the file named, a word of the message)
    "train images missing": (lambda d: os.remove(d / TRAIN_X), TRAIN_X, "could not be downloaded"),
    "train labels missing": (lambda d: os.remove(d / TRAIN_Y), TRAIN_Y, "could not be downloaded"),
    "test images missing": (lambda d: os.remove(d / TEST_X), TEST_X, "could not be downloaded"),
    "test labels missing": (lambda d: os.remove(d / TEST_Y), TEST_Y, "could not be downloaded"),
    "train images cut short": (lambda d: _gz(d / TRAIN_X, _raw(d / TRAIN_X)[:-100]), TRAIN_X, "truncated"),
    "test labels cut short": (lambda d: _gz(d / TEST_Y, _raw(d / TEST_Y)[:-3]), TEST_Y, "truncated"),
    "train labels header only": (lambda d: _gz(d / TRAIN_Y, _raw(d / TRAIN_Y)[:6]), TRAIN_Y, "truncated"),
    "test images empty file": (lambda d: (d / TEST_X).write_bytes(b""), TEST_X, "truncated"),
    "train images not gzip": (lambda d: (d / TRAIN_X).write_bytes(_raw(d / TRAIN_X)), TRAIN_X, "gzip"),
    "test labels gzip stream cut": (lambda d: (d / TEST_Y).write_bytes((d / TEST_Y).read_bytes()[:25]),
                                    TEST_Y, "gzip"),
    "train images wrong magic": (lambda d: _gz(d / TRAIN_X, b"\x00\x00\x08\x04" + _raw(d / TRAIN_X)[4:]),
                                 TRAIN_X, "magic"),
    "train label 255": (lambda d: _gz(d / TRAIN_Y, _raw(d / TRAIN_Y)[:20] + b"\xff" + _raw(d / TRAIN_Y)[21:]),
                        TRAIN_Y, "label 255"),
    "test label count short": (lambda d: write_idx(d / TEST_Y, np.zeros(5, np.uint8)), "t10k", "do not match"),
    "train images and labels swapped": (lambda d: (os.replace(d / TRAIN_X, d / "tmp"), os.replace(d / TRAIN_Y, d / TRAIN_X),
                                                   os.replace(d / "tmp", d / TRAIN_Y)), "train", "do not match"),
    "test images of another size": (lambda d: write_idx(d / TEST_X, np.zeros((12, 32, 32), np.uint8)),
                                    "(1, 32, 32)", "(1, 28, 28)"),
}


def test_every_corruption_of_an_mnist_folder_is_one_line_and_exit_1(mnist_dir, tmp_path, monkeypatch, capsys):
    """15 ways an MNIST folder breaks (missing, truncated, not gzip, wrong magic, bad labels, files
    that do not match): `vae.py --train --eval` ends each in one line naming the file, exit
    status 1, never a traceback. In-process, offline (downloads fail as without a network)."""
    import urllib.request
    import vae

    def offline(*a, **k):
        raise OSError("no network in the tests")
    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    assert len(CORRUPTIONS) == 15
    for i, (name, (corrupt, named, word)) in enumerate(CORRUPTIONS.items()):
        d = tmp_path / f"data{i}"
        shutil.copytree(mnist_dir, d)
        corrupt(d)
        with pytest.raises(SystemExit) as e:
            vae.main(["--train", "--eval", "--data", "mnist", "--data-dir", str(d), "--out",
                      str(tmp_path / f"run{i}"), "--steps", "1", "--batch-size", "8", *TINY["vae"]])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 1 and len(err) == 1, (name, err)
        assert err[0].startswith("vae.py: error: ") and named in err[0] and word in err[0], (name, err)

def readme_snippets():
    """The python blocks of the README's "Use a model in your own code" section."""
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Use a model in your own code")[1].split("\n## ")[0]
    return [block.split("```")[0] for block in section.split("```python\n")[1:]]


def run_alone(code, files, tmp_path):
    """Run code in an empty folder holding only `files` copied from the repository."""
    for f in files:
        shutil.copy(os.path.join(ROOT, f), tmp_path)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH="", OMP_NUM_THREADS="2"))
    assert not os.path.exists(tmp_path / "common.py")
    return r


def test_readme_has_the_same_snippet_for_all_four():
    snippets = readme_snippets()
    firsts = [next(line for line in s.splitlines() if line.startswith("from ")) for s in snippets]
    assert firsts == ["from vae import VAE, Config", "from pixelcnn import PixelCNN, Config",
                      "from ddpm import DDPM, Config", "from ldm import LatentDiffusion, Config"]
    for s in snippets:                                  # the same shape: build, loss, backward, sample, nll
        for step in ("(Config(", "loss, logs = model.loss(x, y)", "loss.backward()", "model.sample(4, y[:4]",
                     "model.nll("):
            assert step in s, (step, s)


@pytest.mark.parametrize("index,files", [(0, ["vae.py"]), (1, ["pixelcnn.py"]), (2, ["ddpm.py"]),
                                         (3, ["ldm.py", "ddpm.py"])], ids=["vae", "pixelcnn", "ddpm", "ldm"])
def test_readme_snippet_runs_with_the_file_alone(index, files, tmp_path):
    code = readme_snippets()[index]
    check = ("\nassert images.shape == (4, 1, 28, 28) and images.min() >= -1 and images.max() <= 1"
             "\ntrained = [p for p in model.parameters() if p.requires_grad]"
             "\nassert sum(p.grad is not None for p in trained) > 0.9 * len(trained)"
             "\nassert torch.isfinite(loss) and isinstance(logs, dict)")
    if "nll(" in code and "NotImplementedError" not in code:
        check += "\nassert nats.shape == (len(nats),) and (nats > 0).all()"
    else:
        check += ("\ntry:\n    model.nll(x)\nexcept NotImplementedError:\n    pass"
                  "\nelse:\n    raise AssertionError('LDM has no likelihood')")
    r = run_alone(code + check, files, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]


def test_ddpm_with_a_foreign_network_labels_and_guidance(tmp_path):
    """ddpm.py copied alone drives a one-layer network that knows nothing of the DDPM: labels (the
    "no class" label num_classes included), label dropout at rate p_uncond, guidance, the bound."""
    code = """
import torch, torch.nn as nn
from ddpm import DDPM, Config

class OneLayer(nn.Module):          # f(x_t, t, y): a conv and a label embedding, no cfg attribute
    def __init__(self):
        super().__init__()
        self.conv, self.emb, self.seen = nn.Conv2d(1, 1, 3, padding=1), nn.Embedding(4, 1), []
    def forward(self, x, t, y):
        self.seen.append(y)
        return self.conv(x) + self.emb(y)[:, :, None, None]

torch.manual_seed(0)
net = OneLayer()
model = DDPM(Config(image_size=8, num_classes=3, timesteps=20, p_uncond=0.25), net=net)
x, y = torch.rand(4000, 1, 8, 8) * 2 - 1, torch.arange(4000) % 3
loss, logs = model.loss(x, y)
loss.backward()
seen = net.seen[-1]
dropped = (seen == 3).float().mean().item()
assert abs(dropped - 0.25) < 0.03, dropped                     # label dropout at p_uncond
assert torch.equal(seen[seen != 3], y[seen != 3])               # the others are the true labels
net.seen.clear()
images = model.sample(4, torch.tensor([0, 1, 2, 0]), sampler="ddim", steps=3, guidance=2.0)
assert images.shape == (4, 1, 8, 8)
assert sorted(set(net.seen[0].tolist())) == [0, 1, 2, 3]        # guided: conditional and "no class"
net.seen.clear()
model.sample(2, sampler="ddpm")                                 # no labels: the "no class" label
assert all((s == 3).all() for s in net.seen) and len(net.seen) == 20
assert model.nll(x[:2], y[:2]).shape == (2,)
print("ok")
"""
    r = run_alone(code, ["ddpm.py"], tmp_path)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["ddpm", "ldm"])
def test_two_processes_train_like_one_with_accum(script, mnist_dir, tmp_path):
    """torchrun, 2 gloo processes, global batch 8: one checkpoint (rank 0's), and the same weights as
    1 process with --accum 2 (the same 2 shards of each batch, seeded the same way). DDPM (with its
    EMA) and LDM (two stages, two checkpoints); vae.py and pixelcnn.py run the same common.fit, and
    the averaging itself is tested directly in test_common.py."""
    flags = ["--train", "--data", "mnist", "--data-dir", mnist_dir, "--steps", "3", "--batch-size", "8",
             "--log-every", "1e9", "--device", "cpu", "--precision", "fp32", "--memory-format", "nchw", *TINY[script]]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")   # auto would time bf16 and layouts in 1 process
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
             "--device", "cpu", "--precision", "fp32", "--memory-format", "nchw", *TINY["ddpm"]]
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
    assert "precision bf16 (--precision bf16)" in r.stdout                  # forced, whatever the CPU
    blob = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)     # weights, Adam, EMA: fp32
    assert all(v.dtype == torch.float32 for v in blob["model"].values() if v.is_floating_point())
    assert blob["precision"] == "bf16"
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



def test_precision_and_layout_follow_the_flags_are_said_and_kept_on_resume(mnist_dir, tmp_path):
    """auto says what it chose and why, from the device and the CPU's flags alone (no timing:
    no other precision line); --precision and --memory-format force theirs; the checkpoint
    records the run's and --resume keeps them whatever the new command line says."""
    out = str(tmp_path / "v")
    flags = ["--train", "--data", "mnist", "--data-dir", mnist_dir, "--out", out, "--batch-size", "8",
             "--log-every", "1e9", *TINY["vae"]]
    r = run("vae", *flags, "--steps", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    expected, why = common.choose_precision("auto", "cpu", False, common.cpu_flags())
    assert re.findall(r"^vae: precision .*$", r.stdout, re.M) == [
        f"vae: precision {expected} ({why}); evaluation in fp32"]
    blob = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert (blob["precision"], blob["memory_format"]) == (expected, "nchw")
    r = run("vae", *flags, "--steps", "1", "--precision", "fp32", "--memory-format", "channels-last")
    assert "precision fp32 (--precision fp32)" in r.stdout
    blob = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert (blob["precision"], blob["memory_format"]) == ("fp32", "channels-last")
    blob["total_steps"] = 2                                          # as if stopped after step 1
    torch.save(blob, os.path.join(out, "ckpt.pt"))
    r = run("vae", *flags, "--resume", "--precision", "bf16", "--memory-format", "nchw")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "precision fp32 and memory format channels-last (the run's)" in r.stdout
    blob = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert (blob["step"], blob["precision"], blob["memory_format"]) == (2, "fp32", "channels-last")


@pytest.mark.parametrize("script", ["ddpm", "pixelcnn"])
def test_the_same_command_twice_writes_the_same_losses(script, mnist_dir, tmp_path):
    """A run is a function of its flags, its seed and its device: the same training command
    (--precision auto, whatever this CPU makes of it) run twice writes the same loss on every
    line of metrics.jsonl, bit for bit."""
    losses = []
    for k in range(2):
        out = str(tmp_path / f"run{k}")
        r = run(script, "--train", "--data", "mnist", "--data-dir", mnist_dir, "--out", out,
                "--batch-size", "8", "--steps", "4", "--log-every", "1e-9", "--seed", "3",
                *TINY[script])
        assert r.returncode == 0, r.stderr[-2000:]
        with open(os.path.join(out, "metrics.jsonl")) as f:
            losses.append([(rec["step"], rec["loss"]) for rec in map(json.loads, f)])
    assert [s for s, _ in losses[0]] == [1, 2, 3, 4] and losses[0] == losses[1]


def test_vq_vae_command_line(mnist_dir, tmp_path):
    """vae.py --codebook K trains, samples and evaluates a VQ-VAE; its checkpoint rebuilds it;
    its eval.json holds the bound with the uniform prior (-ELBO = the bound: KL is h w log K);
    a negative K and a conditional VQ-VAE are one-line errors."""
    out = str(tmp_path / "vq")
    flags = ["--data", "mnist", "--data-dir", mnist_dir, "--out", out, "--batch-size", "8",
             "--width", "8", "--latent", "4", "--num-samples", "4", "--binarize"]
    r = run("vae", "--train", "--sample", "--eval", "--codebook", "8", "--steps", "3", *flags)
    assert r.returncode == 0, r.stderr[-2000:]
    import vae
    assert type(vae.load(out)).__name__ == "VQVAE"
    metrics = json.load(open(os.path.join(out, "eval.json")))
    assert metrics["nll_nats"] == metrics["elbo_nats"] and metrics["kl_nats"] == pytest.approx(49 * math.log(8))
    assert "uniform prior" in metrics["note"] and os.path.exists(os.path.join(out, "samples.png"))
    one_line_error(run("vae", "--train", "--codebook", "-1", *flags), "--codebook -1")
    one_line_error(run("vae", "--train", "--codebook", "8", "--conditional", *flags), "unconditional")


def test_a_pixelcnn_prior_over_vq_codes(mnist_dir, tmp_path):
    """pixelcnn.py --codes RUN trains a class-conditional prior over a VQ-VAE's codes, --sample
    decodes its draws through the VQ-VAE (a column per class), and --eval writes the two-stage
    bound: the VQ-VAE's reconstruction term plus the prior's exact NLL of the test codes; a run
    that is not a VQ-VAE is a one-line error."""
    vq, prior, plain = (str(tmp_path / n) for n in ("vq", "prior", "plain"))
    data = ["--data", "mnist", "--data-dir", mnist_dir, "--batch-size", "8"]
    r = run("vae", "--train", "--codebook", "8", "--binarize", "--steps", "3", "--width", "8",
            "--latent", "4", "--out", vq, *data)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("pixelcnn", "--train", "--sample", "--eval", "--codes", vq, "--conditional", "--steps", "3",
            "--out", prior, "--num-samples", "10", *TINY["pixelcnn"][:4], *data)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.load(open(os.path.join(prior, "eval.json")))
    assert metrics["nll_nats"] == pytest.approx(metrics["reconstruction_nats"] + metrics["prior_nats"], rel=1e-12)
    assert metrics["images"] == 12 and metrics["uniform_prior_nats"] == pytest.approx(49 * math.log(8))
    assert pixelcnn.load(prior).cfg.embed > 0               # codes have no order: learned vectors
    samples = np.load(os.path.join(prior, "samples.npz"))
    assert samples["images"].shape == (10, 1, 28, 28) and samples["labels"].tolist() == list(range(10))
    assert run("vae", "--train", "--steps", "1", "--width", "8", "--latent", "4", "--out", plain, *data).returncode == 0
    one_line_error(run("pixelcnn", "--train", "--codes", plain, "--out", prior, *data), "--codebook")
