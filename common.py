"""Plumbing shared by the four model scripts: data sets, image files, checkpoints, progress lines,
the training loop and the one command line. The model halves of pixelcnn.py, ddpm.py, vae.py and
ldm.py never import this file, so each of them can be copied into another project on its own.

Conventions written once here:
  * images are uint8 tensors shaped (N, C, H, W), 0 = background, 255 = ink;
  * `to_unit` maps them to floats in [-1, 1] (the range of DDPM), `from_unit` back;
  * labels are int64 class indices, or None for a data set without classes.
"""
import argparse, gzip, hashlib, json, math, os, pickle, struct, sys, tarfile, time, urllib.request, zlib
import numpy as np
import torch
import torch.distributed as dist

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "genmodels")


class UserError(Exception):
    """A problem with the user's input: printed as one line, never as a traceback."""


# ----------------------------------------------------------------------------------------------
# Data: built-in digits, IDX files (MNIST, Fashion-MNIST), CIFAR-10 batches, a user's .npy array

def _arc(cx, cy, rx, ry, a0, a1, n):
    """n+1 points on an ellipse from angle a0 to a1 (degrees; y points down, as in an image)."""
    a = np.radians(np.linspace(a0, a1, n + 1))
    return list(zip(cx + rx * np.cos(a), cy + ry * np.sin(a)))

# Each digit is a few strokes (polylines) in a box of [-1, 1]^2, drawn like a pen would.
_STROKES = {
    0: [_arc(0, 0, .42, .72, -90, 270, 16)],
    1: [[(-.22, -.45), (.08, -.75), (.02, .75)]],
    2: [_arc(0, -.33, .40, .40, 190, 375, 7) + [(-.42, .75), (.48, .75)]],
    3: [_arc(0, -.38, .38, .36, 205, 450, 8), _arc(0, .34, .42, .40, -90, 155, 8)],
    4: [[(.15, -.75), (-.45, .25), (.48, .25)], [(.25, -.35), (.25, .75)]],
    5: [[(.42, -.75), (-.28, -.75), (-.33, -.08)] + _arc(0, .32, .42, .42, -130, 150, 9)],
    6: [[(.30, -.75), (-.10, -.38)] + _arc(0, .34, .38, .40, 200, 560, 12)],
    7: [[(-.45, -.75), (.45, -.75), (-.08, .75)]],
    8: [_arc(0, -.40, .32, .34, 90, 450, 12), _arc(0, .36, .40, .40, -90, 270, 12)],
    9: [_arc(0, -.36, .38, .38, 0, 360, 12), [(.38, -.36), (.26, .75)]],
}


