"""Phase 1 training engine and the despecknet:train workflow on small simulated pairs."""
import gc
import math
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import read_tif, write_tif
from despecknet_qgis.core.errors import Cancelled, DespeckNetError, TrainingError
from despecknet_qgis.core.inference import Despeckler
from despecknet_qgis.core.losses import LossWeights, despecknet_loss
from despecknet_qgis.core.patches import ImagePair, RasterPatches
from despecknet_qgis.core.phases import train
from despecknet_qgis.core.progress import Progress
from despecknet_qgis.core.simulate import simulate_reflectivity, simulate_speckle
from despecknet_qgis.core.tiled_predict import despeckle_raster
from despecknet_qgis.core.training import fit, load_checkpoint, step_learning_rate

SMALL = dict(patch=24, stride=12, batch_size=16, lr=1e-3, lr_end=1e-3, lr_steps=1, validation_fraction=0.25)


def pair(tmp_path, size=192, looks=5.0, seed=0, name="p"):
    rng = np.random.default_rng(seed)
    x = simulate_reflectivity((size, size), rng, parcel_size=32.0).reflectivity
    y = x * simulate_speckle((size, size), looks, 0.0, rng)
    return ImagePair(write_tif(tmp_path / f"{name}_y.tif", y.astype(np.float32)), 1,
                     write_tif(tmp_path / f"{name}_x.tif", x.astype(np.float32)), 1)


def test_masked_pixels_contribute_nothing():
    g = torch.Generator().manual_seed(0)
    clean, noise, noisy, target = (torch.randn(2, 1, 8, 8, generator=g) for _ in range(4))
    mask = torch.ones(2, 1, 8, 8)
    mask[:, :, :4] = 0
    weights = LossWeights(1.0, 0.5, 0.1)
    loss, _ = despecknet_loss(clean, noise, noisy, target, mask, weights)
    # Garbage under the mask changes nothing.
    target2, noisy2 = target.clone(), noisy.clone()
    target2[:, :, :4] = 1e6
    noisy2[:, :, :4] = -1e6
    assert despecknet_loss(clean, noise, noisy2, target2, mask, weights)[0].item() == pytest.approx(loss.item())
    # And equals the loss computed on the unmasked part alone (TV pairs inside it).
    sub = [t[:, :, 4:] for t in (clean, noise, noisy, target)]
    assert despecknet_loss(*sub, torch.ones(2, 1, 4, 8), weights)[0].item() == pytest.approx(loss.item(), rel=1e-6)


def test_energy_weight_leaves_a_patch_out_of_the_energy_term_only():
    """Real patches whose label is a debiased temporal mean (tools/make_model.py) skip the local energy term."""
    g = torch.Generator().manual_seed(1)
    clean, noise, noisy, target = (torch.randn(2, 1, 12, 12, generator=g) for _ in range(4))
    mask = torch.ones(2, 1, 12, 12)
    weights = LossWeights(1.0, 0.01, 0.0, energy=0.5)
    _, both = despecknet_loss(clean, noise, noisy, target, mask, weights)
    _, first = despecknet_loss(clean[:1], noise[:1], noisy[:1], target[:1], mask[:1], weights)
    _, weighted = despecknet_loss(clean, noise, noisy, target, mask, weights, torch.tensor([1.0, 0.0]).view(2, 1, 1, 1))
    assert weighted["energy"] == pytest.approx(first["energy"], rel=1e-6)
    assert abs(first["energy"] - both["energy"]) > 1e-3 * both["energy"]
    assert weighted["fidelity"] == pytest.approx(both["fidelity"]) and weighted["reconstruction"] == pytest.approx(both["reconstruction"])


def test_energy_shift_compares_a_gained_label_with_its_own_local_intensity():
    """A label multiplied by a gain (the real dates' log-domain debiasing) shifted back by minus its log:
    the energy term is what it is against the label without the gain, patch by patch."""
    from despecknet_qgis.core.domain import LOG_SCALE

    g = torch.Generator().manual_seed(2)
    clean, noise, noisy, target = (torch.randn(2, 1, 12, 12, generator=g) for _ in range(4))
    mask = torch.ones(2, 1, 12, 12)
    weights = LossWeights(1.0, 0.01, 0.0, energy=0.5)
    _, plain = despecknet_loss(clean, noise, noisy, target, mask, weights)
    gained = target.clone()
    gained[1] += math.log(1.139) / LOG_SCALE
    shift = torch.tensor([0.0, -math.log(1.139) / LOG_SCALE]).view(2, 1, 1, 1)
    _, shifted = despecknet_loss(clean, noise, noisy, gained, mask, weights, energy_shift=shift)
    _, unshifted = despecknet_loss(clean, noise, noisy, gained, mask, weights)
    assert shifted["energy"] == pytest.approx(plain["energy"], rel=1e-5)
    assert abs(unshifted["energy"] - plain["energy"]) > 1e-3 * plain["energy"]


