"""DDPM: denoising diffusion probabilistic models, with DDIM and classifier-free guidance.

Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models", arXiv:2006.11239.
A fixed forward process adds Gaussian noise to an image over T steps; one network, shared by all
steps, learns to undo one step at a time; sampling starts from pure noise and denoises T times.

    python ddpm.py --train                      # built-in digits; ~10 min on a 2-core CPU
    python ddpm.py --sample --eval              # grids + .npz in runs/ddpm, bits/dim in eval.json
    python ddpm.py --train --data mnist --data-dir DIR --out runs/ddpm-mnist

Maths (Ho et al. equation numbers; t is 1-based in the paper, 0-based in this code: index
t = 0..T-1 is the paper's step t+1, so alphas_cumprod[0] = 1 - beta_1):
    q(x_t | x_{t-1}) = N(sqrt(1 - b_t) x_{t-1}, b_t I)                                (2)
    q(x_t | x_0)     = N(sqrt(abar_t) x_0, (1 - abar_t) I),  abar_t = prod_s (1 - b_s) (4)
    q(x_{t-1} | x_t, x_0) = N(mu~_t, b~_t I), mu~_t and b~_t as in                     (6, 7)
    L_simple = E_{t, x_0, eps} || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2  (14)
    bound: L = L_T + sum_{t>1} KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) + L_0          (5, 13)
Extensions, each a flag: cosine schedule (Nichol & Dhariwal 2021, arXiv:2102.09672, eq. 17),
x0- and v-prediction (Salimans & Ho 2022, arXiv:2202.00512), DDIM (Song, Meng & Ermon 2021,
arXiv:2010.02502, eq. 12), classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598, eq. 6),
inpainting by replacing the known pixels (with RePaint resampling, Lugmayr et al. 2022).
Deviations: a smaller U-Net than the paper's 35.7M (width and depth are flags); gradient clipping
at 1 and a 200-step warm-up as in the paper's code; images in [-1, 1] everywhere.
Things to try: --target x0 (blurrier samples), --schedule cosine, --guidance 0 vs 3, --sampler ddim.
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
    target: str = "eps"        # what the network predicts: eps (paper) | x0 | v
    p_uncond: float = 0.1      # label dropout for classifier-free guidance (Ho & Salimans: 0.1-0.2)


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
    def __init__(self, cin, cout, tdim, dropout):
        super().__init__()
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.to_scale_shift = nn.Linear(tdim, cout)
        self.norm2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.to_scale_shift(emb)[:, :, None, None]       # the step (and class) enters here
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over all positions, used at the lowest resolution."""

    def __init__(self, ch):
        super().__init__()
        self.norm, self.qkv, self.proj = norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)             # (B, HW, C)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """eps_theta(x_t, t, y): (B, C, H, W) in, (B, C, H, W) out. y = num_classes means 'no class'."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        w, tdim = cfg.width, 4 * cfg.width
        self.time_mlp = nn.Sequential(nn.Linear(w, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.class_emb = nn.Embedding(cfg.num_classes + 1, tdim) if cfg.num_classes else None
        self.conv_in = nn.Conv2d(cfg.channels, w, 3, padding=1)
        chans, ch, skips = [w * m for m in cfg.mults], w, [w]
        self.down = nn.ModuleList()
        for i, c in enumerate(chans):
            for _ in range(cfg.res_blocks):
                self.down.append(ResBlock(ch, c, tdim, cfg.dropout))
                ch = c
                skips.append(ch)
            if i < len(chans) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))  # 28 -> 14 -> 7
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, tdim, cfg.dropout), Attention(ch),
                                  ResBlock(ch, ch, tdim, cfg.dropout)])
        self.up = nn.ModuleList()
        for i, c in reversed(list(enumerate(chans))):
            for _ in range(cfg.res_blocks + 1):
                self.up.append(ResBlock(ch + skips.pop(), c, tdim, cfg.dropout))
                ch = c
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(ch, ch, 3, padding=1)))
        self.norm_out, self.conv_out = norm(ch), nn.Conv2d(ch, cfg.channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, t, y=None):
        emb = self.time_mlp(timestep_embedding(t, self.cfg.width))
        if self.class_emb is not None:
            y = torch.full_like(t, self.cfg.num_classes) if y is None else y
            emb = emb + self.class_emb(y)
        emb = F.silu(emb)
        h, hs = self.conv_in(x), []
        hs.append(h)
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], 1), emb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ----------------------------------------------------------------------------------------------
# The diffusion: schedule, forward process, loss, samplers, bound

