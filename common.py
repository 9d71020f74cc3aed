"""Plumbing shared by the four scripts, in the order a run uses it; their model halves never
import it. Data sets hold uint8 images (N, C, H, W), 0 = background, 255 = ink, and int64 labels
or None; the models take and return floats in [-1, 1] (to_unit, binarize; from_unit back)."""
import argparse, gzip, hashlib, json, math, os, pickle, struct, sys, tarfile, time, urllib.request
import zlib
import numpy as np
import torch
import torch.distributed as dist

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "genmodels")

class UserError(Exception):
    """A problem with the user's input: printed as one line, never as a traceback."""

# -- The one command line --------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

def positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{' whole' * (kind is int)} number")
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse

def make_parser(name, doc, steps, batch_size, lr, binarize=False, eval_images=None, warmup=200):
    p = Parser(prog=f"{name}.py", description=doc.strip().splitlines()[0],
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.set_defaults(default_steps=steps, rank=0, world=1)
    a, num, whole = p.add_argument, positive(float), positive(int)
    a("--train", action="store_true", help="train (then write samples and a checkpoint to --out)")
    a("--sample", action="store_true", help="write sample grids (.png) and raw samples (.npz)")
    a("--eval", action="store_true", help="score the test split; writes <out>/eval.json")
    a("--data", default="digits", help=f"{', '.join(DATASETS)} ('digits' is built in, not MNIST)")
    a("--data-dir", default=None, help=f"folder of the data set's files (default {CACHE}/<data>)")
    a("--out", default=f"runs/{name}", help="run folder: checkpoint, samples, metrics")
    a("--steps", type=whole, default=None, help=f"training steps (default {steps}, or --minutes)")
    a("--minutes", type=num, default=None, help="stop training after this budget")
    a("--batch-size", type=whole, default=batch_size)
    a("--lr", type=num, default=lr, help="peak learning rate (Adam)")
    a("--warmup", type=whole, default=warmup, help="steps of linear learning-rate warm-up")
    a("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    a("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 if native")
    a("--memory-format", choices=list(MEMORY_FORMATS), default="nchw", help="in training")
    a("--seed", type=int, default=0)
    a("--resume", action="store_true", help="continue the run in --out to its final step")
    a("--conditional", action="store_true", help="a class-conditional model (needs labels)")
    a("--class", dest="class_label", type=int, default=None, help="sample only this class")
    a("--num-samples", type=whole, default=100, help="images to draw with --sample")
    a("--eval-images", type=whole, default=eval_images, help="score the first N test images")
    a("--log-every", type=num, default=5.0, help="seconds between progress lines")
    a("--ckpt-minutes", type=num, default=2.0, help="minutes between checkpoints")
    a("--accum", type=whole, default=1, help="shards per process of each step's batch")
    a("--train-limit", type=whole, default=None, help="train on the first N training images only")
    if binarize:
        a("--binarize", action="store_true", help="binarized data, Bernoulli likelihood")
    return p

def run(parser, argv, train, sample, evaluate):
    """Parse the command line and run train, then sample, then eval; bad input ends in one line.
    Under torchrun every process trains its shard; rank 0 alone then samples and evaluates."""
    args = parser.parse_args(argv)           # a wrong command line: one line, exit status 2
    if not (args.train or args.sample or args.eval):
        parser.error("nothing to do: pass --train, --sample and/or --eval")
    try:
        args.device = pick_device(args.device)
        args.rank, args.world = init_distributed(args)
        kind = torch.device(args.device).type
        cuda_bf16 = kind == "cuda" and torch.cuda.is_bf16_supported()
        args.precision, why = choose_precision(args.precision, kind, cuda_bf16, cpu_flags())
        if args.rank == 0 and (args.train or args.sample):
            print(f"{parser.prog[:-3]}: precision {args.precision} ({why}); evaluation in fp32")
        torch.manual_seed(args.seed)
        for wanted, fn in ((args.train, train), (args.sample, sample), (args.eval, evaluate)):
            if wanted and (fn is train or args.rank == 0):
                fn(args)
    except UserError as e:                   # bad data, checkpoint or device: exit status 1
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{parser.prog}: interrupted; continue: the same command, --resume\n")
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

# -- Device, processes and precision ---------------------------------------------------------------
def pick_device(name):
    mps = getattr(torch.backends, "mps", None)
    has = dict(cuda=torch.cuda.is_available(), mps=bool(mps and mps.is_available()), cpu=True)
    if name == "auto":
        return next(kind for kind in ("cuda", "mps", "cpu") if has[kind])
    try:
        kind = torch.device(name).type
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    if not has.get(kind, True):
        raise UserError(f"--device {name}: torch sees no {kind.upper()} device; use --device cpu")
    return name

def init_distributed(args):
    """(rank, world size); under torchrun, joined to the group (gloo; nccl with a GPU each)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    local, cuda = int(os.environ.get("LOCAL_RANK", "0")), torch.device(args.device).type == "cuda"
    if cuda:
        args.device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")   # one progress log: rank 0's (errors reach stderr)
    return dist.get_rank(), world

def cpu_flags():  # the CPU's feature flags as the OS reports them (Linux); empty elsewhere
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return []

def choose_precision(requested, device_type, cuda_bf16=False, flags=()):
    """(precision, reason) from the device and the CPU's flags, never a timing: auto is bf16 where
    it is native (CUDA with bf16; AMX-BF16, AVX512-BF16), else fp32 (emulated: 5-15x slower)."""
    if requested != "auto":
        return requested, f"--precision {requested}"
    if device_type == "cuda":
        return ("bf16", "CUDA GPU with bf16") if cuda_bf16 else ("fp32", "GPU without bf16")
    native = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    if device_type == "cpu" and native:
        return "bf16", f"auto: the CPU has {native[0].upper()}"
    return "fp32", f"auto: no native bf16 on this {'CPU' if device_type == 'cpu' else device_type}"

MEMORY_FORMATS = {"nchw": torch.contiguous_format, "channels-last": torch.channels_last}

def autocast(args):  # bf16 autocast for --precision bf16 (weights and Adam's state stay fp32)
    return torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16,
                          enabled=args.precision == "bf16")

# -- Data: built-in digits, IDX (MNIST, Fashion-MNIST), CIFAR-10, a user's .npy array --------------
def _arc(cx, cy, rx, ry, a0, a1, n):  # n+1 points on an ellipse, a0 to a1 degrees (y down)
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
    """n handwritten-style digits (28x28, classes balanced), the same for the same seed. Not MNIST:
    each is a few pen strokes, slanted, scaled, rotated, shifted, wobbled and drawn with a pen."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]
    py, px = torch.meshgrid(torch.arange(28.), torch.arange(28.), indexing="ij")
    px, py = px.reshape(1, 1, 784), py.reshape(1, 1, 784)
    images = torch.empty(n, 784)
    for digit, strokes in _STROKES.items():
        seg = torch.tensor([[p, q] for s in strokes for p, q in zip(s[:-1], s[1:])])
        idx = (labels == digit).nonzero().flatten()
        m = len(idx)
        u = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(m, *shape, generator=g)
        pts = seg.float().reshape(1, -1, 2).expand(m, -1, -1)          # (m, 2S, 2) in [-1, 1]
        phase, freq = u(0, 6.3, 1, 2), u(1.5, 3.5, 1, 2)                  # elastic wobble
        pts = pts + u(-.07, .07, 1, 2) * torch.sin(freq * pts.flip(-1) + phase)
        rot, slant, scale, aspect = u(-.18, .18, 1), u(-.35, .35, 1), u(.8, 1.08, 1), u(.8, 1.15, 1)
        x, y = pts[..., 0] * aspect, pts[..., 1]
        x = x - slant * y                                               # slant: x moves with height
        x, y = x * torch.cos(rot) - y * torch.sin(rot), x * torch.sin(rot) + y * torch.cos(rot)
        x, y = [v * 10.5 * scale + 13.5 + u(-1.8, 1.8, 1) for v in (x, y)]   # to pixels, shifted
        ax, ay, bx, by = [v.unsqueeze(-1) for v in (x[:, 0::2], y[:, 0::2], x[:, 1::2], y[:, 1::2])]
        abx, aby = bx - ax, by - ay                                     # (m, S, 1) segments a -> b
        inv = 1 / (abx * abx + aby * aby).clamp_min(1e-6)
        width = u(.9, 2.3, 1)
        for i in range(0, m, 200):                                       # chunks keep memory small
            c = slice(i, i + 200)
            dx, dy = px - ax[c], py - ay[c]                               # (m, S, 784)
            t = ((dx * abx[c] + dy * aby[c]) * inv[c]).clamp_(0, 1)       # nearest point on segment
            d2 = (dx - t * abx[c]).square_() + (dy - t * aby[c]).square_()
            dist = d2.amin(1).sqrt_()                                   # (m, 784) to the strokes
            images[idx[c]] = (1.6 * (width[c] - dist) + .5).clamp(0, 1)
    return (images * 255).round().to(torch.uint8).reshape(n, 1, 28, 28), labels

_IDX = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz"]
IDX_FILES = {  # name: (mirror URLs, {file: official MD5})
    "mnist": (["https://ossci-datasets.s3.amazonaws.com/mnist/",
               "http://yann.lecun.com/exdb/mnist/"],
              dict(zip(_IDX, ("f68b3c2dcbeaaa9fbdd348bbdeb94873 d53e105ee54ea40749a09fcbcd1e9432 "
                              "9fb629c4189551a2d022fa330f9573f3 ec29112dd5afa0611ce80d1b7f02629c"
                              ).split()))),
    "fashion-mnist": (["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"], dict(zip(
        _IDX, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d 25c81989df183df01b3e8a0aad5dffbe "
               "bef4ecab320f06d8554ea6380940ec79 bb300cfdad3c16e7a12a480ee83cd310").split()))),
    "cifar10": (["https://www.cs.toronto.edu/~kriz/"],
                {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}),
}
DATASETS = ["digits", "mnist", "fashion-mnist", "cifar10", "<file>.npy"]

def fetch(name, filename, data_dir):
    """Path of a data set's file in data_dir, downloaded (MD5-checked) unless it is there."""
    path = os.path.join(data_dir, filename)
    mirrors, sums = IDX_FILES[name]
    for url in mirrors if not os.path.exists(path) else ():
        os.makedirs(data_dir, exist_ok=True)
        try:
            urllib.request.urlretrieve(url + filename, path + ".part")
        except OSError:
            continue
        with open(path + ".part", "rb") as f:
            if hashlib.md5(f.read()).hexdigest() != sums[filename]:
                os.remove(path + ".part")
                raise UserError(f"download of {url + filename} has the wrong MD5 (expected "
                                f"{sums[filename]}); try again later")
        os.replace(path + ".part", path)
    if not os.path.exists(path):
        raise UserError(f"{name}: {filename} is not in {data_dir} and could not be downloaded "
                        f"(offline?); put the files {', '.join(sums)} there, or pass --data-dir")
    return path

def read_idx(path):
    """Read a gzip IDX file (MNIST format): magic 2049 = labels (N,), 2051 = images (N, H, W)."""
    again = "delete it and download it again"
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path} is not a readable gzip file ({e}); {again}")
    magic, n = struct.unpack(">II", data[:8]) if len(data) >= 8 else (0, 0)
    if magic not in (2049, 2051):
        raise UserError(f"{path} is truncated or not an IDX file (magic number {magic}, not 2049 "
                        f"or 2051); {again}")
    shape, offset = ((n,), 8) if magic == 2049 else ((n,) + struct.unpack(">II", data[8:16]), 16)
    if len(data) != offset + math.prod(shape):
        raise UserError(f"{path} holds {len(data) - offset} values but its header promises "
                        f"{math.prod(shape)}: truncated or corrupt; {again}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)

def load_data(name, split, data_dir=None):
    """Images as uint8 (N, C, H, W) and labels as int64 (N,) or None, for a data set and a split."""
    assert split in ("train", "test"), split
    if name == "digits":
        return synthetic_digits(60000, seed=0) if split == "train" else synthetic_digits(10000, 1)
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
    if images.ndim != 3 or labels.ndim != 1:
        raise UserError(f"{data_dir}: the {prefix} image and label files do not match (swapped?)")
    check_labels(images, labels, os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))

