"""DDPM: denoising diffusion probabilistic models, with fast samplers and classifier-free guidance.

Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models", arXiv:2006.11239.
A fixed forward process adds Gaussian noise to an image over T steps; one network, shared by all
steps, learns to undo one step at a time; sampling starts from pure noise and denoises T times.

    python ddpm.py --train                      # built-in digits; ~10 min on a 2-core CPU
    python ddpm.py --sample --eval              # grids + .npz in runs/ddpm, bits/dim in eval.json
    python ddpm.py --train --conditional --data mnist --data-dir DIR --out runs/ddpm-mnist

In code: model = DDPM(Config()) (or DDPM(cfg, net=f) for any network f(x_t, t, y)); then
model.loss(x, y) -> (loss, logs), model.sample(n, y, sampler=..., ...), model.nll(x, y) (the bound).
Images at this API are float (B, C, H, W) in [-1, 1], as the paper scales them.

Maths (Ho et al. equation numbers; t is 1-based in the paper, 0-based in this code: index
t = 0..T-1 is the paper's step t+1, so alphas_cumprod[0] = 1 - beta_1):
    q(x_t | x_{t-1}) = N(sqrt(1 - b_t) x_{t-1}, b_t I)                                (2)
    q(x_t | x_0)     = N(sqrt(abar_t) x_0, (1 - abar_t) I),  abar_t = prod_s (1 - b_s) (4)
    q(x_{t-1} | x_t, x_0) = N(mu~_t, b~_t I), mu~_t and b~_t as in                     (6, 7)
    L_simple = E_{t, x_0, eps} || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2
                                                                                      (14)
    bound: L = L_T + sum_{t>1} KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) + L_0          (5, 13)
    Min-SNR-gamma (Hang et al. 2023, arXiv:2303.09556): the step-t loss, written as an error in
    x_0, weighted by min(SNR_t, gamma), SNR_t = abar_t / (1 - abar_t)
Extensions, each a flag: cosine schedule (Nichol & Dhariwal 2021, arXiv:2102.09672, eq. 17),
x0- and v-prediction (Salimans & Ho 2022, arXiv:2202.00512), DDIM (Song, Meng & Ermon 2021,
arXiv:2010.02502, eq. 12), DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Algorithm 2) and
Heun's method (Karras et al. 2022, arXiv:2206.00364, Algorithm 1) on the probability-flow ODE,
classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598, eq. 6), inpainting by replacing
the known pixels (with RePaint resampling, Lugmayr et al. 2022), zero-shot super-resolution (ILVR,
Choi et al. 2021, arXiv:2108.02938) and denoising from the matching step (SDEdit-style, Meng et
al. 2021, arXiv:2108.01073).
Deviations: a smaller U-Net than the paper's 35.7M (width and depth are flags), whose blocks take
the step and class by AdaGN (Dhariwal & Nichol 2021, arXiv:2105.05233) rather than by addition;
gradient clipping at 1 as in the paper's code; images in [-1, 1] everywhere. Training defaults
tuned for a budget of a few thousand steps, measured on the README's convergence curves: the
network predicts v with Min-SNR-5 weights, learning rate 1e-3 after a 50-step warm-up, EMA decay
0.99. An option: --low-discrepancy spreads each batch's steps t evenly over 0..T-1 (Kingma et al.
2021; each t still uniform). The paper's network, L_simple and settings: --no-adagn --target eps
--min-snr 0 --lr 2e-4 --warmup 5000 --ema 0.9999 (for 800k steps).
Things to try: --target x0 (blurrier), --schedule cosine, --conditional --guidance 0 vs 3.
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
    width: int = 32            # channels at full resolution (paper, CIFAR-10: 128)
    mults: tuple = (1, 2, 2)   # channel multiplier per resolution: 28 -> 14 -> 7
    res_blocks: int = 1        # residual blocks per resolution (paper: 2)
    dropout: float = 0.0       # paper, CIFAR-10: 0.1
    num_classes: int = 0       # 0 = unconditional; else class-conditional with a "no class" label
    timesteps: int = 1000      # T (paper: 1000)
    schedule: str = "linear"   # linear (paper) | cosine (Nichol & Dhariwal)
    target: str = "v"          # what the network predicts: eps (paper) | x0 | v (see README)
    p_uncond: float = 0.1      # label dropout for classifier-free guidance (Ho & Salimans: 0.1-0.2)
    clip_x0: bool = True       # clip predicted x_0 to [-1, 1] when sampling (pixels; not latents)
    min_snr_gamma: float = 5.0  # Min-SNR-gamma loss weights (Hang et al. 2023); 0: plain MSE
    adagn: bool = True         # step and class scale and shift the normalised features (AdaGN,
                               # Dhariwal & Nichol 2021); False: their embedding is added (Ho)
    low_discrepancy: bool = False  # a batch's steps t spread evenly over 0..T-1 (Kingma et al.;
                               # measured no better here, so off: see the README)
    sr_factor: int = 0         # > 0: super-resolution (SR3), the net also sees x0 downsampled by it


# ----------------------------------------------------------------------------------------------
# The network: a small U-Net (Ronneberger et al. 2015) as in Ho et al. App. B

def timestep_embedding(t, dim):
    """Sinusoidal embedding of integer steps (Vaswani et al. 2017), (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


def norm(ch):
    return nn.GroupNorm(min(8, ch // 4), ch)  # paper: 32 groups on wider layers


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a skip. The embedding of the step (and class) enters between
    them: added to the features (Ho et al.), or with adagn as a per-channel scale and shift of the
    normalised features, AdaGN(h, e) = GroupNorm(h) (1 + s) + b, [s, b] = Linear(e) (Dhariwal &
    Nichol 2021, arXiv:2105.05233, Sec. 3; the 1 + makes the block start as a plain GroupNorm)."""

    def __init__(self, cin, cout, tdim, dropout, adagn=True):
        super().__init__()
        self.adagn = adagn
        self.norm1 = norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.to_scale_shift = nn.Linear(tdim, 2 * cout if adagn else cout)
        self.norm2 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.to_scale_shift(emb)[:, :, None, None]             # the step (and class) enter here
        if self.adagn:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over all positions, used at the lowest resolution."""

    def __init__(self, ch):
        super().__init__()
        self.norm = norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)             # (B, HW, C)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """eps_theta(x_t, t, y): (B, C, H, W) in, (B, C, H, W) out. Labels y in 0..num_classes, the
    last one (num_classes) meaning "no class"; y = None for an unconditional network."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        w, tdim = cfg.width, 4 * cfg.width
        self.time_mlp = nn.Sequential(
            nn.Linear(w, tdim),
            nn.SiLU(),
            nn.Linear(tdim, tdim))
        self.class_emb = nn.Embedding(cfg.num_classes + 1, tdim) if cfg.num_classes else None
        inputs = cfg.channels * (2 if cfg.sr_factor else 1)               # SR3: x_t and the low-res
        self.conv_in = nn.Conv2d(inputs, w, 3, padding=1)
        chans, ch, skips = [w * m for m in cfg.mults], w, [w]
        self.down = nn.ModuleList()
        for i, c in enumerate(chans):
            for _ in range(cfg.res_blocks):
                self.down.append(ResBlock(ch, c, tdim, cfg.dropout, cfg.adagn))
                ch = c
                skips.append(ch)
            if i < len(chans) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))   # 28 -> 14 -> 7
                skips.append(ch)
        self.mid_block1 = ResBlock(ch, ch, tdim, cfg.dropout, cfg.adagn)
        self.mid_attention = Attention(ch)
        self.mid_block2 = ResBlock(ch, ch, tdim, cfg.dropout, cfg.adagn)
        self.up = nn.ModuleList()
        for i, c in reversed(list(enumerate(chans))):
            for _ in range(cfg.res_blocks + 1):
                self.up.append(ResBlock(ch + skips.pop(), c, tdim, cfg.dropout, cfg.adagn))
                ch = c
            if i > 0:
                upsample = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                         nn.Conv2d(ch, ch, 3, padding=1))   # 7 -> 14 -> 28
                self.up.append(upsample)
        self.norm_out = norm(ch)
        self.conv_out = nn.Conv2d(ch, cfg.channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)    # the network starts by predicting 0
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, t, y=None):
        emb = self.time_mlp(timestep_embedding(t, self.cfg.width))      # (B, 4w)
        if self.class_emb is not None:
            y = torch.full_like(t, self.cfg.num_classes) if y is None else y
            emb = emb + self.class_emb(y)
        emb = F.silu(emb)
        h = self.conv_in(x)                                             # (B, w, H, W)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        h = self.mid_block1(h, emb)                                     # (B, 2w, H/4, W/4)
        h = self.mid_attention(h)
        h = self.mid_block2(h, emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], 1), emb)             # the skip connection
            else:
                h = layer(h)
        h = F.silu(self.norm_out(h))
        return self.conv_out(h)                                         # (B, C, H, W)