def linear_beta_schedule(timesteps, start=1e-4, end=0.02):
    """Ho et al. Sec. 4: betas rise linearly from 1e-4 to 0.02 for T = 1000; for another T the
    end points are scaled by 1000/T (as in Nichol & Dhariwal's code) and capped below 1."""
    scale = 1000 / timesteps
    return torch.linspace(scale * start, scale * end, timesteps, dtype=torch.float64).clamp(max=0.999)


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


def discretized_gaussian_log_likelihood(x, mean, log_scale):
    """Ho et al. eq. 13: log p(x_0 | x_1) for x in [-1, 1] on the 256-value grid: the Gaussian
    mass in the bin [x - 1/255, x + 1/255], the end bins stretched to -inf and +inf."""
    inv_std = torch.exp(-log_scale)
    upper, lower = inv_std * (x - mean + 1 / 255), inv_std * (x - mean - 1 / 255)
    log_cdf_upper = torch.special.log_ndtr(upper)                   # for x = -1: P(X <= -1 + 1/255)
    log_one_minus_cdf_lower = torch.special.log_ndtr(-lower)        # for x = +1: P(X > 1 - 1/255)
    mid = torch.log((torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_one_minus_cdf_lower, mid))


def extract(a, t, x):
    """a[t] shaped to broadcast against x: (B,) -> (B, 1, 1, 1)."""
    return a[t].float().reshape(-1, *([1] * (x.dim() - 1)))


