"""DDNM with a tiny randomly initialised diffusers UNet on CPU: data consistency A(x̂) = y for
blur and downsampling operators built from annotations, loading from a directory and from S3,
and the `dutrain restore restore.backend=ddnm` entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from dutrain.cli import main
from dutrain.degrade import apply_chain, to_float
from dutrain.errors import UserError
from dutrain.restore.ddnm import ddnm, load_diffusion, restore_ddnm
from dutrain.restore.linear import operator_for


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    from diffusers import DDIMScheduler, UNet2DModel
    d = tmp_path_factory.mktemp("ddnm") / "tiny-unet"
    torch.manual_seed(0)
    UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4
                ).save_pretrained(d / "unet")
    DDIMScheduler(num_train_timesteps=1000).save_pretrained(d / "scheduler")
    return d


@pytest.fixture(scope="module")
def model(unet_dir):
    return load_diffusion(str(unet_dir), "cpu")


def _image(h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(data.astronaut()).resize((w, h), Image.Resampling.LANCZOS))


def _obs(steps, h, w):
    op = operator_for(steps, h, w)
    x = torch.from_numpy(to_float(_image(h, w)).transpose(2, 0, 1)[None].astype(np.float64) * 2 - 1)
    return op, x, op.A(x)


# 16×15: odd width, so the UNet input is padded and its output cropped back
@pytest.mark.parametrize("steps,size", [([("gaussian_blur", {"sigma": 1.5})], (16, 16)),
                                        ([("motion_blur", {"length": 7, "angle": 30})], (16, 16)),
                                        ([("defocus_blur", {"radius": 2.0})], (16, 15)),
                                        ([("downsample", {"scale": 0.5})], (16, 16)),
                                        ([("downsample", {"scale": 0.35})], (16, 15))])
def test_output_is_consistent_with_the_observation(model, steps, size):
    op, x, y = _obs(steps, *size)
    out = ddnm(y, op, model, steps=2, eta=0.85, seed=1)
    assert out.shape == y.shape
    assert float((op.A(out) - y).abs().max()) < 1e-9
    # the random model invents the null space: the answer is not the clean image
    assert float((out - x).abs().max()) > 1e-3


def test_declared_noise_relaxes_consistency(model):
    # DDNM+: with sigma_y > 0 the last step no longer forces A x̂ = y
    op, _, y = _obs([("gaussian_blur", {"sigma": 1.5})], 16, 16)
    noisy = ddnm(y, op, model, steps=2, sigma_y=0.2, seed=1)
    assert float((op.A(noisy) - y).abs().max()) > 1e-6


def test_chain_restore_mixes_ddnm_and_classical_steps(model):
    ann = {"degradations": [{"type": "gaussian_blur", "params": {"sigma": 1.0}},
                            {"type": "low_light", "params": {"exposure": 0.5, "gamma": 1.5}},
                            {"type": "downsample", "params": {"scale": 0.5}},
                            {"type": "gaussian_noise", "params": {"sigma": 10}}]}
    img = _image(16, 16)
    out = restore_ddnm(apply_chain(img, ann, 0), ann, model, steps=2, seed=0)
    assert out.shape == img.shape and out.dtype == np.uint8
    again = restore_ddnm(apply_chain(img, ann, 0), ann, model, steps=2, seed=0)
    assert np.array_equal(out, again)  # seeded sampling is reproducible


def test_model_loads_from_s3(unet_dir, model, s3_env, tmp_path):
    import boto3
    s3 = boto3.client("s3", endpoint_url=s3_env["endpoint"])
    for f in unet_dir.rglob("*"):
        if f.is_file():
            s3.upload_file(str(f), s3_env["bucket"], f"models/tiny/{f.relative_to(unet_dir)}")
    remote = load_diffusion(f"s3://{s3_env['bucket']}/models/tiny", "cpu",
                            cache_dir=tmp_path / "cache")
    for (n, a), (_, b) in zip(remote.unet.state_dict().items(), model.unet.state_dict().items()):
        assert torch.equal(a, b), n
    assert torch.equal(remote.alphas_cumprod, model.alphas_cumprod)


def test_cli_ddnm_backend_on_a_folder(unet_dir, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    ann = {"degradations": [{"type": "defocus_blur", "params": {"radius": 1.5}}]}
    for i in range(2):
        Image.fromarray(apply_chain(_image(16, 16), ann, i)).save(imgs / f"im{i}.png")
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    out = tmp_path / "out"
    assert main(["restore", f"input={imgs}", f"annotation={tmp_path / 'ann.json'}",
                 f"output={out}", "restore.backend=ddnm", f"restore.model={unet_dir}",
                 "restore.steps=2", "restore.device=cpu", "tracking.enabled=false"]) == 0
    assert sorted(p.name for p in (out / "restored").iterdir()) == ["im0.png", "im1.png"]
    assert Image.open(out / "grid.png").size[0] > 3 * 16


def test_missing_model_is_a_clear_error():
    with pytest.raises(UserError, match="nothing is downloaded from a hub"):
        load_diffusion("google/ddpm-cifar10-32", "cpu")