def synthetic_digits(n, seed=0):
    """n handwritten-style digits (28x28, classes balanced), the same for the same seed.

    Not MNIST: each digit is drawn from a few pen strokes, then slanted, scaled, rotated,
    shifted, wobbled by a smooth random displacement and rendered with a random pen width.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    py, px = torch.meshgrid(torch.arange(28.), torch.arange(28.), indexing="ij")
    px, py = px.reshape(1, 1, 784), py.reshape(1, 1, 784)
    images = torch.empty(n, 784)
    for digit, strokes in _STROKES.items():
        seg = torch.tensor([[p, q] for s in strokes for p, q in zip(s[:-1], s[1:])], dtype=torch.float32)
        idx = (labels == digit).nonzero().flatten()
        m = len(idx)
        u = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(m, *shape, generator=g)
        pts = seg.reshape(1, -1, 2).expand(m, -1, -1)                      # (m, 2S, 2) in [-1, 1]
        phase, freq = u(0, 6.3, 1, 2), u(1.5, 3.5, 1, 2)                      # elastic wobble
        pts = pts + u(-.07, .07, 1, 2) * torch.sin(freq * pts.flip(-1) + phase)
        rot, slant = u(-.18, .18, 1), u(-.35, .35, 1)
        scale, aspect = u(.80, 1.08, 1), u(.80, 1.15, 1)
        x, y = pts[..., 0] * aspect, pts[..., 1]
        x = x - slant * y                                                     # slant: x shifts with height
        x, y = x * torch.cos(rot) - y * torch.sin(rot), x * torch.sin(rot) + y * torch.cos(rot)
        x, y = [v * 10.5 * scale + 13.5 + u(-1.8, 1.8, 1) for v in (x, y)]   # to pixels, shifted
        ax, ay, bx, by = [v.unsqueeze(-1) for v in (x[:, 0::2], y[:, 0::2], x[:, 1::2], y[:, 1::2])]
        abx, aby = bx - ax, by - ay                                           # (m, S, 1) segments a -> b
        inv = 1 / (abx * abx + aby * aby).clamp_min(1e-6)
        width = u(.9, 2.3, 1)
        for i in range(0, m, 200):                                           # chunks keep memory small
            c = slice(i, i + 200)
            dx, dy = px - ax[c], py - ay[c]                                   # (m, S, 784)
            t = ((dx * abx[c] + dy * aby[c]) * inv[c]).clamp_(0, 1)           # nearest point on segment
            d2 = (dx - t * abx[c]).square_() + (dy - t * aby[c]).square_()
            dist = d2.amin(1).sqrt_()                                         # (m, 784) to nearest stroke
            images[idx[c]] = (1.6 * (width[c] - dist) + .5).clamp(0, 1)
    return (images * 255).round().to(torch.uint8).reshape(n, 1, 28, 28), labels


IDX_FILES = {  # name: (mirror URLs, {file: official MD5})
    "mnist": (["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
              {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
               "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
               "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
               "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
    "fashion-mnist": (["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
                      {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                       "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                       "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                       "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
    "cifar10": (["https://www.cs.toronto.edu/~kriz/"],
                {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}),
}
DATASETS = ["digits", "mnist", "fashion-mnist", "cifar10", "<file>.npy"]


def md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(name, filename, data_dir):
    """Path of a data set's file in data_dir; downloaded there (MD5-checked) when absent.
    Files already present are used as they are if they parse (a user may hold a custom copy)."""
    path = os.path.join(data_dir, filename)
    if os.path.exists(path):
        return path
    mirrors, sums = IDX_FILES[name]
    os.makedirs(data_dir, exist_ok=True)
    for url in mirrors:
        try:
            tmp = path + ".part"
            urllib.request.urlretrieve(url + filename, tmp)
        except OSError:
            continue
        if md5(tmp) != sums[filename]:
            os.remove(tmp)
            raise UserError(f"download of {url + filename} has the wrong MD5 (expected {sums[filename]}); try again later")
        os.replace(tmp, path)
        return path
    raise UserError(f"{name}: {filename} is not in {data_dir} and could not be downloaded (offline?); "
                    f"put the files {', '.join(sums)} there, or pass --data-dir FOLDER")


def read_idx(path):
    """Read a gzip IDX file (MNIST format): magic 2049 = labels (N,), 2051 = images (N, H, W)."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path} is not a readable gzip file ({e}); delete it and download it again")
    if len(data) < 8:
        raise UserError(f"{path} is truncated; delete it and download it again")
    magic, n = struct.unpack(">II", data[:8])
    if magic not in (2049, 2051):
        raise UserError(f"{path} has magic number {magic}, not 2049 (labels) or 2051 (images): not an IDX file")
    shape = (n,) if magic == 2049 else (n,) + struct.unpack(">II", data[8:16])
    offset = 8 if magic == 2049 else 16
    if len(data) != offset + math.prod(shape):
        raise UserError(f"{path} holds {len(data) - offset} values but its header promises {math.prod(shape)}: "
                        f"the file is truncated or corrupt; delete it and download it again")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def write_idx(path, array):
    """Write a uint8 array as gzip IDX (the inverse of read_idx; used by the tests)."""
    array = np.asarray(array, np.uint8)
    header = struct.pack(">II", 2049 if array.ndim == 1 else 2051, len(array)) + b"".join(
        struct.pack(">I", d) for d in array.shape[1:])
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def load_data(name, split, data_dir=None):
    """Images as uint8 (N, C, H, W) and labels as int64 (N,) or None, for a data set and a split."""
    if split not in ("train", "test"):
        raise ValueError(split)
    if name == "digits":
        return synthetic_digits(60000, seed=0) if split == "train" else synthetic_digits(10000, seed=1)
    if name.endswith(".npy"):
        return _load_npy(name, split)
    if name not in IDX_FILES:
        raise UserError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    data_dir = data_dir or os.path.join(CACHE, name)
    if name == "cifar10":
        return _load_cifar10(data_dir, split)
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(fetch(name, f"{prefix}-images-idx3-ubyte.gz", data_dir))
    labels = read_idx(fetch(name, f"{prefix}-labels-idx1-ubyte.gz", data_dir))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{data_dir}: the {prefix} image and label files do not match (swapped or corrupt?)")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _load_cifar10(data_dir, split):
    folder = os.path.join(data_dir, "cifar-10-batches-py")
    if not os.path.isdir(folder):
        with tarfile.open(fetch("cifar10", "cifar-10-python.tar.gz", data_dir)) as tar:
            tar.extractall(data_dir, filter="data")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for n in names:
        try:
            with open(os.path.join(folder, n), "rb") as f:
                batch = pickle.load(f, encoding="bytes")  # the official format is a pickle: only open official files
        except (OSError, pickle.UnpicklingError, EOFError) as e:
            raise UserError(f"cannot read CIFAR-10 batch {n} in {folder}: {e}")
        xs.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[b"labels"], np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _load_npy(path, split):
    """A user's uint8 array (N, H, W), (N, C, H, W) or (N, H, W, C); the last 10% is the test split."""
    if not os.path.exists(path):
        raise UserError(f"no such file: {path}")
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise UserError(f"{path} is not a readable .npy array: {e}")
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise UserError(f"{path} must hold uint8 images shaped (N, H, W) or (N, C, H, W); got {x.dtype} {x.shape}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    n_test = max(1, len(x) // 10)
    x = x[:-n_test] if split == "train" else x[-n_test:]
    return torch.from_numpy(np.ascontiguousarray(x)), None


def binarize(x, generator=None):
    """uint8 -> {0, 1} floats: stochastic (ink probability = pixel/255, as in Salakhutdinov &
    Murray 2008) when a generator is given, else the fixed threshold 127."""
    if generator is None:
        return (x > 127).float()
    return torch.bernoulli(x.float() / 255, generator=generator)


def to_unit(x):    # uint8 in {0..255} -> float in [-1, 1]
    return x.float() / 127.5 - 1


def from_unit(x):  # float in [-1, 1] -> uint8
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# ----------------------------------------------------------------------------------------------
# Pictures: PNG with zlib and struct only, and a .npz of the raw samples beside every grid

def write_png(path, image):
    """image: uint8 array (H, W) grey or (H, W, 3) colour."""
    image = np.ascontiguousarray(np.asarray(image, np.uint8))
    h, w = image.shape[:2]
    colour = 2 if image.ndim == 3 else 0
    raw = b"".join(b"\x00" + image[i].tobytes() for i in range(h))  # filter type 0 on every row
    chunk = lambda tag, data: struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    _atomic_write(path, lambda f: f.write(png), "wb")


def make_grid(images, nrow, pad=2):
    """uint8 (N, C, H, W) -> one uint8 picture (rows of nrow images), grey (H, W) or colour (H, W, 3)."""
    images = torch.as_tensor(images)
    n, c, h, w = images.shape
    ncol = math.ceil(n / nrow)
    grid = torch.full((c, ncol * (h + pad) + pad, nrow * (w + pad) + pad), 128, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = images[i]
    return grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).numpy()


def save_images(out, name, images, nrow, labels=None):
    """Write <out>/<name>.png (a grid) and <out>/<name>.npz (images uint8 (N, C, H, W), labels)."""
    os.makedirs(out, exist_ok=True)
    images = torch.as_tensor(images).cpu()
    write_png(os.path.join(out, name + ".png"), make_grid(images, nrow))
    arrays = {"images": images.numpy()}
    if labels is not None:
        arrays["labels"] = torch.as_tensor(labels).cpu().numpy()
    _atomic_write(os.path.join(out, name + ".npz"), lambda f: np.savez_compressed(f, **arrays), "wb")
    return os.path.join(out, name + ".png")


# ----------------------------------------------------------------------------------------------
# Checkpoints: one self-describing file, written atomically, loaded without running code

FORMAT = 1


def _atomic_write(path, write, mode):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(path, model_name, config, **state):
    """state: model, optimizer, ema (state dicts), step, elapsed, ... (tensors and plain values only)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    blob = dict(format=FORMAT, model_name=model_name, config=dict(config), **state)
    _atomic_write(path, lambda f: torch.save(blob, f), "wb")


def load_checkpoint(path, model_name):
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {path}; train first (--train) or point --out at a run folder")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}); it may be corrupt")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{path} is not a checkpoint of this project (format {FORMAT})")
    if blob.get("model_name") != model_name:
        raise UserError(f"{path} holds a {blob.get('model_name')!r} model, not {model_name!r}; "
                        f"use {blob.get('model_name')}.py or another --out")
    return blob


def load_weights(module, state, path):
    """load_state_dict with a one-line error when the shapes or names do not match."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip() if str(e).strip() else "mismatch"
        raise UserError(f"{path}: the weights do not fit this model ({first[:160]})")


def load_model(args, name, build, ckpt="ckpt.pt"):
    """Rebuild a model from the checkpoint in --out alone (build: config dict -> module), with
    its EMA weights when the run kept them. Returns the model (eval mode) and the checkpoint."""
    path = os.path.join(args.out, ckpt)
    blob = load_checkpoint(path, name)
    model = build(blob["config"])
    load_weights(model, blob.get("ema") or blob["model"], path)
    return model.to(args.device).eval(), blob


class EMA:
    """Exponential moving average of the weights, used for sampling (Ho et al. 2020, App. B)."""

    def __init__(self, model, decay):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model):
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v, 1 - self.decay)
            else:
                self.shadow[k].copy_(v)


