"""No float64 tensor on the run's device (Apple's MPS has no float64): every model's weights and
buffers are float32, and training, sampling and evaluation of each script, run in-process, make
no float64 tensor from a tensor on the device.

How the test sees "on the device" on a machine whose only device is the CPU: a TorchFunctionMode
follows every torch call. A tensor is on the device if it came from `.to(...)` with a device
(the scripts move everything with `.to(args.device)`), from a factory call given `device=`, or
from any call with an on-device input; `.cpu()` takes it off. A float64 result of an on-device
call is the bug: on MPS it would stop the run."""
import os

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

import ddpm
import ldm
import pixelcnn
import vae
from test_cli import TINY


class DeviceTracker(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.on, self.keep, self.float64 = set(), [], []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        inputs = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        if name == "cpu":
            out, on = out.view_as(out), False          # on a CPU-only machine .cpu() returns self
        elif name == "to":
            moved = any(isinstance(a, (str, torch.device)) for a in args[1:]) or "device" in kwargs
            on = moved or any(id(t) in self.on for t in inputs)
        else:
            on = kwargs.get("device") is not None or any(id(t) in self.on for t in inputs)
        if on:
            for o in tree_leaves(out):
                if isinstance(o, torch.Tensor):
                    self.on.add(id(o))
                    self.keep.append(o)              # ids stay unique while the test runs
                    if o.dtype == torch.float64:
                        self.float64.append(name)
        return out


def test_the_tracker_sees_float64_on_the_device_and_not_after_cpu():
    """The tracker itself: the bug it looks for is seen, the fix is not."""
    with DeviceTracker() as seen:
        x = torch.ones(3).to("cpu")
        x.cpu().double().sum()
        torch.zeros(2, dtype=torch.float64)           # made on the CPU: allowed
    assert seen.float64 == []
    with DeviceTracker() as seen:
        (torch.ones(3).to("cpu") * 2).double()
    assert seen.float64 == ["double"]


@pytest.mark.parametrize("model", [ddpm.DDPM(ddpm.Config(width=8)), vae.VAE(vae.Config()),
                                   pixelcnn.PixelCNN(pixelcnn.Config(width=8, layers=2)),
                                   ldm.LatentDiffusion(ldm.Config(ae_width=8, width=8))],
                         ids=["ddpm", "vae", "pixelcnn", "ldm"])
def test_weights_and_buffers_are_float32(model):
    tensors = list(model.parameters()) + list(model.buffers())
    assert tensors and all(t.dtype == torch.float32 for t in tensors)


@pytest.mark.parametrize("script", ["ddpm", "vae", "pixelcnn", "ldm"])
def test_train_sample_eval_make_no_float64_on_the_device(script, tmp_path):
    """On 8x8 images (a .npy data set), so that pixel-by-pixel sampling stays quick when every
    torch call goes through the tracker."""
    module = {"ddpm": ddpm, "vae": vae, "pixelcnn": pixelcnn, "ldm": ldm}[script]
    data = tmp_path / "tiny.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8))
    flags = ["--train", "--sample", "--eval", "--steps", "2", "--batch-size", "4", "--device", "cpu",
             "--precision", "fp32", "--eval-images", "2", "--log-every", "1e9", "--out", str(tmp_path),
             "--data", str(data), *TINY[script], "--num-samples", "2", "--ckpt-minutes", "1e9"]
    if script == "vae":
        flags.append("--binarize")         # pixelcnn: 8-bit, so its 256-way draw runs
    with DeviceTracker() as seen:
        module.main(flags)
    assert os.path.exists(tmp_path / "ckpt.pt") and len(seen.on) > 100
    assert seen.float64 == [], f"{script}: float64 made on the device by {sorted(set(seen.float64))}"
