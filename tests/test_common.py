"""common.py: data files, PNG, checkpoints, the training loop's resume. All offline."""
import gzip, hashlib, math, os, struct, types, zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import common
from conftest import write_idx


# ---------------------------------------------------------------- IDX files and downloads

@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 20), h=st.integers(1, 9), w=st.integers(1, 9), seed=st.integers(0, 2**31))
def test_idx_round_trip(tmp_path_factory, n, h, w, seed):
    d = tmp_path_factory.mktemp("idx")
    images = np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8)
    labels = images[:, 0, 0] % 10
    write_idx(d / "i.gz", images)
    write_idx(d / "l.gz", labels)
    assert np.array_equal(common.read_idx(d / "i.gz"), images)
    assert np.array_equal(common.read_idx(d / "l.gz"), labels)


def write_mnist(folder, n_train=30, n_test=12):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)


def test_load_mnist_from_folder(tmp_path):
    write_mnist(tmp_path)
    x, y = common.load_data("mnist", "test", str(tmp_path))
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.uint8
    assert y.tolist() == [i % 10 for i in range(12)] and y.dtype == torch.int64
    assert common.load_data("fashion-mnist", "train", str(tmp_path))[0].shape == (30, 1, 28, 28)


def test_train_limit_keeps_the_first_training_images_and_every_test_image(tmp_path):
    write_mnist(tmp_path)
    p = common.make_parser("x", "doc", 1, 1, 1.0)
    args = p.parse_args(["--data", "mnist", "--data-dir", str(tmp_path), "--train-limit", "7"])
    x, y = common.load_split(args, "train")
    full_x, full_y = common.load_data("mnist", "train", str(tmp_path))
    assert torch.equal(x, full_x[:7]) and torch.equal(y, full_y[:7])
    assert len(common.load_split(args, "test")[0]) == 12                    # the test split whole
    assert len(common.load_split(p.parse_args(["--data", "mnist", "--data-dir", str(tmp_path)]), "train")[0]) == 30


def test_truncated_file_is_a_clear_error(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((5, 4, 4), np.uint8))
    raw = gzip.open(tmp_path / "x.gz").read()
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(raw[:-7])
    with pytest.raises(common.UserError, match="truncated"):
        common.read_idx(tmp_path / "x.gz")
    (tmp_path / "y.gz").write_bytes(open(tmp_path / "x.gz", "rb").read()[:20])  # cut gzip stream
    with pytest.raises(common.UserError, match="gzip|truncated"):
        common.read_idx(tmp_path / "y.gz")


def test_corrupt_labels_are_refused_with_file_and_value(tmp_path):
    """MNIST-format labels outside 0..9 (a changed byte) end in an error naming the file, the
    position and the value; before, a 256-class model trained without a word."""
    write_mnist(tmp_path)
    labels = np.arange(30, dtype=np.uint8) % 10
    labels[17] = 255
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(common.UserError, match=r"train-labels-idx1-ubyte.gz: label 255 at position 17 .*0-9"):
        common.load_data("mnist", "train", str(tmp_path))
    assert common.load_data("mnist", "test", str(tmp_path))[1].max() == 9   # the intact split still loads


def test_wrong_magic_is_a_clear_error(tmp_path):
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(struct.pack(">II", 1234, 0))
    with pytest.raises(common.UserError, match="magic number 1234"):
        common.read_idx(tmp_path / "x.gz")