def check_labels(images, labels, path, classes=10):
    """One label per image, each a class 0..9 (MNIST, Fashion-MNIST, CIFAR-10), or a bad file."""
    bad = np.flatnonzero((labels < 0) | (labels >= classes))
    if len(bad) or len(labels) != len(images):
        what = (f"label {labels[bad[0]]} at position {bad[0]} is not a class 0-{classes - 1}" if
                len(bad) else f"the files do not match: {len(images)} images, {len(labels)} labels")
        raise UserError(f"{path}: {what}; the file is corrupt: download it again")

def _load_cifar10(data_dir, split):
    folder = os.path.join(data_dir, "cifar-10-batches-py")
    if not os.path.isdir(folder):
        with tarfile.open(fetch("cifar10", "cifar-10-python.tar.gz", data_dir)) as tar:
            tar.extractall(data_dir, filter="data")
    xs, ys = [], []
    for n in [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]:
        try:
            with open(os.path.join(folder, n), "rb") as f:  # the official format is a pickle
                batch = pickle.load(f, encoding="bytes")
        except (OSError, pickle.UnpicklingError, EOFError) as e:
            raise UserError(f"cannot read CIFAR-10 batch {n} in {folder}: {e}")
        xs.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[b"labels"], np.int64))
        check_labels(xs[-1], ys[-1], os.path.join(folder, n))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

