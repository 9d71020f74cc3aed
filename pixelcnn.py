"""PixelCNN: an autoregressive image model with an exact likelihood, causal by construction.

van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves & Kavukcuoglu 2016, "Conditional Image
Generation with PixelCNN Decoders", arXiv:1606.05328 (Gated PixelCNN, the default), and
van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks", arXiv:1601.06759
(the original masked-convolution PixelCNN, --arch pixelcnn).

    python pixelcnn.py --train                                 # built-in digits, 256-way softmax
    python pixelcnn.py --train --data mnist --data-dir DIR --binarize --out runs/pixelcnn-bin
    python pixelcnn.py --sample --eval --out runs/pixelcnn-bin # samples, completions; eval.json

In code: model = PixelCNN(Config()); model.loss(x, y) -> (loss, logs), model.sample(n, y, ...),
model.nll(x, y) (exact). Images at this API are float (B, C, H, W) in [-1, 1]: 8-bit images on the
256-value grid, binarized images (levels = 2) exactly -1 and 1; inside, pixels are integers.

Maths: p(x) = prod_i p(x_i | x_1..x_{i-1}), pixels in raster order, and within a pixel the
channels R -> G -> B (PixelRNN eq. 1-2). Every output is a normalised distribution over the next
value (a 256-way softmax, or a Bernoulli for binarized data), so -log p(x) is exact: a sum of
cross-entropies. Causality comes from masks: mask A hides the current pixel (first layer), mask B
lets a layer see its own position in the layers after (PixelRNN Sec. 3.4, Fig. 4).
The blind spot: stacked masked 3x3 convolutions never see the pixels up and to the right of the
receptive field's growing edge. The gated model splits the network in a vertical stack (all rows
above) and a horizontal stack (pixels to the left in the current row), which removes it
(Gated PixelCNN Sec. 2.2), with gated units y = tanh(W_f * x) . sigmoid(W_g * x) (eq. 2) and a class
bias in every gate, tanh(W_f * x + V_f^T h) . sigmoid(W_g * x + V_g^T h) (eq. 4).
Fast sampling (Ramachandran et al. 2017, arXiv:1704.06001, in spirit): the vertical stack is run
once per row, and each pixel then runs the horizontal stack over only the columns that can reach
it. Both samplers draw with the same pre-drawn uniforms, so they give the same images.
After the papers: --attention N adds PixelSNAIL's causal self-attention (Chen et al. 2018,
arXiv:1712.09763), every earlier pixel in one step; the fast sampler keeps its keys and values.
Deviations: a smaller network than the paper's 15 layers of 128 (width and depth are flags).
Things to try: --arch pixelcnn (and see its blind spot in the tests), --temperature 0.8.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    image_size: int = 28
    channels: int = 1
    arch: str = "gated"        # gated (van den Oord et al. 2016b) | pixelcnn (2016a: blind spot)
    width: int = 32            # feature channels (paper: 128 on CIFAR-10 sized data)
    layers: int = 7            # gated / masked layers after the first (paper: 15)
    kernel: int = 3            # kernel size of the stacks (first layer: 7)
    levels: int = 256          # 256: softmax over 8-bit values; 2: Bernoulli for binarized data
    num_classes: int = 0       # 0 = unconditional
    codes: str = ""            # a prior over a VQ-VAE's codes: that run's folder (command line)
    embed: int = 0             # > 0: input each value as a learned vector of this size (codes)
    attention: int = 0         # causal self-attention blocks among the gated layers (PixelSNAIL)


# ----------------------------------------------------------------------------------------------
# Masks and the building blocks

def channel_groups(n, colours, parts=1):
    """The colour (0 = R, 1 = G, 2 = B) each of n feature channels belongs to. parts = 2 for a
    gated layer's output, whose two halves (tanh and sigmoid) must be laid out the same way."""
    per = n // parts
    return (torch.arange(n) % per) * colours // per


