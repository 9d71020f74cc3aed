"""DDPM: denoising diffusion probabilistic models (Ho, Jain & Abbeel 2020, arXiv:2006.11239).

A fixed forward process adds Gaussian noise to an image over T steps; one network, shared by all
steps, learns to undo one step at a time; sampling starts from pure noise and denoises T times.

    python ddpm.py --train                          # built-in digits; minutes on a 2-core CPU
    python ddpm.py --sample --eval                  # samples.png/.npz; the bound in eval.json
    python ddpm.py --train --conditional --data mnist --data-dir DIR --out runs/ddpm-mnist

In code: model = DDPM(Config()); loss, logs = model.loss(x, y); model.sample(n, y, sampler=...,
steps=..., guidance=...); model.nll(x, y) (the bound). Images: float (B, C, H, W) in [-1, 1].

Maths (Ho et al.'s equation numbers; t is 1-based in the paper and 0-based here, so index t is
the paper's step t + 1 and alphas_cumprod[0] = 1 - beta_1):
    q(x_t | x_0)          = N(sqrt(abar_t) x_0, (1 - abar_t) I),  abar_t = prod_s (1 - b_s)   (4)
    q(x_{t-1} | x_t, x_0) = N(mu~_t, b~_t I)                                             (6, 7)
    L_simple = E || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2       (14)
    L = L_T + sum_{t>1} KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) + L_0               (5)
The paper's model comes first: U-Net, schedule, loss (Algorithm 1), ancestral sampler
(Algorithm 2), DDIM, classifier-free guidance and the bound. Then, in a section of their own,
what came after it: DPM-Solver++ and Heun, inpainting, ILVR, denoising and SR3.
Defaults differ from the paper for a budget of minutes, each said where it is set: v-prediction
with Min-SNR-5 weights, AdaGN in the residual blocks, a smaller U-Net, learning rate 1e-3 after
50 warm-up steps, EMA 0.99. The paper's choices: --no-adagn --target eps --min-snr 0 --lr 2e-4
--warmup 5000 --ema 0.9999 (for 800k steps). Things to try: --target x0, --schedule cosine,
--conditional with --guidance 0 and 3, --sampler ddpm.
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
    adagn: bool = True         # step and class scale and shift the features (Dhariwal & Nichol
                               # 2021); False: their embedding is added (Ho et al.)
    low_discrepancy: bool = False  # a batch's steps spread evenly (Kingma et al. 2021)
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
    """Two 3x3 convolutions with a skip; the step's (and class's) embedding e enters between them:
    added (Ho et al.), or with adagn AdaGN(h, e) = GroupNorm(h) (1 + s) + b, [s, b] = Linear(e)
    (Dhariwal & Nichol 2021, arXiv:2105.05233, Sec. 3; the 1 + starts it as a plain GroupNorm)."""

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
        self.time_mlp = nn.Sequential(nn.Linear(w, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
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
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(ch, ch, 3, padding=1)))  # 7 -> 14 -> 28
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
        return self.conv_out(F.silu(self.norm_out(h)))                  # (B, C, H, W)


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
    the network that reverses it, net(x_t, t, y) -> cfg.target (default: the U-Net of cfg).
    Images: float (B, C, H, W) in [-1, 1]; steps t 0-based; labels y in 0..num_classes - 1 and
    "no class" = num_classes (y = None). Every sampler takes (shape or n, *, y, guidance, steps,
    noise, progress, low), the same defaults everywhere (Algorithm 2 alone takes all T steps)."""

    def __init__(self, cfg, net=None):
        super().__init__()
        cfg.mults = tuple(cfg.mults)
        if not cfg.min_snr_gamma >= 0:
            raise ValueError(f"min_snr_gamma must be >= 0 (0: off), got {cfg.min_snr_gamma}")
        self.cfg = cfg
        self.net = UNet(cfg) if net is None else net
        schedules = {"linear": linear_beta_schedule, "cosine": cosine_beta_schedule}
        betas = schedules[cfg.schedule](cfg.timesteps)                      # (T,) float64
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)                           # abar_t, eq. 4
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)  # eq. 7
        # b~ is 0 at the first step; its log is clipped to the next value (as in Ho et al.'s code)
        clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]])
        buffers = dict(
            betas=betas, alphas_cumprod=alphas_cumprod, alphas_cumprod_prev=alphas_cumprod_prev,
            sqrt_alphas_cumprod=alphas_cumprod.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1 - alphas_cumprod).sqrt(),
            posterior_variance=posterior_variance, posterior_log_variance_clipped=clipped.log(),
            posterior_mean_coef1=betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),  # eq. 7
            posterior_mean_coef2=(1 - alphas_cumprod_prev) * alphas.sqrt() / (1 - alphas_cumprod),
            large_variance=torch.cat([posterior_variance[1:2], betas[1:]]),    # sigma^2 = b_t
        )
        buffers["large_log_variance"] = buffers["large_variance"].log()
        # float64 on the CPU in `exact` (the samplers' scalars, the tests); float32 buffers on
        # the device (the networks' precision; MPS has no float64)
        self.exact = buffers
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)  # rebuilt from the config

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

    # -- training: Algorithm 1
    def loss(self, x, y=None):
        """Algorithm 1 / eq. 14 (L_simple): t uniform over all T steps (0..T-1, the last one
        included; draw_steps), MSE between the network's output and its target (eps, x0 or v),
        per image times loss_weight(t) (1 unless Min-SNR-gamma is on). Labels are replaced by
        "no class" with probability p_uncond (Ho & Salimans, Algorithm 1). A super-resolution
        model (SR3, below) learns from the pair (x downsampled, x), made here."""
        x0 = x                                                            # (B, C, H, W) in [-1, 1]
        low = F.avg_pool2d(x0, self.cfg.sr_factor) if self.cfg.sr_factor else None
        t = self.draw_steps(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        y = self.labels(y, len(x0))
        if y is not None and self.cfg.p_uncond > 0:                       # label dropout
            drop = torch.rand(y.shape, device=y.device) < self.cfg.p_uncond
            y = torch.where(drop, torch.full_like(y, self.cfg.num_classes), y)
        target = {"eps": noise, "x0": x0, "v": self.v_target(x0, t, noise)}[self.cfg.target]
        error = (self.call_net(x_t, t, y, low).float() - target) ** 2
        per_image = error.flatten(1).mean(1)                              # (B,)
        return (self.loss_weight(t) * per_image).mean(), {}

    def loss_weight(self, t):
        """Min-SNR-gamma (Hang et al. 2023, arXiv:2303.09556): each step's loss, as an error in
        x_0, weighted by min(SNR_t, gamma), SNR_t = abar_t / (1 - abar_t). As ||eps - eps^||^2 =
        SNR_t ||x0 - x0^||^2 and ||v - v^||^2 = (SNR_t + 1) ||x0 - x0^||^2, the target's own MSE
        gets min(SNR, g) / SNR (eps), min(SNR, g) (x0) or min(SNR, g) / (SNR + 1) (v). (B,)"""
        if not self.cfg.min_snr_gamma:
            return torch.ones(t.shape, device=t.device)
        snr = self.alphas_cumprod[t] / (1 - self.alphas_cumprod[t])
        clipped = snr.clamp(max=self.cfg.min_snr_gamma)
        divisor = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[self.cfg.target]
        return (clipped / divisor).float()

    def draw_steps(self, n, device):
        """n steps t, each uniform over 0..T-1 (Algorithm 1, line 3). cfg.low_discrepancy
        (Kingma et al. 2021, arXiv:2107.00630, Sec. 5.3): one u ~ U[0, 1), image i gets
        (u + i/n) mod 1 scaled to T steps: each t still uniform, each batch spread evenly."""
        T = self.cfg.timesteps
        if not self.cfg.low_discrepancy:
            return torch.randint(0, T, (n,), device=device)
        u = (torch.rand((), device=device, dtype=torch.float64)
             + torch.arange(n, device=device, dtype=torch.float64) / n) % 1
        return (u * T).long().clamp(max=T - 1)

    def labels(self, y, n):
        """The labels the network sees: y, or "no class" for a conditional model given none."""
        if not self.cfg.num_classes and y is not None:
            raise ValueError("this DDPM is unconditional (num_classes = 0); pass y = None")
        if y is None and self.cfg.num_classes:
            return torch.full((n,), self.cfg.num_classes, device=self.betas.device)
        return y

    def call_net(self, x_t, t, y, low=None):
        """The network at (x_t, t, y); a super-resolution model also sees its low-resolution
        images `low` (sr3_input, below)."""
        if self.cfg.sr_factor:
            x_t = sr3_input(x_t, low, self.cfg.sr_factor)
        return self.net(x_t, t, y)

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

    def predict_eps(self, x_t, t, *, y=None, guidance=1.0, low=None):
        """eps_theta(x_t, t, y), with classifier-free guidance (Ho & Salimans eq. 6):
        eps~ = (1 + w) eps(x_t, y) - w eps(x_t, no class). w = 0, or no labels: the model."""
        labels = self.labels(y, len(x_t))
        if y is None or guidance == 0:
            return self.to_eps(x_t, t, self.call_net(x_t, t, labels, low))
        null = torch.full_like(labels, self.cfg.num_classes)
        both = self.call_net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null]),
                             low)
        out_c, out_u = both.chunk(2)
        eps_c, eps_u = self.to_eps(x_t, t, out_c), self.to_eps(x_t, t, out_u)
        return (1 + guidance) * eps_c - guidance * eps_u

    # -- sampling: Algorithm 2, and DDIM
    def denoise(self, x_t, t, **cond):
        """The model's x0_hat and eps_hat at (x_t, t), guided (cond: y, guidance, low): x0_hat
        from eps_hat (eq. 15), clipped to [-1, 1] with cfg.clip_x0, and eps_hat then recomputed
        from the clipped x0_hat so the two agree. Every sampler takes its predictions from here."""
        eps = self.predict_eps(x_t, t, **cond).float()
        x0 = self.predict_x0_from_eps(x_t, t, eps)
        if self.cfg.clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = self.predict_eps_from_x0(x_t, t, x0)
        return x0, eps

    def p_mean_variance(self, x_t, t, variance="small", **cond):
        """p(x_{t-1} | x_t) = N(mu~(x_t, x0_hat), sigma_t^2): x0_hat from the predicted eps
        (eq. 15), sigma_t^2 = b~_t ("small") or b_t ("large"); Ho et al. Sec. 3.2: both work."""
        x0, _ = self.denoise(x_t, t, **cond)
        mean, var, logvar = self.q_posterior_mean_variance(x0, x_t, t)
        if variance == "large":
            var = extract(self.large_variance, t, x_t)
            logvar = extract(self.large_log_variance, t, x_t)
        return mean, var, logvar, x0

    def p_sample(self, x_t, i, variance="small", **cond):
        """One reverse step, Algorithm 2 line 4: x_{t-1} = mu_theta(x_t, t) + sigma_t z, with
        z ~ N(0, I), and no noise on the last step (i = 0, the paper's t = 1)."""
        t = torch.full((x_t.shape[0],), i, device=x_t.device, dtype=torch.long)
        mean, _, logvar, _ = self.p_mean_variance(x_t, t, variance, **cond)
        if i == 0:
            return mean
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(x_t)

    @torch.no_grad()
    def p_sample_loop(self, shape, *, y=None, guidance=1.0, noise=None, progress=None, low=None,
                      variance="small", frames=None):
        """Algorithm 2: x_T ~ N(0, I) (or `noise`), then all T reverse steps. progress(k, n):
        called after each step; frames: a list that receives 10 snapshots from x_T to x_0."""
        x = torch.randn(shape, device=self.betas.device) if noise is None else noise
        marks = set(torch.linspace(0, self.cfg.timesteps, 10).round().long().tolist())
        for done, i in enumerate(reversed(range(self.cfg.timesteps))):
            if frames is not None and done in marks:
                frames.append(x)
            x = self.p_sample(x, i, variance, y=y, guidance=guidance, low=low)
            if progress:
                progress(done + 1, self.cfg.timesteps)
        if frames is not None:
            frames.append(x)
        return x

    def sampling_steps(self, steps):
        """`steps` time steps (0-based) evenly spaced from T - 1 down to 0 (DDIM's spacing; the
        other samplers keep it so that a step count means the same times for all three)."""
        steps = min(steps, self.cfg.timesteps)
        return torch.linspace(self.cfg.timesteps - 1, 0, steps).round().long().tolist()

    def ddim_abar_sigma(self, i, j, eta):
        """abar at the next step j (1 after the last step, j = -1) and Song et al.'s sigma
        (eq. 16)."""
        abar = float(self.exact["alphas_cumprod"][i])
        abar_prev = float(self.exact["alphas_cumprod"][j]) if j >= 0 else 1.0
        return abar_prev, eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))

    @torch.no_grad()
    def ddim_sample(self, shape, *, y=None, guidance=1.0, steps=10, noise=None, progress=None,
                    low=None, eta=0.0):
        """DDIM (Song, Meng & Ermon 2021, arXiv:2010.02502) eq. 12 on `steps` evenly spaced
        steps from T to 1 (eta = 0: deterministic; eta = 1 over all T steps: the DDPM posterior
        variance): x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z.
        It ends with the model's x0_hat at the last step (to sigma = 0)."""
        x = torch.randn(shape, device=self.betas.device) if noise is None else noise
        seq = self.sampling_steps(steps)
        for k, (i, j) in enumerate(zip(seq, seq[1:] + [-1])):
            t = torch.full((shape[0],), i, device=x.device, dtype=torch.long)
            x0, eps = self.denoise(x, t, y=y, guidance=guidance, low=low)
            abar_prev, sigma = self.ddim_abar_sigma(i, j, eta)
            x = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma ** 2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * torch.randn_like(x)
            if progress:
                progress(k + 1, len(seq))
        return x

    SAMPLERS = ("ddpm", "ddim", "dpm", "heun")

    @torch.no_grad()
    def sample(self, n, y=None, *, sampler="dpm", guidance=1.0, steps=10, noise=None,
               progress=None, low=None, eta=0.0, variance="small"):
        """n images in [-1, 1]. sampler: "ddpm" (Algorithm 2, all T steps; variance "small" or
        "large"), "ddim" (`steps` steps, noise eta), "dpm" (DPM-Solver++(2M), `steps` calls) or
        "heun" (2 steps - 1 calls). guidance: the scale w, for labels y. noise: x_T (default:
        drawn); progress(k, n) after each step; low: an SR model's (n, C, H / f, W / f) input."""
        c, s = self.cfg.channels, self.cfg.image_size
        shape = (n, c, s, s)
        f = self.cfg.sr_factor
        if f and (low is None or tuple(low.shape) != (n, c, s // f, s // f)):
            raise ValueError(f"a super-resolution DDPM needs low = (n, C, H / {f}, W / {f}) images")
        kw = dict(y=y, guidance=guidance, noise=noise, progress=progress, low=low)
        if sampler == "ddpm":
            return self.p_sample_loop(shape, variance=variance, **kw)
        if sampler == "ddim":
            return self.ddim_sample(shape, steps=steps, eta=eta, **kw)
        if sampler == "dpm":
            return self.dpm_solver_sample(shape, steps=steps, **kw)
        if sampler == "heun":
            return self.heun_sample(shape, steps=steps, **kw)
        raise ValueError(f"sampler {sampler!r}: choose one of {', '.join(self.SAMPLERS)}")

    # -- the variational bound (eq. 5), in nats per image
    @torch.no_grad()
    def bound_terms(self, x0, y=None, variance="small"):
        """Per image: prior L_T, the sum of the KL terms L_1..L_{T-1} and L_0 (eq. 13), in nats.
        An SR model's bound is on p(x0 | x0 downsampled)."""
        b, T = x0.shape[0], self.cfg.timesteps
        dims = list(range(1, x0.dim()))
        cond = dict(y=y, guidance=0.0,
                    low=F.avg_pool2d(x0, self.cfg.sr_factor) if self.cfg.sr_factor else None)
        t_last = torch.full((b,), T - 1, device=x0.device, dtype=torch.long)
        mean_T = extract(self.sqrt_alphas_cumprod, t_last, x0) * x0
        logvar_T = extract(torch.log(1 - self.alphas_cumprod), t_last, x0)
        zero = torch.zeros_like(x0)
        prior = normal_kl(mean_T, logvar_T, zero, zero).sum(dims)               # L_T
        kl_sum, decoder = torch.zeros(b, device=x0.device), None
        for i in range(T):
            t = torch.full((b,), i, device=x0.device, dtype=torch.long)
            x_t = self.q_sample(x0, t, torch.randn_like(x0))
            mean, _, logvar, _ = self.p_mean_variance(x_t, t, variance, **cond)
            if i == 0:                                                          # L_0, eq. 13
                log_px = discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar)
                decoder = -log_px.sum(dims).float().to(x0.device)   # the sum in float64
            else:                                                               # L_{t-1}, eq. 5
                true_mean, _, true_logvar = self.q_posterior_mean_variance(x0, x_t, t)
                kl_sum += normal_kl(true_mean, true_logvar, mean, logvar).sum(dims)
        return prior, kl_sum, decoder

    @torch.no_grad()
    def decoder_floor(self, x0, variance="small"):
        """The least L_0 any network pays, per image in nats: eq. 13 with the decoder's mean on
        the true pixel. Its fixed sigma (0.0074, linear schedule) costs a perfect network 0.35
        nats for an end pixel (-1 or 1) and 0.90 for an interior one."""
        t = torch.zeros(x0.shape[0], device=x0.device, dtype=torch.long)
        small = variance == "small"
        table = self.posterior_log_variance_clipped if small else self.large_log_variance
        logvar, dims = extract(table, t, x0), list(range(1, x0.dim()))
        return -discretized_gaussian_log_likelihood(x0, x0, 0.5 * logvar).sum(dims).float()

    @torch.no_grad()
    def nll(self, x, y=None, variance="small"):
        """The bound L (eq. 5) on -log p(x) per image, in nats (-log p(x|y) given labels; a
        conditional model given none scores its "no class" p(x)); T network calls per image."""
        prior, kls, decoder = self.bound_terms(x, y, variance)
        return prior + kls + decoder

    # ------------------------------------------------------------------------------------------
    # Beyond the paper: ODE samplers (DPM-Solver++, Heun: second order where DDIM with eta = 0
    # is first, on its steps) and restoration (RePaint inpainting, ILVR, SDEdit-style denoising)

    def alpha_sigma(self, i):
        """alpha_t = sqrt(abar_t) and sigma_t = sqrt(1 - abar_t) at step i, from the float64
        schedule; i = -1 is x_0 itself (alpha 1, sigma 0)."""
        abar = float(self.exact["alphas_cumprod"][i]) if i >= 0 else 1.0
        return math.sqrt(abar), math.sqrt(1 - abar)

    @torch.no_grad()
    def dpm_solver_sample(self, shape, *, y=None, guidance=1.0, steps=10, noise=None,
                          progress=None, low=None):
        """DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Algorithm 2): the probability-flow
        ODE solved exactly in its linear part in lambda = log(alpha / sigma), x0_hat extrapolated
        from the last two steps; one call per step. From step i to j, h = lambda_j - lambda_i:
            x_j = (sigma_j / sigma_i) x_i - alpha_j (e^{-h} - 1) D,
            D = (1 + 1 / (2 r)) x0_hat_i - 1 / (2 r) x0_hat_prev,   r = h_prev / h,
        D = x0_hat_i on the first step (DDIM's step); the last, to sigma = 0, gives x0_hat."""
        x = torch.randn(shape, device=self.betas.device) if noise is None else noise
        seq = self.sampling_steps(steps)
        x0_prev = h_prev = None
        for k, (i, j) in enumerate(zip(seq, seq[1:] + [-1])):
            t = torch.full((shape[0],), i, device=x.device, dtype=torch.long)
            x0, _ = self.denoise(x, t, y=y, guidance=guidance, low=low)
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
    def heun_sample(self, shape, *, y=None, guidance=1.0, steps=10, noise=None, progress=None,
                    low=None):
        """Heun's method (Karras et al. 2022, arXiv:2206.00364, Algorithm 1, deterministic) on
        the same ODE for x~ = x_t / alpha in the noise level s = sigma / alpha: dx~/ds = eps_hat
        (their eq. 3 with D = x0_hat). Each step: an Euler step (alone, DDIM with eta = 0), then
        the step again with the mean of its two end slopes; 2 steps - 1 network calls (the last
        step, to s = 0, is Euler's)."""
        x = torch.randn(shape, device=self.betas.device) if noise is None else noise
        seq = self.sampling_steps(steps)
        level = lambda i: self.alpha_sigma(i)[1] / self.alpha_sigma(i)[0]      # s_i
        full = lambda i: torch.full((shape[0],), i, device=x.device, dtype=torch.long)
        slope_at = lambda x, i: self.denoise(self.alpha_sigma(i)[0] * x, full(i), y=y,
                                             guidance=guidance, low=low)[1]
        x = x / self.alpha_sigma(seq[0])[0]                                    # x~ at step T
        for k, (i, j) in enumerate(zip(seq, seq[1:] + [-1])):
            slope = slope_at(x, i)
            s_i, s_j = level(i), (level(j) if j >= 0 else 0.0)
            x_next = x + (s_j - s_i) * slope                                   # Euler
            if j >= 0:                                                         # the correction
                x_next = x + (s_j - s_i) * (slope + slope_at(x_next, j)) / 2
            x = x_next
            if progress:
                progress(k + 1, len(seq))
        return x                                                               # s = 0: x~ = x_0

    @torch.no_grad()
    def inpaint(self, x_known, mask, *, y=None, guidance=1.0, resample=1):
        """Fill where mask == 0, keep where mask == 1: after every reverse step the known region
        is a draw of q(x_{t-1} | x_0); resample > 1 redoes each step after going back one with
        q(x_t | x_{t-1}) (RePaint, Lugmayr et al. 2022, Algorithm 1, jump length 1)."""
        x = torch.randn_like(x_known)
        for i in reversed(range(self.cfg.timesteps)):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            for r in range(resample):
                unknown = self.p_sample(x, i, y=y, guidance=guidance)
                known = self.q_sample(x_known, t - 1, torch.randn_like(x)) if i > 0 else x_known
                x_prev = mask * known + (1 - mask) * unknown
                if r < resample - 1 and i > 0:                     # back to step t: eq. 2
                    beta = extract(self.betas, t, x)
                    x = (1 - beta).sqrt() * x_prev + beta.sqrt() * torch.randn_like(x)
            x = x_prev
        return x

    @torch.no_grad()
    def super_resolve(self, x_low, factor, *, y=None, guidance=1.0, noise=None):
        """Zero-shot super-resolution of x_low (B, C, H / factor, W / factor) by ILVR (Choi et al.
        2021, arXiv:2108.02938, Algorithm 1): Algorithm 2 with one more line per step, eq. 6,
            x_{t-1} <- phi(y_{t-1}) + (I - phi)(x_{t-1}),  y_{t-1} ~ q(y_{t-1} | y_0 = up(x_low)),
        phi = up(down(.)). Deviation: block means and block copies for down and up (the paper:
        bicubic), so phi is a projection and the output keeps x_low's block means exactly."""
        up = lambda z: z.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
        phi = lambda z: up(F.avg_pool2d(z, factor))
        y0 = up(x_low)
        x = torch.randn_like(y0) if noise is None else noise
        for i in reversed(range(self.cfg.timesteps)):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            x = self.p_sample(x, i, y=y, guidance=guidance)        # x_{t-1} ~ p(x_{t-1} | x_t)
            y_prev = self.q_sample(y0, t - 1, torch.randn_like(x)) if i > 0 else y0
            x = phi(y_prev) + x - phi(x)                                  # eq. 6
        return x

    def noise_level_step(self, sigma):
        """The step whose noise matches pixel noise of std sigma: x_t / sqrt(abar_t) = x_0 +
        sqrt((1 - abar_t) / abar_t) eps, so the t where that factor is closest to sigma."""
        abar = self.exact["alphas_cumprod"]
        return int(((1 - abar) / abar).sqrt().sub(sigma).abs().argmin())

    @torch.no_grad()
    def denoise_image(self, x_noisy, sigma, *, y=None, guidance=1.0):
        """Denoise x_0 + sigma z (SDEdit-style, Meng et al. 2021, arXiv:2108.01073): treat it as
        x_t at the step of matching noise level, scaled by sqrt(abar_t) (x_t = sqrt(abar_t) x_0
        + sqrt(1 - abar_t) eps), then run Algorithm 2's reverse chain from t down to x_0."""
        i = self.noise_level_step(sigma)
        x = math.sqrt(float(self.exact["alphas_cumprod"][i])) * x_noisy
        for j in reversed(range(i + 1)):
            x = self.p_sample(x, j, y=y, guidance=guidance)
        return x


def sr3_input(x_t, low, factor):
    """A super-resolution model's network input (cfg.sr_factor; SR3, Saharia et al. 2021,
    arXiv:2104.07636, Sec. 2): x_t and its low-resolution image `low`, each pixel copied to its
    factor x factor block, as more channels. (Deviation: SR3 upsamples bicubically; block copies
    keep the low image exactly.) With guidance x_t holds the batch twice; low is repeated."""
    if low is None:
        raise ValueError("a super-resolution DDPM needs its low-resolution images: pass low=")
    up = low.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    return torch.cat([x_t, up.repeat(len(x_t) // len(up), 1, 1, 1)], 1)


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
                 min_snr_gamma=args.min_snr, adagn=args.adagn,
                 low_discrepancy=args.low_discrepancy,
                 sr_factor=args.factor if args.task == "sr" else 0)
    if cfg.sr_factor and cfg.image_size % cfg.sr_factor:
        raise common.UserError(f"--task sr --factor {args.factor} does not divide the image size "
                               f"{cfg.image_size}; use --factor 2 or 4")
    model = DDPM(cfg)
    kind = (f"classes: {cfg.num_classes}" if cfg.num_classes else "unconditional") + (
        f", super-resolution x{cfg.sr_factor}" if cfg.sr_factor else "")
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
    A super-resolution model enlarges the first n test images instead, and <out>/superres.png
    shows rows of low resolution | the model's output | the real image."""
    import common
    import time
    cfg, f, low = model.cfg, model.cfg.sr_factor, None
    y, nrow = common.grid_labels(args, n, cfg.num_classes)
    if f:                          # the first n test images (all, if fewer), and their labels
        shape = (cfg.channels, cfg.image_size, cfg.image_size)
        test, labels = common.load_split(args, "test", shape)
        x0 = common.to_unit(test[:n]).to(args.device)
        low, n = F.avg_pool2d(x0, f), len(x0)
        y = labels[:n].to(args.device) if cfg.num_classes else None
    start = time.time()
    with common.autocast(args):
        x = model.sample(n, y, sampler=sampler, steps=args.sample_steps, eta=args.eta,
                         guidance=args.guidance, variance=args.variance, low=low,
                         progress=sampling_progress(NAME))
    seconds = time.time() - start
    if f:
        rows = [low.repeat_interleave(f, -2).repeat_interleave(f, -1), x.float(), x0]
        path = common.save_images(args.out, "superres", torch.stack(rows, 1).flatten(0, 1), 3)
        print(f"{NAME}: super-resolution x{f} -> {path}")
    return common.save_images(args.out, name, x, nrow, y), seconds


def sample(args):
    import common
    model = load(args.out, args.device)
    torch.manual_seed(args.seed)
    path, seconds = grid(args, model, "samples", args.num_samples, args.sampler)
    how = args.sampler + ("" if args.sampler == "ddpm" else f", {args.sample_steps} steps")
    print(f"{NAME}: {args.num_samples} samples ({how}) in {seconds:.1f}s -> {path}")
    cfg = model.cfg
    if args.chain and not cfg.sr_factor:   # Algorithm 2 from x_T to x_0: 8 rows, 10 snapshots
        frames = []
        y, _ = common.grid_labels(args, 8, cfg.num_classes)
        with common.autocast(args):
            model.p_sample_loop((8, cfg.channels, cfg.image_size, cfg.image_size), y=y,
                                guidance=args.guidance, variance=args.variance, frames=frames)
        strip = torch.stack(frames, 1).flatten(0, 1)                   # (8 * 10, C, H, W)
        print(f"{NAME}: chain -> {common.save_images(args.out, 'chain', strip, 10)}")


def evaluate(args):
    """The variational bound (eq. 5) on the test split, in bits/dim, always in fp32 (a
    super-resolution model: the bound on p(x | x downsampled))."""
    import common
    model = load(args.out, args.device)
    cfg = model.cfg
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
        decoder_floor_bpd=floor / per_dim, given_downsampled_by=cfg.sr_factor or None,
        note=f"nll_nats: the bound of Ho et al. eq. 5 on -log p(x), EMA weights, {cfg.timesteps} "
             f"steps; decoder_floor_bpd: the least L_0 (eq. 13) any model pays on this data"))


def add_sampler_flags(p, sampler, steps):
    """The sampling flags of ddpm.py and of ldm.py (which uses these): --sampler, --sample-steps
    (--ddim-steps, its old name, still works), --eta, --guidance."""
    import common
    a = p.add_argument
    a("--sampler", choices=DDPM.SAMPLERS, default=sampler, help="ddpm: Algorithm 2 (T steps)")
    a("--sample-steps", "--ddim-steps", dest="sample_steps", type=common.positive(int),
      default=steps, help="steps of ddim, dpm and heun (--ddim-steps: the old name)")
    a("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 = DDPM-like")
    a("--guidance", type=float, default=1.0, help="classifier-free guidance w; 0: the model")


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
    whole = common.positive(int)
    a("--width", type=whole, default=Config.width, help="U-Net channels at 28x28")
    a("--mults", type=whole, nargs="+", default=list(Config.mults), help="per resolution")
    a("--res-blocks", type=whole, default=Config.res_blocks, help="per resolution")
    a("--dropout", type=float, default=Config.dropout)
    a("--timesteps", type=whole, default=Config.timesteps, help="T")
    a("--schedule", choices=["linear", "cosine"], default="linear", help="cosine: Nichol, Dhariwal")
    a("--target", choices=["eps", "x0", "v"], default=Config.target, help="v: Salimans & Ho 2022")
    a("--min-snr", type=float, default=Config.min_snr_gamma, help="Min-SNR-gamma weights; 0: off")
    a("--p-uncond", type=float, default=Config.p_uncond, help="label dropout for guidance")
    a("--adagn", action=argparse.BooleanOptionalAction, default=Config.adagn,
      help="AdaGN (Dhariwal & Nichol); --no-adagn: the embedding added, as in Ho et al.")
    a("--low-discrepancy", action=argparse.BooleanOptionalAction, default=Config.low_discrepancy,
      help="a batch's steps spread evenly over 0..T-1 (Kingma et al. 2021)")
    a("--ema", type=float, default=0.99, help="EMA decay of the weights for sampling (0: off)")
    a("--lr-schedule", choices=["constant", "cosine"], default="constant", help="after warm-up")
    add_sampler_flags(p, "dpm", 10)
    a("--variance", choices=["small", "large"], default="small", help="b~_t (small) or b_t")
    a("--chain", action="store_true", help="--sample: also chain.png, Algorithm 2's chain")
    a("--task", choices=["generate", "sr"], default="generate",
      help="sr: train a super-resolution model (SR3) from images downsampled by --factor")
    a("--factor", type=int, choices=[2, 4], default=4, help="the factor of --task sr")
    a("--null-label", action="store_true", help="--eval: the bound on p(x) through 'no class'")
    common.run(p, argv, train, sample, evaluate)


if __name__ == "__main__":
    main()
