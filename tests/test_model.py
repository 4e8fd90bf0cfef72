"""The network is deSpeckNet as the paper describes it, and its ONNX export is faithful."""
import os

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from despecknet_qgis.core.inference import Despeckler
from despecknet_qgis.core.model import RECEPTIVE_FIELD, Branch, DeSpeckNet


def test_each_branch_has_17_blocks_of_the_paper():
    branch = Branch()
    convs = [m for m in branch if isinstance(m, nn.Conv2d)]
    bns = [m for m in branch if isinstance(m, nn.BatchNorm2d)]
    relus = [m for m in branch if isinstance(m, nn.ReLU)]
    assert len(convs) == 17 and len(bns) == 15 and len(relus) == 16
    assert (convs[0].in_channels, convs[0].out_channels) == (1, 64)
    assert all((c.in_channels, c.out_channels) == (64, 64) for c in convs[1:-1])
    assert (convs[-1].in_channels, convs[-1].out_channels) == (64, 1)
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    # Block 1 is Conv+ReLU without BatchNorm; block 17 a bare Conv.
    assert isinstance(branch[1], nn.ReLU) and isinstance(branch[2], nn.Conv2d)
    assert isinstance(branch[-1], nn.Conv2d) and isinstance(branch[-2], nn.ReLU)


def test_two_branches_do_not_share_weights_and_reconstruct_by_product():
    model = DeSpeckNet().eval()
    assert model.clean[0].weight.data_ptr() != model.noise[0].weight.data_ptr()
    y = torch.randn(2, 1, 37, 53)
    clean, noise = model(y)
    assert clean.shape == noise.shape == y.shape
    # In the log domain the product X_hat * N_hat is a sum.
    x_hat, n_hat = torch.exp(2 * clean), torch.exp(2 * noise)
    assert torch.allclose(torch.exp(2 * DeSpeckNet.reconstruction(clean, noise)), x_hat * n_hat, rtol=1e-5)


def test_receptive_field_is_35_pixels():
    model = DeSpeckNet().eval()
    y = torch.randn(1, 1, 101, 101, generator=torch.Generator().manual_seed(0)).requires_grad_()
    model.clean(y)[0, 0, 50, 50].backward()
    touched = (y.grad[0, 0].abs() > 0).nonzero()
    span = touched.max(0).values - touched.min(0).values + 1
    assert span.tolist() == [RECEPTIVE_FIELD, RECEPTIVE_FIELD] == [35, 35]


def test_onnx_is_one_file_with_metadata_and_matches_torch(tiny_model, tmp_path):
    path, model = tiny_model
    assert not os.path.exists(path + ".data")
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    for key in ("format", "model_version", "domain", "normalisation", "log_scale", "receptive_field", "training"):
        assert meta.get(key), key
    d = Despeckler(path, "cpu", precision="fp32")  # ONNX Runtime against torch
    rng = np.random.default_rng(1)
    for shape in ((40, 40), (77, 130)):  # dynamic height and width
        z = rng.standard_normal(shape).astype(np.float32)
        clean, noise = d.predict(z, with_noise=True)
        with torch.no_grad():
            tc, tn = model(torch.from_numpy(z)[None, None])
        assert np.abs(clean - tc[0, 0].numpy()).max() < 1e-4
        assert np.abs(noise - tn[0, 0].numpy()).max() < 1e-4


def test_clean_only_session_gives_the_same_clean_output(tiny_model):
    z = np.random.default_rng(2).standard_normal((50, 60)).astype(np.float32)
    full = Despeckler(tiny_model[0], "cpu", with_noise=True).predict(z, with_noise=True)[0]
    light = Despeckler(tiny_model[0], "cpu", with_noise=False)
    assert len(light.session.get_outputs()) == 1
    np.testing.assert_allclose(light.predict(z)[0], full, atol=1e-6)
    with pytest.raises(ValueError):
        light.predict(z, with_noise=True)


def test_self_ensemble_is_the_mean_of_the_four_mirrored_passes(tiny_model):
    z = np.random.default_rng(5).standard_normal((70, 90)).astype(np.float32)
    single = Despeckler(tiny_model[0], "cpu", precision="fp32")
    expected = np.mean([np.flip(single.predict(np.ascontiguousarray(np.flip(z, axes)))[0], axes)
                        for axes in ((), (1,), (0,), (0, 1))], axis=0)
    ensemble = Despeckler(tiny_model[0], "cpu", precision="fp32", self_ensemble=True)
    clean, noise = ensemble.predict(z, with_noise=True)
    np.testing.assert_allclose(clean, expected, atol=1e-5)
    assert noise.shape == z.shape and np.isfinite(noise).all()
    assert np.abs(clean - single.predict(z)[0]).mean() > 1e-3  # the mirrored passes do differ
