"""VAE: the variational autoencoder, its evidence lower bound and an importance-weighted likelihood.

Kingma & Welling 2014, "Auto-Encoding Variational Bayes", arXiv:1312.6114.
An encoder q(z|x) = N(mu(x), diag sigma^2(x)) maps an image to a distribution over a small latent
z; a decoder p(x|z) maps z back to a distribution over images; the prior is p(z) = N(0, I).

    python vae.py --train                                  # built-in digits, 8-bit likelihood
    python vae.py --train --data mnist --data-dir DIR --binarize --out runs/vae-bin
    python vae.py --sample --eval --out runs/vae-bin       # grids; eval.json (ELBO, IWAE NLL)

In code: model = VAE(Config()); model.loss(x, y) -> (loss, logs), model.sample(n, y),
model.nll(x, y, k) (the IWAE bound). Images at this API are float (B, C, H, W) in [-1, 1]: 8-bit
images on the 256-value grid, binarized images exactly -1 and 1 (the Bernoulli decoder reads
them as 0/1). y: class labels, only for a model built with num_classes > 0 (Kingma et al. 2014).

Maths:
    reparameterization: z = mu + sigma * e, e ~ N(0, I)                       (K&W Sec. 2.4)
    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)) <= log p(x)                (K&W eq. 3)
    KL = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)                   (K&W App. B)
    IWAE: log p(x) >= L_K = E[log 1/K sum_k p(x, z_k) / q(z_k|x)], z_k ~ q,
          L_1 = ELBO <= L_K <= L_{K+1} -> log p(x) as K grows
          (Burda et al. 2016, arXiv:1509.00519, eq. 8 and Thm. 1)
    beta-VAE: ELBO with the KL weighted by beta (Higgins et al. 2017); beta = 1 is the VAE.
Decoders, both normalised over their support: Bernoulli per pixel for binarized data (nats per
image), and a discretized logistic over the 256 pixel values for 8-bit data (Salimans et al. 2017,
PixelCNN++, arXiv:1701.05517, eq. 2; bits per dimension).
Sample grids show the decoder's mean (the usual way to show VAE samples), not a noisy draw.
Things to try: --latent 2 (a map of the latent space), --beta 4, --binarize, --codebook 256.
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
    num_classes: int = 0       # 0 = unconditional; else q(z|x, y), p(x|z, y) (Kingma et al. 2014)
    codebook: int = 0          # K > 0: the VQ-VAE of the last section (K codes of size latent)


# ----------------------------------------------------------------------------------------------
# The networks

class ResBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.net = nn.Sequential(nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                 nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x):
        return x + self.net(x)


class Encoder(nn.Module):
    """x (B, C, H, W) in [-1, 1] (and a label) -> mu, logvar of q(z|x, y), each (B, latent)."""

    def __init__(self, cfg):
        super().__init__()
        w, s = cfg.width, cfg.image_size // 4
        self.net = nn.Sequential(
            nn.Conv2d(cfg.channels, w, 4, stride=2, padding=1), nn.SiLU(),     # 28 -> 14
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1),                      # 14 -> 7
            ResBlock(2 * w), ResBlock(2 * w), nn.SiLU(), nn.Flatten())        # (B, 2w * 7 * 7)
        self.to_mu = nn.Linear(2 * w * s * s, cfg.latent)
        self.to_logvar = nn.Linear(2 * w * s * s, cfg.latent)
        self.class_emb = nn.Embedding(cfg.num_classes, 2 * w * s * s) if cfg.num_classes else None

    def forward(self, x, y=None):
        h = self.net(x)
        if self.class_emb is not None:
            h = h + self.class_emb(y)                                 # the label enters q(z|x, y)
        return self.to_mu(h), self.to_logvar(h)


class Decoder(nn.Module):
    """z (B, latent) (and a label) -> the parameters of p(x|z, y): logits (B, C, H, W), or for
    the discretized logistic the means and log scales, (B, 2C, H, W)."""

    def __init__(self, cfg):
        super().__init__()
        w, self.s = cfg.width, cfg.image_size // 4
        out = cfg.channels * (1 if cfg.likelihood == "bernoulli" else 2)
        self.from_z = nn.Linear(cfg.latent, 2 * w * self.s * self.s)
        self.net = nn.Sequential(
            ResBlock(2 * w), ResBlock(2 * w), nn.SiLU(),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1),             # 7 -> 14
            ResBlock(w), nn.SiLU(), nn.ConvTranspose2d(w, out, 4, stride=2, padding=1))  # 14 -> 28
        self.class_emb = (nn.Embedding(cfg.num_classes, 2 * w * self.s * self.s)
                          if cfg.num_classes else None)

    def forward(self, z, y=None):
        h = self.from_z(z)                                            # (B, 2w * 7 * 7)
        if self.class_emb is not None:
            h = h + self.class_emb(y)                                 # the label enters p(x|z, y)
        return self.net(h.reshape(len(z), -1, self.s, self.s))


# ----------------------------------------------------------------------------------------------
# Likelihoods, KL, ELBO and the importance-weighted bound

def bernoulli_log_prob(x, logits):
    """log p(x|z) for x in {0, 1}, summed over pixels: (B, ...) -> (B,)."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def discretized_logistic_log_prob(x, params):
    """Salimans et al. 2017 eq. 2: x in [-1, 1] on the 256-value grid; a logistic's (mean m, log
    scale s) mass in the bin [x - 1/255, x + 1/255], the end bins running to -inf and +inf."""
    mean, log_scale = params.chunk(2, dim=1)
    log_scale = log_scale.clamp(min=-7)
    inv = torch.exp(-log_scale)
    plus, minus = inv * (x - mean + 1 / 255), inv * (x - mean - 1 / 255)
    log_cdf_plus = plus - F.softplus(plus)                      # log sigmoid(plus), for x = -1
    log_one_minus_cdf_minus = -F.softplus(minus)                # log (1 - sigmoid(minus)), x = +1
    # log(sigmoid(plus) - sigmoid(minus)), computed stably; at the bin centre if that underflows
    delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv * (x - mean)
    log_pdf_mid = mid - log_scale - 2 * F.softplus(mid) + math.log(2 / 255)
    log_mid = torch.where(delta > 1e-5, torch.log(delta.clamp(min=1e-12)), log_pdf_mid)
    logp = torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_minus, log_mid))
    return logp.flatten(1).sum(1)


