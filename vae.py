"""VAE: the variational autoencoder, its evidence lower bound and an importance-weighted likelihood.

Kingma & Welling 2014, "Auto-Encoding Variational Bayes", arXiv:1312.6114.
An encoder q(z|x) = N(mu(x), diag sigma^2(x)) maps an image to a distribution over a small latent
z; a decoder p(x|z) maps z back to a distribution over images; the prior is p(z) = N(0, I).

    python vae.py --train                                  # built-in digits, 8-bit likelihood
    python vae.py --train --data mnist --data-dir DIR --binarize --out runs/vae-bin
    python vae.py --sample --eval --out runs/vae-bin       # grids; eval.json (ELBO, IWAE NLL)

Maths:
    reparameterization: z = mu + sigma * e, e ~ N(0, I)                       (K&W Sec. 2.4)
    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)) <= log p(x)                (K&W eq. 3)
    KL = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)                   (K&W App. B)
    IWAE: log p(x) >= L_K = E[log 1/K sum_k p(x, z_k) / q(z_k|x)], z_k ~ q,    (Burda et al. 2016,
          L_1 = ELBO <= L_K <= L_{K+1} -> log p(x) as K grows                   arXiv:1509.00519, eq. 8, Thm. 1)
    beta-VAE: ELBO with the KL weighted by beta (Higgins et al. 2017); beta = 1 is the VAE.
Decoders, both normalised over their support: Bernoulli per pixel for binarized data (nats per
image), and a discretized logistic over the 256 pixel values for 8-bit data (Salimans et al. 2017,
PixelCNN++, arXiv:1701.05517, eq. 2; bits per dimension).
Sample grids show the decoder's mean (the usual way to show VAE samples), not a noisy draw.
Things to try: --latent 2 (a map of the latent space), --beta 4, --binarize.
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
    latent: int = 32           # size of z (K&W used 2-200 on MNIST)
    width: int = 32            # conv channels after the first layer (twice that at 7x7)
    likelihood: str = "logistic"   # bernoulli (binarized data) | logistic (8-bit data)
    beta: float = 1.0          # KL weight (Higgins et al.); 1 = the VAE's ELBO


# ----------------------------------------------------------------------------------------------
# The networks

class ResBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.net = nn.Sequential(nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x):
        return x + self.net(x)


class Encoder(nn.Module):
    """x (B, C, H, W) in [-1, 1] -> mu, logvar of q(z|x), each (B, latent)."""

    def __init__(self, cfg):
        super().__init__()
        w, s = cfg.width, cfg.image_size // 4
        self.net = nn.Sequential(
            nn.Conv2d(cfg.channels, w, 4, stride=2, padding=1), nn.SiLU(),     # 28 -> 14
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1),                       # 14 -> 7
            ResBlock(2 * w), ResBlock(2 * w), nn.SiLU(), nn.Flatten())
        self.to_mu = nn.Linear(2 * w * s * s, cfg.latent)
        self.to_logvar = nn.Linear(2 * w * s * s, cfg.latent)

    def forward(self, x):
        h = self.net(x)
        return self.to_mu(h), self.to_logvar(h)


class Decoder(nn.Module):
    """z (B, latent) -> the parameters of p(x|z): logits (B, C, H, W), or for the discretized
    logistic the means and log scales, (B, 2C, H, W)."""

    def __init__(self, cfg):
        super().__init__()
        w, self.s = cfg.width, cfg.image_size // 4
        out = cfg.channels * (1 if cfg.likelihood == "bernoulli" else 2)
        self.from_z = nn.Linear(cfg.latent, 2 * w * self.s * self.s)
        self.net = nn.Sequential(
            ResBlock(2 * w), ResBlock(2 * w), nn.SiLU(),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), ResBlock(w), nn.SiLU(),   # 7 -> 14
            nn.ConvTranspose2d(w, out, 4, stride=2, padding=1))                            # 14 -> 28

    def forward(self, z):
        return self.net(self.from_z(z).reshape(len(z), -1, self.s, self.s))


# ----------------------------------------------------------------------------------------------
# Likelihoods, KL, ELBO and the importance-weighted bound

def bernoulli_log_prob(x, logits):
    """log p(x|z) for x in {0, 1}, summed over pixels: (B, ...) -> (B,)."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def discretized_logistic_log_prob(x, params):
    """Salimans et al. 2017 eq. 2: x in [-1, 1] on the 256-value grid; the mass of a logistic
    (mean m, log scale s) in the bin [x - 1/255, x + 1/255], the end bins running to -inf and +inf."""
    mean, log_scale = params.chunk(2, dim=1)
    log_scale = log_scale.clamp(min=-7)
    inv = torch.exp(-log_scale)
    plus, minus = inv * (x - mean + 1 / 255), inv * (x - mean - 1 / 255)
    log_cdf_plus = plus - F.softplus(plus)                      # log sigmoid(plus), for x = -1
    log_one_minus_cdf_minus = -F.softplus(minus)                # log (1 - sigmoid(minus)), for x = +1
    # log(sigmoid(plus) - sigmoid(minus)), computed stably; at the bin centre if that underflows
    delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv * (x - mean)
    log_pdf_mid = mid - log_scale - 2 * F.softplus(mid) + math.log(2 / 255)
    log_mid = torch.where(delta > 1e-5, torch.log(delta.clamp(min=1e-12)), log_pdf_mid)
    logp = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_mid))
    return logp.flatten(1).sum(1)