# ----------------------------------------------------------------------------------------------
# The noise schedule and the Gaussian arithmetic

def linear_beta_schedule(timesteps, start=1e-4, end=0.02):
    """Ho et al. Sec. 4: betas rise linearly from 1e-4 to 0.02 for T = 1000; for another T the
    end points are scaled by 1000/T (as in Nichol & Dhariwal's code) and capped below 1."""
    scale = 1000 / timesteps
    betas = torch.linspace(scale * start, scale * end, timesteps, dtype=torch.float64)
    return betas.clamp(max=0.999)


def cosine_beta_schedule(timesteps, s=0.008):
    """Nichol & Dhariwal eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) * pi/2);
    betas = 1 - abar_t / abar_{t-1}, clipped at 0.999 (their Sec. 3.2)."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)


def log_bin_mass(lo, hi):
    """log(Phi(hi) - Phi(lo)) for lo < hi (either may be infinite), accurate in both tails: a bin
    above 0 is mirrored below it (Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)), then
    log Phi(b) + log(1 - Phi(a) / Phi(b)), both logs from log_ndtr and expm1 for the ratio, so
    nothing underflows and a narrow bin keeps its digits."""
    flip = lo > 0
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_a, log_b = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return log_b + torch.log(-torch.expm1(log_a - log_b))          # log_a - log_b <= 0


def discretized_gaussian_log_likelihood(x, mean, log_scale):
    """Ho et al. eq. 13: log p(x_0 | x_1) for x in [-1, 1] on the 256-value grid: the Gaussian
    mass in the bin [x - 1/255, x + 1/255], the end bins stretched to -inf and +inf. Computed in
    float64 on the CPU, every bin the same way (log_bin_mass) and never floored. Deviation: Ho et
    al.'s code clamps each bin's mass at 1e-12 (at most 27.6 nats per pixel) and approximates the
    normal CDF; here a pixel far in the tails costs its exact mass."""
    x, mean, log_scale = (v.detach().cpu().double() for v in (x, mean, log_scale))
    inv_std = torch.exp(-log_scale)
    lo = torch.where(x < -0.999, -math.inf, inv_std * (x - mean - 1 / 255))
    hi = torch.where(x > 0.999, math.inf, inv_std * (x - mean + 1 / 255))
    return log_bin_mass(lo, hi)


def extract(a, t, x):
    """a[t] shaped to broadcast against x: (B,) -> (B, 1, 1, 1)."""
    return a[t].float().reshape(-1, *([1] * (x.dim() - 1)))


# ----------------------------------------------------------------------------------------------
# The model: Ho et al.'s forward process, loss (Algorithm 1), sampler (Algorithm 2) and bound

class DDPM(nn.Module):
    """The model a copier imports: the fixed forward process (the schedule, buffers only) and
    the network that reverses it. Images at this API: float (B, C, H, W) in [-1, 1].

    net: any module f(x_t, t, y) -> (B, C, H, W) predicting cfg.target; default the U-Net of
    cfg. With cfg.num_classes > 0 it always receives labels y in 0..num_classes, where
    num_classes is the "no class" label (label dropout, guidance, y = None); unconditional,
    it receives y = None. Step index t is 0-based (see the module docstring)."""

    def __init__(self, cfg, net=None):
        super().__init__()
        cfg.mults = tuple(cfg.mults)
        if not cfg.min_snr_gamma >= 0:
            raise ValueError(f"min_snr_gamma must be >= 0 (0: off), got {cfg.min_snr_gamma}")
        self.cfg = cfg
        self.net = UNet(cfg) if net is None else net
        self.low = None      # a super-resolution model's low-resolution input (see call_net)
        schedules = {"linear": linear_beta_schedule, "cosine": cosine_beta_schedule}
        betas = schedules[cfg.schedule](cfg.timesteps)                      # (T,) float64
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)                           # abar_t, eq. 4
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)  # eq. 7
        # b~ is 0 at the first step; its log is clipped to the next value (as in Ho et al.'s code)
        clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]])
        buffers = dict(
            betas=betas,
            alphas_cumprod=alphas_cumprod,
            alphas_cumprod_prev=alphas_cumprod_prev,
            sqrt_alphas_cumprod=alphas_cumprod.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1 - alphas_cumprod).sqrt(),
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=clipped.log(),
            posterior_mean_coef1=betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),  # eq. 7
            posterior_mean_coef2=(1 - alphas_cumprod_prev) * alphas.sqrt() / (1 - alphas_cumprod),
            large_variance=torch.cat([posterior_variance[1:2], betas[1:]]),    # sigma^2 = b_t
        )
        buffers["large_log_variance"] = buffers["large_variance"].log()
        # computed in float64, kept on the device in float32 (the precision the networks'
        # arithmetic uses; MPS has no float64); the float64 values stay on the CPU in `exact`
        # for the sampler's scalar arithmetic (DDIM's sigma) and for the tests
        self.exact = buffers
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)  # rebuilt from the config

    def call_net(self, x_t, t, y):
        """The network at (x_t, t, y). A super-resolution model (cfg.sr_factor, SR3: Saharia et
        al. 2021, arXiv:2104.07636, Sec. 2) also gets its low-resolution image self.low, each
        pixel copied to its factor x factor block, as more input channels beside x_t.
        (Deviation: SR3 upsamples bicubically; block copies keep the low image exactly.)"""
        if self.cfg.sr_factor:
            f = self.cfg.sr_factor
            up = self.low.repeat_interleave(f, -2).repeat_interleave(f, -1)
            x_t = torch.cat([x_t, up.repeat(len(x_t) // len(up), 1, 1, 1)], 1)  # guidance: 2 x
        return self.net(x_t, t, y)

    def labels(self, y, n):
        """The labels the network sees: y, or the "no class" label for a conditional model
        given none; None for an unconditional model."""
        if not self.cfg.num_classes:
            if y is not None:
                raise ValueError("this DDPM is unconditional (num_classes = 0); pass y = None")
            return None
        if y is None:
            device = self.betas.device
            return torch.full((n,), self.cfg.num_classes, dtype=torch.long, device=device)
        return y

    # -- the forward process
    def q_sample(self, x0, t, noise):
        """Eq. 4: a draw of x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)."""
        mean_coef = extract(self.sqrt_alphas_cumprod, t, x0)
        std = extract(self.sqrt_one_minus_alphas_cumprod, t, x0)
        return mean_coef * x0 + std * noise

    def q_posterior_mean_variance(self, x0, x_t, t):
        """Eqs. 6-7: mean, variance and log variance of q(x_{t-1} | x_t, x_0)."""
        mean = (extract(self.posterior_mean_coef1, t, x_t) * x0
                + extract(self.posterior_mean_coef2, t, x_t) * x_t)
        var = extract(self.posterior_variance, t, x_t)
        return mean, var, extract(self.posterior_log_variance_clipped, t, x_t)

    # -- the three parameterisations, each convertible to the others (Salimans & Ho, App. D)
    def predict_x0_from_eps(self, x_t, t, eps):
        """Eq. 15 solved for x_0: (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        std = extract(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        return (x_t - std * eps) / extract(self.sqrt_alphas_cumprod, t, x_t)

    def predict_eps_from_x0(self, x_t, t, x0):
        mean_coef = extract(self.sqrt_alphas_cumprod, t, x_t)
        return (x_t - mean_coef * x0) / extract(self.sqrt_one_minus_alphas_cumprod, t, x_t)

    def v_target(self, x0, t, eps):
        """v = sqrt(abar) eps - sqrt(1 - abar) x0."""
        return (extract(self.sqrt_alphas_cumprod, t, x0) * eps
                - extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0)

    def predict_x0_from_v(self, x_t, t, v):
        return (extract(self.sqrt_alphas_cumprod, t, x_t) * x_t
                - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v)

    def to_eps(self, x_t, t, out):
        """The network's output (eps, x0 or v, as cfg.target says) as a prediction of eps."""
        if self.cfg.target == "eps":
            return out
        x0 = out if self.cfg.target == "x0" else self.predict_x0_from_v(x_t, t, out)
        return self.predict_eps_from_x0(x_t, t, x0)

    def predict_eps(self, x_t, t, y=None, guidance=0.0):
        """eps_theta(x_t, t, y), with classifier-free guidance (Ho & Salimans eq. 6):
        eps~ = (1 + w) eps(x_t, y) - w eps(x_t, no class). w = 0: the plain conditional model."""
        y = self.labels(y, len(x_t))
        if y is None or guidance == 0:
            return self.to_eps(x_t, t, self.call_net(x_t, t, y))
        null = torch.full_like(y, self.cfg.num_classes)
        both = self.call_net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
        out_c, out_u = both.chunk(2)
        eps_c, eps_u = self.to_eps(x_t, t, out_c), self.to_eps(x_t, t, out_u)
        return (1 + guidance) * eps_c - guidance * eps_u

    # -- training: Algorithm 1
    def loss_weight(self, t):
        """Min-SNR-gamma (Hang et al. 2023, arXiv:2303.09556): each step's loss, written as an
        error in x_0, gets the weight min(SNR_t, gamma), SNR_t = abar_t / (1 - abar_t). Since
        ||eps - eps^||^2 = SNR_t ||x0 - x0^||^2 and ||v - v^||^2 = (SNR_t + 1) ||x0 - x0^||^2,
        the same weight on the target's own MSE is min(SNR, g) / SNR (eps), min(SNR, g) (x0)
        or min(SNR, g) / (SNR + 1) (v). gamma = 0: weight 1, the plain MSE of the target;
        gamma = inf: the eps loss for every target. (B,) float32."""
        if not self.cfg.min_snr_gamma:
            return torch.ones(t.shape, device=t.device)
        snr = self.alphas_cumprod[t] / (1 - self.alphas_cumprod[t])
        clipped = snr.clamp(max=self.cfg.min_snr_gamma)
        divisor = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[self.cfg.target]
        return (clipped / divisor).float()

    def draw_steps(self, n, device):
        """n steps t, each uniform over 0..T-1 (Algorithm 1, line 3). With cfg.low_discrepancy
        they are drawn together (Kingma et al. 2021, "Variational Diffusion Models",
        arXiv:2107.00630, Sec. 5.3): one u ~ U[0, 1), image i gets (u + i/n) mod 1, scaled to the
        T steps, so each batch covers the whole range evenly. Each t alone is still uniform, so
        the expected loss is unchanged; only its variance from batch to batch falls."""
        T = self.cfg.timesteps
        if not self.cfg.low_discrepancy:
            return torch.randint(0, T, (n,), device=device)
        u = (torch.rand((), device=device, dtype=torch.float64)
             + torch.arange(n, device=device, dtype=torch.float64) / n) % 1
        return (u * T).long().clamp(max=T - 1)

    def loss(self, x, y=None):
        """Algorithm 1 / eq. 14 (L_simple): t uniform over all T steps (0..T-1, the last one
        included; draw_steps), MSE between the network's output and its target (eps, x0 or v),
        per image times loss_weight(t) (1 unless Min-SNR-gamma is on). Labels are replaced by
        "no class" with probability p_uncond (Ho & Salimans, Algorithm 1)."""
        x0 = x                                                            # (B, C, H, W) in [-1, 1]
        if self.cfg.sr_factor:                  # SR3: the pair (x0 downsampled, x0), made here
            self.low = F.avg_pool2d(x0, self.cfg.sr_factor)
        t = self.draw_steps(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        y = self.labels(y, len(x0))
        if y is not None and self.cfg.p_uncond > 0:                       # label dropout
            drop = torch.rand(y.shape, device=y.device) < self.cfg.p_uncond
            y = torch.where(drop, torch.full_like(y, self.cfg.num_classes), y)
        target = {"eps": noise, "x0": x0, "v": self.v_target(x0, t, noise)}[self.cfg.target]
        error = (self.call_net(x_t, t, y).float() - target) ** 2
        per_image = error.flatten(1).mean(1)                              # (B,)
        return (self.loss_weight(t) * per_image).mean(), {}

    # -- sampling: Algorithm 2
    def denoise(self, x_t, t, y=None, guidance=0.0):
        """The model's x0_hat and eps_hat at (x_t, t), guided: x0_hat from eps_hat (eq. 15),
        clipped to [-1, 1] with cfg.clip_x0, and eps_hat then recomputed from the clipped x0_hat
        so the two stay consistent. Every sampler below takes its predictions from here."""
        eps = self.predict_eps(x_t, t, y, guidance).float()
        x0 = self.predict_x0_from_eps(x_t, t, eps)
        if self.cfg.clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = self.predict_eps_from_x0(x_t, t, x0)
        return x0, eps

    def p_mean_variance(self, x_t, t, y=None, guidance=0.0, variance="small"):
        """p(x_{t-1} | x_t) = N(mu~(x_t, x0_hat), sigma_t^2): x0_hat from the predicted eps
        (eq. 15), sigma_t^2 = b~_t ("small") or b_t ("large"); Ho et al. Sec. 3.2: both work."""
        x0, _ = self.denoise(x_t, t, y, guidance)
        mean, var, logvar = self.q_posterior_mean_variance(x0, x_t, t)
        if variance == "large":
            var = extract(self.large_variance, t, x_t)
            logvar = extract(self.large_log_variance, t, x_t)
        return mean, var, logvar, x0

    def p_sample(self, x_t, i, y=None, guidance=0.0, variance="small"):
        """One reverse step, Algorithm 2 line 4: x_{t-1} = mu_theta(x_t, t) + sigma_t z, with
        z ~ N(0, I), and no noise on the last step (i = 0, the paper's t = 1)."""
        t = torch.full((x_t.shape[0],), i, device=x_t.device, dtype=torch.long)
        mean, _, logvar, _ = self.p_mean_variance(x_t, t, y, guidance, variance)
        if i == 0:
            return mean
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(x_t)

    @torch.no_grad()
    def p_sample_loop(self, shape, y=None, guidance=0.0, variance="small", frames=None,
                      noise=None, progress=None):
        """Algorithm 2: x_T ~ N(0, I) (or `noise`), then T reverse steps. frames: a list that
        receives 10 snapshots from x_T to x_0, for a picture of the chain. progress(k, n): called
        after each step."""
        x = torch.randn(shape, device=self.betas.device) if noise is None else noise
        marks = set(torch.linspace(0, self.cfg.timesteps, 10).round().long().tolist())
        for done, i in enumerate(reversed(range(self.cfg.timesteps))):
            if frames is not None and done in marks:
                frames.append(x)
            x = self.p_sample(x, i, y, guidance, variance)
            if progress:
                progress(done + 1, self.cfg.timesteps)
        if frames is not None:
            frames.append(x)
        return x

    SAMPLERS = ("ddpm", "ddim", "dpm", "heun")

    @torch.no_grad()
    def sample(self, n, y=None, sampler="dpm", steps=10, eta=0.0, guidance=1.0,
               variance="small", noise=None, progress=None, low=None):
        """n images in [-1, 1]. sampler: "ddpm" (Algorithm 2, all T steps; variance "small" or
        "large"), "ddim" (Song et al., `steps` steps, noise eta), "dpm" (DPM-Solver++(2M),
        `steps` network calls) or "heun" (Karras et al., `steps` steps, 2 steps - 1 calls).
        guidance: classifier-free guidance scale w for a conditional model (ignored without
        labels y). noise: x_T to start from (default: drawn); progress(k, n) after each step.
        low: a super-resolution model's (n, C, H / f, W / f) low-resolution images."""
        c, s = self.cfg.channels, self.cfg.image_size
        shape = (n, c, s, s)
        if self.cfg.sr_factor:
            f = self.cfg.sr_factor
            if low is None or tuple(low.shape) != (n, c, s // f, s // f):
                raise ValueError(f"a super-resolution DDPM needs low = (n, C, H / {f}, "
                                 f"W / {f}) images")
            self.low = low
        if sampler == "ddpm":
            return self.p_sample_loop(shape, y, guidance, variance, noise=noise, progress=progress)
        if sampler == "ddim":
            return self.ddim_sample(shape, steps, eta, y, guidance, noise, progress)
        if sampler == "dpm":
            return self.dpm_solver_sample(shape, steps, y, guidance, noise, progress)
        if sampler == "heun":
            return self.heun_sample(shape, steps, y, guidance, noise, progress)
        raise ValueError(f"sampler {sampler!r}: choose one of {', '.join(self.SAMPLERS)}")

    # -- the variational bound (eq. 5), in nats per image
    @torch.no_grad()
    def bound_terms(self, x0, y=None, variance="small"):
        """Per image: prior L_T, the sum of the KL terms L_1..L_{T-1} and L_0 (eq. 13), in nats."""
        b, T = x0.shape[0], self.cfg.timesteps
        dims = list(range(1, x0.dim()))
        if self.cfg.sr_factor:                         # the bound on p(x0 | x0 downsampled)
            self.low = F.avg_pool2d(x0, self.cfg.sr_factor)
        t_last = torch.full((b,), T - 1, device=x0.device, dtype=torch.long)
        mean_T = extract(self.sqrt_alphas_cumprod, t_last, x0) * x0
        logvar_T = extract(torch.log(1 - self.alphas_cumprod), t_last, x0)
        zero = torch.zeros_like(x0)
        prior = normal_kl(mean_T, logvar_T, zero, zero).sum(dims)               # L_T
        kl_sum, decoder = torch.zeros(b, device=x0.device), None
        for i in range(T):
            t = torch.full((b,), i, device=x0.device, dtype=torch.long)
            x_t = self.q_sample(x0, t, torch.randn_like(x0))
            mean, _, logvar, _ = self.p_mean_variance(x_t, t, y, 0.0, variance)
            if i == 0:                                                          # L_0, eq. 13
                log_px = discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar)
                decoder = -log_px.sum(dims).float().to(x0.device)   # the sum in float64
            else:                                                               # L_{t-1}, eq. 5
                true_mean, _, true_logvar = self.q_posterior_mean_variance(x0, x_t, t)
                kl_sum += normal_kl(true_mean, true_logvar, mean, logvar).sum(dims)
        return prior, kl_sum, decoder

    @torch.no_grad()
    def decoder_floor(self, x0, variance="small"):
        """What L_0 costs at the least, per image in nats: eq. 13 with the decoder's mean on the
        true pixel. With clip_x0 the mean at t = 0 is the clipped x0 prediction, so no network
        does better: the fixed decoder sigma (0.0074 for the linear schedule) makes even a perfect
        one pay 0.35 nats for an end pixel (-1 or 1) and 0.90 for an interior one. variance:
        "small" or "large" (the same at t = 0)."""
        t = torch.zeros(x0.shape[0], device=x0.device, dtype=torch.long)
        small = variance == "small"
        table = self.posterior_log_variance_clipped if small else self.large_log_variance
        logvar, dims = extract(table, t, x0), list(range(1, x0.dim()))
        return -discretized_gaussian_log_likelihood(x0, x0, 0.5 * logvar).sum(dims).float()

    @torch.no_grad()
    def nll(self, x, y=None, variance="small"):
        """The variational bound L (eq. 5) per image, in nats: an upper bound on -log p(x)
        (-log p(x|y) with labels; a conditional model given none scores its "no class" p(x)).
        One network call per step per image: T calls."""
        prior, kls, decoder = self.bound_terms(x, y, variance)
        return prior + kls + decoder

    # ------------------------------------------------------------------------------------------
    # Extensions: faster samplers (DDIM, DPM-Solver++, Heun) and inpainting, on the same model.
    # The three fast samplers visit the same `steps` evenly spaced time steps from T to 1 and end
    # with the model's x0_hat at the last (the step to sigma = 0). DDIM with eta = 0, DPM-Solver++
    # and Heun solve the same probability-flow ODE, to first, second and second order.

    def sampling_steps(self, steps):
        """`steps` time steps (0-based) evenly spaced from T - 1 down to 0 (DDIM's spacing; the
        other samplers keep it so that a step count means the same times for all three)."""
        steps = min(steps, self.cfg.timesteps)
        return torch.linspace(self.cfg.timesteps - 1, 0, steps).round().long().tolist()

    def alpha_sigma(self, i):
        """alpha_t = sqrt(abar_t) and sigma_t = sqrt(1 - abar_t) at step i, from the float64
        schedule; i = -1 is x_0 itself (alpha 1, sigma 0)."""
        abar = float(self.exact["alphas_cumprod"][i]) if i >= 0 else 1.0
        return math.sqrt(abar), math.sqrt(1 - abar)

    def ddim_abar_sigma(self, i, j, eta):
        """abar at the next step j (1 after the last step, j = -1) and Song et al.'s sigma
        (eq. 16)."""
        abar = float(self.exact["alphas_cumprod"][i])
        abar_prev = float(self.exact["alphas_cumprod"][j]) if j >= 0 else 1.0
        return abar_prev, eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))

    @torch.no_grad()
    def ddim_sample(self, shape, steps=50, eta=0.0, y=None, guidance=0.0, noise=None,
                    progress=None):
        """Song et al. eq. 12 on `steps` evenly spaced steps from T to 1 (eta = 0: deterministic;
        eta = 1 over all T steps: the DDPM posterior variance):
        x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z."""
        x = torch.randn(shape, device=self.betas.device) if noise is None else noise
        seq = self.sampling_steps(steps)
        for k, (i, j) in enumerate(zip(seq, seq[1:] + [-1])):
            t = torch.full((shape[0],), i, device=x.device, dtype=torch.long)
            x0, eps = self.denoise(x, t, y, guidance)
            abar_prev, sigma = self.ddim_abar_sigma(i, j, eta)
            x = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma ** 2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * torch.randn_like(x)
            if progress:
                progress(k + 1, len(seq))
        return x

    @torch.no_grad()
    def dpm_solver_sample(self, shape, steps=10, y=None, guidance=0.0, noise=None, progress=None):
        """DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Algorithm 2): the probability-flow
        ODE solved exactly in its linear part, in lambda = log(alpha / sigma) (half the log-SNR),
        with the data prediction x0_hat extrapolated from the last two steps; one network call
        per step. From step i to j, h = lambda_j - lambda_i (their eq. 8 and Algorithm 2):
            x_j = (sigma_j / sigma_i) x_i - alpha_j (e^{-h} - 1) D,
            D = (1 + 1 / (2 r)) x0_hat_i - 1 / (2 r) x0_hat_prev,   r = h_prev / h,
        and D = x0_hat_i on the first step (first order: DDIM's step). The last step, to
        sigma = 0 where h is infinite, is first order too: x_0 = x0_hat (as in DDIM)."""
        x = torch.randn(shape, device=self.betas.device) if noise is None else noise
        seq = self.sampling_steps(steps)
        x0_prev = h_prev = None
        for k, (i, j) in enumerate(zip(seq, seq[1:] + [-1])):
            t = torch.full((shape[0],), i, device=x.device, dtype=torch.long)
            x0, _ = self.denoise(x, t, y, guidance)
            if j < 0:
                x = x0                                             # sigma_j = 0: x_0 = x0_hat
            else:
                (a_i, s_i), (a_j, s_j) = self.alpha_sigma(i), self.alpha_sigma(j)
                h = math.log(a_j / s_j) - math.log(a_i / s_i)
                if x0_prev is None:
                    d = x0                                         # first order
                else:
                    r = h_prev / h
                    d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
                x = (s_j / s_i) * x - a_j * math.expm1(-h) * d
                x0_prev, h_prev = x0, h
            if progress:
                progress(k + 1, len(seq))
        return x

    @torch.no_grad()
    def heun_sample(self, shape, steps=10, y=None, guidance=0.0, noise=None, progress=None):
        """Heun's method (Karras et al. 2022, arXiv:2206.00364, Algorithm 1, deterministic) on
        the same ODE written for x~ = x_t / alpha in the noise level s = sigma / alpha
        = sqrt((1 - abar) / abar): dx~/ds = (x~ - D(x~; s)) / s = eps_hat (their eq. 3 with
        D = x0_hat). Each step: an Euler step (alone, that is DDIM with eta = 0), then the
        slope at its end and the step again with the mean of the two slopes; two network calls
        per step, one on the last (to s = 0, where the slope is not defined): 2 steps - 1."""
        x = torch.randn(shape, device=self.betas.device) if noise is None else noise
        seq = self.sampling_steps(steps)
        level = lambda i: self.alpha_sigma(i)[1] / self.alpha_sigma(i)[0]      # s_i
        full = lambda i: torch.full((shape[0],), i, device=x.device, dtype=torch.long)
        x = x / self.alpha_sigma(seq[0])[0]                                    # x~ at step T
        for k, (i, j) in enumerate(zip(seq, seq[1:] + [-1])):
            _, slope = self.denoise(self.alpha_sigma(i)[0] * x, full(i), y, guidance)
            s_i, s_j = level(i), (level(j) if j >= 0 else 0.0)
            x_next = x + (s_j - s_i) * slope                                   # Euler
            if j >= 0:                                                         # the correction
                _, slope_next = self.denoise(self.alpha_sigma(j)[0] * x_next, full(j), y, guidance)
                x_next = x + (s_j - s_i) * (slope + slope_next) / 2
            x = x_next
            if progress:
                progress(k + 1, len(seq))
        return x                                                               # s = 0: x~ = x_0

    # -- restoration: inpainting, super-resolution (zero-shot here: ILVR; trained: SR3, a model
    #    with cfg.sr_factor, see call_net) and denoising, each on Algorithm 2's reverse chain

    @torch.no_grad()
    def inpaint(self, x_known, mask, y=None, guidance=0.0, resample=1):
        """Fill where mask == 0, keep where mask == 1: after every reverse step (p_sample) the
        known region is replaced by a draw of q(x_{t-1} | x_0); with resample > 1 each step is
        redone after going back one step with q(x_t | x_{t-1}) (RePaint, Lugmayr et al. 2022,
        Algorithm 1, jump length 1)."""
        x = torch.randn_like(x_known)
        for i in reversed(range(self.cfg.timesteps)):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            for r in range(resample):
                unknown = self.p_sample(x, i, y, guidance)
                known = self.q_sample(x_known, t - 1, torch.randn_like(x)) if i > 0 else x_known
                x_prev = mask * known + (1 - mask) * unknown
                if r < resample - 1 and i > 0:                     # back to step t: eq. 2
                    beta = extract(self.betas, t, x)
                    x = (1 - beta).sqrt() * x_prev + beta.sqrt() * torch.randn_like(x)
            x = x_prev
        return x

    @torch.no_grad()
    def super_resolve(self, x_low, factor, y=None, guidance=0.0, noise=None):
        """Zero-shot super-resolution by ILVR (Choi et al. 2021, arXiv:2108.02938, Algorithm 1):
        Algorithm 2's reverse chain with one more line per step, eq. 6:
            x_{t-1} <- phi(y_{t-1}) + (I - phi)(x_{t-1}),  y_{t-1} ~ q(y_{t-1} | y_0),
        y_0 the low-resolution x_low brought to full size, phi = up(down(.)) the low-pass filter.
        Deviation: down = the mean of each factor x factor block and up = copying it back (the
        paper resizes with a bicubic kernel), so phi is a projection and the output's block means
        are exactly x_low's. x_low: (B, C, H / factor, W / factor) in [-1, 1]."""
        up = lambda z: z.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
        phi = lambda z: up(F.avg_pool2d(z, factor))
        y0 = up(x_low)
        x = torch.randn_like(y0) if noise is None else noise
        for i in reversed(range(self.cfg.timesteps)):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            x = self.p_sample(x, i, y, guidance)                    # x_{t-1} ~ p(x_{t-1} | x_t)
            y_prev = self.q_sample(y0, t - 1, torch.randn_like(x)) if i > 0 else y0
            x = phi(y_prev) + x - phi(x)                                  # eq. 6
        return x

    def noise_level_step(self, sigma):
        """The step whose noise matches pixel noise of standard deviation sigma: x_t / sqrt(abar_t)
        = x_0 + sqrt((1 - abar_t) / abar_t) eps, so the t with sqrt((1 - abar_t) / abar_t)
        closest to sigma."""
        abar = self.exact["alphas_cumprod"]
        return int(((1 - abar) / abar).sqrt().sub(sigma).abs().argmin())

    @torch.no_grad()
    def denoise_image(self, x_noisy, sigma, y=None, guidance=0.0):
        """Denoise x_0 + sigma z (SDEdit-style, Meng et al. 2021, arXiv:2108.01073): treat it as
        x_t at the step of matching noise level, scaled by sqrt(abar_t) (x_t = sqrt(abar_t) x_0
        + sqrt(1 - abar_t) eps), then run Algorithm 2's reverse chain from t down to x_0."""
        i = self.noise_level_step(sigma)
        x = math.sqrt(float(self.exact["alphas_cumprod"][i])) * x_noisy
        for j in reversed(range(i + 1)):
            x = self.p_sample(x, j, y, guidance)
        return x


# ----------------------------------------------------------------------------------------------
# Plumbing: training, sampling, evaluation and the command line (uses common.py)

NAME = "ddpm"


def load(out, device="cpu"):
    """The model in <out>/ckpt.pt (EMA weights), rebuilt from the checkpoint alone, in eval mode."""
    import common
    # a checkpoint from before AdaGN (no "adagn" in its config) has the added embedding
    build = lambda config: DDPM(Config(**{"adagn": False, **config}))
    return common.load_model(out, NAME, build, device)


def train(args):
    import common
    if not args.min_snr >= 0:
        raise common.UserError(f"--min-snr {args.min_snr}: must be >= 0 (0 turns it off; the "
                               f"paper's choice is 5)")
    images, labels = common.load_split(args, "train")
    cfg = Config(image_size=images.shape[-1], channels=images.shape[1], width=args.width,
                 mults=tuple(args.mults), res_blocks=args.res_blocks, dropout=args.dropout,
                 num_classes=common.num_classes(args, labels), timesteps=args.timesteps,
                 schedule=args.schedule, target=args.target, p_uncond=args.p_uncond,
                 min_snr_gamma=args.min_snr, adagn=args.adagn, low_discrepancy=args.low_discrepancy,
                 sr_factor=args.factor if args.task == "sr" else 0)
    if cfg.sr_factor and cfg.image_size % cfg.sr_factor:
        raise common.UserError(f"--task sr --factor {args.factor} does not divide the image size "
                               f"{cfg.image_size}; use --factor 2 or 4")
    model = DDPM(cfg)
    kind = f"classes: {cfg.num_classes}" if cfg.num_classes else "unconditional"
    if cfg.sr_factor:
        kind += f", super-resolution x{cfg.sr_factor}"
    print(f"{NAME}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{len(images)} training images {tuple(images.shape[1:])}, {kind}")

    def preview(model, ema, step):   # 20 samples with the EMA weights at every checkpoint
        shadow = DDPM(model.cfg).to(args.device)
        shadow.load_state_dict(ema.shadow)
        fast = args.sampler if args.sampler != "ddpm" else "dpm"
        grid(args, shadow.eval(), "train_samples", n=20, sampler=fast)     # a few s on a CPU
        model.train()

    common.fit(args, NAME, model, images, labels if cfg.num_classes else None,
               ema_decay=args.ema, lr_schedule=args.lr_schedule, on_checkpoint=preview)


def grid(args, model, name, n, sampler):
    """n samples (a column per class) -> <out>/<name>.png and .npz; returns (path, seconds).
    A super-resolution model enlarges the first n test images instead."""
    import common
    import time
    y, nrow = common.grid_labels(args, n, model.cfg.num_classes)
    low = None
    if model.cfg.sr_factor:
        low, y = low_res_test(args, model.cfg, n)
        n = len(low)
    start = time.time()
    with common.autocast(args):
        x = model.sample(n, y, sampler, args.sample_steps, args.eta, args.guidance, args.variance,
                         progress=sampling_progress(NAME), low=low)
    seconds = time.time() - start
    return common.save_images(args.out, name, x, nrow, y), seconds


def low_res_test(args, cfg, n):
    """The first n test images (all, if fewer) downsampled by the model's factor, and their
    labels (or None)."""
    import common
    test, labels = common.load_split(args, "test", (cfg.channels, cfg.image_size, cfg.image_size))
    n = min(n, len(test))
    low = F.avg_pool2d(common.to_unit(test[:n]).to(args.device), cfg.sr_factor)
    return low, labels[:n].to(args.device) if cfg.num_classes else None


def sample(args):
    import common
    model = load(args.out, args.device)
    cfg = model.cfg
    torch.manual_seed(args.seed)
    path, seconds = grid(args, model, "samples", args.num_samples, args.sampler)
    how = args.sampler + ("" if args.sampler == "ddpm" else f", {args.sample_steps} steps")
    print(f"{NAME}: {args.num_samples} samples ({how}) in {seconds:.1f}s -> {path}")
    if cfg.sr_factor:
        return super_resolution_figure(args, model)
    if args.sampler != "ddpm":
        return  # the chain and inpainting below follow Algorithm 2's reverse chain
    # x_T -> x_0 strip for 8 samples (rows), 10 snapshots (columns)
    y, _ = common.grid_labels(args, 8, cfg.num_classes)
    frames = []
    with common.autocast(args):
        model.p_sample_loop((8, cfg.channels, cfg.image_size, cfg.image_size), y, args.guidance,
                            args.variance, frames)
    strip = torch.stack(frames, 1).flatten(0, 1)                      # (8 * 10, C, H, W)
    print(f"{NAME}: chain -> {common.save_images(args.out, 'chain', strip, 10)}")
    # inpainting: the bottom half of 6 test images is filled in, twice each (one batch of 12)
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    test, test_labels = common.load_split(args, "test", shape)
    x0 = common.to_unit(test[:6]).to(args.device)
    mask = torch.ones_like(x0)
    mask[..., cfg.image_size // 2:, :] = 0
    y = test_labels[:6].to(args.device).repeat(2) if cfg.num_classes else None
    with common.autocast(args):
        fills = model.inpaint(x0.repeat(2, 1, 1, 1), mask.repeat(2, 1, 1, 1), y, args.guidance,
                              args.resample)
    masked = x0 * mask - (1 - mask)
    # each row: the original, the masked input, two fills
    rows = torch.stack([x0, masked] + list(fills.chunk(2)), 1).flatten(0, 1)
    print(f"{NAME}: inpainting -> {common.save_images(args.out, 'inpaint', rows, 4)}")
    restore(args, model, common.to_unit(test[:8]).to(args.device),
            test_labels[:8].to(args.device) if cfg.num_classes else None)


def super_resolution_figure(args, model):
    """Rows of 8 test images: low resolution | bilinear | zero-shot (ILVR with the generative
    model of --zero-shot RUN, if given) | this model | the real image."""
    import common
    cfg, f = model.cfg, model.cfg.sr_factor
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    test, labels = common.load_split(args, "test", shape)
    x0 = common.to_unit(test[:8]).to(args.device)
    y = labels[:8].to(args.device) if cfg.num_classes else None
    low = F.avg_pool2d(x0, f)
    with common.autocast(args):
        trained = model.sample(len(x0), y, args.sampler, args.sample_steps, args.eta,
                               args.guidance, args.variance, low=low).float()
        cols = [low.repeat_interleave(f, -2).repeat_interleave(f, -1),
                F.interpolate(low, scale_factor=f, mode="bilinear", align_corners=False)]
        if args.zero_shot:
            cols.append(zero_shot_model(args, cfg).super_resolve(low, f, y, args.guidance).float())
    rows = torch.stack(cols + [trained, x0], 1).flatten(0, 1)
    path = common.save_images(args.out, 'superres', rows, len(cols) + 2)
    print(f"{NAME}: super-resolution -> {path}")


def zero_shot_model(args, cfg):
    """The generative model in --zero-shot RUN, for ILVR beside a super-resolution model."""
    import common
    other = load(args.zero_shot, args.device)
    same_images = (other.cfg.channels, other.cfg.image_size) == (cfg.channels, cfg.image_size)
    if other.cfg.sr_factor or not same_images:
        raise common.UserError(f"--zero-shot {args.zero_shot}: needs a generative (not --task sr) "
                               f"model of the same images")
    if bool(other.cfg.num_classes) != bool(cfg.num_classes):
        raise common.UserError(f"--zero-shot {args.zero_shot}: train both with or both without "
                               f"--conditional")
    return other


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


def restore(args, model, x0, y):
    """Zero-shot super-resolution (ILVR) and denoising (SDEdit-style) of test images: pictures
    (rows: low resolution | bilinear | ILVR | real; noisy | denoised | clean per noise level) and
    their PSNR in <out>/restoration.json."""
    import common
    f = args.factor
    if x0.shape[-1] % f:
        raise common.UserError(f"--factor {f} does not divide the image size {x0.shape[-1]}; "
                               f"use --factor 2 or 4")
    low = F.avg_pool2d(x0, f)
    bilinear = F.interpolate(low, scale_factor=f, mode="bilinear", align_corners=False)
    with common.autocast(args):
        ilvr = model.super_resolve(low, f, y, args.guidance).float()
    blocky = low.repeat_interleave(f, -2).repeat_interleave(f, -1)
    rows = torch.stack([blocky, bilinear, ilvr, x0], 1).flatten(0, 1)
    print(f"{NAME}: super-resolution x{f} -> {common.save_images(args.out, 'superres', rows, 4)}")
    report = dict(images=len(x0), factor=f, psnr_bilinear=psnr(bilinear, x0).mean().item(),
                  psnr_ilvr=psnr(ilvr, x0).mean().item(), denoising={})
    rows = []
    for sigma in (0.1, 0.2, 0.4):                             # noise std in [-1, 1] units
        noisy = x0 + sigma * torch.randn_like(x0)
        with common.autocast(args):
            clean = model.denoise_image(noisy, sigma, y, args.guidance).float()
        blurs = {std: psnr(gaussian_blur(noisy, std), x0).mean().item() for std in (0.5, 1, 2)}
        best = max(blurs, key=blurs.get)     # the baseline's best blur on these very images
        report["denoising"][f"{sigma:g}"] = dict(step=model.noise_level_step(sigma),
                                                psnr_noisy=psnr(noisy, x0).mean().item(),
                                                psnr_blur=blurs[best], blur_std_pixels=best,
                                                psnr_denoised=psnr(clean, x0).mean().item())
        rows += [noisy.clamp(-1, 1), clean, x0]
    grid = torch.stack(rows, 1).flatten(0, 1)
    print(f"{NAME}: denoising -> {common.save_images(args.out, 'denoise', grid, 9)}")
    common.write_metrics(args.out, report, "restoration.json")


def evaluate(args):
    """The variational bound (eq. 5) on the test split, in bits/dim, always in fp32."""
    import common
    model = load(args.out, args.device)
    cfg = model.cfg
    if cfg.sr_factor:
        return evaluate_super_resolution(args, model)
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    images, labels = common.load_split(args, "test", shape)
    n = min(args.eval_images or len(images), len(images))
    torch.manual_seed(args.seed)
    totals = torch.zeros(4, dtype=torch.float64)   # L_T, the KL terms, L_0, L_0's floor
    conditional = bool(cfg.num_classes) and not args.null_label
    for i in range(0, n, args.batch_size):
        x0 = common.to_unit(images[i:min(i + args.batch_size, n)]).to(args.device)
        y = labels[i:i + len(x0)].to(args.device) if conditional else None   # None: p(x)
        terms = model.bound_terms(x0, y, args.variance) + (model.decoder_floor(x0, args.variance),)
        totals += torch.stack([v.cpu().double().sum() for v in terms])  # float64 on the CPU only
        print(f"{NAME}: eval {i + len(x0)}/{n} images, "
              f"{float(totals[:3].sum()) / (i + len(x0)):.1f} nats/image so far", flush=True)
    per_dim = math.log(2) * cfg.channels * cfg.image_size ** 2
    prior, kls, decoder, floor = (float(v) / n for v in totals)
    print(f"{NAME}: {(prior + kls + decoder) / per_dim:.3f} bits/dim; of it L_0 "
          f"{decoder / per_dim:.3f}, which no model brings below {floor / per_dim:.3f} on this "
          f"data (the decoder's fixed variance)")
    common.write_metrics(args.out, dict(
        data=args.data, images=n, bits_per_dim=(prior + kls + decoder) / per_dim,
        nll_nats=prior + kls + decoder, conditional=conditional, prior_L_T_bpd=prior / per_dim,
        kl_terms_bpd=kls / per_dim, decoder_L_0_bpd=decoder / per_dim,
        decoder_floor_bpd=floor / per_dim,
        note=f"nll_nats: the variational bound (Ho et al. eq. 5), an upper bound on -log p(x), "
             f"EMA weights, {cfg.timesteps} steps; decoder_floor_bpd: L_0 (eq. 13) with the "
             f"decoder's mean on the true pixels, the least L_0 any model pays on this data"))


def evaluate_super_resolution(args, model):
    """A super-resolution model on the test split: PSNR of its outputs (--sampler,
    --sample-steps), of bilinear upsampling and (with --zero-shot RUN, on at most 32 images: T
    steps each) of ILVR; the consistency error, the mean |block means of the output - low|.
    A conditional model is given the true labels, or with --null-label the "no class" label."""
    import common
    cfg, f = model.cfg, model.cfg.sr_factor
    images, labels = common.load_split(args, "test", (cfg.channels, cfg.image_size, cfg.image_size))
    n = min(args.eval_images or len(images), len(images))
    torch.manual_seed(args.seed)
    sums = dict(psnr_trained=0.0, psnr_bilinear=0.0, consistency=0.0, psnr_zero_shot=0.0,
                consistency_zero_shot=0.0)
    labelled = bool(cfg.num_classes) and not args.null_label      # else the input alone decides
    other = zero_shot_model(args, cfg) if args.zero_shot else None
    n_zero = min(n, 32) if other else 0
    kept = dict(trained=[], bilinear=[], zero_shot=[])                   # for compare.py --score
    for i in range(0, n, args.batch_size):
        x0 = common.to_unit(images[i:min(i + args.batch_size, n)]).to(args.device)
        y = labels[i:i + len(x0)].to(args.device) if labelled else None   # None: "no class"
        low = F.avg_pool2d(x0, f)
        out = model.sample(len(x0), y, args.sampler, args.sample_steps, args.eta, args.guidance,
                           args.variance, low=low)                      # fp32, as every --eval
        bilinear = F.interpolate(low, scale_factor=f, mode="bilinear", align_corners=False)
        sums["psnr_trained"] += psnr(out, x0).sum().item()
        sums["psnr_bilinear"] += psnr(bilinear, x0).sum().item()
        sums["consistency"] += consistency(out, low, f).sum().item()
        kept["trained"].append(out.cpu())
        kept["bilinear"].append(bilinear.cpu())
        if i < n_zero:
            k = min(len(x0), n_zero - i)
            ilvr = other.super_resolve(low[:k], f, None if y is None else y[:k], args.guidance)
            sums["psnr_zero_shot"] += psnr(ilvr, x0[:k]).sum().item()
            sums["consistency_zero_shot"] += consistency(ilvr, low[:k], f).sum().item()
            kept["zero_shot"].append(ilvr.cpu())
        print(f"{NAME}: eval {i + len(x0)}/{n} images", flush=True)
    result = {k: v / n for k, v in sums.items() if "zero_shot" not in k}
    if n_zero:
        result.update({k: v / n_zero for k, v in sums.items() if "zero_shot" in k})
    y_all = labels[:n] if cfg.num_classes else None
    for name, xs in kept.items():
        if xs:
            x = torch.cat(xs)
            y_kept = None if y_all is None else y_all[:len(x)]
            common.save_images(args.out, f"sr_{name}", x, 16, y_kept)
    common.write_metrics(args.out, dict(
        data=args.data, images=n, zero_shot_images=n_zero, factor=f, labelled=labelled,
        sampler=args.sampler, sample_steps=args.sample_steps, **result,
        note="PSNR in dB of images in [-1, 1] against the test images; consistency: mean "
             "absolute difference between the output's block means and the low-resolution input; "
             "the outputs in sr_trained.npz, sr_bilinear.npz, sr_zero_shot.npz (compare.py "
             "--score)"))


def add_sampler_flags(p, sampler, steps):
    """The sampling flags of ddpm.py and of ldm.py (which uses these): --sampler, --sample-steps
    (--ddim-steps, its old name, still works), --eta, --guidance."""
    import common
    a = p.add_argument
    a("--sampler", choices=DDPM.SAMPLERS, default=sampler,
      help="ddpm: Algorithm 2 (all T steps); ddim: Song et al. 2021; dpm: DPM-Solver++(2M), Lu et "
           "al. 2022; heun: Karras et al. 2022")
    a("--sample-steps", "--ddim-steps", dest="sample_steps", type=common.positive(int),
      default=steps, help="steps of ddim, dpm and heun (heun: 2 steps - 1 network calls); "
                          "--ddim-steps: the old name")
    a("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 = DDPM-like")
    a("--guidance", type=float, default=1.0,
      help="classifier-free guidance scale w (Ho & Salimans 2022); 0 = the conditional model")


def sampling_progress(name, after=3.0, every=5.0):
    """A progress(k, n) callback for a sampler: once sampling has taken `after` seconds, a line
    'name: sampling step k/n, elapsed' every `every` seconds and at the last step."""
    import time
    start, last = time.time(), [None]

    def report(k, n):
        now = time.time()
        if now - start >= after and (last[0] is None or now - last[0] >= every or k == n):
            print(f"{name}: sampling step {k}/{n}, {now - start:.0f} s elapsed", flush=True)
            last[0] = now
    return report


def main(argv=None):
    import argparse
    import common
    p = common.make_parser(NAME, __doc__, steps=1800, batch_size=32, lr=1e-3, eval_images=1000,
                           warmup=50)
    a = p.add_argument
    a("--width", type=common.positive(int), default=Config.width, help="U-Net channels at 28x28")
    a("--mults", type=common.positive(int), nargs="+", default=list(Config.mults),
      help="channel multiplier per resolution")
    a("--res-blocks", type=common.positive(int), default=Config.res_blocks,
      help="residual blocks per resolution")
    a("--dropout", type=float, default=Config.dropout)
    a("--timesteps", type=common.positive(int), default=Config.timesteps, help="T")
    a("--schedule", choices=["linear", "cosine"], default="linear",
      help="cosine: Nichol & Dhariwal 2021")
    a("--target", choices=["eps", "x0", "v"], default=Config.target,
      help="the network's output; v: Salimans & Ho 2022")
    a("--min-snr", type=float, default=Config.min_snr_gamma,
      help="Min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5; 0: off")
    a("--p-uncond", type=float, default=Config.p_uncond,
      help="label dropout for classifier-free guidance")
    a("--adagn", action=argparse.BooleanOptionalAction, default=Config.adagn,
      help="the step and class scale and shift the U-Net's features (Dhariwal & Nichol); "
           "--no-adagn: added, as in Ho et al.")
    a("--low-discrepancy", action=argparse.BooleanOptionalAction, default=Config.low_discrepancy,
      help="a batch's steps spread evenly over 0..T-1 (Kingma et al. 2021); default: independent")
    a("--ema", type=float, default=0.99, help="EMA decay of the weights for sampling (0: off)")
    a("--lr-schedule", choices=["constant", "cosine"], default="constant",
      help="after the warm-up: constant (the paper), or a cosine decay to 0 at the run's end")
    add_sampler_flags(p, "dpm", 10)
    a("--variance", choices=["small", "large"], default="small",
      help="reverse variance: b~_t (small) or b_t (large)")
    a("--resample", type=common.positive(int), default=1,
      help="RePaint resampling per step for inpainting")
    a("--task", choices=["generate", "sr"], default="generate",
      help="sr: train a super-resolution model (SR3) from images downsampled by --factor")
    a("--factor", type=int, choices=[2, 4], default=4,
      help="super-resolution factor: of --task sr, and of the zero-shot ILVR figure of "
           "--sample --sampler ddpm")
    a("--zero-shot", metavar="RUN", default=None,
      help="a super-resolution model's --sample / --eval: compare with ILVR on this generative run")
    a("--null-label", action="store_true",
      help="--eval of a conditional model: the bound on p(x), or super-resolution from the "
           "low-resolution input alone, through the 'no class' label")
    common.run(p, argv, train, sample, evaluate)


if __name__ == "__main__":
    main()