# ----------------------------------------------------------------------------------------------
# The training loop shared by all four scripts

def batch_indices(step, batch_size, n, seed):
    """Indices of batch `step`: epochs are seeded permutations, so any step can be recomputed
    (a resumed run sees exactly the batches of an uninterrupted one)."""
    pos = torch.arange(step * batch_size, (step + 1) * batch_size)
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in pos.div(n, rounding_mode="floor").unique().tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        here = pos.div(n, rounding_mode="floor") == epoch
        out[here] = perm[pos[here] % n]
    return out


UNBOUNDED = 10**12  # the step count of a run limited by --minutes alone


class Progress:
    """A line every few seconds (step/total, loss, images/s, elapsed, ETA) and <out>/metrics.jsonl."""

    def __init__(self, name, total, minutes, out, every=5.0, start_step=0, start_elapsed=0.0):
        self.name, self.total, self.budget, self.every = name, total, (minutes or 0) * 60, every
        self.path = os.path.join(out, "metrics.jsonl")
        self.t0 = time.time() - start_elapsed
        self.last_t, self.last_step, self.losses = time.time(), start_step, []

    def elapsed(self):
        return time.time() - self.t0

    def fraction(self, step):  # how far the run is: by steps, or by the time budget if that ends first
        return max(step / self.total, self.elapsed() / self.budget if self.budget else 0.0)

    def update(self, step, loss, batch_size, lr, force=False):
        self.losses.append(loss)
        now = time.time()
        if now - self.last_t < self.every and not force:
            return
        rate = (step - self.last_step) * batch_size / max(now - self.last_t, 1e-9)
        frac = self.fraction(step)
        eta = self.elapsed() * max(1 - frac, 0.0) / max(frac, 1e-9)
        loss = sum(self.losses) / len(self.losses)
        clock = lambda s: time.strftime("%H:%M:%S", time.gmtime(s))
        total = "" if self.total >= UNBOUNDED else f"/{self.total}"
        print(f"{self.name} | step {step}{total} | loss {loss:.4f} | {rate:.0f} img/s | "
              f"elapsed {clock(self.elapsed())} | eta {clock(eta)}", flush=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(step=step, loss=loss, images_per_s=rate, lr=lr, elapsed=self.elapsed())) + "\n")
        self.last_t, self.last_step, self.losses = now, step, []


