"""LDM: latent diffusion, a first-stage autoencoder plus ddpm.py's diffusion in its latent space.

Rombach, Blattmann, Lorenz, Esser & Ommer 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models", arXiv:2112.10752. Stage 1 compresses an image x (28x28x1) into a small spatial
latent z = E(x) (7x7xc for the default downsampling factor f = 4) and decodes it back, x ~ D(z).
Stage 2 is an ordinary DDPM (imported from ddpm.py, not copied) trained on the latents; samples are
drawn in latent space and decoded. The diffusion sees 16x fewer positions than pixel diffusion.

    python ldm.py --train                                   # both stages on the built-in digits
    python ldm.py --train --stage autoencoder               # or one stage at a time
    python ldm.py --sample --eval                           # DDIM samples; eval.json: MSE and PSNR

In code: model = LatentDiffusion(Config()); train model.autoencoder with its loss, then
model.set_scale_factor(x) on training images, then model.loss(x, y) -> (loss, logs) trains stage 2;
model.sample(n, y, ...) draws images. model.nll raises: there is no image likelihood here. Images
at this API are float (B, C, H, W) in [-1, 1].

Maths:
    stage 1 (KL-regularised, LDM Sec. 3.1 and App. G): q(z|x) = N(mu(x), diag sigma^2(x)),
      L_AE = |x - D(z)|_1 + w_kl KL(q(z|x) || N(0, I)),  w_kl = 1e-6 (tiny: the latent stays rich)
    latent scaling (LDM Sec. 4.3.2, App. G): z' = z / std(z) over training latents, so the diffusion
      sees unit-variance data, as its schedule assumes; the factor is stored in the checkpoint.
    stage 2 (LDM eq. 2): L_LDM = E || eps - eps_theta(z'_t, t, y) ||^2,
      z'_t = q_sample(z'_0, t, eps): ddpm.DDPM's loss on the latents, by default with the
      Min-SNR-5 weights of ddpm.py (Hang et al. 2023; measured to need half the training images
      for the same sample quality, see the README; --min-snr 0 is the paper's unweighted loss),
      and ddpm.py's U-Net with AdaGN (--no-adagn: the step embedding added).
What we keep of the paper's first stage and why: the L1 reconstruction and the KL term. We leave out
the LPIPS perceptual loss (it needs pretrained VGG weights, which a torch-only, offline file cannot
ship) and the patch-GAN loss (adversarial training is slow and fragile on a CPU in minutes); on
28x28 digits the L1 loss alone reconstructs sharply. Cross-attention conditioning is left out:
with a single class label, the class embedding of ddpm.py's U-Net carries the same information.
Pitfall: latents are not clipped to [-1, 1] like pixels, so a schedule whose last abar is ~0 (cosine
with a small T) makes the first DDIM step blow up the eps error; the default linear T = 1000 is
safe.
Things to try: --factor 2 (14x14 latents), --latent-channels 2, --conditional --guidance 3.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import ddpm
from ddpm import DDPM, norm


@dataclass
class Config:
    image_size: int = 28
    channels: int = 1
    factor: int = 4             # downsampling factor f (LDM: 4-16 on 256x256 images)
    latent_channels: int = 4    # c (LDM: 3-4 for f = 4)
    ae_width: int = 32          # autoencoder channels at full resolution
    kl_weight: float = 1e-6     # LDM App. G; 0 makes stage 1 a plain autoencoder
    width: int = 64             # U-Net channels on the latent grid
    res_blocks: int = 2
    num_classes: int = 0
    timesteps: int = 1000
    schedule: str = "linear"
    p_uncond: float = 0.1
    min_snr_gamma: float = 5.0  # Min-SNR-gamma weights of the latent diffusion loss (ddpm.py)
    adagn: bool = True          # ddpm.py's U-Net with AdaGN; False: the step embedding added
    low_discrepancy: bool = False  # ddpm.py's evenly spread steps t in each batch (an option)


# ----------------------------------------------------------------------------------------------
# Stage 1: the autoencoder

class Block(nn.Module):
    """A residual block: (norm, SiLU, 3x3 conv) twice, plus the input (1x1-mapped if needed)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.net = nn.Sequential(
            norm(cin),
            nn.SiLU(),
            nn.Conv2d(cin, cout, 3, padding=1),
            norm(cout),
            nn.SiLU(),
            nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.net(x)


class Autoencoder(nn.Module):
    """x (B, C, H, W) in [-1, 1] <-> z (B, c, H/f, W/f), with a diagonal Gaussian q(z|x)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg, w = cfg, cfg.ae_width
        downs = int(math.log2(cfg.factor))
        chans = [w * 2 ** i for i in range(downs + 1)]       # 28x28: w, 14x14: 2w, 7x7: 4w
        top = chans[-1]
        enc = [nn.Conv2d(cfg.channels, w, 3, padding=1)]
        for cin, cout in zip(chans, chans[1:]):
            enc.append(nn.Conv2d(cin, cout, 3, stride=2, padding=1))   # halve the resolution
            enc.append(Block(cout, cout))
        enc.append(Block(top, top))
        enc.append(norm(top))
        enc.append(nn.SiLU())
        enc.append(nn.Conv2d(top, 2 * cfg.latent_channels, 3, padding=1))   # mean, log variance
        dec = [nn.Conv2d(cfg.latent_channels, top, 3, padding=1)]
        dec.append(Block(top, top))
        for cin, cout in zip(chans[::-1], chans[::-1][1:]):
            dec.append(Block(cin, cin))
            dec.append(nn.Upsample(scale_factor=2, mode="nearest"))      # double the resolution
            dec.append(nn.Conv2d(cin, cout, 3, padding=1))
        dec.append(norm(w))
        dec.append(nn.SiLU())
        dec.append(nn.Conv2d(w, cfg.channels, 3, padding=1))
        self.encoder = nn.Sequential(*enc)       # (B, C, H, W) -> (B, 2c, H/f, W/f)
        self.decoder = nn.Sequential(*dec)       # (B, c, H/f, W/f) -> (B, C, H, W)

    def encode(self, x):
        """mean and log variance of q(z|x)."""
        mean, logvar = self.encoder(x).float().chunk(2, dim=1)
        return mean, logvar.clamp(-30, 20)

    def sample_z(self, mean, logvar):
        """z ~ q(z|x) by reparameterization; with kl_weight = 0 the plain autoencoder's z = mean."""
        if self.cfg.kl_weight == 0:
            return mean
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)

    def decode(self, z):
        return self.decoder(z).float()

    def loss(self, x, y=None):
        """L1 reconstruction + kl_weight * KL(q(z|x) || N(0, I)) (LDM App. G, without LPIPS/GAN),
        both per pixel / per latent element summed over an image, averaged over the batch.
        Stage 1 ignores labels (y)."""
        mean, logvar = self.encode(x)
        rec = (self.decode(self.sample_z(mean, logvar)) - x).abs().flatten(1).sum(1).mean()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean()   # K&W App. B
        return rec + self.cfg.kl_weight * kl, {"rec": rec.item(), "kl": kl.item()}