def test_download_checks_md5(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_idx(mirror / "t10k-labels-idx1-ubyte.gz", np.arange(7, dtype=np.uint8))
    good = hashlib.md5((mirror / "t10k-labels-idx1-ubyte.gz").read_bytes()).hexdigest()
    url = mirror.as_uri() + "/"
    monkeypatch.setitem(common.IDX_FILES, "mnist", ([url], {"t10k-labels-idx1-ubyte.gz": "0" * 32}))
    with pytest.raises(common.UserError, match="wrong MD5"):
        common.fetch("mnist", "t10k-labels-idx1-ubyte.gz", str(tmp_path / "a"))
    assert not os.listdir(tmp_path / "a")  # nothing half-downloaded is left behind
    monkeypatch.setitem(common.IDX_FILES, "mnist", ([url], {"t10k-labels-idx1-ubyte.gz": good}))
    path = common.fetch("mnist", "t10k-labels-idx1-ubyte.gz", str(tmp_path / "b"))
    assert common.read_idx(path).tolist() == list(range(7))


def test_offline_names_the_files(tmp_path, monkeypatch):
    monkeypatch.setitem(common.IDX_FILES, "mnist", ([(tmp_path / "nowhere").as_uri() + "/"],
                                                    common.IDX_FILES["mnist"][1]))
    with pytest.raises(common.UserError, match="t10k-images-idx3-ubyte.gz.*--data-dir"):
        common.load_data("mnist", "test", str(tmp_path / "empty"))


def test_npy_split_and_layouts(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", x)
    train, labels = common.load_data(str(tmp_path / "a.npy"), "train")
    test, _ = common.load_data(str(tmp_path / "a.npy"), "test")
    assert labels is None and train.shape == (18, 3, 8, 8) and test.shape == (2, 3, 8, 8)
    assert np.array_equal(test[1].permute(1, 2, 0).numpy(), x[-1])
    np.save(tmp_path / "f.npy", x.astype(np.float32))
    with pytest.raises(common.UserError, match="uint8"):
        common.load_data(str(tmp_path / "f.npy"), "train")


# ---------------------------------------------------------------- the built-in digits

def test_builtin_digits_deterministic_and_balanced():
    x1, y1 = common.synthetic_digits(500, seed=3)
    x2, y2 = common.synthetic_digits(500, seed=3)
    x3, _ = common.synthetic_digits(500, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert x1.shape == (500, 1, 28, 28) and x1.dtype == torch.uint8
    assert torch.bincount(y1, minlength=10).tolist() == [50] * 10
    ink = (x1.float() / 255).mean((1, 2, 3))
    assert ink.min() > 0.03 and ink.max() < 0.5                 # every image has a digit, none is a blob
    assert (x1[:, :, 0, :].float().mean() < 5) and (x1[:, :, :, 0].float().mean() < 5)  # dark borders
    # real variation: two images of the same class differ
    zeros = x1[y1 == 0].float()
    assert (zeros[0] - zeros[1]).abs().mean() > 10


def test_scaling_and_binarization():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(common.from_unit(common.to_unit(x)), x)
    assert common.to_unit(x).min() == -1 and common.to_unit(x).max() == 1
    assert torch.equal(common.binarize(x), (x > 127).float() * 2 - 1)
    big = x.expand(4000, 1, 16, 16)
    b = common.binarize(big, True, torch.Generator().manual_seed(0))
    assert set(b.unique().tolist()) == {-1.0, 1.0}                    # exactly -1 and 1
    ink = (b.mean(0).flatten() + 1) / 2
    assert torch.allclose(ink, x.flatten().float() / 255, atol=0.03)   # P(ink) = pixel / 255


# ---------------------------------------------------------------- PNG

def decode_png(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        n, tag = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(tag + body)
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, _, colour = header[:4]
    c = 3 if colour == 2 else 1
    raw = zlib.decompress(idat)
    rows = [raw[i * (w * c + 1):(i + 1) * (w * c + 1)] for i in range(h)]
    assert all(r[0] == 0 for r in rows)
    return np.frombuffer(b"".join(r[1:] for r in rows), np.uint8).reshape((h, w, c) if c == 3 else (h, w))


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 30), w=st.integers(1, 30), colour=st.booleans(), seed=st.integers(0, 1000))
def test_png_decodes_to_same_pixels(tmp_path_factory, h, w, colour, seed):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3) if colour else (h, w), dtype=np.uint8)
    path = tmp_path_factory.mktemp("png") / "a.png"
    common.write_png(path, img)
    assert np.array_equal(decode_png(path.read_bytes()), img)


def test_grid_and_npz(tmp_path):
    x = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    common.save_images(str(tmp_path), "s", x, nrow=3, labels=torch.arange(5))
    grid = decode_png((tmp_path / "s.png").read_bytes())
    assert grid.shape == (2 * 6 + 2, 3 * 6 + 2)
    assert np.array_equal(grid[2:6, 8:12], x[1, 0].numpy())       # image 1 sits in row 0, column 1
    z = np.load(tmp_path / "s.npz")
    assert np.array_equal(z["images"], x.numpy()) and z["labels"].tolist() == list(range(5))


# ---------------------------------------------------------------- checkpoints and resume