def test_structure_term_is_the_ssim_of_the_quality_metrics_and_penalises_lost_texture():
    """1 - SSIM in the log domain: the metric's own window, zero for a perfect estimate, larger for a
    smoothed one; masked windows and patches weighted 0 are left out of it only."""
    from scipy import ndimage

    from despecknet_qgis.core import metrics as mt
    from despecknet_qgis.core.losses import STRUCTURE_RANGE, local_structure_error

    rng = np.random.default_rng(3)
    target = ndimage.gaussian_filter(rng.normal(0, 1, (2, 40, 40)), (0, 1, 1))  # textured log image
    smoothed = ndimage.uniform_filter(target, (1, 5, 5))
    t = lambda a: torch.from_numpy(a[:, None].astype(np.float32))  # noqa: E731
    mask = torch.ones(2, 1, 40, 40)
    assert local_structure_error(t(target), t(target), mask).item() == pytest.approx(0.0, abs=1e-5)
    lost = local_structure_error(t(smoothed), t(target), mask).item()
    expected = np.mean([1 - mt.ssim_map(smoothed[i], target[i], STRUCTURE_RANGE)[5:-5, 5:-5].mean() for i in range(2)])
    assert lost == pytest.approx(expected, rel=1e-4) and lost > 0.05
    # Garbage under a mask changes nothing; a patch weighted 0 counts for nothing.
    garbage = smoothed.copy()
    garbage[0, :12] = 1e3
    mask[0, :, :12] = 0
    masked = local_structure_error(t(garbage), t(target), mask).item()
    assert masked == pytest.approx(local_structure_error(t(smoothed), t(target), mask).item(), rel=1e-6)
    only_second = local_structure_error(t(garbage), t(target), mask, torch.tensor([0.0, 1.0]).view(2, 1, 1, 1))
    assert only_second.item() == pytest.approx(1 - mt.ssim_map(smoothed[1], target[1], STRUCTURE_RANGE)[5:-5, 5:-5].mean(),
                                               rel=1e-4)
    weights = LossWeights(1.0, 0.01, 0.0, structure=0.1)
    total, parts = despecknet_loss(t(smoothed), t(smoothed), t(target), t(target), torch.ones(2, 1, 40, 40), weights)
    assert parts["structure"] == pytest.approx(lost, rel=1e-5)
    assert parts["total"] == pytest.approx(parts["fidelity"] + 0.01 * parts["reconstruction"] + 0.1 * lost, rel=1e-5)


def test_learning_rate_steps_like_the_paper():
    lrs = [step_learning_rate(e / 30, 1e-3, 1e-4, 3) for e in range(30)]
    assert lrs[0] == 1e-3 and lrs[-1] == pytest.approx(1e-4) and len(set(lrs)) == 3
    assert lrs[9] == 1e-3 and lrs[10] < 1e-3


def test_training_lowers_validation_loss_and_exports_a_usable_model(tmp_path):
    # The paper's step decay: at a constant 1e-3 the last validation swung between 0.6 and 0.8 of the
    # first with the precision (fp32 on CPUs without AMX, bf16 with), so the test hung on one epoch's noise.
    settings = {**SMALL, "lr_end": 1e-4, "lr_steps": 3}
    report = train([pair(tmp_path)], str(tmp_path / "m.onnx"), epochs=3, seed=1, **settings)
    validation = [h["validation"] for h in report.history if "validation" in h]
    assert validation[-1] < 0.5 * validation[0]
    model, record = load_checkpoint(report.checkpoint_path)
    assert record.phases[-1]["phase"] == 1 and record.phases[-1]["weights"]["mu"] == 1.0
    assert isinstance(record.phases[-1]["bf16"], bool)
    d = Despeckler(report.onnx_path, "cpu")
    assert d.info.training["phases"][-1]["phase"] == 1
    y, _ = read_tif(tmp_path / "p_y.tif")
    out = despeckle_raster(str(tmp_path / "p_y.tif"), str(tmp_path / "x_hat.tif"), d)
    assert out.provider == "CPUExecutionProvider" and np.isfinite(read_tif(tmp_path / "x_hat.tif")[0][0]).all()