def _load_npy(path, split):
    """A user's uint8 array (N, H, W), (N, C, H, W) or (N, H, W, C); the last 10% is for tests."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable .npy array: {e}")
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise UserError(f"{path} must hold uint8 images shaped (N, H, W) or (N, C, H, W); "
                        f"got {x.dtype} {x.shape}")
    x = x[:, None] if x.ndim == 3 else x
    x = x.transpose(0, 3, 1, 2) if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3) else x
    n_test = max(1, len(x) // 10)
    x = x[:-n_test] if split == "train" else x[-n_test:]
    return torch.from_numpy(np.ascontiguousarray(x)), None

def load_split(args, split, shape=None):
    """args.data's split (train: its first --train-limit images); shape (C, H, W) is checked."""
    images, labels = load_data(args.data, split, args.data_dir)
    n = getattr(args, "train_limit", None) if split == "train" else None
    images, labels = images[:n], None if labels is None else labels[:n]
    if shape is not None and tuple(images.shape[1:]) != tuple(shape):
        raise UserError(f"{args.data} images are {tuple(images.shape[1:])} (C, H, W) but the model "
                        f"in {args.out} was trained on {tuple(shape)}")
    return images, labels

def num_classes(args, labels):
    """The class count a --conditional model is built for; 0 without --conditional."""
    if args.conditional and labels is None:
        raise UserError(f"--conditional: {args.data} has no labels; train without --conditional")
    return int(labels.max()) + 1 if args.conditional else 0