def gaussian_kl(mu, logvar):
    """KL(N(mu, diag e^logvar) || N(0, I)) per example (K&W App. B): (B, D) -> (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)


def reparameterize(mu, logvar, k=None):
    """z = mu + sigma * e (K&W Sec. 2.4): the sample is a differentiable function of mu and sigma.
    With k, k samples per example: (k, B, D)."""
    e = torch.randn((k,) + mu.shape if k else mu.shape, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * e


def gaussian_log_prob(z, mu, logvar):
    """log N(z; mu, diag e^logvar), summed over the last dimension."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def elbo(log_px_given_z, x, mu, logvar, beta=1.0):
    """ELBO per example with one reparameterized sample and the analytic KL (K&W eq. 10):
    returns (elbo, reconstruction log-likelihood, kl), each (B,). beta weights the KL."""
    z = reparameterize(mu, logvar)
    rec = log_px_given_z(x, z)
    kl = gaussian_kl(mu, logvar)
    return rec - beta * kl, rec, kl


def log_importance_weights(log_px_given_z, x, mu, logvar, k):
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for k samples z_k ~ q: (k, B).
    mean_k log w_k is an ELBO estimate; logmeanexp_k log w_k is Burda et al.'s L_k (eq. 8)."""
    z = reparameterize(mu, logvar, k)                                           # (k, B, D)
    log_px = log_px_given_z(x.unsqueeze(0).expand(k, *x.shape).flatten(0, 1), z.flatten(0, 1)).reshape(k, -1)
    return log_px + gaussian_log_prob(z, torch.zeros_like(mu), torch.zeros_like(logvar)) - gaussian_log_prob(z, mu, logvar)


def iwae_bound(log_w):
    """L_k = log (1/k) sum_k w_k, computed with log-sum-exp (never exp of a raw log weight)."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


class VAE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg, self.encoder, self.decoder = cfg, Encoder(cfg), Decoder(cfg)

    def log_px_given_z(self, x, z):
        """x: binary {0, 1} for bernoulli, [-1, 1] on the 256 grid for logistic."""
        out = self.decoder(z).float()
        return bernoulli_log_prob(x, out) if self.cfg.likelihood == "bernoulli" else discretized_logistic_log_prob(x, out)

    def encode(self, x):
        mu, logvar = self.encoder(x * 2 - 1 if self.cfg.likelihood == "bernoulli" else x)
        return mu.float(), logvar.float()

    def loss(self, x):
        """-ELBO in nats per image (beta-weighted KL), averaged over the batch."""
        mu, logvar = self.encode(x)
        bound, rec, kl = elbo(self.log_px_given_z, x, mu, logvar, self.cfg.beta)
        return -bound.mean(), {"rec": rec.mean().item(), "kl": kl.mean().item()}

    @torch.no_grad()
    def mean_image(self, z):
        """The decoder's mean in [0, 1] (Bernoulli probabilities, or the logistic means)."""
        out = self.decoder(z).float()
        if self.cfg.likelihood == "bernoulli":
            return torch.sigmoid(out)
        return (out.chunk(2, dim=1)[0].clamp(-1, 1) + 1) / 2

    @torch.no_grad()
    def sample(self, n):
        """z ~ p(z) = N(0, I), then the decoder's mean."""
        return self.mean_image(torch.randn(n, self.cfg.latent, device=next(self.parameters()).device))


# ----------------------------------------------------------------------------------------------
# Plumbing: training, sampling, evaluation and the command line (uses common.py)

NAME = "vae"


def prepare(x, cfg, generator=None):
    """uint8 images -> the decoder's data: {0, 1} (stochastic binarization with a generator,
    Salakhutdinov & Murray 2008) for bernoulli, [-1, 1] for the discretized logistic."""
    import common
    return common.binarize(x, generator) if cfg.likelihood == "bernoulli" else common.to_unit(x)


def load(args):
    import common
    return common.load_model(args, NAME, lambda config: VAE(Config(**config)))[0]