class GaussianDiffusion(nn.Module):
    """The fixed forward process and the learned reverse one around any eps-model(x, t, y).
    Buffers only; no parameters. Step index t is 0-based (see the module docstring)."""

    def __init__(self, timesteps=1000, schedule="linear", target="eps", clip_x0=True):
        super().__init__()
        self.timesteps, self.target, self.clip_x0 = timesteps, target, clip_x0
        betas = {"linear": linear_beta_schedule, "cosine": cosine_beta_schedule}[schedule](timesteps)
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)                           # abar_t, eq. 4
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)   # b~_t, eq. 7
        buffers = dict(
            betas=betas, alphas_cumprod=alphas_cumprod, alphas_cumprod_prev=alphas_cumprod_prev,
            sqrt_alphas_cumprod=alphas_cumprod.sqrt(), sqrt_one_minus_alphas_cumprod=(1 - alphas_cumprod).sqrt(),
            posterior_variance=posterior_variance,
            # b~ is 0 at the first step; its log is clipped to the next value (as in Ho et al.'s code)
            posterior_log_variance_clipped=torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]])),
            posterior_mean_coef1=betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),      # eq. 7
            posterior_mean_coef2=(1 - alphas_cumprod_prev) * alphas.sqrt() / (1 - alphas_cumprod),
        )
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)  # float64: rebuilt from the config

    # -- forward process
    def q_sample(self, x0, t, noise):
        """Eq. 4: a draw of x_t ~ q(x_t | x_0)."""
        return extract(self.sqrt_alphas_cumprod, t, x0) * x0 + extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior_mean_variance(self, x0, x_t, t):
        """Eqs. 6-7: mean, variance and log variance of q(x_{t-1} | x_t, x_0)."""
        mean = extract(self.posterior_mean_coef1, t, x_t) * x0 + extract(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, extract(self.posterior_variance, t, x_t), extract(self.posterior_log_variance_clipped, t, x_t)

    # -- the three parameterisations, each convertible to the others (Salimans & Ho, Sec. 4 and App. D)
    def predict_x0_from_eps(self, x_t, t, eps):
        return (x_t - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / extract(self.sqrt_alphas_cumprod, t, x_t)

    def predict_eps_from_x0(self, x_t, t, x0):
        return (x_t - extract(self.sqrt_alphas_cumprod, t, x_t) * x0) / extract(self.sqrt_one_minus_alphas_cumprod, t, x_t)

    def v_target(self, x0, t, eps):
        """v = sqrt(abar) eps - sqrt(1 - abar) x0."""
        return extract(self.sqrt_alphas_cumprod, t, x0) * eps - extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def predict_x0_from_v(self, x_t, t, v):
        return extract(self.sqrt_alphas_cumprod, t, x_t) * x_t - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v

    def predict_eps(self, model, x_t, t, y=None, guidance=0.0):
        """The network's output as eps, with classifier-free guidance (Ho & Salimans eq. 6):
        eps~ = (1 + w) eps(x_t, y) - w eps(x_t, no class). w = 0 is the plain conditional model."""
        if y is not None and guidance != 0:
            null = torch.full_like(y, model.cfg.num_classes)
            out_c, out_u = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
            return (1 + guidance) * self.to_eps(x_t, t, out_c) - guidance * self.to_eps(x_t, t, out_u)
        return self.to_eps(x_t, t, model(x_t, t, y))

    def to_eps(self, x_t, t, out):
        if self.target == "eps":
            return out
        x0 = out if self.target == "x0" else self.predict_x0_from_v(x_t, t, out)
        return self.predict_eps_from_x0(x_t, t, x0)

    # -- training
    def loss(self, model, x0, y=None, p_uncond=0.0):
        """Algorithm 1 / eq. 14 (L_simple): t uniform over all T steps (0..T-1, the last one
        included), MSE between the network's output and its target (eps, x0 or v)."""
        t = torch.randint(0, self.timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        if y is not None and p_uncond > 0:                           # label dropout (Ho & Salimans Alg. 1)
            drop = torch.rand(y.shape, device=y.device) < p_uncond
            y = torch.where(drop, torch.full_like(y, model.cfg.num_classes), y)
        target = {"eps": noise, "x0": x0, "v": self.v_target(x0, t, noise)}[self.target]
        return F.mse_loss(model(x_t, t, y).float(), target)

    # -- reverse process
    def p_mean_variance(self, model, x_t, t, y=None, guidance=0.0, variance="small"):
        """p(x_{t-1} | x_t) = N(mu~(x_t, x0_hat), sigma_t^2): x0_hat from the predicted eps (eq. 15),
        sigma_t^2 = b~_t ("small") or b_t ("large"); Ho et al. Sec. 3.2 found both work."""
        eps = self.predict_eps(model, x_t, t, y, guidance).float()
        x0 = self.predict_x0_from_eps(x_t, t, eps)
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
        mean, var, logvar = self.q_posterior_mean_variance(x0, x_t, t)
        if variance == "large":
            large = torch.cat([self.posterior_variance[1:2], self.betas[1:]])
            var, logvar = extract(large, t, x_t), extract(large.log(), t, x_t)
        return mean, var, logvar, x0

    @torch.no_grad()
    def p_sample_loop(self, model, shape, y=None, guidance=0.0, variance="small", keep=0):
        """Algorithm 2: x_T ~ N(0, I); x_{t-1} = mu + sigma z for t = T..1, with no noise on the
        last step. Returns x_0 and, if keep > 0, `keep` snapshots from x_T to x_0."""
        x = torch.randn(shape, device=self.betas.device)
        marks = set(torch.linspace(0, self.timesteps, keep).round().long().tolist()) if keep else set()
        frames = []
        for done, i in enumerate(reversed(range(self.timesteps))):
            if done in marks:
                frames.append(x)
            t = torch.full((shape[0],), i, device=x.device, dtype=torch.long)
            mean, _, logvar, _ = self.p_mean_variance(model, x, t, y, guidance, variance)
            x = mean + (torch.exp(0.5 * logvar) * torch.randn_like(x) if i > 0 else 0)
        return x, frames + [x] if keep else []

    def ddim_abar_sigma(self, i, j, eta):
        """abar at the next step j (1 after the last step, j = -1) and Song et al.'s sigma (eq. 16)."""
        abar = float(self.alphas_cumprod[i])
        abar_prev = float(self.alphas_cumprod[j]) if j >= 0 else 1.0
        return abar_prev, eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))

    @torch.no_grad()
    def ddim_sample(self, model, shape, steps=50, eta=0.0, y=None, guidance=0.0):
        """Song et al. eq. 12 on `steps` evenly spaced steps from T to 1 (eta = 0: deterministic;
        eta = 1 over all T steps: the DDPM posterior variance):
        x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z,
        sigma^2 = eta^2 (1 - abar_prev)/(1 - abar) (1 - abar/abar_prev)  (eq. 16)."""
        x = torch.randn(shape, device=self.betas.device)
        seq = torch.linspace(self.timesteps - 1, 0, steps).round().long().tolist()
        for i, j in zip(seq, seq[1:] + [-1]):
            t = torch.full((shape[0],), i, device=x.device, dtype=torch.long)
            eps = self.predict_eps(model, x, t, y, guidance).float()
            x0 = self.predict_x0_from_eps(x, t, eps)
            if self.clip_x0:
                x0 = x0.clamp(-1, 1)
                eps = self.predict_eps_from_x0(x, t, x0)
            abar_prev, sigma = self.ddim_abar_sigma(i, j, eta)
            x = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma ** 2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * torch.randn_like(x)
        return x

    @torch.no_grad()
    def inpaint(self, model, x_known, mask, y=None, guidance=0.0, resample=1):
        """Fill where mask == 0, keep where mask == 1: at every step the known region is replaced
        by a draw of q(x_{t-1} | x_0); with resample > 1, each step is redone after going back one
        step with q(x_t | x_{t-1}) (RePaint, Lugmayr et al. 2022, Alg. 1, jump length 1)."""
        x = torch.randn_like(x_known)
        for i in reversed(range(self.timesteps)):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            for r in range(resample):
                mean, _, logvar, _ = self.p_mean_variance(model, x, t, y, guidance)
                unknown = mean + (torch.exp(0.5 * logvar) * torch.randn_like(x) if i > 0 else 0)
                known = self.q_sample(x_known, t - 1, torch.randn_like(x)) if i > 0 else x_known
                x_prev = mask * known + (1 - mask) * unknown
                if r < resample - 1 and i > 0:                     # back to step t: eq. 2
                    beta = extract(self.betas, t, x)
                    x = (1 - beta).sqrt() * x_prev + beta.sqrt() * torch.randn_like(x)
            x = x_prev
        return x

    # -- the variational bound (eq. 5), in nats per image
    @torch.no_grad()
    def bound_terms(self, model, x0, y=None, variance="small"):
        """Per image: prior L_T, the sum of the KL terms L_1..L_{T-1} and L_0 (eq. 13), in nats."""
        b, T = x0.shape[0], self.timesteps
        dims = list(range(1, x0.dim()))
        t_last = torch.full((b,), T - 1, device=x0.device, dtype=torch.long)
        mean_T = extract(self.sqrt_alphas_cumprod, t_last, x0) * x0
        logvar_T = extract(torch.log(1 - self.alphas_cumprod), t_last, x0)
        prior = normal_kl(mean_T, logvar_T, torch.zeros_like(x0), torch.zeros_like(x0)).sum(dims)
        kl_sum, decoder = torch.zeros(b, device=x0.device), None
        for i in range(T):
            t = torch.full((b,), i, device=x0.device, dtype=torch.long)
            x_t = self.q_sample(x0, t, torch.randn_like(x0))
            mean, _, logvar, _ = self.p_mean_variance(model, x_t, t, y, 0.0, variance)
            if i == 0:
                decoder = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar).sum(dims)
            else:
                true_mean, _, true_logvar = self.q_posterior_mean_variance(x0, x_t, t)
                kl_sum += normal_kl(true_mean, true_logvar, mean, logvar).sum(dims)
        return prior, kl_sum, decoder