class MaskedConv2d(nn.Conv2d):
    """A convolution that only sees taps before `centre` in raster order, and at the centre only
    the colours before (mask A) or up to (mask B) its own. Pads itself so the output is H x W.
    The mask is a buffer applied in forward (weight * mask): the weights are never edited."""

    def __init__(self, cin, cout, kernel, centre, mask_type, colours, in_parts=1, out_parts=1):
        super().__init__(cin, cout, kernel)
        kh, kw = kernel
        ci, cj = centre
        self.pads = (cj, kw - 1 - cj, ci, kh - 1 - ci)              # left, right, top, bottom
        mask = torch.zeros(cout, cin, kh, kw)
        mask[:, :, :ci] = 1                                              # rows above the centre
        mask[:, :, ci, :cj] = 1                                          # left of it in its row
        g_out = channel_groups(cout, colours, out_parts)[:, None]
        g_in = channel_groups(cin, colours, in_parts)[None, :]
        mask[:, :, ci, cj] = (g_out > g_in) if mask_type == "A" else (g_out >= g_in)
        self.register_buffer("mask", mask)

    def forward(self, x):
        return F.conv2d(F.pad(x, self.pads), self.weight * self.mask, self.bias)


def gate(x):
    """Gated PixelCNN eq. 2: tanh(a) * sigmoid(b) over the two halves of the channels."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def down_shift(x):
    """Row r gets row r-1 (zeros in row 0): the vertical stack's view of strictly earlier rows."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