# ----------------------------------------------------------------------------------------------
# Stage 2: ddpm.py's diffusion on the scaled latents

class LatentDiffusion(nn.Module):
    """The model a copier imports: the autoencoder (stage 1) and a ddpm.DDPM on its scaled
    latents (stage 2). Images at this API: float (B, C, H, W) in [-1, 1].
    The protocol: train self.autoencoder with its own loss; then call set_scale_factor(x) on
    training images (this also freezes the autoencoder); then train with self.loss."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.autoencoder = Autoencoder(cfg)
        s = cfg.image_size // cfg.factor
        latent = ddpm.Config(image_size=s, channels=cfg.latent_channels, width=cfg.width,
                             mults=(1,), res_blocks=cfg.res_blocks, num_classes=cfg.num_classes,
                             timesteps=cfg.timesteps, schedule=cfg.schedule,
                             p_uncond=cfg.p_uncond, min_snr_gamma=cfg.min_snr_gamma,
                             adagn=cfg.adagn, low_discrepancy=cfg.low_discrepancy,
                             target="eps",    # LDM eq. 2 (ddpm.py's own default is v)
                             clip_x0=False)   # latents are not bounded like pixels: no clipping
        self.diffusion = DDPM(latent)
        self.register_buffer("scale_factor", torch.zeros(()))  # 1 / std of the latents; 0 = unset

    @torch.no_grad()
    def set_scale_factor(self, x):
        """LDM Sec. 4.3.2: rescale latents to unit standard deviation, estimated on training
        images x (a few thousand); saved with the weights. Freezes the autoencoder."""
        self.autoencoder.requires_grad_(False)
        mean, logvar = self.autoencoder.encode(x)
        self.scale_factor.fill_(1 / self.autoencoder.sample_z(mean, logvar).std().item())

    def check_scale(self):
        if self.scale_factor.item() == 0:
            raise RuntimeError("LatentDiffusion: the latent scale was never set; train the "
                               "autoencoder, then call set_scale_factor(training images)")

    @torch.no_grad()
    def moments(self, x):
        """Images in [-1, 1] -> the mean and log variance of q(z|x), stacked: (B, 2c, h, w)."""
        return torch.cat(self.autoencoder.encode(x), 1)

    @torch.no_grad()
    def encode(self, x):
        """Images in [-1, 1] -> scaled latents z' (a draw of q(z|x), times the scale factor)."""
        self.check_scale()
        mean, logvar = self.autoencoder.encode(x)
        return self.autoencoder.sample_z(mean, logvar) * self.scale_factor

    @torch.no_grad()
    def decode(self, z):
        """Scaled latents -> images in [-1, 1]."""
        self.check_scale()
        return self.autoencoder.decode(z / self.scale_factor).clamp(-1, 1)

    def loss(self, x, y=None):
        """LDM eq. 2: ddpm.py's L_simple on the scaled latents of the images x (a fresh draw of
        q(z|x) each time; the autoencoder is frozen)."""
        return self.latent_loss(self.moments(x), y)

    def latent_loss(self, moments, y=None):
        """The same loss from precomputed moments of q(z|x) (self.moments): a training loop can
        encode its data once instead of at every step, and get the same draws."""
        self.check_scale()
        mean, logvar = moments.chunk(2, dim=1)
        z = self.autoencoder.sample_z(mean, logvar) * self.scale_factor
        return self.diffusion.loss(z, y)

    @torch.no_grad()
    def sample(self, n, y=None, *, sampler="dpm", guidance=1.0, steps=10, noise=None,
               progress=None, eta=0.0):
        """n images in [-1, 1]: the DDPM's sampler in latent space (ddpm, ddim, dpm or heun; see
        ddpm.DDPM.sample, whose keywords these are), then the decoder."""
        self.check_scale()
        return self.decode(self.diffusion.sample(n, y, sampler=sampler, guidance=guidance,
                                                 steps=steps, noise=noise, progress=progress,
                                                 eta=eta))

    def nll(self, x, y=None):
        """Not defined here: the first stage has no pixel likelihood (its L1 loss is not a
        normalised density), so the latent bound says nothing about -log p(x)."""
        raise NotImplementedError("LatentDiffusion has no likelihood of images: its autoencoder "
                                  "is trained with an L1 loss, not a normalised decoder")