def test_same_seed_same_model(tmp_path):
    p = pair(tmp_path)
    a = train([p], str(tmp_path / "a.onnx"), epochs=1, seed=7, **SMALL)
    b = train([p], str(tmp_path / "b.onnx"), epochs=1, seed=7, **SMALL)
    sa, sb = load_checkpoint(a.checkpoint_path)[0].state_dict(), load_checkpoint(b.checkpoint_path)[0].state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_mask_removes_pixels_from_training(tmp_path):
    p = pair(tmp_path, seed=2)
    mask = np.ones((192, 192), np.uint8)
    mask[:, 96:] = 0
    p.mask = write_tif(tmp_path / "mask.tif", mask, dtype=__import__("osgeo.gdal").gdal.GDT_Byte)
    full = RasterPatches([pair(tmp_path, seed=2, name="q")], 24, 24)
    half = RasterPatches([p], 24, 24)
    assert 0.3 * full.training_patches <= half.training_patches <= 0.6 * full.training_patches
    for _, _, m in half.batches(64, np.random.default_rng(0)):
        assert m.mean() > 0.5


def test_a_training_label_written_in_another_domain_is_refused_by_the_core(tmp_path):
    """The core checked the noisy image's recorded domain but read a dB label of this plugin as intensity
    (only the Processing algorithm refused it): a core caller trained on log values taken for power."""
    from osgeo import gdal

    p = pair(tmp_path, seed=3)
    ds = gdal.Open(p.label, gdal.GA_Update)
    ds.SetMetadataItem("DESPECKNET_OUTPUT_DOMAIN", "decibel")
    ds = None
    with pytest.raises(DespeckNetError, match=r"x\.tif is an output of this plugin written in decibel"):
        RasterPatches([p], 24, 24)
    with pytest.raises(DespeckNetError, match="written in decibel"):
        train([p], str(tmp_path / "m.onnx"), epochs=1, seed=1, **SMALL)
    assert not (tmp_path / "m.onnx").exists()


def test_cancel_keeps_the_last_good_checkpoint_and_the_previous_model(tmp_path, monkeypatch):
    """The epoch checkpoint was moved onto m.pt: a cancelled retrain left the old m.onnx beside another run's
    unfinished weights, although the message said nothing was written."""
    data = pair(tmp_path)
    train([data], str(tmp_path / "m.onnx"), epochs=1, seed=1, **{**SMALL, "validation_fraction": 0.0})
    before = {n: (tmp_path / n).read_bytes() for n in ("m.onnx", "m.pt")}
    assert not (tmp_path / "m.unfinished.pt").exists()  # a finished run leaves no resume file

    def cancel_in_second_epoch():
        return (tmp_path / "m.unfinished.pt").exists()

    with pytest.raises(Cancelled, match=r"checkpoint of epoch 1 is kept in .*m\.unfinished\.pt .* as they were"):
        train([data], str(tmp_path / "m.onnx"), epochs=5, seed=2,
              progress=Progress(is_cancelled=cancel_in_second_epoch), **{**SMALL, "validation_fraction": 0.0})
    assert {n: (tmp_path / n).read_bytes() for n in ("m.onnx", "m.pt")} == before
    assert load_checkpoint(str(tmp_path / "m.unfinished.pt"))[1].phases[-1]["complete"] is False
    from despecknet_qgis.core import training

    loss = training.despecknet_loss

    def diverging_in_second_epoch(*args, **kwargs):  # the loss turns NaN once an epoch is done
        value, parts = loss(*args, **kwargs)
        if (tmp_path / "m.unfinished.pt").exists():
            parts = {**parts, "total": float("nan")}
        return value, parts

    (tmp_path / "m.unfinished.pt").unlink()
    monkeypatch.setattr(training, "despecknet_loss", diverging_in_second_epoch)
    with pytest.raises(TrainingError, match=r"m\.pt and .*m\.onnx are as they were"):  # a diverging run too
        train([data], str(tmp_path / "m.onnx"), epochs=3, seed=2, **{**SMALL, "validation_fraction": 0.0})
    assert {n: (tmp_path / n).read_bytes() for n in ("m.onnx", "m.pt")} == before