def to_unit(x):    # uint8 in {0..255} -> float in [-1, 1] (the models' format)
    return x.float() / 127.5 - 1

def from_unit(x):  # float in [-1, 1] -> uint8
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)

def binarize(x, stochastic=False, generator=None):
    """uint8 -> -1 or 1: ink with probability pixel/255 (Salakhutdinov & Murray 2008), or > 127."""
    ink = torch.bernoulli(x.float() / 255, generator=generator) if stochastic else (x > 127).float()
    return ink * 2 - 1

def train_transform(binary):
    """(uint8 batch, data-noise generator) -> floats, binarized afresh from it or not."""
    return (lambda x, g: binarize(x, True, g)) if binary else (lambda x, g: to_unit(x))

def test_split(args, shape, binary, conditional):
    """The test split as floats (binarized once, seed 0, or not) and a conditional's labels."""
    images, labels = load_split(args, "test", shape)
    x = binarize(images, True, torch.Generator().manual_seed(0)) if binary else to_unit(images)
    return x, labels if conditional else None

# -- The training loop shared by all four scripts --------------------------------------------------
def fit(args, name, model, images, labels=None, transform=train_transform(False), loss_fn=None,
        ema_decay=0.0, lr_schedule="constant", grad_clip=1.0, on_checkpoint=None, ckpt="ckpt.pt"):
    """Adam on loss_fn(x, y) -> (loss, logs) (default model.loss), x = transform(uint8 batch,
    data-noise generator). Each step: learning rate (warm-up, then constant or cosine), the batch
    shard by shard (each seeded by shard_seed), gradients averaged over processes and clipped,
    Adam, EMA, a log line, now and then a checkpoint. Batches and noise are functions of the step:
    a resumed run repeats the uninterrupted one, and 2 processes give what --accum 2 gives."""
    loss_fn = loss_fn or model.loss
    run = Run(args, name, model, ema_decay, ckpt)            # resumes with --resume
    model.train()
    while run.step < run.total:
        stop, done = run.time_budget()                       # rank 0's clock decides for all
        if stop:
            break
        lr = args.lr * min(1.0, (run.step + 1) / args.warmup)
        if lr_schedule == "cosine":
            lr *= 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
        for group in run.opt.param_groups:
            group["lr"] = run.lr = lr
        run.opt.zero_grad(set_to_none=True)
        value = 0.0
        for shard, idx in my_shards(args, run.step, len(images)):
            torch.manual_seed(shard_seed(args.seed, run.step, shard))            # model noise
            data_noise = torch.Generator().manual_seed(shard_seed(args.seed, run.step, shard, True))
            x = transform(images[idx], data_noise).to(args.device)
            y = None if labels is None else labels[idx].to(args.device)
            with autocast(args):
                loss, logs = loss_fn(x, y)
            (loss / args.accum).backward()
            value += loss.item() / args.accum
        value = average_gradients(model, value, args.world)  # one all-reduce under torchrun
        if not math.isfinite(value):
            raise UserError(f"{name}: the loss became {value} at step {run.step}; try a smaller "
                            f"--lr or --precision fp32, and --resume from the last checkpoint")
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        run.opt.step()
        if run.ema:
            run.ema.update(model)
        run.step += 1
        run.log(dict(loss=value, **logs))
        if time.time() - run.last_save > args.ckpt_minutes * 60:
            run.save(on_checkpoint)
    run.log({}, force=True)                                  # the last partial interval
    run.save(on_checkpoint)
    if args.world > 1:
        dist.barrier()   # nobody reads the checkpoint before rank 0 has written it
    return run.ema