def discretized_logistic_sample(params, u):
    """A draw from the distribution above, given uniforms u in (0, 1): the logistic's inverse CDF
    m + e^s (log u - log(1 - u)), rounded to the nearest of the 256 values; the end bins take the
    tails, as in the likelihood, so each value comes with exactly its bin's mass."""
    mean, log_scale = params.chunk(2, dim=1)
    u = u.clamp(1e-7, 1 - 1e-7)
    x = mean + torch.exp(log_scale.clamp(min=-7)) * (torch.log(u) - torch.log1p(-u))
    return (torch.round((x + 1) * 127.5).clamp(0, 255) / 127.5 - 1).clamp(-1, 1)


def gaussian_kl(mu, logvar):
    """KL(N(mu, diag e^logvar) || N(0, I)) per example (K&W App. B): (B, D) -> (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)


def reparameterize(mu, logvar, k=None):
    """z = mu + sigma * e (K&W Sec. 2.4), differentiable in mu and sigma; k samples: (k, B, D)."""
    e = torch.randn((k,) + mu.shape if k else mu.shape, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * e


def gaussian_log_prob(z, mu, logvar):  # log N(z; mu, diag e^logvar), summed over the last dim
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
    xs = x.unsqueeze(0).expand(k, *x.shape).flatten(0, 1)                       # (k * B, ...)
    log_px = log_px_given_z(xs, z.flatten(0, 1)).reshape(k, -1)                   # (k, B)
    log_pz = gaussian_log_prob(z, torch.zeros_like(mu), torch.zeros_like(logvar))
    return log_px + log_pz - gaussian_log_prob(z, mu, logvar)


def iwae_bound(log_w):
    """L_k = log (1/k) sum_k w_k, computed with log-sum-exp (never exp of a raw log weight)."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