def test_bad_training_inputs(tmp_path):
    p = pair(tmp_path)
    small = write_tif(tmp_path / "small_x.tif", np.ones((100, 192), np.float32))
    with pytest.raises(DespeckNetError, match="same pixel grid"):
        train([ImagePair(p.noisy, 1, small, 1)], str(tmp_path / "m.onnx"), **SMALL)
    tiny = write_tif(tmp_path / "tiny.tif", np.ones((16, 16), np.float32))
    with pytest.raises(DespeckNetError, match="smaller than one"):
        train([ImagePair(tiny, 1, tiny, 1)], str(tmp_path / "m.onnx"), **SMALL)
    empty = write_tif(tmp_path / "empty_x.tif", np.zeros((192, 192), np.float32))
    with pytest.raises(DespeckNetError, match="No training patch"):
        train([ImagePair(p.noisy, 1, empty, 1)], str(tmp_path / "m.onnx"), **SMALL)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DespeckNetError, match="not a readable PyTorch checkpoint"):
        train([p], str(tmp_path / "m.onnx"), initial_model=str(junk), **SMALL)
    (tmp_path / "m.pt").write_bytes(b"an earlier checkpoint")
    with pytest.raises(DespeckNetError, match=r"m\.pt is the input `initial_model`"):
        train([p], str(tmp_path / "m.onnx"), initial_model=str(tmp_path / "m.pt"), **SMALL)
    assert (tmp_path / "m.pt").read_bytes() == b"an earlier checkpoint"


def test_training_device_auto_cpu_and_cuda(tmp_path):
    """The CUDA path of training: where torch can use a GPU it trains there (a lent GPU machine runs
    this branch), elsewhere `cuda` fails before any work and `auto` trains on the CPU."""
    from despecknet_qgis.core.errors import InputError, ResourceError
    from despecknet_qgis.core.training import torch_device

    assert torch_device("cpu").type == "cpu"
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="Unknown `device` 'gpu'"):
        torch_device("gpu")
    data = pair(tmp_path, size=96)
    if torch.cuda.is_available():
        report = train([data], str(tmp_path / "g.onnx"), epochs=1, device="cuda", **SMALL)
        assert load_checkpoint(report.checkpoint_path)[1].phases[-1]["device"] == "cuda"
    else:
        with pytest.raises(ResourceError, match="`device` cuda: this PyTorch .* (built without CUDA|no usable)"):
            train([data], str(tmp_path / "g.onnx"), epochs=1, device="cuda", **SMALL)
        assert not (tmp_path / "g.onnx").exists() and not (tmp_path / "g.pt").exists()
    report = train([data], str(tmp_path / "a.onnx"), epochs=1, device="auto", **SMALL)
    model, record = load_checkpoint(report.checkpoint_path)
    assert record.phases[-1]["device"] == torch_device("auto").type
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_train_and_finetune_algorithms_refuse_cuda_where_torch_cannot(provider, tiny_model, tmp_path):
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    if torch.cuda.is_available():
        pytest.skip("this torch can use a GPU: test_training_device_auto_cpu_and_cuda trains on it")
    data = pair(tmp_path, size=96)
    with pytest.raises(QgsProcessingException, match="DEVICE cuda: this PyTorch"):
        processing.run("despecknet:train", {"INPUT": [data.noisy], "REFERENCE": [data.label], "DEVICE": "cuda",
                                            "OUTPUT_MODEL": str(tmp_path / "t.onnx")}, feedback=QgsProcessingFeedback())
    with pytest.raises(QgsProcessingException, match="DEVICE cuda: this PyTorch"):
        processing.run("despecknet:finetune", {"INPUT": data.noisy, "MODEL": tiny_model[0][:-5] + ".pt", "DEVICE": "cuda",
                                               "OUTPUT_MODEL": str(tmp_path / "f.onnx")}, feedback=QgsProcessingFeedback())
    assert not any(tmp_path.glob("*.onnx"))


def test_patch_cutter_cuts_the_same_patch_from_image_and_label():
    """Noisy patch and label must stay aligned whatever rotation and flip are drawn."""
    from despecknet_qgis.core.simulate import patch_cutter

    rng = np.random.default_rng(3)
    image = np.arange(30 * 20, dtype=float).reshape(30, 20)
    seen = set()
    for _ in range(40):
        cut = patch_cutter(rng, image.shape, 8)
        a, b = cut(image), cut(image * 2.0)
        assert a.shape == (8, 8) and np.array_equal(b, a * 2.0)
        assert np.isin(a, image).all()
        seen.add((a[0, 1] - a[0, 0], a[1, 0] - a[0, 0]))  # which way rows and columns run
    assert len(seen) == 8  # all four turns, flipped and not


def two_band_image_and_one_band_label(tmp_path, size=96):
    """A VV/VH-like image (band 2 a darker copy) and the one-band label that temporal_label writes."""
    from osgeo import gdal

    data = pair(tmp_path, size=size)
    path = str(tmp_path / "vv_vh.tif")
    gdal.Translate(path, data.noisy, bandList=[1, 1])  # the same grid and CRS as the label
    ds = gdal.Open(path, gdal.GA_Update)
    ds.GetRasterBand(2).WriteArray(ds.GetRasterBand(1).ReadAsArray() * 0.2)
    ds = None
    return path, data.label