def adam(params, lr):
    """Adam (Kingma & Ba 2015), by torch's fused kernel where the device has one."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:          # "fused=True requires ... Tensors of supported devices"
        return torch.optim.Adam(params, lr=lr, foreach=True)

class EMA:  # the weights' moving average, for sampling (Ho et al. 2020, App. B)
    def __init__(self, model, decay):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model):  # shadow <- decay * shadow + (1 - decay) * weights
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v, 1 - self.decay)
            else:
                self.shadow[k].copy_(v)

UNBOUNDED = 10**12  # the step count of a run limited by --minutes alone

class Run:
    """A run's optimizer, EMA, step, clock and log; new, or --resume's (below). Rank 0 writes."""

    def __init__(self, args, name, model, ema_decay, ckpt):
        self.args, self.name, self.model = args, name, model.to(args.device)
        self.path, self.lr = os.path.join(args.out, ckpt), 0.0
        self.opt = adam(model.parameters(), args.lr)
        self.config = dict(vars(model.cfg)) if hasattr(model, "cfg") else {}
        self.ema = EMA(model, ema_decay) if ema_decay else None
        # --steps wins; --minutes alone trains for the whole budget; neither: the script's default
        self.total = args.steps or (UNBOUNDED if args.minutes else args.default_steps)
        self.step, self.minutes, elapsed = 0, args.minutes, 0.0
        if args.batch_size % (args.world * args.accum):
            raise UserError(f"--batch-size {args.batch_size} must be a multiple of processes x "
                            f"--accum = {args.world * args.accum}")
        for t in model.state_dict().values() if args.world > 1 else ():
            dist.broadcast(t, 0)        # the same starting weights everywhere
        if args.resume:
            elapsed = resume(self, load_checkpoint(self.path, name))
        self.model.to(memory_format=MEMORY_FORMATS[args.memory_format])
        for p, state in self.opt.state.items():   # fused Adam walks a weight and its moments as
            for k, v in state.items():              # flat memory: moments laid out like weights
                state[k] = torch.empty_like(p).copy_(v) if v.shape == p.shape else v  # not step
        os.makedirs(args.out, exist_ok=True)
        self.t0, self.last_save = time.time() - elapsed, time.time()
        self.last_log, self.log_step, self.figures = time.time(), self.step, []

    def fraction(self):  # how far the run is: by steps, or by the clock if that ends first
        by_time = (time.time() - self.t0) / (60 * self.minutes) if self.minutes else 0.0
        return max(self.step / self.total, by_time)

    def time_budget(self):
        """(stop?, fraction done); rank 0's clock is broadcast, so all processes stop together."""
        over = bool(self.minutes) and time.time() - self.t0 > self.minutes * 60
        state = torch.tensor([float(over), self.fraction()], dtype=torch.float64)
        if self.args.world > 1:
            dist.broadcast(state, 0)
        return bool(state[0]), float(state[1])

    def log(self, figures, force=False):
        """Every --log-every seconds, a line and a record in metrics.jsonl: means since the last."""
        self.figures += [figures] if figures else []
        now, args = time.time(), self.args
        if args.rank or not self.figures or (now - self.last_log < args.log_every and not force):
            return
        mean = {k: sum(f[k] for f in self.figures) / len(self.figures) for k in self.figures[-1]}
        rate = (self.step - self.log_step) * args.batch_size / max(now - self.last_log, 1e-9)
        elapsed, frac = now - self.t0, self.fraction()
        clock = lambda s: time.strftime("%H:%M:%S", time.gmtime(s))
        total = "" if self.total >= UNBOUNDED else f"/{self.total}"
        shown = " | ".join(f"{k} {v:.4g}" for k, v in mean.items())
        print(f"{self.name} | step {self.step}{total} | {shown} | {rate:.0f} img/s | elapsed "
              f"{clock(elapsed)} | eta {clock(elapsed * max(1 - frac, 0) / max(frac, 1e-9))}",
              flush=True)
        with open(os.path.join(args.out, "metrics.jsonl"), "a") as f:
            record = dict(step=self.step, **mean, images_per_s=rate, lr=self.lr, elapsed=elapsed)
            f.write(json.dumps(record) + "\n")
        self.last_log, self.log_step, self.figures = now, self.step, []

    def save(self, on_checkpoint=None):
        """Rank 0 writes model, optimizer, EMA, step and clock: all that --resume needs."""
        self.last_save, args = time.time(), self.args
        if args.rank:
            return
        save_checkpoint(self.path, self.name, self.config, model=self.model.state_dict(),
                        optimizer=self.opt.state_dict(), ema=self.ema.shadow if self.ema else None,
                        step=self.step, total_steps=self.total, minutes=self.minutes,
                        elapsed=time.time() - self.t0, data=args.data, batch_size=args.batch_size,
                        precision=args.precision, memory_format=args.memory_format)
        print(f"{self.name}: saved {self.path} at step {self.step}")
        if on_checkpoint:        # a preview grid: not training, so off the clock
            start = time.time()
            on_checkpoint(self.model, self.ema, self.step)
            self.t0, self.last_log = (t + time.time() - start for t in (self.t0, self.last_log))