# ----------------------------------------------------------------------------------------------
# Plumbing: training, sampling, evaluation and the command line (uses common.py)

NAME = "ddpm"


def build(config):
    cfg = Config(**config)
    cfg.mults = tuple(cfg.mults)
    return UNet(cfg), GaussianDiffusion(cfg.timesteps, cfg.schedule, cfg.target)


def load(args):
    """Rebuild the U-Net (EMA weights) and the diffusion from the checkpoint in --out alone."""
    import common
    model, blob = common.load_model(args, NAME, lambda config: build(config)[0])
    return model, build(blob["config"])[1].to(args.device), blob


def train(args):
    import common
    images, labels = common.load_split(args, "train")
    cfg = Config(image_size=images.shape[-1], channels=images.shape[1], width=args.width,
                 mults=tuple(args.mults), res_blocks=args.res_blocks, dropout=args.dropout,
                 num_classes=int(labels.max()) + 1 if labels is not None and not args.unconditional else 0,
                 timesteps=args.timesteps, schedule=args.schedule, target=args.target, p_uncond=args.p_uncond)
    model, diffusion = build(vars(cfg))
    diffusion.to(args.device)
    print(f"{NAME}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(images)} "
          f"training images {tuple(images.shape[1:])}, {'classes: %d' % cfg.num_classes if cfg.num_classes else 'unconditional'}")

    def loss_fn(x, y):
        return diffusion.loss(model, common.to_unit(x), y if cfg.num_classes else None, cfg.p_uncond), {}

    def preview(model, ema, step):  # a quick DDIM grid (20 images) with the EMA weights at every checkpoint
        shadow = UNet(model.cfg).to(args.device)
        shadow.load_state_dict(ema.shadow)
        grid_samples(args, shadow.eval(), diffusion, "train_samples", sampler="ddim", n=20)  # ~10 s on a CPU
        model.train()

    common.fit(args, NAME, vars(cfg), model, loss_fn, images, labels, ema_decay=args.ema, on_checkpoint=preview)