class Boom:
    def __reduce__(self):
        raise RuntimeError("disk full")


def test_interrupted_checkpoint_write_keeps_previous(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    common.save_checkpoint(path, "toy", {"w": 1}, model={"a": torch.ones(3)}, step=5)
    with pytest.raises(RuntimeError, match="disk full"):
        common.save_checkpoint(path, "toy", {"w": 1}, model={"a": torch.zeros(1000)}, step=6, junk=Boom())
    blob = common.load_checkpoint(path, "toy")
    assert blob["step"] == 5 and torch.equal(blob["model"]["a"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ckpt.pt"]                      # no temporary left behind


def test_checkpoint_of_another_model_or_shape(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    common.save_checkpoint(path, "vae", {}, model=torch.nn.Linear(3, 2).state_dict(), step=1)
    with pytest.raises(common.UserError, match="holds a 'vae' model"):
        common.load_checkpoint(path, "ddpm")
    blob = common.load_checkpoint(path, "vae")
    with pytest.raises(common.UserError, match="do not fit"):
        common.load_weights(torch.nn.Linear(4, 2), blob["model"], path)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(common.UserError, match="not a readable checkpoint"):
        common.load_checkpoint(str(tmp_path / "bad.pt"), "vae")
    torch.save(dict(format=1, model_name="vae"), tmp_path / "old.pt")   # an older version's file
    with pytest.raises(common.UserError, match="older version.*train it again"):
        common.load_checkpoint(str(tmp_path / "old.pt"), "vae")


def toy_args(out, steps, resume=False):
    p = common.make_parser("toy", "Toy.", steps=steps, batch_size=4, lr=0.05)
    argv = ["--out", str(out), "--steps", str(steps), "--seed", "1", "--device", "cpu",
            "--log-every", "1e9", "--ckpt-minutes", "1e-9"] + (["--resume"] if resume else [])
    return p.parse_args(argv)


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    data = torch.randint(0, 256, (10, 1, 2, 2), dtype=torch.uint8)

    def run(out, steps, resume=False, crash_at=None):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        calls = [0]

        def loss_fn(x, y):
            calls[0] += 1
            if calls[0] == crash_at:
                raise KeyboardInterrupt
            noise = torch.randn(len(x), 1)   # randomness inside the loss must repeat too
            return ((model(x.float().flatten(1) / 255) - noise) ** 2).mean(), {}
        common.fit(toy_args(out, steps, resume), "toy", model, data, loss_fn=loss_fn, ema_decay=0.9)
        return common.load_checkpoint(os.path.join(out, "ckpt.pt"), "toy")

    full = run(tmp_path / "a", 9)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", 9, crash_at=5)
    assert common.load_checkpoint(str(tmp_path / "b" / "ckpt.pt"), "toy")["step"] == 4
    resumed = run(tmp_path / "b", 9, resume=True)
    assert resumed["step"] == full["step"] == 9
    for k in full["model"]:
        assert torch.equal(full["model"][k], resumed["model"][k])
        assert torch.equal(full["ema"][k], resumed["ema"][k])


def test_resume_with_more_steps_is_the_longer_run(tmp_path):
    """--resume --steps N moves the end: 4 steps, then resumed to 9, equal 9 steps in one go
    (a constant learning rate, as ddpm.py's; the batches and seeds are functions of the step)."""
    data = torch.randint(0, 256, (10, 1, 2, 2), dtype=torch.uint8)

    def run(out, steps, resume=False):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        loss_fn = lambda x, y: (((model(x.float().flatten(1) / 255) - torch.randn(len(x), 1)) ** 2).mean(), {})
        common.fit(toy_args(out, steps, resume), "toy", model, data, loss_fn=loss_fn, ema_decay=0.9)
        return common.load_checkpoint(os.path.join(out, "ckpt.pt"), "toy")
    full = run(tmp_path / "a", 9)
    assert run(tmp_path / "b", 4)["step"] == 4
    longer = run(tmp_path / "b", 9, resume=True)
    assert longer["step"] == longer["total_steps"] == 9
    for k in full["model"]:
        assert torch.equal(full["model"][k], longer["model"][k])
        assert torch.equal(full["ema"][k], longer["ema"][k])


def test_adam_is_torchs_adam_whichever_kernel_runs_it():
    """common.adam (fused where this torch has the kernel) makes the same updates as the
    textbook one-tensor-at-a-time Adam with torch's defaults: 30 steps on a random quadratic."""
    torch.manual_seed(0)
    target = torch.randn(5, 3)
    start = torch.randn(5, 3)
    weights = [start.clone().requires_grad_() for _ in range(2)]
    opts = [common.adam([weights[0]], 0.01), torch.optim.Adam([weights[1]], lr=0.01, foreach=False)]
    for _ in range(30):
        for w, opt in zip(weights, opts):
            opt.zero_grad()
            ((w - target) ** 2 * torch.arange(1.0, 4.0)).sum().backward()
            opt.step()
    assert (weights[0] - start).abs().mean() > 0.1           # it moved (by 30 x lr at most)
    assert torch.allclose(weights[0], weights[1], atol=1e-6)


def test_resume_runs_this_torchs_adam_kernel_on_the_runs_moments(tmp_path):
    """A run saved with another Adam implementation (its optimizer state names the kernel, as
    runs from before common.adam do) resumes with this torch's choice, the saved moments and step
    count, and trains on."""
    data = torch.randint(0, 256, (10, 1, 2, 2), dtype=torch.uint8)
    model = torch.nn.Linear(4, 1)
    loss_fn = lambda x, y: (((model(x.float().flatten(1) / 255) - 1) ** 2).mean(), {})
    common.fit(toy_args(tmp_path, 3), "toy", model, data, loss_fn=loss_fn)
    path = tmp_path / "ckpt.pt"
    blob = torch.load(path, weights_only=True)
    for group in blob["optimizer"]["param_groups"]:
        group.update(fused=None, foreach=None)          # the one-tensor loop's flags
    torch.save(blob, path)
    run = common.Run(toy_args(tmp_path, 5, resume=True), "toy", model, 0.0, "ckpt.pt")
    chosen = common.adam([torch.zeros(1, requires_grad=True)], 0.1).defaults
    group = run.opt.param_groups[0]
    assert (group["fused"], group["foreach"]) == (chosen["fused"], chosen["foreach"])
    saved = blob["optimizer"]["state"][0]
    state = run.opt.state[model.weight]
    assert torch.equal(state["exp_avg"], saved["exp_avg"]) and float(state["step"]) == 3
    common.fit(toy_args(tmp_path, 5, resume=True), "toy", model, data, loss_fn=loss_fn)
    assert torch.load(path, weights_only=True)["step"] == 5


def test_preview_time_is_off_the_minutes_clock(tmp_path, monkeypatch):
    """What on_checkpoint spends (a preview grid) is not training time: a fake clock that jumps
    1000 s in every preview leaves the elapsed training time, and so --minutes, untouched."""
    clock = [0.0]

    def now():
        clock[0] += 1e-3
        return clock[0]
    monkeypatch.setattr(common.time, "time", now)

    def preview(model, ema, step):
        clock[0] += 1000.0
    data = torch.zeros(8, 1, 2, 2, dtype=torch.uint8)
    model = torch.nn.Linear(4, 1)
    loss_fn = lambda x, y: ((model(x.float().flatten(1)) ** 2).mean(), {})
    args = toy_args(tmp_path, 6)
    args.minutes = 1.0                              # 60 s: one preview alone would end the run
    common.fit(args, "toy", model, data, loss_fn=loss_fn, on_checkpoint=preview)
    blob = common.load_checkpoint(str(tmp_path / "ckpt.pt"), "toy")
    assert blob["step"] == 6 and blob["elapsed"] < 1.0


def test_batches_cover_each_epoch_once():
    seen = torch.cat([common.batch_indices(s, 4, 12, seed=0) for s in range(3)])
    assert sorted(seen.tolist()) == list(range(12))
    assert torch.equal(common.batch_indices(7, 5, 12, 0), common.batch_indices(7, 5, 12, 0))


def test_minutes_alone_trains_for_the_budget_and_steps_wins(tmp_path):
    p = common.make_parser("toy", "Toy.", steps=3, batch_size=4, lr=0.05)
    data = torch.zeros(8, 1, 2, 2, dtype=torch.uint8)
    model = torch.nn.Linear(4, 1)
    loss_fn = lambda x, y: ((model(x.float().flatten(1)) ** 2).mean(), {})

    def steps_run(argv):
        args = p.parse_args(argv + ["--out", str(tmp_path), "--log-every", "1e9", "--device", "cpu"])
        common.fit(args, "toy", model, data, loss_fn=loss_fn)
        return common.load_checkpoint(str(tmp_path / "ckpt.pt"), "toy")["step"]
    assert steps_run([]) == 3                                  # the script's default
    assert steps_run(["--minutes", "0.01"]) > 3               # 0.6 s of a tiny model: far more than 3 steps
    assert steps_run(["--minutes", "1", "--steps", "5"]) == 5  # --steps still ends it first


# ---------------------------------------------------------------- EMA and the gradient average

def test_ema_follows_its_recurrence():
    """shadow_k = d shadow_{k-1} + (1 - d) w_k for floats; integer buffers are copied."""
    model = torch.nn.BatchNorm1d(2)                      # float weights and an integer buffer
    ema = common.EMA(model, decay=0.9)
    expected = model.weight.detach().clone()
    for k in range(1, 6):
        with torch.no_grad():
            model.weight.fill_(float(k))
            model.num_batches_tracked.fill_(k)
        ema.update(model)
        expected = 0.9 * expected + 0.1 * k
        assert torch.allclose(ema.shadow["weight"], expected, atol=1e-6)
        assert ema.shadow["num_batches_tracked"].item() == k


def _average_in_process(rank, path, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    model = torch.nn.Linear(2, 1)
    model.weight.grad = torch.full_like(model.weight, float(rank + 1))   # rank 0: 1, rank 1: 2
    model.bias.grad = None                                                # a parameter without gradient
    model.conv = torch.nn.Conv2d(2, 2, 2).to(memory_format=torch.channels_last)
    model.conv.weight.grad = torch.arange(16.0).view(2, 2, 2, 2).contiguous(memory_format=torch.channels_last) * (rank + 1)
    model.conv.bias.grad = torch.zeros(2)
    loss = common.average_gradients(model, 10.0 * (rank + 1), 2)
    torch.save(dict(weight=model.weight.grad, bias=model.bias.grad, loss=loss, conv=model.conv.weight.grad,
                    conv_laid_out=model.conv.weight.grad.stride() == model.conv.weight.stride()), f"{out}{rank}.pt")
    dist.destroy_process_group()


def test_gradient_average_across_two_processes(tmp_path):
    """Two real gloo processes: every gradient becomes the mean over processes (1.5, not the sum
    3: Adam would hide a missing division, plain SGD would not), a missing one counts as zero,
    and each is laid out like its weight (a channels-last convolution's too)."""
    import torch.multiprocessing as mp
    mp.spawn(_average_in_process, args=(str(tmp_path / "rendezvous"), str(tmp_path / "r")), nprocs=2)
    for rank in (0, 1):
        r = torch.load(tmp_path / f"r{rank}.pt")
        assert torch.equal(r["weight"], torch.full((1, 2), 1.5))
        assert torch.equal(r["bias"], torch.zeros(1)) and r["loss"] == 15.0
        assert torch.equal(r["conv"], torch.arange(16.0).view(2, 2, 2, 2) * 1.5)
        assert r["conv_laid_out"]       # a channels-last weight gets a channels-last gradient (fused Adam)



def test_resume_accepts_a_run_saved_before_a_setting_existed(tmp_path):
    """A checkpoint whose config lacks a setting added since (its default then) resumes; a
    setting that really differs is refused."""
    import dataclasses

    @dataclasses.dataclass
    class Cfg:
        width: int = 4
        added: int = 0

    data = torch.randint(0, 256, (10, 1, 2, 2), dtype=torch.uint8)

    def run(steps, resume, cfg):
        model = torch.nn.Linear(4, 1)
        model.cfg = cfg
        loss_fn = lambda x, y: ((model(x.float().flatten(1)) ** 2).mean(), {})
        common.fit(toy_args(tmp_path, steps, resume), "toy", model, data, loss_fn=loss_fn)
    run(2, False, Cfg())
    path = tmp_path / "ckpt.pt"
    blob = torch.load(path, weights_only=True)
    del blob["config"]["added"]                        # as written by a version before `added`
    torch.save(blob, path)
    run(3, True, Cfg())
    assert torch.load(path, weights_only=True)["step"] == 3
    with pytest.raises(common.UserError, match="other settings"):
        run(4, True, Cfg(width=8))

def test_every_step_draws_new_noise(tmp_path):
    """fit reseeds torch at every step from (seed, step, shard): the random numbers a loss draws
    differ from step to step (and repeat for the same seed, as the resume test shows)."""
    model = torch.nn.Linear(4, 1)
    draws = []

    def loss_fn(x, y):
        draws.append(torch.randn(()).item())
        return (model(x.flatten(1)) ** 2).mean(), {}
    data = torch.zeros(8, 1, 2, 2, dtype=torch.uint8)
    common.fit(toy_args(tmp_path, 5), "toy", model, data, loss_fn=loss_fn)
    assert len(set(draws)) == 5



def test_data_noise_and_model_noise_are_separate_streams(tmp_path):
    """The stochastic binarization of each step's batch comes from a generator of its own, seeded
    shard_seed(seed, step, 0, data=True); the model's noise comes from torch's global generator
    seeded shard_seed(seed, step, 0), and is the same whether or not the data drew numbers first."""
    data = torch.randint(0, 256, (8, 1, 3, 3), dtype=torch.uint8)

    def run(binary):
        model, seen, noise = torch.nn.Linear(9, 1), [], []

        def loss_fn(x, y):
            seen.append(x.clone())
            noise.append(torch.rand(4))
            return (model(x.flatten(1)) ** 2).mean(), {}
        common.fit(toy_args(tmp_path / str(binary), 3), "toy", model, data, loss_fn=loss_fn,
                   transform=common.train_transform(binary))
        return seen, noise
    seen, noise = run(True)
    plain_seen, plain_noise = run(False)
    for step in range(3):
        idx = common.batch_indices(step, 4, len(data), 1)
        g = torch.Generator().manual_seed(common.shard_seed(1, step, 0, data=True))
        assert torch.equal(seen[step], common.binarize(data[idx], True, g))
        assert torch.equal(plain_seen[step], common.to_unit(data[idx]))
        assert torch.equal(noise[step], plain_noise[step])      # binarizing did not shift it
        torch.manual_seed(common.shard_seed(1, step, 0))
        assert torch.equal(noise[step], torch.rand(4))

# ---------------------------------------------------------------- precision and memory format

@pytest.mark.parametrize("requested,device,cuda_bf16,flags,expected", [
    ("auto", "cpu", False, ["avx2", "fma"], "fp32"),                        # AVX2 only: bf16 emulated
    ("auto", "cpu", False, ["avx512f", "avx512_bf16"], "bf16"),             # AVX512-BF16
    ("auto", "cpu", False, ["avx512f", "amx_tile", "amx_bf16"], "bf16"),    # AMX
    ("auto", "cpu", False, ["avx512f", "amx_tile"], "fp32"),                # AMX tiles, no bf16 unit
    ("auto", "cpu", False, [], "fp32"),                                     # flags unknown (not Linux)
    ("auto", "cuda", True, [], "bf16"), ("auto", "cuda", False, ["avx512_bf16"], "fp32"),
    ("auto", "mps", False, ["avx512_bf16"], "fp32"),
    ("fp32", "cpu", False, ["amx_bf16"], "fp32"), ("bf16", "cpu", False, ["avx2"], "bf16"),
    ("bf16", "cuda", False, [], "bf16")])
def test_precision_decision(requested, device, cuda_bf16, flags, expected):
    precision, why = common.choose_precision(requested, device, cuda_bf16, flags)
    assert precision == expected and why                  # and it says why


CL = torch.channels_last


def _conv_run(out, steps, memory_format, resume=False, seen=None):
    """fit on a tiny convolutional model, --memory-format as given; returns the checkpoint."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.SiLU(),
                                torch.nn.Conv2d(4, 1, 3, padding=1))
    data = torch.randint(0, 256, (12, 1, 6, 6), dtype=torch.uint8)

    def loss_fn(x, y):
        if seen is not None:
            seen.append(model[2].weight.is_contiguous(memory_format=CL))  # (1, 4, 3, 3): not both
        return ((model(x.float() / 255) - torch.randn_like(x.float())) ** 2).mean(), {}
    args = toy_args(out, steps, resume)
    args.memory_format = memory_format
    common.fit(args, "toy", model, data, loss_fn=loss_fn, ema_decay=0.9)
    return common.load_checkpoint(os.path.join(out, "ckpt.pt"), "toy")


def test_channels_last_trains_in_that_layout_and_computes_the_same_run(tmp_path):
    """--memory-format channels-last lays the convolutions out that way for the whole run, the
    checkpoint records it, and the run is the nchw run to rounding (a layout, not a change of
    arithmetic): 6 steps of Adam, EMA included."""
    seen, seen_nchw = [], []
    cl = _conv_run(tmp_path / "cl", 6, "channels-last", seen=seen)
    nchw = _conv_run(tmp_path / "nchw", 6, "nchw", seen=seen_nchw)
    assert seen == [True] * 6 and seen_nchw == [False] * 6 and cl["memory_format"] == "channels-last" and nchw["memory_format"] == "nchw"
    for part in ("model", "ema"):
        for k in nchw[part]:
            assert torch.allclose(cl[part][k], nchw[part][k], atol=1e-5), (part, k)
    assert max((nchw["model"][k] - _conv_run(tmp_path / "short", 5, "nchw")["model"][k]).abs().max()
               for k in nchw["model"]) > 1e-3          # the check can fail: one step moves the weights more


def test_resume_lays_the_saved_moments_out_like_the_weights(tmp_path):
    """torch.save keeps each tensor's layout, and torch's fused Adam reads a weight and its moments
    as flat memory. A channels-last run resumed from a checkpoint whose moments are in nchw (as a
    checkpoint rewritten by other code may be) keeps its layout and ends where the uninterrupted
    run ends."""
    full = _conv_run(tmp_path / "full", 6, "channels-last")
    _conv_run(tmp_path / "b", 3, "channels-last")
    path = tmp_path / "b" / "ckpt.pt"
    blob = torch.load(path, weights_only=True)
    assert any(not v.is_contiguous() for s in blob["optimizer"]["state"].values() for v in s.values()
               if torch.is_tensor(v) and v.dim() == 4)                  # saved channels-last
    for state in blob["optimizer"]["state"].values():
        for k, v in state.items():
            state[k] = v.contiguous() if torch.is_tensor(v) else v
    blob["total_steps"] = 6
    torch.save(blob, path)
    seen = []
    resumed = _conv_run(tmp_path / "b", 6, "nchw", resume=True, seen=seen)  # the run's layout wins
    assert seen == [True] * 3 and resumed["step"] == 6 and resumed["memory_format"] == "channels-last"
    for k in full["model"]:
        assert torch.allclose(full["model"][k], resumed["model"][k], atol=1e-6), k


@pytest.mark.parametrize("name", ["vae", "vae-binary", "pixelcnn", "ddpm", "ldm"])
def test_bf16_loss_at_step_0_is_the_fp32_loss(name):
    """The same batch, the same random draws: the loss under bf16 autocast (the networks only;
    likelihoods, schedules and weights stay fp32) is within 0.2% of the fp32 loss (measured: at most
    0.04%; a likelihood computed on the network's bf16 output is off by far more)."""
    import ddpm, ldm, pixelcnn, vae
    torch.manual_seed(0)
    images = common.synthetic_digits(16, seed=2)[0]
    x = common.binarize(images) if name == "vae-binary" else common.to_unit(images)
    y = torch.arange(16) % 10
    model = {"vae": lambda: vae.VAE(vae.Config(width=16, num_classes=10)),
             "vae-binary": lambda: vae.VAE(vae.Config(width=16, num_classes=10, likelihood="bernoulli")),
             "pixelcnn": lambda: pixelcnn.PixelCNN(pixelcnn.Config(width=16, layers=3, num_classes=10)),
             "ddpm": lambda: ddpm.DDPM(ddpm.Config(width=16, num_classes=10)),
             "ldm": lambda: ldm.LatentDiffusion(ldm.Config(ae_width=8, width=16, num_classes=10))}[name]()
    if name == "ddpm":
        torch.nn.init.normal_(model.net.conv_out.weight, std=0.05)   # not the zero-initialised output
    if name == "ldm":
        model.set_scale_factor(x)
        torch.nn.init.normal_(model.diffusion.net.conv_out.weight, std=0.05)
    losses = []
    for bf16 in (False, True):
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model.loss(x, y)
        assert loss.dtype == torch.float32
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=0.002)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_learning_rate_follows_warmup_then_its_schedule(tmp_path, schedule):
    """Step s (0-based) of a run of S steps trains at lr * min(1, (s + 1) / warmup), times
    (1 + cos(pi s / S)) / 2 under the cosine schedule: every step's rate, read back from the
    progress records in metrics.jsonl (one a step with --log-every near 0)."""
    import json
    args = toy_args(tmp_path, 10)
    args.warmup, args.log_every = 4, 1e-12
    model = torch.nn.Linear(1, 1)
    common.fit(args, "toy", model, torch.zeros(8, 1, 1, 1, dtype=torch.uint8), lr_schedule=schedule,
               loss_fn=lambda x, y: (((model(x.float().flatten(1)) - 1) ** 2).mean(), {}))
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    rates = {r["step"] - 1: r["lr"] for r in records}           # a record follows its step
    assert sorted(rates) == list(range(10))
    for s, lr in rates.items():
        expected = 0.05 * min(1.0, (s + 1) / 4)
        if schedule == "cosine":
            expected *= 0.5 * (1 + math.cos(math.pi * s / 10))
        assert lr == pytest.approx(expected, rel=1e-9, abs=1e-15), s


def test_two_training_steps_are_the_hand_written_steps(tmp_path):
    """common.fit against the loop written out by hand, twice: the step's learning rate (linear
    warm-up), its batch (batch_indices) and its noise (torch seeded by shard_seed), the loss's
    gradient, clipped to norm 1, one Adam step (Kingma & Ba 2015, Algorithm 1: bias-corrected
    moments, eps 1e-8), then the EMA of the new weights. Checked: the weights, Adam's moments and
    step count, and the EMA. The targets are large, so clipping bites on both steps."""
    data = torch.randint(0, 256, (10, 1, 2, 2), dtype=torch.uint8)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    w, b = model.weight.detach().clone().double(), model.bias.detach().clone().double()

    def loss_fn(x, y, w_=None, b_=None):
        noise = 30 * torch.randn(len(x), 1)             # the model's noise: from torch's stream
        x = x.flatten(1)                                 # in [-1, 1]
        out = model(x) if w_ is None else x.double() @ w_.T + b_
        return ((out - noise) ** 2).mean(), {}
    args = toy_args(tmp_path, 2)
    args.warmup, decay = 4, 0.9
    common.fit(args, "toy", model, data, loss_fn=loss_fn, ema_decay=decay)
    blob = common.load_checkpoint(os.path.join(tmp_path, "ckpt.pt"), "toy")

    m = [torch.zeros_like(w), torch.zeros_like(b)]
    v = [torch.zeros_like(w), torch.zeros_like(b)]
    ema = [w.clone(), b.clone()]
    for step in range(2):
        lr = args.lr * (step + 1) / args.warmup
        idx = common.batch_indices(step, args.batch_size, len(data), args.seed)
        torch.manual_seed(common.shard_seed(args.seed, step, 0))
        params = [w.clone().requires_grad_(), b.clone().requires_grad_()]
        loss, _ = loss_fn(common.to_unit(data[idx]), None, *params)   # fit's default transform
        grads = torch.autograd.grad(loss, params)
        norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
        assert norm > 1                                  # so the clipping is tested
        grads = [g / (norm + 1e-6) for g in grads]       # torch's clip_grad_norm_ to 1
        for k, g in enumerate(grads):
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.999 * v[k] + 0.001 * g ** 2
            m_hat, v_hat = m[k] / (1 - 0.9 ** (step + 1)), v[k] / (1 - 0.999 ** (step + 1))
            new = (w, b)[k] - lr * m_hat / (v_hat.sqrt() + 1e-8)
            w, b = (new, b) if k == 0 else (w, new)
        ema = [decay * e + (1 - decay) * p for e, p in zip(ema, (w, b))]
    for k, name in enumerate(("weight", "bias")):
        assert torch.allclose(blob["model"][name].double(), (w, b)[k], atol=1e-6), name
        assert torch.allclose(blob["ema"][name].double(), ema[k], atol=1e-6), name
        state = blob["optimizer"]["state"][k]
        assert float(state["step"]) == 2
        assert torch.allclose(state["exp_avg"].double(), m[k], atol=1e-7), name
        assert torch.allclose(state["exp_avg_sq"].double(), v[k], atol=1e-9), name