def resume(run, blob):
    """Load a matching checkpoint into the run (Adam on this torch's kernel); elapsed seconds."""
    args, model = run.args, run.model     # a setting added since the run began: its default
    saved = {**(vars(type(model.cfg)()) if hasattr(model, "cfg") else {}), **blob["config"]}
    if saved != run.config:
        raise UserError(f"{run.path} was trained with other settings {blob['config']}; "
                        f"resume with the same flags")
    load_weights(model, blob["model"], run.path)
    for group in blob["optimizer"]["param_groups"]:
        group.update(fused=run.opt.defaults["fused"], foreach=run.opt.defaults["foreach"])
    run.opt.load_state_dict(blob["optimizer"])
    if run.ema:
        run.ema.shadow = {k: v.to(args.device) for k, v in blob["ema"].items()}
    run.step, run.minutes = blob["step"], blob["minutes"]
    run.total = args.steps or blob["total_steps"]     # --resume --steps N: end at step N
    args.precision = blob.get("precision", args.precision)
    args.memory_format = blob.get("memory_format", "nchw")
    if args.rank == 0:
        print(f"{run.name}: resumed from {run.path} at step {run.step}/{run.total}, "
              f"precision {args.precision} and memory format {args.memory_format} (the run's)")
    return blob["elapsed"]