def test_training_on_band_2_against_a_one_band_label_uses_the_label_s_only_band(provider, tmp_path):
    """BAND 2 with a one-band label (what temporallabel writes) ended in a Python AttributeError."""
    import processing
    from qgis.core import QgsProcessingFeedback

    image, label = two_band_image_and_one_band_label(tmp_path)
    source = RasterPatches([ImagePair(image, 2, label)], 24, 24)
    assert source.label_bands == [1]
    noisy, target, mask = source._read_block(source.training_blocks[0])
    assert mask.any() and np.isfinite(target[mask > 0]).all()
    result = processing.run("despecknet:train", {"INPUT": [image], "REFERENCE": [label], "BAND": 2, "EPOCHS": 1,
                                                 "PATCH_SIZE": 24, "STRIDE": 24, "BATCH_SIZE": 8,
                                                 "OUTPUT_MODEL": str(tmp_path / "m.onnx")}, feedback=QgsProcessingFeedback())
    assert result["OUTPUT_MODEL"] == str(tmp_path / "m.onnx") and (tmp_path / "m.pt").exists()


def test_a_label_without_the_trained_band_is_refused_naming_both(tmp_path):
    from osgeo import gdal

    image, label = two_band_image_and_one_band_label(tmp_path)
    two = str(tmp_path / "label_2.tif")
    gdal.Translate(two, label, bandList=[1, 1])
    assert RasterPatches([ImagePair(image, 2, two)], 24, 24).label_bands == [2]  # its own band 2
    three = str(tmp_path / "three.tif")
    gdal.Translate(three, image, bandList=[1, 2, 2])
    with pytest.raises(DespeckNetError, match=r"label_2\.tif has 2 band\(s\), so it has no band 3 for band 3 of .*three\.tif"):
        RasterPatches([ImagePair(three, 3, two)], 24, 24)
    with pytest.raises(DespeckNetError, match=r"no band 3 for band 1"):  # a band asked for explicitly is checked too
        RasterPatches([ImagePair(image, 1, two, 3)], 24, 24)


def test_a_learning_rate_above_1_is_refused_before_training(tmp_path):
    """lr 1e2 to 1e6 trained to a loss of 5.8e27 and reported success; the model failed only at despeckle."""
    data = pair(tmp_path, size=96)
    for lr in (2.0, 1e2):
        with pytest.raises(DespeckNetError, match=r"`lr` must be .*1"):
            train([data], str(tmp_path / "m.onnx"), **{**SMALL, "lr": lr, "lr_end": 1e-3})
    assert not (tmp_path / "m.onnx").exists()


class _CancelAfter:
    """Cancellation asked at the `n`-th check (0: never); counts the checks."""

    def __init__(self, n=0):
        self.n, self.checks = n, 0

    def __call__(self):
        self.checks += 1
        return bool(self.n) and self.checks >= self.n


def test_cancel_while_the_training_data_is_prepared_stops_at_the_next_block(tmp_path):
    # The patch count read every block of the image (about 10 s for 6000x6000) without checking.
    from despecknet_qgis.core.progress import Progress
    from conftest import speckled_scene

    y, clean = speckled_scene(256, seed=3)
    noisy, label = write_tif(tmp_path / "y.tif", y), write_tif(tmp_path / "x.tif", clean.reflectivity)
    pairs = [ImagePair(noisy, label=label)]
    quiet = _CancelAfter()
    source = RasterPatches(pairs, patch=40, stride=8, validation_fraction=0.2, progress=Progress(is_cancelled=quiet))
    blocks = len(source.training_blocks) + len(source.validation_blocks)
    assert blocks > 4
    statistics_checks = quiet.checks - blocks  # the rest: one check per block counted
    assert statistics_checks >= 1
    cancel = _CancelAfter(statistics_checks + 2)
    with pytest.raises(Cancelled):
        RasterPatches(pairs, patch=40, stride=8, validation_fraction=0.2, progress=Progress(is_cancelled=cancel))
    assert cancel.checks == statistics_checks + 2