def autocast(args):
    """bf16 autocast for --precision bf16 (weights and optimizer state stay fp32)."""
    return torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.precision == "bf16")


def shard_seed(seed, step, shard):
    """The torch seed of one shard of one step; shard 0 of a 1-process run keeps seed * 1000003 + step."""
    return seed * 1_000_003 + step + shard * 1_000_000_007


def fit(args, name, config, model, loss_fn, images, labels, ckpt="ckpt.pt", ema_decay=0.0,
        lr_schedule="constant", warmup=200, grad_clip=1.0, on_checkpoint=None):
    """Adam on loss_fn(x uint8 (B, C, H, W), y (B,) or None) -> (loss, dict of floats).

    Every step reseeds torch with (seed, step): together with batch_indices this makes a run
    resumed from a checkpoint (model, optimizer, EMA, step, clock) repeat the uninterrupted run.
    lr: linear warm-up, then constant or cosine decay over the run (steps or --minutes).

    Data parallel (under torchrun) and --accum: each step's global batch of --batch-size images is
    cut into world x accum equal shards (strided), shard s seeded with shard_seed(seed, step, s);
    process r runs shards r*accum .. r*accum+accum-1, and the gradients are averaged over all
    shards (one all-reduce per step), so 2 processes give what 1 process with --accum 2 gives.
    Rank 0 alone logs, previews and writes checkpoints; every rank holds the same weights.
    """
    device = torch.device(args.device)
    rank, world, accum = getattr(args, "rank", 0), getattr(args, "world", 1), getattr(args, "accum", 1)
    shards = world * accum
    if args.batch_size % shards:
        raise UserError(f"--batch-size {args.batch_size} must be a multiple of processes x --accum = {shards}")
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    if world > 1:  # the same starting weights everywhere, whatever each process built
        for t in model.state_dict().values():
            dist.broadcast(t, 0)
    ema = EMA(model, ema_decay) if ema_decay else None
    path = os.path.join(args.out, ckpt)
    # --steps wins; --minutes alone trains for the whole budget; neither: the script's default steps
    total = args.steps or (UNBOUNDED if args.minutes else args.default_steps)
    step, elapsed, minutes = 0, 0.0, args.minutes
    if args.resume:
        blob = load_checkpoint(path, name)
        if blob["config"] != dict(config):
            raise UserError(f"{path} was trained with other settings {blob['config']}; resume with the same flags")
        load_weights(model, blob["model"], path)
        opt.load_state_dict(blob["optimizer"])
        if ema:
            ema.shadow = {k: v.to(device) for k, v in blob["ema"].items()}
        step, elapsed, total, minutes = blob["step"], blob["elapsed"], blob["total_steps"], blob["minutes"]
        if rank == 0:
            print(f"{name}: resumed from {path} at step {step}/{total}")
    os.makedirs(args.out, exist_ok=True)
    progress = Progress(name, total, minutes, args.out, args.log_every, step, elapsed)
    last_save = time.time()
    params = [p for p in model.parameters() if p.requires_grad]

    def save():
        if rank == 0:
            save_checkpoint(path, name, config, model=model.state_dict(), optimizer=opt.state_dict(),
                            ema=ema.shadow if ema else None, step=step, total_steps=total, minutes=minutes,
                            elapsed=progress.elapsed(), data=args.data)
            if on_checkpoint:
                on_checkpoint(model, ema, step)

    def clock():
        """(stop?, fraction of the run done): rank 0's clock decides for every process."""
        frac = progress.fraction(step)
        state = torch.tensor([float(bool(minutes) and progress.elapsed() > minutes * 60), frac], dtype=torch.float64)
        if world > 1:
            dist.broadcast(state, 0)
        return bool(state[0]), float(state[1])

    compute, compile_errors = loss_fn, ()
    if getattr(args, "compile", False):
        # --compile: the whole loss (network, noise, likelihood; forward, and so backward) through
        # torch.compile. fallback_random draws random numbers with torch's own generator, as eager
        # does, so a compiled run is the eager run (to float rounding) and --resume still repeats it.
        # The scripts' losses break the graph where they seed a generator and read floats for the
        # log; dynamo's notes on those breaks are silenced unless TORCH_LOGS asks for them.
        import logging
        import warnings
        from torch._inductor import config as inductor_config
        inductor_config.fallback_random = True
        if "TORCH_LOGS" not in os.environ:
            torch._logging.set_logs(dynamo=logging.ERROR)
            warnings.filterwarnings("ignore", module=r"torch\._dynamo")
        compute, compile_errors = torch.compile(loss_fn), (torch._dynamo.exc.TorchDynamoException,)
    compile_start = time.time() if compile_errors else None   # to report how long compiling took

    model.train()
    while step < total:
        stop, frac = clock()
        if stop:
            break
        batch = batch_indices(step, args.batch_size, len(images), args.seed)
        lr = args.lr * min(1.0, (step + 1) / warmup)
        if lr_schedule == "cosine":
            lr *= 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for k in range(accum):
            shard = rank * accum + k
            torch.manual_seed(shard_seed(args.seed, step, shard))
            idx = batch[shard::shards]
            x = images[idx].to(device)
            y = labels[idx].to(device) if labels is not None else None
            try:
                with autocast(args):
                    loss, _ = compute(x, y)
                (loss / accum).backward()
            except compile_errors as e:
                first = (str(e).strip().splitlines() or [""])[0][:160]
                raise UserError(f"--compile failed ({type(e).__name__}: {first}); train without --compile")
            loss_sum += loss.item() / accum
        if world > 1:  # average the gradients (and the logged loss) over the processes: one all-reduce
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch.cat([g.flatten() for g in grads] + [torch.tensor([loss_sum], device=device, dtype=grads[0].dtype)])
            dist.all_reduce(flat)
            flat /= world
            offset = 0
            for p, g in zip(params, grads):
                p.grad = flat[offset:offset + g.numel()].view_as(p).clone()
                offset += g.numel()
            loss_sum = float(flat[-1])
        if not math.isfinite(loss_sum):   # checked after the all-reduce: every process stops together
            raise UserError(f"{name}: the loss became {loss_sum} at step {step}; try a smaller --lr "
                            f"or --precision fp32, and --resume from the last checkpoint")
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if ema:
            ema.update(model)
        step += 1
        if rank == 0:
            if compile_start:
                print(f"{name}: torch.compile: the first step took {time.time() - compile_start:.0f} s (compiling)")
                compile_start = None
            progress.update(step, loss_sum, args.batch_size, lr)
        if time.time() - last_save > args.ckpt_minutes * 60:
            save()
            last_save = time.time()
    if progress.losses and rank == 0:  # the last partial interval
        progress.update(step, progress.losses.pop(), args.batch_size, lr, force=True)
    save()
    if rank == 0:
        print(f"{name}: saved {path} at step {step}")
    if world > 1:
        dist.barrier()   # nobody reads the checkpoint before rank 0 has written it
    return ema