def batch_indices(step, batch_size, n, seed):
    """Indices of batch `step`; epochs are seeded permutations, so any step's can be recomputed."""
    pos = torch.arange(step * batch_size, (step + 1) * batch_size)
    out = torch.empty(batch_size, dtype=torch.long)
    epochs = pos.div(n, rounding_mode="floor")
    for epoch in epochs.unique().tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out[epochs == epoch] = perm[pos[epochs == epoch] % n]
    return out

def shard_seed(seed, step, shard, data=False):
    """One shard's seed of one step; the data's noise is 2^31 apart (a generator keeps 32 bits)."""
    return seed * 1_000_003 + step + shard * 1_000_000_007 + (2**31 if data else 0)

def my_shards(args, step, n):
    """This process's (shard, indices) of the step's batch cut into processes x --accum strides."""
    batch, shards = batch_indices(step, args.batch_size, n, args.seed), args.world * args.accum
    first = args.rank * args.accum
    return [(s, batch[s::shards]) for s in range(first, first + args.accum)]

def average_gradients(model, loss_value, world):
    """Gradients and loss averaged over processes in one all-reduce (DDP's arithmetic)."""
    if world == 1:
        return loss_value
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads] + [grads[0].new_tensor([loss_value])])
    dist.all_reduce(flat)
    flat /= world
    for p, g in zip(params, flat[:-1].split([g.numel() for g in grads])):
        p.grad = torch.empty_like(p).copy_(g.view_as(p))    # laid out like its weight (fused Adam)
    return float(flat[-1])

# -- Checkpoints: self-describing, written atomically, loaded without running code -----------------
FORMAT = 2   # 2: the one-API model classes (format 1 held other module layouts)

def atomic_write(path, write, mode):  # readers see the old file or the new one, never half
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

def save_checkpoint(path, model_name, config, **state):  # state: tensors and plain values
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    blob = dict(format=FORMAT, model_name=model_name, config=dict(config), **state)
    atomic_write(path, lambda f: torch.save(blob, f), "wb")