def test_cancel_during_a_validation_pass_stops_it_between_batches(tmp_path):
    # Validation never checked: a pass over a large image's held-out blocks ran to its end (24 s for 2000x2000).
    from despecknet_qgis.core.model import DeSpeckNet
    from despecknet_qgis.core.progress import Progress
    from conftest import speckled_scene

    y, clean = speckled_scene(256, seed=4)
    pairs = [ImagePair(write_tif(tmp_path / "y.tif", y), label=write_tif(tmp_path / "x.tif", clean.reflectivity))]

    class Counted(RasterPatches):
        drawn = 0

        def batches(self, batch_size, rng, validation=False):
            for batch in super().batches(batch_size, rng, validation=validation):
                Counted.drawn += validation
                yield batch

    source = Counted(pairs, patch=40, stride=8, validation_fraction=0.5)
    available = sum(1 for _ in RasterPatches.batches(source, 4, np.random.default_rng(0), validation=True))
    assert available > 5
    with pytest.raises(Cancelled):
        fit(DeSpeckNet(), source, LossWeights(1.0, 0.01, 0.0), batch_size=4, progress=Progress(is_cancelled=_CancelAfter(1)))
    assert Counted.drawn == 1


def test_a_cancelled_training_goes_on_from_its_kept_checkpoint_into_the_same_model(tmp_path):
    """The cancel said to give the kept checkpoint as the initial model; doing so into the same model was
    refused ("is the input"), and a despeckle given it pointed at m.unfinished.onnx, which no run writes."""
    from despecknet_qgis.core.errors import ModelError

    data = pair(tmp_path)

    def cancel_in_second_epoch():
        return (tmp_path / "m.unfinished.pt").exists()

    with pytest.raises(Cancelled, match=r"m\.unfinished\.pt \(give it as the initial model to go on, into this model"):
        train([data], str(tmp_path / "m.onnx"), epochs=3, seed=2, progress=Progress(is_cancelled=cancel_in_second_epoch),
              **{**SMALL, "validation_fraction": 0.0})
    with pytest.raises(ModelError, match=r"checkpoint a cancelled or failed training kept.* such as .*m\.onnx"):
        Despeckler(str(tmp_path / "m.unfinished.pt"), "cpu")
    report = train([data], str(tmp_path / "m.onnx"), epochs=1, seed=2, initial_model=str(tmp_path / "m.unfinished.pt"),
                   **{**SMALL, "validation_fraction": 0.0})
    phases = load_checkpoint(report.checkpoint_path)[1].phases
    assert phases[0]["complete"] is False and phases[0]["epochs_done"] == 1 and len(phases) == 2
    assert not (tmp_path / "m.unfinished.pt").exists() and (tmp_path / "m.onnx").exists()


def test_a_cancelled_training_given_the_same_settings_goes_on_where_it_stopped(tmp_path, monkeypatch):
    """Going on from the kept checkpoint restarted the learning-rate schedule at its first epoch, with a fresh
    Adam: the 3 epochs asked for became 1 + 3, the first of them at the starting rate again."""
    import torch

    from despecknet_qgis.core.losses import PHASE1
    from despecknet_qgis.core.phases import _going_on
    from despecknet_qgis.core.training import load_optimizer_state

    data = pair(tmp_path, size=96)
    settings = {**SMALL, "validation_fraction": 0.0, "lr": 1e-3, "lr_end": 1e-5, "lr_steps": 3}

    def cancel_in_second_epoch():
        return (tmp_path / "m.unfinished.pt").exists()

    with pytest.raises(Cancelled):
        train([data], str(tmp_path / "m.onnx"), epochs=3, seed=2, progress=Progress(is_cancelled=cancel_in_second_epoch),
              **settings)
    kept = str(tmp_path / "m.unfinished.pt")
    copy = str(tmp_path / "copy.pt")
    shutil.copyfile(kept, copy)  # the finished training removes its unfinished checkpoint
    adam = load_optimizer_state(kept)
    assert adam is not None
    steps_before = int(max(float(v["step"]) for v in adam["state"].values()))
    from despecknet_qgis.core import training as training_module

    messages, rates = [], []
    original_fit = training_module.fit

    def watching_fit(*args, **kwargs):  # where each run starts, and whether Adam's state came with it
        rates.append((kwargs.get("start_epoch"), kwargs.get("optimizer_state") is not None))
        return original_fit(*args, **kwargs)

    monkeypatch.setattr(training_module, "fit", watching_fit)
    report = train([data], str(tmp_path / "m.onnx"), epochs=3, seed=2, initial_model=kept,
                   progress=Progress(log=messages.append), **settings)
    assert rates == [(1, True)]
    assert report.steps == 2 * steps_before  # epochs 2 and 3 only
    assert any("going on with the unfinished training" in m and "epochs 2 to 3" in m for m in messages)
    phases = load_checkpoint(report.checkpoint_path)[1].phases
    assert len(phases) == 1 and phases[0]["complete"] is True and phases[0]["went_on_from_epoch"] == 1
    # the record counts the whole training, not this run's part of it (it said 2 epochs, 2/3 of the steps)
    assert phases[0]["epochs_done"] == 3 and phases[0]["steps"] == 3 * steps_before
    assert "optimizer" not in torch.load(report.checkpoint_path, weights_only=True)  # finished models stay lean
    # other settings (here the epochs): a new training from its weights, said so
    model, record = load_checkpoint(copy)
    messages.clear()
    info = {"phase": 1, "data": [os.path.basename(data.noisy)], "epochs": 2, "patch": settings["patch"],
            "stride": settings["stride"], "batch": settings["batch_size"], "lr": [1e-3, 1e-5, 3]}
    assert _going_on(copy, record, info, PHASE1, 2, Progress(log=messages.append)) == (0, None, {})
    assert any("its epochs differ from this run's: a new training starts from its weights" in m for m in messages)
    assert record.phases[-1]["complete"] is False  # kept in the record of the new training