class VAE(nn.Module):
    """The model a copier imports. Images: float (B, C, H, W) in [-1, 1], on the 256-value grid
    for the logistic decoder, exactly -1 or 1 for the Bernoulli one. With num_classes > 0 it is
    class-conditional (Kingma et al. 2014, arXiv:1406.5298, model M2 with the label observed, eq.
    6 without its constant log p(y)): q(z|x, y) and p(x|z, y), a learned vector per class added
    to the features; the bound is then on log p(x|y)."""

    def __new__(cls, cfg=None):     # Config(codebook=K > 0): the VQ-VAE of the last section
        return super().__new__(VQVAE if cls is VAE and getattr(cfg, "codebook", 0) else cls)

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def check_labels(self, y):
        if (y is None) != (self.cfg.num_classes == 0):
            raise ValueError("pass labels y exactly when the model is class-conditional "
                             f"(num_classes = {self.cfg.num_classes})")

    def data(self, x):
        """Images in [-1, 1] -> what the decoder's likelihood scores: {0, 1} or [-1, 1]."""
        return (x > 0).float() if self.cfg.likelihood == "bernoulli" else x

    def encode(self, x, y=None):
        """mu, log variance of q(z|x, y), each (B, latent), in fp32."""
        return tuple(v.float() for v in self.encoder(x, y))

    def log_px_given_z(self, data, z, y=None):
        """log p(x|z, y) per image; data as self.data gives it (labels repeated for k z's each)."""
        if y is not None:
            y = y.repeat(len(z) // len(y))
        out = self.decoder(z, y).float()
        if self.cfg.likelihood == "bernoulli":
            return bernoulli_log_prob(data, out)
        return discretized_logistic_log_prob(data, out)

    def elbo(self, x, y=None):
        """(ELBO, reconstruction log-likelihood, KL) per image, in nats (K&W eq. 10, beta = 1)."""
        self.check_labels(y)
        mu, logvar = self.encode(x, y)
        return elbo(lambda d, z: self.log_px_given_z(d, z, y), self.data(x), mu, logvar)

    def loss(self, x, y=None):
        """-ELBO in nats per image (KL weighted by beta), averaged over the batch."""
        self.check_labels(y)
        mu, logvar = self.encode(x, y)
        log_px = lambda d, z: self.log_px_given_z(d, z, y)
        bound, rec, kl = elbo(log_px, self.data(x), mu, logvar, self.cfg.beta)
        return -bound.mean(), {"rec": rec.mean().item(), "kl": kl.mean().item()}

    @torch.no_grad()
    def nll(self, x, y=None, k=1000):
        """-L_k per image in nats: Burda et al.'s importance-weighted bound with k samples, an
        upper bound on -log p(x) (or -log p(x|y)) that tightens as k grows (k = 1: the -ELBO)."""
        self.check_labels(y)
        mu, logvar = self.encode(x, y)
        log_px = lambda d, z: self.log_px_given_z(d, z, y)
        chunks = [log_importance_weights(log_px, self.data(x), mu, logvar, min(250, k - j))
                  for j in range(0, k, 250)]                     # 250 samples at a time: memory
        return -iwae_bound(torch.cat(chunks))

    @torch.no_grad()
    def decode(self, z, y=None, mean=True):
        """The decoder's mean image in [-1, 1] (2p - 1 for Bernoulli probabilities p), or with
        mean=False a draw x ~ p(x|z) itself (the model's actual samples: grainier)."""
        out = self.decoder(z, y).float()
        u = torch.rand_like(out[:, :self.cfg.channels]) if not mean else None
        if self.cfg.likelihood == "bernoulli":
            return (torch.sigmoid(out) if mean else (u < torch.sigmoid(out)).float()) * 2 - 1
        return out.chunk(2, dim=1)[0].clamp(-1, 1) if mean else discretized_logistic_sample(out, u)

    @torch.no_grad()
    def sample(self, n, y=None, mean=True):
        """z ~ p(z) = N(0, I), then the decoder's mean (the usual picture of VAE samples), or with
        mean=False a draw x ~ p(x|z)."""
        self.check_labels(y)
        z = torch.randn(n, self.cfg.latent, device=next(self.parameters()).device)
        return self.decode(z, y, mean)

    @torch.no_grad()
    def reconstruct(self, x, y=None):
        """The decoder's mean at the mean of q(z|x, y)."""
        return self.decode(self.encode(x, y)[0], y)


# ----------------------------------------------------------------------------------------------
# Beyond the paper: the VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017, arXiv:1711.00937).
# Config(codebook=K) makes VAE(cfg) this model: each vector of the encoder's 7x7 grid z_e becomes
# its nearest of K codes, z_q (their eq. 1-2). Under a uniform prior over code grids KL(q || p) =
# h w log K (q is one-hot), so -log p(x) <= -log p(x | z_q(x)) + h w log K (their Sec. 3.1).

class VectorQuantizer(nn.Module):
    """Nearest-code quantisation, the codebook learned by moving averages (App. A.1): N_i <- g N_i
    + (1 - g) n_i, m_i <- g m_i + (1 - g) (sum of the z_e assigned to i), e_i = m_i / N_i, with N_i
    Laplace-smoothed. Not in the paper: a code left unused (N_i < 1e-3) restarts at a batch z_e."""

    def __init__(self, codes, dim, decay=0.99, eps=1e-5):
        super().__init__()
        self.decay, self.eps = decay, eps
        self.register_buffer("codebook", torch.randn(codes, dim))
        self.register_buffer("counts", torch.ones(codes))               # N_i
        self.register_buffer("sums", self.codebook.clone())             # m_i

    def nearest(self, flat):  # (M, D) -> (M,): each row's nearest code, in squared distance
        e = self.codebook
        return ((flat ** 2).sum(1, keepdim=True) - 2 * flat @ e.T + (e ** 2).sum(1)).argmin(1)

    @torch.no_grad()
    def update(self, flat, codes):  # one moving-average step from the batch's z_e and codes
        onehot = F.one_hot(codes, len(self.codebook)).to(flat.dtype)      # (M, K)
        self.counts.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.sums.mul_(self.decay).add_(onehot.T @ flat, alpha=1 - self.decay)
        n = self.counts.sum()
        smoothed = (self.counts + self.eps) / (n + len(self.counts) * self.eps) * n
        self.codebook.copy_(self.sums / smoothed[:, None])
        dead = smoothed < 1e-3
        if dead.any():
            pick = flat[torch.randint(0, len(flat), (int(dead.sum()),), device=flat.device)]
            self.codebook[dead], self.sums[dead], self.counts[dead] = pick, pick, 1.0

    def forward(self, z_e):
        """z_e (B, D, h, w) -> z_q with straight-through gradients (eq. 3: the decoder's gradient
        passes to z_e), codes (B, h, w), commitment ||z_e - sg[z_q]||^2 per image, perplexity."""
        b, dim, h, w = z_e.shape
        with torch.autocast(z_e.device.type, enabled=False):  # distances and averages in fp32
            z_e = z_e.float()
            flat = z_e.permute(0, 2, 3, 1).reshape(-1, dim)
            codes = self.nearest(flat)
            if self.training:
                self.update(flat.detach(), codes)
            z_q = self.codebook[codes].view(b, h, w, dim).permute(0, 3, 1, 2)
            commitment = ((z_e - z_q.detach()) ** 2).flatten(1).sum(1)
        usage = torch.bincount(codes, minlength=len(self.codebook)).float() / len(codes)
        perplexity = torch.exp(-(usage * (usage + 1e-10).log()).sum())
        return z_e + (z_q - z_e).detach(), codes.view(b, h, w), commitment, perplexity


class GridDecoder(nn.Sequential):  # a decoder from the code grid, with no label
    def forward(self, z, y=None):
        return super().forward(z)


class VQVAE(VAE):
    """The VQ-VAE at the VAE's API, unconditional (a prior over its codes can take labels). loss:
    -log p(x | z_q) + 0.25 ||z_e - sg[z_q]||^2 (eq. 3, beta = 0.25; the codebook: EMA)."""

    def __init__(self, cfg):
        nn.Module.__init__(self)
        if cfg.num_classes:
            raise ValueError("the VQ-VAE is unconditional: condition the prior over its codes")
        self.cfg, w, self.grid = cfg, cfg.width, (cfg.image_size // 4,) * 2
        self.encoder = nn.Sequential(*Encoder(cfg).net[:-1], nn.Conv2d(2 * w, cfg.latent, 1))
        self.decoder = GridDecoder(nn.Conv2d(cfg.latent, 2 * w, 1), *Decoder(cfg).net)
        self.quantizer = VectorQuantizer(cfg.codebook, cfg.latent)

    def loss(self, x, y=None):
        self.check_labels(y)
        z_q, codes, commitment, perplexity = self.quantizer(self.encoder(x))
        rec = self.log_px_given_z(self.data(x), z_q)
        return (-rec + 0.25 * commitment).mean(), {
            "rec": -rec.mean().item(), "commitment": commitment.mean().item(),
            "perplexity": perplexity.item(), "codes_used": len(codes.unique())}

    @torch.no_grad()
    def elbo(self, x, y=None):
        """(bound, log p(x | z_q(x)), KL = h w log K) per image in nats, the prior uniform."""
        self.check_labels(y)
        rec = self.log_px_given_z(self.data(x), self.quantizer(self.encoder(x))[0])
        kl = torch.full_like(rec, self.grid[0] * self.grid[1] * math.log(self.cfg.codebook))
        return rec - kl, rec, kl

    @torch.no_grad()
    def nll(self, x, y=None, k=None):
        """-log p(x | z_q(x)) + h w log K per image in nats: an upper bound on -log p(x) with the
        uniform prior over codes (k, the VAE's sample count, has no role here)."""
        return -self.elbo(x, y)[0]

    @torch.no_grad()
    def encode_codes(self, x):  # (B, h, w) int64
        z_e = self.encoder(x).float().permute(0, 2, 3, 1)
        return self.quantizer.nearest(z_e.flatten(0, 2)).view(len(x), *self.grid)

    @torch.no_grad()
    def decode_codes(self, codes, mean=True):  # (B, h, w) -> images, as decode
        return self.decode(self.quantizer.codebook[codes].permute(0, 3, 1, 2), None, mean)

    @torch.no_grad()
    def sample(self, n, y=None, mean=True, prior=None):
        """n code grids from the uniform prior (or prior(n) -> (n, h, w), e.g. a PixelCNN over
        codes), decoded (mean=False: a draw of x ~ p(x | z_q))."""
        self.check_labels(y)
        codes = prior(n) if prior else torch.randint(
            self.cfg.codebook, (n, *self.grid), device=self.quantizer.codebook.device)
        return self.decode_codes(codes, mean)

    @torch.no_grad()
    def reconstruct(self, x, y=None):
        return self.decode_codes(self.encode_codes(x))


# ----------------------------------------------------------------------------------------------
# Plumbing: training, sampling, evaluation and the command line (uses common.py)

NAME = "vae"


def load(out, device="cpu"):
    """The model in <out>/ckpt.pt, rebuilt from the checkpoint alone, in eval mode."""
    import common
    return common.load_model(out, NAME, lambda config: VAE(Config(**config)), device)


def train(args):
    import common
    images, labels = common.load_split(args, "train")
    if args.codebook < 0 or (args.codebook and args.conditional):
        raise common.UserError(f"--codebook {args.codebook}: must be >= 0 (0: the VAE), and the "
                               f"VQ-VAE is unconditional (train without --conditional)")
    cfg = Config(image_size=images.shape[-1], channels=images.shape[1], latent=args.latent,
                 width=args.width, likelihood="bernoulli" if args.binarize else "logistic",
                 beta=args.beta, num_classes=common.num_classes(args, labels),
                 codebook=args.codebook)
    if cfg.image_size % 4:
        raise common.UserError(f"vae.py needs an image size divisible by 4, got {cfg.image_size}")
    model = VAE(cfg)
    print(f"{NAME}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{len(images)} training images, {cfg.likelihood} likelihood")
    binary = cfg.likelihood == "bernoulli"
    common.fit(args, NAME, model, images, labels if cfg.num_classes else None,
               common.train_transform(binary), lr_schedule="cosine")


def test_data(args, cfg):
    """The test split as the model sees it (binarized once, with seed 0) and its labels."""
    import common
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    return common.test_split(args, shape, cfg.likelihood == "bernoulli", bool(cfg.num_classes))


def sample(args):
    import common
    import time
    model = load(args.out, args.device)
    cfg = model.cfg
    y, nrow = common.grid_labels(args, args.num_samples, cfg.num_classes)
    torch.manual_seed(args.seed)
    start = time.time()
    x = model.sample(args.num_samples, y)                             # (N, C, H, W) in [-1, 1]
    seconds = time.time() - start
    path = common.save_images(args.out, "samples", x, nrow, y)
    print(f"{NAME}: {args.num_samples} samples in {seconds:.3f}s -> {path}")
    data, labels = test_data(args, cfg)
    data = data[:64].to(args.device)
    labels = None if labels is None else labels[:64].to(args.device)
    pairs = torch.stack([data, model.reconstruct(data, labels)], 1).flatten(0, 1)
    path = common.save_images(args.out, "reconstructions", pairs, 16)  # original, reconstruction
    print(f"{NAME}: reconstructions -> {path}")
    if cfg.codebook:
        return                          # a VQ-VAE's codes have no straight line between them
    mu, _ = model.encode(data, labels)
    w = torch.linspace(0, 1, 10, device=args.device).reshape(1, 10, 1)
    z = (1 - w) * mu[0:16:2, None] + w * mu[1:16:2, None]             # 8 pairs x 10 steps
    y = None if labels is None else labels[0:16:2].repeat_interleave(10)
    path = common.save_images(args.out, "interpolations", model.decode(z.flatten(0, 1), y), 10)
    print(f"{NAME}: interpolations -> {path}")


@torch.no_grad()
def evaluate(args):
    """Test split: -ELBO (analytic KL) and Burda et al.'s L_K with K = --iw-samples, in fp32."""
    import common
    model = load(args.out, args.device)
    cfg = model.cfg
    data, labels = test_data(args, cfg)
    n = min(args.eval_images or len(data), len(data))
    torch.manual_seed(args.seed)
    sums = torch.zeros(4, dtype=torch.float64)
    per = max(1, args.batch_size * 8 // args.iw_samples)       # images per step: bounded memory
    for i in range(0, n, per):
        x = data[i:min(i + per, n)].to(args.device)
        y = None if labels is None else labels[i:i + len(x)].to(args.device)
        bound, rec, kl = model.elbo(x, y)
        nll = model.nll(x, y, args.iw_samples)
        terms = (-bound, nll, rec, kl)                  # per image; float64 on the CPU only
        sums += torch.stack([v.cpu().double().sum() for v in terms])
        if (i // per) % 20 == 0:
            print(f"{NAME}: eval {i + len(x)}/{n}, nll {float(sums[1]) / (i + len(x)):.2f} nats",
                  flush=True)
    elbo_nats, nll, rec, kl = (float(v) / n for v in sums)
    dims = cfg.channels * cfg.image_size ** 2
    note = ("nll_nats = elbo_nats: -log p(x | z_q(x)) + h w log K, the bound with the uniform "
            "prior over the codes" if cfg.codebook else
            "elbo_nats = -ELBO; nll_nats = -L_K (Burda et al. 2016), an upper bound on -log p(x)")
    if cfg.likelihood == "bernoulli":
        note += "; test split binarized once with seed 0"
    common.write_metrics(args.out, dict(
        data=args.data, images=n, likelihood=cfg.likelihood, conditional=bool(cfg.num_classes),
        elbo_nats=elbo_nats, nll_nats=nll, bits_per_dim=nll / (dims * math.log(2)),
        elbo_bits_per_dim=elbo_nats / (dims * math.log(2)), reconstruction_nats=-rec,
        kl_nats=kl, iw_samples=args.iw_samples, note=note))


def main(argv=None):
    import common
    p = common.make_parser(NAME, __doc__, steps=2500, batch_size=128, lr=2e-3, binarize=True)
    a = p.add_argument
    a("--latent", type=common.positive(int), default=Config.latent, help="size of z")
    a("--width", type=common.positive(int), default=Config.width, help="conv channels")
    a("--beta", type=common.positive(float), default=1.0, help="KL weight (Higgins et al. 2017)")
    a("--iw-samples", type=common.positive(int), default=1000, help="K for the IWAE estimate")
    a("--codebook", type=int, default=0, help="K > 0: a VQ-VAE with K codes of size --latent")
    common.run(p, argv, train, sample, evaluate)


if __name__ == "__main__":
    main()