def class_labels(n, num_classes, only, device):
    """n labels, each class equally often (or all `only`); None for an unconditional model."""
    if not num_classes:
        return None
    if only is not None:
        if not 0 <= only < num_classes:
            import common
            raise common.UserError(f"--class {only}: the model knows classes 0..{num_classes - 1}")
        return torch.full((n,), only, device=device, dtype=torch.long)
    return torch.arange(n, device=device) % num_classes


def grid_samples(args, model, diffusion, name, sampler=None, n=None):
    import common
    import time
    n, cfg = n or args.num_samples, model.cfg
    y = class_labels(n, cfg.num_classes, args.class_label, args.device)
    shape = (n, cfg.channels, cfg.image_size, cfg.image_size)
    start = time.time()
    with common.autocast(args):
        if (sampler or args.sampler) == "ddim":
            x = diffusion.ddim_sample(model, shape, args.ddim_steps, args.eta, y, args.guidance)
        else:
            x = diffusion.p_sample_loop(model, shape, y, args.guidance, args.variance)[0]
    seconds = time.time() - start
    nrow = cfg.num_classes if y is not None and args.class_label is None else int(math.ceil(math.sqrt(n)))
    path = common.save_images(args.out, name, common.from_unit(x.float()), nrow, y)  # column = class
    return path, seconds