# ----------------------------------------------------------------------------------------------
# Plumbing: training, sampling, evaluation and the command line (uses common.py)

NAME = "ldm"


def load(out, device="cpu", ckpt="ckpt.pt"):
    """The whole model (ckpt.pt), or the stage-1 autoencoder alone (autoencoder.pt), rebuilt
    from the checkpoint alone, in eval mode."""
    import common
    if ckpt == "autoencoder.pt":
        build = lambda config: Autoencoder(Config(**config))
        return common.load_model(out, NAME + "-autoencoder", build, device, ckpt)
    # a checkpoint from before AdaGN (no "adagn" in its config) has the added embedding
    build = lambda config: LatentDiffusion(Config(**{"adagn": False, **config}))
    return common.load_model(out, NAME, build, device)


def train(args):
    import argparse
    import os
    import common
    images, labels = common.load_split(args, "train")
    cfg = Config(image_size=images.shape[-1], channels=images.shape[1], factor=args.factor,
                 latent_channels=args.latent_channels, ae_width=args.ae_width,
                 kl_weight=args.kl_weight, width=args.width, res_blocks=args.res_blocks,
                 timesteps=args.timesteps, schedule=args.schedule, min_snr_gamma=args.min_snr,
                 adagn=args.adagn, low_discrepancy=args.low_discrepancy,
                 num_classes=common.num_classes(args, labels))
    if not args.min_snr >= 0:
        raise common.UserError(f"--min-snr {args.min_snr}: must be >= 0 (0 turns it off; the "
                               f"paper's choice is 5)")
    if args.factor not in (1, 2, 4, 8) or cfg.image_size % args.factor:
        raise common.UserError(f"--factor {args.factor}: must be 1, 2, 4 or 8 and divide the "
                               f"image size {cfg.image_size}")
    if args.stage in ("both", "autoencoder"):
        ae = Autoencoder(cfg)
        latent = (cfg.latent_channels, cfg.image_size // cfg.factor, cfg.image_size // cfg.factor)
        print(f"{NAME}: stage 1, autoencoder {sum(p.numel() for p in ae.parameters()) / 1e6:.2f}M "
              f"parameters, {tuple(images.shape[1:])} -> {latent}")
        stage1 = argparse.Namespace(**{**vars(args), "steps": args.ae_steps, "lr": args.ae_lr})
        common.fit(stage1, NAME + "-autoencoder", ae, images, ckpt="autoencoder.pt",
                   lr_schedule="cosine")
    if args.stage in ("both", "diffusion"):
        torch.manual_seed(args.seed)   # the same U-Net and latents whatever ran before
        ae = load(args.out, args.device, "autoencoder.pt")
        if (ae.cfg.image_size, ae.cfg.channels) != (cfg.image_size, cfg.channels):
            raise common.UserError(f"{args.out}/autoencoder.pt was trained on other images; "
                                   f"train stage 1 again")
        stage1_fields = ("factor", "latent_channels", "ae_width", "kl_weight")
        cfg = Config(**{**vars(cfg), **{k: getattr(ae.cfg, k) for k in stage1_fields}})
        model = LatentDiffusion(cfg)
        model.autoencoder.load_state_dict(ae.state_dict())
        model.to(args.device)
        g = torch.Generator().manual_seed(args.seed)
        some = images[torch.randperm(len(images), generator=g)[:2000]]
        model.set_scale_factor(common.to_unit(some).to(args.device))
        s = cfg.image_size // cfg.factor
        print(f"{NAME}: stage 2, U-Net "
              f"{sum(p.numel() for p in model.diffusion.parameters()) / 1e6:.2f}M parameters on "
              f"{cfg.latent_channels}x{s}x{s} latents, scale factor "
              f"{model.scale_factor.item():.4f} (1 / std of the latents)")
        # q(z|x) of every training image, computed once: each step draws a fresh z from it
        # (model.latent_loss), exactly as model.loss would, without running the encoder each step
        moments = torch.cat([model.moments(common.to_unit(images[i:i + 500]).to(args.device)).cpu()
                             for i in range(0, len(images), 500)])
        resume = args.resume and os.path.exists(os.path.join(args.out, "ckpt.pt"))
        stage2 = argparse.Namespace(**{**vars(args), "resume": resume})

        def preview(net, ema, step):   # 64 samples with the EMA weights at every checkpoint
            shadow = LatentDiffusion(model.cfg).to(args.device)
            shadow.load_state_dict(ema.shadow)
            grid(args, shadow.eval(), "train_samples", 64)

        common.fit(stage2, NAME, model, moments, labels if cfg.num_classes else None,
                   transform=lambda m, g: m, loss_fn=model.latent_loss, ema_decay=args.ema,
                   on_checkpoint=preview)


def grid(args, model, name, n):
    """n samples (a column per class) -> <out>/<name>.png and .npz; returns (path, seconds)."""
    import common
    import time
    y, nrow = common.grid_labels(args, n, model.cfg.num_classes)
    start = time.time()
    with common.autocast(args):
        x = model.sample(n, y, sampler=args.sampler, guidance=args.guidance,
                         steps=args.sample_steps, eta=args.eta,
                         progress=ddpm.sampling_progress(NAME))
    seconds = time.time() - start
    return common.save_images(args.out, name, x, nrow, y), seconds


def sample(args):
    import common
    model = load(args.out, args.device)
    cfg = model.cfg
    torch.manual_seed(args.seed)
    path, seconds = grid(args, model, "samples", args.num_samples)
    how = args.sampler + ("" if args.sampler == "ddpm" else f", {args.sample_steps} steps")
    print(f"{NAME}: {args.num_samples} samples ({how}) in {seconds:.1f}s -> {path}")
    test, _ = common.load_split(args, "test", (cfg.channels, cfg.image_size, cfg.image_size))
    x = common.to_unit(test[:32]).to(args.device)
    pairs = torch.stack([x, model.decode(model.encode(x))], 1).flatten(0, 1)
    path = common.save_images(args.out, "reconstructions", pairs, 16)     # original, reconstruction
    print(f"{NAME}: reconstructions -> {path}")


@torch.no_grad()
def evaluate(args):
    """Stage 1 on the test split: MSE and PSNR of reconstructions, pixels in [0, 1]. (No
    likelihood: see LatentDiffusion.nll.)"""
    import common
    model = load(args.out, args.device)
    cfg = model.cfg
    images, _ = common.load_split(args, "test", (cfg.channels, cfg.image_size, cfg.image_size))
    images = images[:args.eval_images]
    torch.manual_seed(args.seed)
    sq, n = 0.0, 0
    for i in range(0, len(images), 256):
        x = common.to_unit(images[i:i + 256]).to(args.device)
        mean, _ = model.autoencoder.encode(x)
        rec = model.autoencoder.decode(mean).clamp(-1, 1)
        sq += (((rec - x) / 2) ** 2).flatten(1).sum(1).cpu().double().sum().item()
        n += x.numel()
    mse = sq / n
    common.write_metrics(args.out, dict(
        data=args.data, images=len(images), mse=mse, psnr_db=10 * math.log10(1 / mse),
        latent_shape=[cfg.latent_channels] + [cfg.image_size // cfg.factor] * 2,
        scale_factor=model.scale_factor.item(),
        note="reconstruction D(mean of q(z|x)), pixels scaled to [0, 1]"))


def main(argv=None):
    import argparse
    import common
    p = common.make_parser(NAME, __doc__, steps=3000, batch_size=64, lr=1e-3)
    a = p.add_argument
    a("--stage", choices=["both", "autoencoder", "diffusion"], default="both",
      help="which stage(s) to train")
    a("--factor", type=common.positive(int), default=Config.factor, help="downsampling factor f")
    a("--latent-channels", type=common.positive(int), default=Config.latent_channels)
    a("--ae-width", type=common.positive(int), default=Config.ae_width)
    a("--kl-weight", type=float, default=Config.kl_weight, help="0: a plain autoencoder")
    a("--ae-steps", type=common.positive(int), default=500, help="stage 1 training steps")
    a("--ae-lr", type=common.positive(float), default=2e-3, help="stage 1 learning rate")
    a("--width", type=common.positive(int), default=Config.width, help="U-Net channels")
    a("--res-blocks", type=common.positive(int), default=Config.res_blocks)
    a("--timesteps", type=common.positive(int), default=Config.timesteps)
    a("--schedule", choices=["linear", "cosine"], default="linear")
    a("--min-snr", type=float, default=Config.min_snr_gamma,
      help="Min-SNR-gamma loss weighting of the latent diffusion (Hang et al. 2023), e.g. 5; "
           "0: off")
    a("--adagn", action=argparse.BooleanOptionalAction, default=Config.adagn,
      help="ddpm.py's AdaGN in the latent U-Net; --no-adagn: the embedding added")
    a("--low-discrepancy", action=argparse.BooleanOptionalAction, default=Config.low_discrepancy,
      help="ddpm.py's evenly spread steps in each batch; default: independent")
    a("--ema", type=float, default=0.995)
    ddpm.add_sampler_flags(p, "dpm", 10)
    common.run(p, argv, train, sample, evaluate)


if __name__ == "__main__":
    main()
