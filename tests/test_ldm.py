"""ldm.py: shapes, latent scaling, the KL term, that stage 2 is ddpm.py's, and end-to-end learning."""
import pytest
import torch

import ddpm
import ldm
from ldm import Autoencoder, Config, LatentDiffusion


@pytest.mark.parametrize("factor,size", [(1, 8), (2, 8), (4, 28), (8, 16)])
def test_encoder_and_decoder_shapes(factor, size):
    cfg = Config(image_size=size, factor=factor, latent_channels=3, ae_width=8)
    ae = Autoencoder(cfg)
    x = torch.rand(2, 1, size, size) * 2 - 1
    mean, logvar = ae.encode(x)
    assert mean.shape == logvar.shape == (2, 3, size // factor, size // factor)
    assert ae.decode(mean).shape == x.shape


def test_rescaled_latents_have_unit_std():
    torch.manual_seed(0)
    model = LatentDiffusion(Config(ae_width=8, width=8))
    x = torch.rand(64, 1, 28, 28) * 2 - 1
    with pytest.raises(RuntimeError, match="set_scale_factor"):
        model.sample(2)                                    # refused while the scale was never set
    model.set_scale_factor(x)
    assert model.scale_factor.item() not in (0.0, 1.0)
    assert not any(p.requires_grad for p in model.autoencoder.parameters())   # stage 1 frozen
    torch.manual_seed(1)
    assert model.encode(x).std().item() == pytest.approx(1.0, abs=0.02)


def test_kl_term_nonnegative_and_weight_zero_is_a_plain_autoencoder():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    for kl_weight in (1e-6, 1.0):
        _, logs = Autoencoder(Config(ae_width=8, kl_weight=kl_weight)).loss(x)
        assert logs["kl"] >= 0
    plain = Autoencoder(Config(ae_width=8, kl_weight=0.0))
    mean, logvar = plain.encode(x)
    assert torch.equal(plain.sample_z(mean, logvar), mean)            # deterministic: z = E(x)
    loss, logs = plain.loss(x)
    assert loss.item() == pytest.approx((plain.decode(mean) - x).abs().flatten(1).sum(1).mean().item(), rel=1e-6)
    noisy = Autoencoder(Config(ae_width=8, kl_weight=1e-6))
    m, lv = noisy.encode(x)
    assert not torch.equal(noisy.sample_z(m, lv), noisy.sample_z(m, lv))


@pytest.mark.slow
def test_reconstruction_error_falls_with_training():
    import common
    torch.manual_seed(0)
    x = common.to_unit(common.synthetic_digits(256, seed=3)[0])
    ae = Autoencoder(Config(ae_width=8))
    opt = torch.optim.Adam(ae.parameters(), 2e-3)
    with torch.no_grad():
        before = (ae.decode(ae.encode(x)[0]) - x).abs().mean().item()
    for step in range(60):
        loss, _ = ae.loss(x[torch.randint(0, 256, (32,))])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = (ae.decode(ae.encode(x)[0]) - x).abs().mean().item()
    assert after < 0.6 * before


def test_second_stage_is_ddpm():
    model = LatentDiffusion(Config(ae_width=8, width=8, num_classes=3))
    assert ldm.DDPM is ddpm.DDPM and type(model.diffusion) is ddpm.DDPM
    assert type(model.diffusion.net) is ddpm.UNet
    assert torch.equal(model.diffusion.exact["betas"], ddpm.linear_beta_schedule(1000))
    assert model.diffusion.cfg.image_size == 7 and model.diffusion.cfg.channels == 4
    assert model.diffusion.cfg.num_classes == 3 and not model.diffusion.cfg.clip_x0
    assert model.diffusion.cfg.target == "eps"              # LDM eq. 2, whatever ddpm.py's default
    weighted = LatentDiffusion(Config(ae_width=8, width=8, min_snr_gamma=2.0)).diffusion
    t = torch.tensor([0, 500, 999])
    assert weighted.cfg.min_snr_gamma == 2.0 and not torch.equal(weighted.loss_weight(t), torch.ones(3))
    assert LatentDiffusion(Config(ae_width=8, width=8, min_snr_gamma=0.0)).diffusion.cfg.min_snr_gamma == 0.0
    for adagn in (True, False):          # ddpm.py's AdaGN and step sampler, passed through
        inner = LatentDiffusion(Config(ae_width=8, width=8, adagn=adagn,
                                       low_discrepancy=not adagn)).diffusion
        assert inner.cfg.adagn == adagn and inner.cfg.low_discrepancy == (not adagn)
        assert all(b.adagn == adagn for b in inner.net.modules() if isinstance(b, ddpm.ResBlock))


def test_latent_scale_survives_save_and_load(tmp_path):
    """The scale factor is part of the weights: a checkpoint written and read back keeps it."""
    import common
    torch.manual_seed(0)
    model = LatentDiffusion(Config(ae_width=8, width=8))
    model.set_scale_factor(torch.rand(16, 1, 28, 28) * 2 - 1)
    common.save_checkpoint(str(tmp_path / "ckpt.pt"), "ldm", vars(model.cfg), model=model.state_dict())
    loaded = ldm.load(str(tmp_path))
    assert loaded.scale_factor.item() == model.scale_factor.item() != 0
    loaded.sample(1, steps=2)                               # and so it samples without complaint


def test_a_checkpoint_from_before_adagn_loads_with_its_added_embedding(tmp_path):
    """An LDM trained before AdaGN has no "adagn" in its config: ldm.load rebuilds its latent
    U-Net with the embedding added, and the weights fit."""
    import common
    model = LatentDiffusion(Config(ae_width=8, width=8, adagn=False))
    config = {k: v for k, v in vars(model.cfg).items() if k != "adagn"}
    common.save_checkpoint(str(tmp_path / "ckpt.pt"), "ldm", config, model=model.state_dict())
    assert not ldm.load(str(tmp_path)).diffusion.cfg.adagn


@pytest.mark.slow
def test_end_to_end_on_a_toy_distribution():
    """8x8 images, each a white left or top half: train both stages for seconds; most decoded
    samples are close to one of the two templates (64% with this seed after 400 steps)."""
    torch.manual_seed(0)
    left = -torch.ones(1, 8, 8)
    left[:, :, :4] = 1
    top = -torch.ones(1, 8, 8)
    top[:, :4] = 1
    templates = torch.stack([left, top])
    # the default schedule (linear, T = 1000): with cosine at T = 100 the last beta is clipped to 0.999,
    # abar_T ~ 0, and the first DDIM step multiplies the eps error ~100x (latents have no [-1, 1] clip)
    model = LatentDiffusion(Config(image_size=8, factor=2, latent_channels=2, ae_width=8, width=16, res_blocks=1))
    opt = torch.optim.Adam(model.autoencoder.parameters(), 3e-3)
    for step in range(150):
        loss, _ = model.autoencoder.loss(templates[torch.randint(0, 2, (16,))])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.autoencoder.eval()
    model.set_scale_factor(templates.repeat(8, 1, 1, 1))
    opt = torch.optim.Adam(model.diffusion.parameters(), 2e-3)
    for step in range(400):
        loss, _ = model.loss(templates[torch.randint(0, 2, (32,))])
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = model.eval().sample(64, steps=20)
    dist = ((x[:, None] - templates[None]) ** 2).mean((2, 3, 4)).min(1).values
    assert (dist < 0.15).float().mean() > 0.5      # mostly valid (a broken pipeline scores 0)