def sample(args):
    import common
    model, diffusion, _ = load(args)
    torch.manual_seed(args.seed)
    path, seconds = grid_samples(args, model, diffusion, "samples")
    print(f"{NAME}: {args.num_samples} samples ({args.sampler}) in {seconds:.1f}s -> {path}")
    cfg = model.cfg
    if args.sampler != "ddpm":
        return  # the chain and inpainting below follow Algorithm 2's reverse chain
    # x_T -> x_0 strip for 8 samples (rows), 10 snapshots (columns)
    y = class_labels(8, cfg.num_classes, args.class_label, args.device)
    with common.autocast(args):
        _, frames = diffusion.p_sample_loop(model, (8, cfg.channels, cfg.image_size, cfg.image_size),
                                            y, args.guidance, args.variance, keep=10)
    strip = torch.stack(frames, 1).flatten(0, 1)                       # (8 * 10, C, H, W) in [-1, 1]
    print(f"{NAME}: chain -> {common.save_images(args.out, 'chain', common.from_unit(strip.float()), 10)}")
    # inpainting: the bottom half of 6 test images is filled in, twice each (one batch of 12)
    test, test_labels = common.load_split(args, "test", (cfg.channels, cfg.image_size, cfg.image_size))
    x0 = common.to_unit(test[:6]).to(args.device)
    mask = torch.ones_like(x0)
    mask[..., cfg.image_size // 2:, :] = 0
    y = test_labels[:6].to(args.device).repeat(2) if cfg.num_classes and test_labels is not None else None
    with common.autocast(args):
        fills = diffusion.inpaint(model, x0.repeat(2, 1, 1, 1), mask.repeat(2, 1, 1, 1), y, args.guidance, args.resample)
    rows = torch.stack([x0, x0 * mask - (1 - mask)] + list(fills.chunk(2)), 1).flatten(0, 1)  # original, masked, fills
    print(f"{NAME}: inpainting -> {common.save_images(args.out, 'inpaint', common.from_unit(rows.float()), 4)}")


def evaluate(args):
    """The variational bound (eq. 5) on the test split, in bits/dim, always in fp32."""
    import common
    model, diffusion, _ = load(args)
    cfg = model.cfg
    images, labels = common.load_split(args, "test", (cfg.channels, cfg.image_size, cfg.image_size))
    n = min(args.eval_images or len(images), len(images))
    torch.manual_seed(args.seed)
    totals = torch.zeros(3, dtype=torch.float64)
    conditional = bool(cfg.num_classes) and labels is not None and not args.unconditional
    for i in range(0, n, args.batch_size):
        x0 = common.to_unit(images[i:min(i + args.batch_size, n)]).to(args.device)
        y = labels[i:i + len(x0)].to(args.device) if conditional else None   # None: the null label, p(x)
        terms = diffusion.bound_terms(model, x0, y, args.variance)
        totals += torch.stack([v.double().sum().cpu() for v in terms])
        print(f"{NAME}: eval {i + len(x0)}/{n} images, {float(totals.sum()) / (i + len(x0)):.1f} nats/image so far", flush=True)
    per_dim = math.log(2) * cfg.channels * cfg.image_size ** 2
    prior, kls, decoder = (float(v) / n for v in totals)
    common.write_metrics(args.out, dict(
        data=args.data, images=n, bits_per_dim=(prior + kls + decoder) / per_dim, nll_bound_nats=prior + kls + decoder,
        conditional=conditional, prior_L_T_bpd=prior / per_dim, kl_terms_bpd=kls / per_dim, decoder_L_0_bpd=decoder / per_dim,
        note="upper bound on -log p(x) (Ho et al. eq. 5), EMA weights, %d steps" % cfg.timesteps))


def main(argv=None):
    import common
    p = common.make_parser(NAME, __doc__, steps=1800, batch_size=32, lr=5e-4, eval_images=1000)  # T calls each
    a = p.add_argument
    a("--width", type=common.positive(int), default=Config.width, help="U-Net channels at full resolution")
    a("--mults", type=common.positive(int), nargs="+", default=list(Config.mults), help="channel multiplier per resolution")
    a("--res-blocks", type=common.positive(int), default=Config.res_blocks, help="residual blocks per resolution")
    a("--dropout", type=float, default=Config.dropout)
    a("--timesteps", type=common.positive(int), default=Config.timesteps, help="T")
    a("--schedule", choices=["linear", "cosine"], default="linear", help="cosine: Nichol & Dhariwal 2021")
    a("--target", choices=["eps", "x0", "v"], default="eps", help="network output; v: Salimans & Ho 2022")
    a("--unconditional", action="store_true",
      help="ignore the labels (--train: an unconditional model; --eval: the bound on p(x), not p(x|y))")
    a("--p-uncond", type=float, default=Config.p_uncond, help="label dropout for classifier-free guidance")
    a("--ema", type=float, default=0.995, help="EMA decay of the weights used for sampling (0: off)")
    a("--sampler", choices=["ddpm", "ddim"], default="ddpm", help="ddpm: Algorithm 2 (T steps); ddim: Song et al. 2021")
    a("--ddim-steps", type=common.positive(int), default=50)
    a("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 = DDPM-like")
    a("--variance", choices=["small", "large"], default="small", help="reverse variance: b~_t (small) or b_t (large)")
    a("--guidance", type=float, default=1.0, help="classifier-free guidance scale w (Ho & Salimans 2022); 0 = conditional model")
    a("--class", dest="class_label", type=int, default=None, help="sample only this class")
    a("--resample", type=common.positive(int), default=1, help="RePaint resampling per step for inpainting")
    common.run(p, argv, train, sample, evaluate)


if __name__ == "__main__":
    main()