class GatedLayer(nn.Module):
    """One gated layer (Gated PixelCNN Fig. 2): vertical stack v sees rows <= r (used only after
    down_shift), horizontal stack h sees columns <= c of row r; v feeds h through a 1x1 conv."""

    def __init__(self, cin, width, k, first, colours):
        super().__init__()
        self.k, self.first = k, first
        self.v_conv = nn.Conv2d(cin, 2 * width, (k // 2 + 1, k))         # rows r - k//2 .. r
        # columns c - k//2 .. c of row r; mask A in the first layer hides the pixel itself
        self.h_conv = MaskedConv2d(cin, 2 * width, (1, k // 2 + 1), (0, k // 2),
                                   "A" if first else "B", colours, in_parts=1, out_parts=2)
        self.v_to_h = nn.Conv2d(2 * width, 2 * width, 1)
        self.h_out = MaskedConv2d(width, width, (1, 1), (0, 0), "B", colours)
        self.skip = MaskedConv2d(width, width, (1, 1), (0, 0), "B", colours)

    def vertical(self, v):
        return self.v_conv(F.pad(v, (self.k // 2, self.k // 2, self.k // 2, 0)))

    def horizontal(self, h, v_pre_shifted_to_h, cond):
        """From h and the (already down-shifted, 1x1-mapped) vertical features: new h and skip."""
        out = gate(self.h_conv(h) + v_pre_shifted_to_h + cond)
        h_new = self.h_out(out) + (0 if self.first else h)               # residual (not in layer 1)
        return h_new, self.skip(out)


class GatedPixelCNN(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg, c, w = cfg, cfg.channels, cfg.width
        first = GatedLayer(in_channels(cfg), w, 7, True, c)            # 7x7 reach, mask A
        rest = [GatedLayer(w, w, cfg.kernel, False, c) for _ in range(cfg.layers)]
        self.layers = nn.ModuleList([first] + rest)
        n = len(self.layers)           # attention after layer i, spread out, a gated layer after
        self.attention = nn.ModuleDict({str((j + 1) * n // (cfg.attention + 1) - 1): Attention(
            in_channels(cfg), w, c, cfg.image_size) for j in range(cfg.attention)})
        self.class_bias = (nn.Embedding(cfg.num_classes, 2 * w * len(self.layers))
                           if cfg.num_classes else None)
        self.head = output_head(cfg)

    def conds(self, y, n):
        """Per layer, the class bias V^T h of eq. 4 (one-hot h: a learned vector per class)."""
        if self.class_bias is None or y is None:
            return [0] * len(self.layers)
        return list(self.class_bias(y).reshape(n, len(self.layers), -1, 1, 1).unbind(1))

    def forward(self, x, y=None, cache=None):
        """cache: a dict that gets each attention block's keys and values (the fast sampler's)."""
        v, h, cache = x, x, {} if cache is None else cache
        skip, conds = 0, self.conds(y, len(x))
        for i, (layer, cond) in enumerate(zip(self.layers, conds)):
            v_pre = layer.vertical(v)
            h, s = layer.horizontal(h, layer.v_to_h(down_shift(v_pre)), cond)
            v = gate(v_pre + cond)
            skip = skip + s
            if str(i) in self.attention:
                att, where = self.attention[str(i)], torch.arange(h[0, 0].numel(), device=x.device)
                cache[i] = kv = att.keys_values(x, h, where)
                h = h + att(h, where, *kv)
        return self.head(skip)


class MaskedPixelCNN(nn.Module):
    """The original (PixelRNN Sec. 3.5): a 7x7 mask-A convolution, then residual masked 3x3
    mask-B layers. It has the blind spot."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg, c, w, k = cfg, cfg.channels, cfg.width, cfg.kernel
        self.first = MaskedConv2d(in_channels(cfg), w, (7, 7), (3, 3), "A", c)
        self.layers = nn.ModuleList([MaskedConv2d(w, w, (k, k), (k // 2, k // 2), "B", c)
                                     for _ in range(cfg.layers)])
        self.class_bias = (nn.Embedding(cfg.num_classes, w * (cfg.layers + 1))
                           if cfg.num_classes else None)
        self.head = output_head(cfg)

    def forward(self, x, y=None):
        conds = [0] * (len(self.layers) + 1)
        if self.class_bias is not None and y is not None:
            conds = self.class_bias(y).reshape(len(x), len(conds), -1, 1, 1).unbind(1)
        h = self.first(x) + conds[0]
        for layer, cond in zip(self.layers, conds[1:]):
            h = h + layer(F.relu(h)) + cond
        return self.head(h)


def in_channels(cfg):
    """The network's input channels: a number per sub-pixel, or (embed > 0, one colour channel) a
    learned vector per value: codes have no order, so a code's index as a number would invent one
    (a one-hot of K = 256 codes gave the first layer enough weights to learn the training grids)."""
    return cfg.embed or cfg.channels


def output_head(cfg):
    """ReLU, 1x1 mask-B conv, ReLU, 1x1 mask-B conv to the logits: one per sub-pixel for a
    Bernoulli, `levels` for a softmax."""
    c, w, per_channel = cfg.channels, cfg.width, 1 if cfg.levels == 2 else cfg.levels
    return nn.Sequential(nn.ReLU(), MaskedConv2d(w, w, (1, 1), (0, 0), "B", c), nn.ReLU(),
                         MaskedConv2d(w, c * per_channel, (1, 1), (0, 0), "B", c))


# ----------------------------------------------------------------------------------------------
# The model: exact likelihood, samplers

class PixelCNN(nn.Module):
    """The model a copier imports: either network, its exact likelihood and its samplers.
    Images at this API: float (B, C, H, W) in [-1, 1], on the 256-value grid for the softmax,
    exactly -1 or 1 for binarized data (levels = 2). Inside, pixels are integers 0..levels-1."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.net = GatedPixelCNN(cfg) if cfg.arch == "gated" else MaskedPixelCNN(cfg)
        self.embed = nn.Embedding(cfg.levels, cfg.embed) if cfg.embed else None

    def check_labels(self, y):
        if (y is None) != (self.cfg.num_classes == 0):
            raise ValueError("pass labels y exactly when the model is class-conditional "
                             f"(num_classes = {self.cfg.num_classes})")

    def to_int(self, x):                # [-1, 1] -> integers 0..levels-1
        return ((x + 1) / 2 * (self.cfg.levels - 1)).round().long()

    def to_unit(self, k):               # integers -> [-1, 1]
        return k.float() / (self.cfg.levels - 1) * 2 - 1

    def net_input(self, k):             # integers -> the network's input (see in_channels)
        return self.to_unit(k) if self.embed is None else self.embed(k[:, 0]).permute(0, 3, 1, 2)

    def logits(self, k, y=None):
        """Integers (B, C, H, W) -> Bernoulli logits (B, C, H, W) or softmax logits
        (B, C, levels, H, W): sub-pixel (c, i, j)'s distribution given everything before it."""
        out = self.net(self.net_input(k), y).float()
        c, levels = self.cfg.channels, self.cfg.levels
        return out if levels == 2 else out.reshape(len(out), c, levels, *out.shape[2:])

    def log_prob(self, x, y=None):
        """Exact log p(x) in nats per image (PixelRNN eq. 1): the sum over every sub-pixel of
        log p(x_i | x_<i)."""
        self.check_labels(y)
        k = self.to_int(x)
        logits = self.logits(k, y)
        if self.cfg.levels == 2:
            nll = F.binary_cross_entropy_with_logits(logits, k.float(), reduction="none")
        else:
            nll = F.cross_entropy(logits.transpose(1, 2), k, reduction="none")   # over levels
        return -nll.flatten(1).sum(1)

    def loss(self, x, y=None):
        """Negative log-likelihood in nats per sub-pixel (a mean, so the learning rate does not
        depend on the image size); bits/dim = loss / ln 2."""
        nll = -self.log_prob(x, y).mean() / x[0].numel()
        return nll, {"bits_per_dim": nll.item() / math.log(2)}

    @torch.no_grad()
    def nll(self, x, y=None):
        """Exact -log p(x) (or -log p(x|y)) per image, in nats."""
        return -self.log_prob(x, y)

    @torch.no_grad()
    def sample(self, n, y=None, temperature=1.0, known=None, start=0, generator=None,
               naive=False):
        """n images drawn pixel by pixel. known: images whose first `start` pixels (raster
        order) are kept (completion); generator: for the uniforms every draw uses (so the
        fast and the naive sampler give the same images for the same generator)."""
        self.check_labels(y)
        c, s = self.cfg.channels, self.cfg.image_size
        device = next(self.parameters()).device
        # drawn in float64 on the CPU (the generator's stream), used in float32 on the device
        u = torch.rand(n, c, s, s, generator=generator, dtype=torch.float64).float().to(device)
        if known is None:
            k = torch.zeros(n, c, s, s, dtype=torch.long, device=device)
        else:
            k = self.to_int(known.to(device))
        sampler = self.sample_naive if naive else self.sample_fast
        return self.to_unit(sampler(k, u, y, start, temperature))

    def draw(self, logits, u, temperature):
        """Inverse-CDF draw from one sub-pixel's distribution with a given uniform u (B,): the
        naive and fast samplers share the uniforms, so they make the same image."""
        if self.cfg.levels == 2:
            return (u < torch.sigmoid(logits / temperature)).long()
        cdf = torch.softmax(logits.float() / temperature, dim=1).cumsum(1)
        return (cdf < u[:, None]).sum(1).clamp(max=self.cfg.levels - 1)

    @torch.no_grad()
    def sample_naive(self, k, u, y=None, start=0, temperature=1.0):
        """The readable reference: the whole network once per sub-pixel, in raster order.
        k: integers (B, C, H, W); pixels before index `start` (row-major) are kept."""
        k = k.clone()
        c, s = self.cfg.channels, self.cfg.image_size
        for i in range(start, s * s):
            r, col = divmod(i, s)
            for ch in range(c):
                logits = self.logits(k, y)[:, ch, ..., r, col]             # (B,) or (B, levels)
                k[:, ch, r, col] = self.draw(logits, u[:, ch, r, col], temperature)
        return k

    @torch.no_grad()
    def sample_fast(self, k, u, y=None, start=0, temperature=1.0):
        """The same images as sample_naive, computing only what can reach the next pixel (gated
        network): the vertical stack once per row over the rows that reach it, then per pixel
        the horizontal stack over the columns that reach it. The original network: naive."""
        if self.cfg.arch != "gated":
            return self.sample_naive(k, u, y, start, temperature)
        k = k.clone()
        net, c, s = self.net, self.cfg.channels, self.cfg.image_size
        reach = sum(layer.k // 2 for layer in net.layers)    # rows above, columns left that matter
        conds, cache, feats = net.conds(y, len(k)), {}, {}
        if net.attention:   # each attention block's keys and values: a position's, once drawn
            net(self.net_input(k), y, cache)
        for r in range(start // s, s):
            # the vertical stack on rows r-1-reach .. r-1 -> its input to each layer at row r
            v_rows = []
            if r == 0:
                for layer in net.layers:
                    v_rows.append(layer.v_to_h.bias.reshape(1, -1, 1, 1).expand(len(k), -1, 1, s))
            else:
                v = self.net_input(k[:, :, max(0, r - 1 - reach):r])
                for layer, cond in zip(net.layers, conds):
                    v_pre = layer.vertical(v)
                    v_rows.append(layer.v_to_h(v_pre[:, :, -1:]))     # row r-1, shifted to row r
                    v = gate(v_pre + cond)
            for col in range(start % s if r == start // s else 0, s):
                c0 = max(0, col - reach)
                where = torch.arange(r * s + c0, r * s + col + 1, device=k.device)
                for ch in range(c):
                    h, skip = self.net_input(k[:, :, r:r + 1, c0:col + 1]), 0
                    for i, (layer, cond, v_row) in enumerate(zip(net.layers, conds, v_rows)):
                        h, sk = layer.horizontal(h, v_row[..., c0:col + 1], cond)
                        skip = skip + sk[..., -1:]
                        if i in cache:
                            feats[i] = h
                            h = h + net.attention[str(i)](h, where, *cache[i])
                    out = net.head(skip).float()[:, :, 0, 0]             # (B, C * per channel)
                    logits = out.reshape(len(k), c, -1)[:, ch].squeeze(1)  # (B,) or (B, levels)
                    k[:, ch, r, col] = self.draw(logits, u[:, ch, r, col], temperature)
                x = self.net_input(k[:, :, r:r + 1, col:col + 1])    # drawn: it joins the cache
                for i, (keys, values) in cache.items():
                    kv = net.attention[str(i)].keys_values(x, feats[i][..., -1:], where[-1:])
                    keys[:, :, where[-1]], values[:, :, where[-1]] = kv[0][:, :, 0], kv[1][:, :, 0]
        return k


# ----------------------------------------------------------------------------------------------
# After the papers: PixelSNAIL's causal self-attention (Config.attention > 0, --attention N)

class Attention(nn.Module):
    """PixelSNAIL's causal attention block (Chen et al. 2018, arXiv:1712.09763): each position
    attends to every strictly earlier one in raster order. Keys and values from the network's
    input, the features and the position; the query from the features and the position; the
    result added to the features. Differences from the paper: one head per colour (one for
    grey), its query read and its result written under mask B so colours stay causal; no
    dropout. The first position has nothing before it: its attention gives zero."""

    def __init__(self, cin, width, colours, size, dk=16):
        super().__init__()
        self.heads, self.dk, self.size = colours, dk, size
        self.q = MaskedConv2d(width, colours * dk, (1, 1), (0, 0), "B", colours)
        self.kv = nn.Conv2d(cin + width, colours * (dk + width), 1)
        self.q_pos, self.kv_pos = nn.Linear(2, colours * dk), nn.Linear(2, colours * (dk + width))
        self.out = MaskedConv2d(colours * width, width, (1, 1), (0, 0), "B", colours)

    def position(self, where, layer):   # flat raster indices (N,) -> layer((row, col)) (N, out)
        rc = torch.stack([where // self.size, where % self.size], 1).to(layer.weight)
        return layer(rc / self.size * 2 - 1)

    def split(self, t, d):              # (B, heads * d, ...) -> (B, heads, N, d)
        return t.reshape(len(t), self.heads, d, -1).transpose(2, 3)

    def keys_values(self, x, h, where):
        """Keys (B, heads, N, dk) and values (B, heads, N, width) of the positions `where` (N,)
        from the input x and features h there, (B, C, 1 or H, N or W)."""
        kv = self.kv(torch.cat([x, h.to(x.dtype)], 1)).flatten(2)
        kv = kv + self.position(where, self.kv_pos).T
        k, v = kv.split([self.heads * self.dk, kv.shape[1] - self.heads * self.dk], 1)
        return self.split(k, self.dk), self.split(v, v.shape[1] // self.heads)

    def forward(self, h, where, k, v):
        """The block's output at the positions `where` (N,) of h (B, width, 1 or H, N or W), from
        the keys and values of every position (k, v: (B, heads, H W, d)): softmax(q k^T / sqrt
        dk) v over the earlier positions (Vaswani et al. 2017, eq. 1)."""
        q = self.split(self.q(h).flatten(2) + self.position(where, self.q_pos).T, self.dk)
        earlier = torch.arange(k.shape[2], device=h.device) < where[:, None]     # (N, H W)
        earlier[:, 0] |= where == 0          # the first position: itself, then its output zeroed
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=earlier)
        out = out * (where > 0)[:, None]                                   # (B, heads, N, w)
        return self.out(out.transpose(2, 3).reshape(h.shape[0], -1, *h.shape[2:]).to(h.dtype))


# ----------------------------------------------------------------------------------------------
# Plumbing: training, sampling, evaluation and the command line (uses common.py)

NAME = "pixelcnn"


def load(out, device="cpu"):
    """The model in <out>/ckpt.pt, rebuilt from the checkpoint alone, in eval mode."""
    import common
    return common.load_model(out, NAME, lambda config: PixelCNN(Config(**config)), device)


def vq_model(run, device):
    """The VQ-VAE of a vae.py --codebook run (the first stage of a prior over codes)."""
    import common
    import vae
    model = vae.load(run, device)
    if not model.cfg.codebook:
        raise common.UserError(f"--codes {run}: a vae.py run trained with --codebook K is needed")
    return model


def code_data(args, vq, split):
    """A split of the data named on the command line as vq sees it (binarized once, seed 0, for
    a Bernoulli decoder), its code grids (N, 1, h, w) and its labels (or None)."""
    import common
    c, s = vq.cfg.channels, vq.cfg.image_size
    images, labels = common.load_split(args, split, (c, s, s))
    binary = vq.cfg.likelihood == "bernoulli"
    x = common.binarize(images, True, torch.Generator().manual_seed(0)) if binary else \
        common.to_unit(images)
    codes = torch.cat([vq.encode_codes(x[i:i + 500].to(args.device)).cpu()
                       for i in range(0, len(x), 500)])
    return x, codes[:, None], labels


def train(args):
    """Trains on the images, or (--codes RUN) a prior over a VQ-VAE's code grids (van den Oord et
    al. 2017, Sec. 3.2): one channel of K unordered levels, each grid encoded once."""
    import common
    import os
    vq = vq_model(args.codes, args.device) if args.codes else None
    images, labels = code_data(args, vq, "train")[1:] if vq else common.load_split(args, "train")
    cfg = Config(image_size=images.shape[-1], channels=images.shape[1], arch=args.arch,
                 width=args.width, layers=args.layers, attention=args.attention,
                 levels=vq.cfg.codebook if vq else 2 if args.binarize else 256,
                 num_classes=common.num_classes(args, labels), embed=16 if vq else 0,
                 codes=os.path.abspath(args.codes) if vq else "")
    if cfg.channels not in (1, 3):
        raise common.UserError(f"pixelcnn.py handles 1 or 3 colour channels, got {cfg.channels}")
    if not 0 <= cfg.attention <= cfg.layers or cfg.attention and cfg.arch != "gated":
        raise common.UserError(f"--attention {cfg.attention}: 0 to --layers ({cfg.layers}) blocks, "
                               "and only with --arch gated")
    model = PixelCNN(cfg)
    what = (f"a prior over {cfg.levels} codes" if vq else "Bernoulli" if cfg.levels == 2 else
            "256-way softmax")
    print(f"{NAME}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{len(images)} training images, {cfg.arch}, {cfg.attention} attention blocks, {what}")
    common.fit(args, NAME, model, images, labels if cfg.num_classes else None,
               (lambda k, g: model.to_unit(k)) if vq else common.train_transform(cfg.levels == 2),
               lr_schedule="cosine")


def test_data(args, cfg):
    """The test split as the model sees it (binarized once, with seed 0) and its labels."""
    import common
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    return common.test_split(args, shape, cfg.levels == 2, bool(cfg.num_classes))


def sample(args):
    import common
    import time
    model = load(args.out, args.device)
    cfg, n = model.cfg, args.num_samples
    y, nrow = common.grid_labels(args, n, cfg.num_classes)
    gen, start = torch.Generator().manual_seed(args.seed), time.time()
    x = model.sample(n, y, args.temperature, generator=gen, naive=args.naive)
    if cfg.codes:                               # codes -> images through the VQ-VAE's decoder
        x = vq_model(cfg.codes, args.device).decode_codes(model.to_int(x)[:, 0])
    seconds = time.time() - start
    path = common.save_images(args.out, "samples", x, nrow, y)
    naive = args.naive or cfg.arch != "gated"             # the original has the naive one only
    print(f"{NAME}: {n} samples ({'naive' if naive else 'fast'}) in {seconds:.1f}s "
          f"({seconds / n:.3f}s per image) -> {path}")
    if cfg.codes:
        return
    # completion: the top half of 8 test images (or all, if fewer) given; 4 completions each
    data, labels = test_data(args, cfg)
    x0 = data[:8].to(args.device)
    yc = None if labels is None else labels[:len(x0)].to(args.device)
    half = (cfg.image_size // 2) * cfg.image_size                   # pixels given, raster order
    occluded = x0.clone()
    occluded[:, :, cfg.image_size // 2:] = -1
    fills = [model.sample(len(x0), yc, args.temperature, occluded, half,
                          torch.Generator().manual_seed(args.seed + j + 1), args.naive)
             for j in range(4)]
    rows = torch.stack([x0, occluded] + fills, 1).flatten(0, 1)      # original, occluded, 4 fills
    print(f"{NAME}: completions -> {common.save_images(args.out, 'completions', rows, 6)}")


@torch.no_grad()
def two_stage_bound(model, vq, x, codes, y=None):
    """Per image, the two terms of -log p(x) <= -log p(x | z_q(x)) - log p(z_q(x)) (van den Oord
    et al. 2017): the VQ-VAE's reconstruction term and this prior's exact NLL of the codes."""
    z_q = vq.quantizer.codebook[codes[:, 0]].permute(0, 3, 1, 2)
    return -vq.log_px_given_z(vq.data(x), z_q), model.nll(model.to_unit(codes), y)


@torch.no_grad()
def evaluate(args):
    """Exact test NLL (fp32) in nats per image and bits/dim; for a prior over codes, the
    two-stage bound, its terms, and vae.py's bound with the uniform prior (h w log K)."""
    import common
    model = load(args.out, args.device)
    cfg = model.cfg
    vq = vq_model(cfg.codes, args.device) if cfg.codes else None
    x, data, labels = code_data(args, vq, "test") if vq else (None, *test_data(args, cfg))
    n = min(args.eval_images or len(data), len(data))
    rec = nll = 0.0
    for i in range(0, n, args.batch_size):
        j, batch = min(i + args.batch_size, n), data[i:i + args.batch_size].to(args.device)
        y = labels[i:j].to(args.device) if cfg.num_classes else None
        if vq:
            r, p = two_stage_bound(model, vq, x[i:j].to(args.device), batch, y)
            rec += r.cpu().double().sum().item()
        else:
            p = model.nll(batch, y)
        nll += p.cpu().double().sum().item()                    # float64 on the CPU only
    dims = (x if vq else data)[0].numel() * math.log(2)
    what = dict(reconstruction_nats=rec / n, prior_nats=nll / n, codes=cfg.codes,
                uniform_prior_nats=data[0].numel() * math.log(cfg.levels),
                note="nll_nats: the two-stage bound -log p(x | z_q(x)) - log p(z_q(x)) (van den "
                     "Oord et al. 2017), the prior's part exact") if vq else dict(
        likelihood="bernoulli" if cfg.levels == 2 else "softmax256", note="exact -log p(x)"
        + ("; test split binarized once with seed 0" if cfg.levels == 2 else ""))
    common.write_metrics(args.out, dict(
        data=args.data, images=n, nll_nats=(rec + nll) / n, bits_per_dim=(rec + nll) / n / dims,
        arch=cfg.arch, attention=cfg.attention, conditional=bool(cfg.num_classes), **what))


def main(argv=None):
    import common
    # batch 16 and lr 4e-3: the best of the settings tried in 4-minute runs on real MNIST (README);
    # many small steps beat fewer large ones on a 2-core CPU. 3000 steps: about 10 minutes there.
    p = common.make_parser(NAME, __doc__, steps=3000, batch_size=16, lr=4e-3, binarize=True)
    a = p.add_argument
    a("--arch", choices=["gated", "pixelcnn"], default="gated",
      help="gated: Gated PixelCNN; pixelcnn: the original masked network (has a blind spot)")
    a("--width", type=common.positive(int), default=Config.width)
    a("--layers", type=common.positive(int), default=Config.layers)
    a("--temperature", type=common.positive(float), default=1.0)
    a("--naive", action="store_true", help="sample with the naive reference sampler")
    a("--attention", type=int, default=Config.attention,
      help="causal self-attention blocks among the gated layers (PixelSNAIL)")
    a("--codes", metavar="RUN", default=None,
      help="a prior over the codes of a vae.py --codebook run: train it; --sample decodes")
    common.run(p, argv, train, sample, evaluate)


if __name__ == "__main__":
    main()