def load_checkpoint(path, model_name):
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {path}; train first (--train) or point --out at a run")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        blob["format"], blob["model_name"]                  # a dict with these, or not ours
    except Exception as e:
        raise UserError(f"{path} is not a readable checkpoint of this project "
                        f"({type(e).__name__}); it may be corrupt")
    if blob["format"] != FORMAT:
        raise UserError(f"{path} was written by an older version of this project (format "
                        f"{blob['format']}, now {FORMAT}); train it again")
    if blob.get("model_name") != model_name:
        raise UserError(f"{path} holds a {blob.get('model_name')!r} model, not {model_name!r}; "
                        f"use {blob.get('model_name')}.py or another --out")
    return blob

def load_weights(module, state, path):  # load_state_dict, a one-line error if it does not fit
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip() if str(e).strip() else "mismatch"
        raise UserError(f"{path}: the weights do not fit this model ({first[:160]})")

def load_model(out, name, build, device="cpu", ckpt="ckpt.pt"):
    """The model in <out>/<ckpt>, built from it alone (build: config -> module), EMA weights."""
    blob = load_checkpoint(os.path.join(out, ckpt), name)
    model = build(blob["config"])
    load_weights(model, blob.get("ema") or blob["model"], os.path.join(out, ckpt))
    return model.to(device).eval()

# -- What sampling and evaluation write: grid labels, PNG and .npz files, metrics ------------------
def grid_labels(args, n, classes):
    """Labels for n samples (a column per class, or all --class; None) and the row length."""
    square = int(math.ceil(math.sqrt(n)))
    if classes and args.class_label is None:
        return torch.arange(n, device=args.device) % classes, classes
    if classes and not 0 <= args.class_label < classes:
        raise UserError(f"--class {args.class_label}: the model knows classes 0..{classes - 1}")
    return (torch.full((n,), args.class_label, device=args.device) if classes else None), square

def write_png(path, image):
    """image: uint8 array (H, W) grey or (H, W, 3) colour; written with zlib and struct only."""
    image = np.ascontiguousarray(np.asarray(image, np.uint8))
    raw = b"".join(b"\x00" + row.tobytes() for row in image)  # filter 0 on every row
    chunk = lambda tag, data: (struct.pack(">I", len(data)) + tag + data
                               + struct.pack(">I", zlib.crc32(tag + data)))
    header = struct.pack(">IIBBBBB", image.shape[1], image.shape[0], 8, 2 if image.ndim == 3 else 0,
                         0, 0, 0)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
           + chunk(b"IEND", b""))
    atomic_write(path, lambda f: f.write(png), "wb")

def make_grid(images, nrow, pad=2):
    """uint8 (N, C, H, W) -> one uint8 picture, rows of nrow images: (H, W) or (H, W, 3)."""
    n, c, h, w = images.shape
    grid = torch.full((c, math.ceil(n / nrow) * (h + pad) + pad, nrow * (w + pad) + pad), 128,
                      dtype=torch.uint8)
    for i in range(n):
        top, left = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).numpy()

def save_images(out, name, images, nrow, labels=None):
    """<out>/<name>.png, a grid, and .npz (uint8 images (N, C, H, W), labels) of floats or uint8."""
    os.makedirs(out, exist_ok=True)
    images = torch.as_tensor(images).detach().cpu()
    images = images if images.dtype == torch.uint8 else from_unit(images)
    write_png(os.path.join(out, name + ".png"), make_grid(images, nrow))
    labels = {} if labels is None else dict(labels=torch.as_tensor(labels).cpu().numpy())
    save = lambda f: np.savez_compressed(f, images=images.numpy(), **labels)
    atomic_write(os.path.join(out, name + ".npz"), save, "wb")
    return os.path.join(out, name + ".png")

def write_metrics(out, metrics, name="eval.json"):
    os.makedirs(out, exist_ok=True)
    text = json.dumps(metrics, indent=2) + "\n"
    atomic_write(os.path.join(out, name), lambda f: f.write(text), "w")
    print(text, end="")