def test_a_training_whose_export_failed_after_its_last_epoch_is_exported_without_training_again(tmp_path, monkeypatch):
    """Given its kept checkpoint with the same settings, every epoch ran again from the start of the schedule."""
    import errno

    from despecknet_qgis.core import export as export_module
    from despecknet_qgis.core import training as training_module
    from despecknet_qgis.core.errors import OutputError

    data = pair(tmp_path, size=96)
    settings = {**SMALL, "validation_fraction": 0.0}
    original_export = export_module.export_onnx

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_module, "export_onnx", full_disk)
    with pytest.raises(OutputError, match="checkpoint of epoch 2 is kept"):
        train([data], str(tmp_path / "m.onnx"), epochs=2, seed=2, **settings)
    monkeypatch.setattr(export_module, "export_onnx", original_export)
    kept = str(tmp_path / "m.unfinished.pt")
    before = load_checkpoint(kept)[1].phases[-1]
    runs, messages = [], []
    original_fit = training_module.fit
    monkeypatch.setattr(training_module, "fit", lambda *a, **k: runs.append(k.get("start_epoch")) or original_fit(*a, **k))
    report = train([data], str(tmp_path / "m.onnx"), epochs=2, seed=2, initial_model=kept,
                   progress=Progress(log=messages.append), **settings)
    assert runs == [2] and report.steps == 0 and (tmp_path / "m.onnx").exists()
    assert any("holds all 2 epochs" in m for m in messages)
    phases = load_checkpoint(report.checkpoint_path)[1].phases
    assert len(phases) == 1 and phases[0]["epochs_done"] == 2 and phases[0]["steps"] == before["steps"] > 0


def test_a_cancelled_fine_tune_does_not_promise_to_go_on_where_it_stopped(tmp_path):
    """Phase 2 has no going on (a new fine-tune starts from the base again); its message said it had."""
    from despecknet_qgis.core.phases import fine_tune

    src = pair(tmp_path, size=96, name="q").noisy
    base = tmp_path / "base.pt"
    train([pair(tmp_path, size=96, name="b")], str(tmp_path / "base.onnx"), epochs=1, seed=2,
          **{**SMALL, "validation_fraction": 0.0})

    def cancel_in_second_epoch():
        return (tmp_path / "t.unfinished.pt").exists()

    message = None
    try:
        fine_tune(src, str(tmp_path / "t.onnx"), base_model=str(base), epochs=3, patch=24, stride=12, batch_size=16,
                  validation_fraction=0.0, acceptance=False, progress=Progress(is_cancelled=cancel_in_second_epoch))
    except Cancelled as exc:
        message = str(exc)
    # The traceback's frames hold the image's GDAL datasets: freed now, not after QGIS has exited (a crash at exit).
    gc.collect()
    assert message and "partly tuned" in message and "goes on where it stopped" not in message


@pytest.mark.parametrize("damage", ["training_none", "training_list", "phases_not_a_list", "state_dict_list",
                                    "nan_weights", "other_architecture"])