def train(args):
    import common
    images, _ = common.load_split(args, "train")
    cfg = Config(image_size=images.shape[-1], channels=images.shape[1], latent=args.latent, width=args.width,
                 likelihood="bernoulli" if args.binarize else "logistic", beta=args.beta)
    if cfg.image_size % 4:
        raise common.UserError(f"vae.py needs an image size divisible by 4, got {cfg.image_size}")
    model = VAE(cfg)
    print(f"{NAME}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(images)} "
          f"training images, {cfg.likelihood} likelihood")
    gen = torch.Generator(device=args.device)

    def loss_fn(x, y):
        gen.manual_seed(torch.initial_seed())     # a fresh binarization of every batch, repeatable
        return model.loss(prepare(x, cfg, gen))

    common.fit(args, NAME, vars(cfg), model, loss_fn, images, None, lr_schedule="cosine")


def test_data(args, cfg):
    """The test split as the decoder sees it; binarized once, with a fixed seed (0)."""
    import common
    images, _ = common.load_split(args, "test", (cfg.channels, cfg.image_size, cfg.image_size))
    return prepare(images, cfg, torch.Generator().manual_seed(0))


def sample(args):
    import common
    import time
    model = load(args)
    cfg, dev = model.cfg, args.device
    torch.manual_seed(args.seed)
    start = time.time()
    x = model.sample(args.num_samples)
    seconds = time.time() - start
    to8 = lambda v: (v.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    nrow = int(math.ceil(math.sqrt(args.num_samples)))
    print(f"{NAME}: {args.num_samples} samples in {seconds:.3f}s -> {common.save_images(args.out, 'samples', to8(x), nrow)}")
    data = test_data(args, cfg)[:64].to(dev)
    to01 = (lambda v: v) if cfg.likelihood == "bernoulli" else (lambda v: (v + 1) / 2)
    mu, _ = model.encode(data)
    pairs = torch.stack([to01(data), model.mean_image(mu)], 1).flatten(0, 1)      # original, reconstruction
    print(f"{NAME}: reconstructions -> {common.save_images(args.out, 'reconstructions', to8(pairs), 16)}")
    w = torch.linspace(0, 1, 10, device=dev).reshape(1, 10, 1)
    z = (1 - w) * mu[0:16:2, None] + w * mu[1:16:2, None]                          # 8 pairs x 10 steps
    print(f"{NAME}: interpolations -> {common.save_images(args.out, 'interpolations', to8(model.mean_image(z.flatten(0, 1))), 10)}")


@torch.no_grad()
def evaluate(args):
    """Test split: -ELBO (analytic KL) and Burda et al.'s L_K with K = --iw-samples, in fp32."""
    import common
    model = load(args)
    cfg = model.cfg
    data = test_data(args, cfg)
    n = min(args.eval_images or len(data), len(data))
    torch.manual_seed(args.seed)
    sums = torch.zeros(4, dtype=torch.float64)
    per = max(1, args.batch_size * 8 // args.iw_samples)       # images per step: bounded memory
    for i in range(0, n, per):
        x = data[i:min(i + per, n)].to(args.device)
        mu, logvar = model.encode(x)
        bound, rec, kl = elbo(model.log_px_given_z, x, mu, logvar)
        log_w = torch.cat([log_importance_weights(model.log_px_given_z, x, mu, logvar, min(250, args.iw_samples - j))
                           for j in range(0, args.iw_samples, 250)])
        sums += torch.stack([-bound.sum(), -iwae_bound(log_w).sum(), rec.sum(), kl.sum()]).double().cpu()
        if (i // per) % 20 == 0:
            print(f"{NAME}: eval {i + len(x)}/{n}, nll {float(sums[1]) / (i + len(x)):.2f} nats", flush=True)
    elbo_nats, nll, rec, kl = (float(v) / n for v in sums)
    dims = cfg.channels * cfg.image_size ** 2
    common.write_metrics(args.out, dict(
        data=args.data, images=n, likelihood=cfg.likelihood, elbo_nats=elbo_nats, nll_nats=nll,
        bits_per_dim=nll / (dims * math.log(2)), elbo_bits_per_dim=elbo_nats / (dims * math.log(2)),
        reconstruction_nats=-rec, kl_nats=kl, iw_samples=args.iw_samples,
        note="elbo_nats = -ELBO; nll_nats = -L_K (Burda et al. 2016), an upper bound on -log p(x)"
             + ("; test split binarized once with seed 0" if cfg.likelihood == "bernoulli" else "")))


def main(argv=None):
    import common
    p = common.make_parser(NAME, __doc__, steps=2500, batch_size=128, lr=2e-3, binarize=True)
    p.add_argument("--latent", type=common.positive(int), default=Config.latent, help="size of z")
    p.add_argument("--width", type=common.positive(int), default=Config.width, help="conv channels")
    p.add_argument("--beta", type=common.positive(float), default=1.0, help="KL weight (Higgins et al. 2017)")
    p.add_argument("--iw-samples", type=common.positive(int), default=1000, help="K for the IWAE estimate")
    common.run(p, argv, train, sample, evaluate)


if __name__ == "__main__":
    main()