# ----------------------------------------------------------------------------------------------
# The one command line

class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number" if kind is float else f"{text!r} is not a whole number")
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def make_parser(name, doc, steps, batch_size, lr, binarize=False, eval_images=None):
    p = Parser(prog=f"{name}.py", description=doc.strip().splitlines()[0],
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--train", action="store_true", help="train (then write samples and a checkpoint to --out)")
    a("--sample", action="store_true", help="write sample grids (.png) and raw samples (.npz) to --out")
    a("--eval", action="store_true", help="score the test split; writes <out>/eval.json")
    a("--data", default="digits", help=f"data set: {', '.join(DATASETS)} ('digits' is built in, not MNIST)")
    a("--data-dir", default=None, help=f"folder with the data set's standard files (default {CACHE}/<data>)")
    a("--out", default=f"runs/{name}", help="run folder: checkpoint, samples, metrics")
    a("--steps", type=positive(int), default=None,
      help=f"training steps (default {steps}; with --minutes and no --steps, as many as the budget allows)")
    a("--minutes", type=positive(float), default=None, help="stop training after this wall-clock budget")
    p.set_defaults(default_steps=steps)
    a("--batch-size", type=positive(int), default=batch_size)
    a("--lr", type=positive(float), default=lr, help="peak learning rate (Adam)")
    a("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    a("--precision", choices=["fp32", "bf16"], default="fp32",
      help="bf16 autocast for training (evaluation is always fp32)")
    a("--compile", action="store_true",
      help="torch.compile the training loss (25-70 s to compile; no reliable gain on the 2-core CPU measured: see the README)")
    a("--seed", type=int, default=0)
    a("--resume", action="store_true", help="continue the run in --out to its final step")
    a("--num-samples", type=positive(int), default=100, help="images to draw with --sample")
    a("--eval-images", type=positive(int), default=eval_images, help="score only the first N test images (default: all)")
    a("--log-every", type=positive(float), default=5.0, help="seconds between progress lines")
    a("--ckpt-minutes", type=positive(float), default=2.0, help="minutes between checkpoints")
    a("--accum", type=positive(int), default=1,
      help="gradient accumulation: each step's batch in this many shards per process (what as many processes give)")
    if binarize:
        a("--binarize", action="store_true", help="binarized data with a Bernoulli likelihood (stochastic "
          "binarization for training, one fixed-seed binarization of the test split for --eval)")
    return p


def pick_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: MPS is not available here; use --device cpu")
    return name


def init_distributed(args):
    """Under torchrun (WORLD_SIZE > 1): join the process group (gloo on CPU, nccl on CUDA, one GPU
    per process) and return (rank, world size); otherwise (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        args.device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")   # one progress log: rank 0's (errors still reach stderr)
    return dist.get_rank(), world


def run(parser, argv, train, sample, evaluate):
    """Parse the command line and run train, then sample, then eval; bad input ends in one line.
    Under torchrun every process trains its shard; rank 0 alone then samples and evaluates."""
    args = parser.parse_args(argv)
    try:
        if not (args.train or args.sample or args.eval):
            raise UserError("nothing to do: pass --train, --sample and/or --eval")
        args.device = pick_device(args.device)
        args.rank, args.world = init_distributed(args)
        torch.manual_seed(args.seed)
        if args.train:
            train(args)
        if args.rank == 0:
            for wanted, fn in ((args.sample, sample), (args.eval, evaluate)):
                if wanted:
                    fn(args)
    except UserError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{parser.prog}: interrupted; continue with the same command and --resume\n")
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def load_split(args, split, shape=None):
    """The data set named on the command line; shape (C, H, W) is checked against a model's."""
    images, labels = load_data(args.data, split, args.data_dir)
    if shape is not None and tuple(images.shape[1:]) != tuple(shape):
        raise UserError(f"{args.data} images are {tuple(images.shape[1:])} (C, H, W) but the model in "
                        f"{args.out} was trained on {tuple(shape)}")
    return images, labels


def write_metrics(out, metrics, name="eval.json"):
    os.makedirs(out, exist_ok=True)
    _atomic_write(os.path.join(out, name), lambda f: f.write(json.dumps(metrics, indent=2) + "\n"), "w")
    print(json.dumps(metrics, indent=2))