def test_a_malformed_or_corrupt_checkpoint_is_refused_before_any_training(tmp_path, damage):
    """A TypeError or an AttributeError (after a whole epoch) escaped; NaN weights "diverged" and blamed the
    learning rate; another architecture's message named none of the mismatched weights."""
    from despecknet_qgis.core.errors import ModelError
    from despecknet_qgis.core.model import DeSpeckNet
    from despecknet_qgis.core.training import CHECKPOINT_FORMAT

    state = DeSpeckNet().state_dict()
    good = {"format": CHECKPOINT_FORMAT, "state_dict": state, "training": {"phases": []}}
    bad = {
        "training_none": {**good, "training": None},
        "training_list": {**good, "training": []},
        "phases_not_a_list": {**good, "training": {"phases": "abc"}},
        "state_dict_list": {**good, "state_dict": []},
        "nan_weights": {**good, "state_dict": {k: v * float("nan") if v.is_floating_point() else v for k, v in state.items()}},
        "other_architecture": {**good, "state_dict": {**state, "clean.0.weight": torch.zeros(32, 1, 3, 3)}},
    }[damage]
    path = str(tmp_path / "c.pt")
    torch.save(bad, path)
    expected = {"nan_weights": "NaN or infinite weights", "other_architecture": r"size mismatch for clean\.0\.weight",
                "state_dict_list": "malformed state_dict"}.get(damage, "malformed training record")
    with pytest.raises(ModelError, match=expected):
        train([pair(tmp_path)], str(tmp_path / "m.onnx"), epochs=1, initial_model=path, **SMALL)
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.unfinished.pt").exists()
    torch.save({**good, "training": {"phases": [], "schema": 2}}, path)  # a key a later version adds: loads
    load_checkpoint(path)


def test_make_model_on_a_machine_without_gdal_trains_from_the_real_pairs_cache_within_its_minutes(tmp_path):
    """tools/gpu_session.sh's path: real pairs written here (GDAL), read there without it; batches from a
    worker process; the run stops at its time budget with its state and a checkpoint, and --export makes
    the ONNX model later."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rng = np.random.default_rng(5)
    x = simulate_reflectivity((96, 96), rng, parcel_size=24.0).reflectivity
    for d in range(1, 6):
        np.save(tmp_path / f"site_{d}.npy", np.sqrt(x * simulate_speckle((96, 96), 1.0, 0.0, rng)))
    env = {**os.environ, "PYTHONPATH": root}

    def make_model(*args):
        return subprocess.run([sys.executable, "tools/make_model.py", *args], cwd=root, capture_output=True, text=True,
                              timeout=600, env=env)

    cache = tmp_path / "pairs.npz"
    made = make_model("--write-real-cache", str(cache), "--real-dir", str(tmp_path), "--real-sites", "site")
    assert made.returncode == 0, made.stderr
    # Block GDAL as the GPU machine lacks it: the training must not import it.
    blocker = tmp_path / "nogdal"
    (blocker / "osgeo").mkdir(parents=True)
    (blocker / "osgeo" / "__init__.py").write_text("raise ImportError('no GDAL on this machine')\n")
    env["PYTHONPATH"] = f"{blocker}{os.pathsep}{root}"
    state, folder = tmp_path / "state.pt", tmp_path / "candidate"
    trained = make_model("--real-cache", str(cache), "--real-fraction", "0.5", "--data-workers", "1", "--minutes", "0.15",
                         "--steps", "100000", "--batch", "4", "--patch", "32", "--scenes", "2", "--fp32", "--threads", "1",
                         "--no-onnx", "--state", str(state), "--candidate-dir", str(folder), "--device", "cpu")
    assert trained.returncode == 0, trained.stderr
    assert "out of time at step" in trained.stdout and state.exists()
    assert (folder / "despecknet.pt").exists() and not (folder / "despecknet.onnx").exists()
    saved = torch.load(state, weights_only=False)
    assert 0 < saved["step"] < 100000 and saved["log"]["runs"][-1]["real_sites"] == "site"
    env["PYTHONPATH"] = root
    exported = make_model("--export", str(folder))
    assert exported.returncode == 0, exported.stderr
    z = np.zeros((48, 48), np.float32)
    assert Despeckler(str(folder / "despecknet.onnx"), device="cpu").predict(z)[0].shape == z.shape


def test_an_epoch_has_the_steps_fit_plans_and_only_its_last_batch_is_short(tmp_path):
    """Each buffer of 16 blocks ended with a short batch that took a full optimiser step (a 4-patch batch among
    128s), and an epoch took more steps than fit planned (10 for 9: progress reached 100 % early)."""
    import math

    from despecknet_qgis.core.patches import RasterPatches

    source = RasterPatches([pair(tmp_path, size=640)], patch=24, stride=20, seed=1)
    sizes = [len(b[0]) for b in source.batches(50, np.random.default_rng(0))]
    assert len(sizes) == math.ceil(source.training_patches / 50) and sum(sizes) == source.training_patches
    assert all(n == 50 for n in sizes[:-1]) and 0 < sizes[-1] <= 50
