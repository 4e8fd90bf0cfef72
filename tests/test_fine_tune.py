"""Phase 2 mechanics: presets, reproducibility, nodata, bad input, and the tuned model in despeckle."""
import numpy as np
import pytest
import torch
from qgis.core import QgsProcessingException, QgsProcessingFeedback

from conftest import export_tiny_model, read_tif, speckled_scene, write_tif
from despecknet_qgis.core.adaptation import FIT_RANGE, MOR_MAX, Candidate, RatioScore
from despecknet_qgis.core.errors import Cancelled, DespeckNetError
from despecknet_qgis.core.inference import Despeckler
from despecknet_qgis.core.losses import PHASE2_MULTILOOK, PHASE2_SINGLELOOK, LossWeights
from despecknet_qgis.core.model import DeSpeckNet
from despecknet_qgis.core.phases import fine_tune
from despecknet_qgis.core.progress import Progress
from despecknet_qgis.core.training import CHECKPOINT_FORMAT, load_checkpoint

FAST = dict(patch=24, stride=24, batch_size=16, evaluations_per_epoch=4)


def base(tiny_model):
    return tiny_model[0].replace(".onnx", ".pt")


def test_presets_are_the_papers():
    from despecknet_qgis.algorithms.finetune import FineTuneAlgorithm

    assert (PHASE2_MULTILOOK.mu, PHASE2_MULTILOOK.xi, PHASE2_MULTILOOK.lambda_tv) == (0.01, 1.0, 0.0)
    assert (PHASE2_SINGLELOOK.mu, PHASE2_SINGLELOOK.xi, PHASE2_SINGLELOOK.lambda_tv) == (0.01, 1.0, 1e-4)
    assert FineTuneAlgorithm.preset_weights(0, 9, 9, 9) == PHASE2_MULTILOOK
    assert FineTuneAlgorithm.preset_weights(1, 9, 9, 9) == PHASE2_SINGLELOOK
    assert FineTuneAlgorithm.preset_weights(2, 0.5, 2.0, 1e-3) == LossWeights(0.5, 2.0, 1e-3)
    assert [FineTuneAlgorithm.looks_arguments(i, 0.0) for i in range(3)] == [
        {"looks": None, "estimate_looks": True, "default_looks": d} for d in (4.4, 1.0, None)]
    assert FineTuneAlgorithm.looks_arguments(1, 3.0) == {"looks": 3.0, "estimate_looks": False, "default_looks": 1.0}


def test_tuned_model_is_reproducible_and_loads_in_despeckle(tiny_model, tmp_path):
    y, _ = speckled_scene(128, seed=40)
    y[:, :10] = 0.0
    src = write_tif(tmp_path / "y.tif", y, nodata=0.0)
    a = fine_tune(src, str(tmp_path / "a.onnx"), base_model=base(tiny_model), seed=3, **FAST)
    b = fine_tune(src, str(tmp_path / "b.onnx"), base_model=base(tiny_model), seed=3, **FAST)
    sa, sb = load_checkpoint(a.checkpoint_path)[0].state_dict(), load_checkpoint(b.checkpoint_path)[0].state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    record = load_checkpoint(a.checkpoint_path)[1]
    assert record.phases[-1]["phase"] == 2 and record.phases[-1]["weights"]["xi"] == 1.0
    d = Despeckler(a.onnx_path, "cpu")
    assert d.info.version == "phase2"
    from despecknet_qgis.core.tiled_predict import despeckle_raster

    despeckle_raster(src, str(tmp_path / "x.tif"), d)
    x = read_tif(tmp_path / "x.tif")[0][0]
    assert (x[:, :10] == 0).all() and (x[:, 10:] > 0).all()


def test_training_changes_the_weights_and_tracks_validation(tiny_model, tmp_path):
    y, _ = speckled_scene(160, looks=1.0, correlation=0.7, seed=41)
    rep = fine_tune(write_tif(tmp_path / "y.tif", y), str(tmp_path / "t.onnx"), base_model=base(tiny_model),
                    patience=None, **FAST)
    tuned = load_checkpoint(rep.checkpoint_path)[0].state_dict()
    start = load_checkpoint(base(tiny_model))[0].state_dict()
    assert any(not torch.equal(tuned[k], start[k]) for k in tuned)
    assert len([h for h in rep.history if "validation" in h]) >= 2 and rep.steps >= 2


def test_nodata_is_excluded_from_tuning(tiny_model, tmp_path):
    y, _ = speckled_scene(128, seed=42)
    y[:, 64:] = -9999.0
    rep = fine_tune(write_tif(tmp_path / "y.tif", y, nodata=-9999.0), str(tmp_path / "t.onnx"),
                    base_model=base(tiny_model), validation_fraction=0.0, **FAST)
    # Only patches of the valid left half: 5 rows x 2 columns of 24-pixel patches (and the boundary column half-valid).
    assert rep.patches_seen <= 5 * 3


def test_bad_inputs(tiny_model, tmp_path):
    y, _ = speckled_scene(96, seed=43)
    empty = write_tif(tmp_path / "empty.tif", np.full((96, 96), -1.0), nodata=-1.0)
    with pytest.raises(DespeckNetError, match="no valid pixel"):
        fine_tune(empty, str(tmp_path / "t.onnx"), base_model=base(tiny_model), **FAST)
    small = write_tif(tmp_path / "small.tif", y[:20, :20])
    with pytest.raises(DespeckNetError, match="smaller than one"):
        fine_tune(small, str(tmp_path / "t.onnx"), base_model=base(tiny_model), **FAST)
    other = tmp_path / "other.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "state_dict": DeSpeckNet(width=32).state_dict(), "training": {}}, other)
    with pytest.raises(DespeckNetError, match="does not fit the deSpeckNet architecture"):
        fine_tune(write_tif(tmp_path / "y.tif", y), str(tmp_path / "t.onnx"), base_model=str(other), **FAST)
    with pytest.raises(DespeckNetError, match="must end with .onnx"):
        fine_tune(write_tif(tmp_path / "y.tif", y), str(tmp_path / "t.tif"), base_model=base(tiny_model), **FAST)
    assert not (tmp_path / "t.onnx").exists()


def test_cancel(tiny_model, tmp_path):
    y, _ = speckled_scene(128, seed=44)
    with pytest.raises(Cancelled):
        fine_tune(write_tif(tmp_path / "y.tif", y), str(tmp_path / "t.onnx"), base_model=base(tiny_model),
                  progress=Progress(is_cancelled=lambda: True), **FAST)
    assert not (tmp_path / "t.onnx").exists()


def test_finetune_algorithm_does_the_whole_job(provider, tiny_model, tmp_path):
    import processing

    y, _ = speckled_scene(96, seed=45)
    src = write_tif(tmp_path / "y.tif", y)
    res = processing.run("despecknet:finetune", {
        "INPUT": src, "MODEL": base(tiny_model), "PRESET": 1, "PATCH_SIZE": 24, "STRIDE": 24, "BATCH_SIZE": 8,
        "OUTPUT_MODEL": str(tmp_path / "tuned.onnx"), "OUTPUT": str(tmp_path / "x.tif")}, feedback=QgsProcessingFeedback())
    assert res["PROVIDER"] == "CPUExecutionProvider"
    assert read_tif(res["OUTPUT"])[0][0].shape == (96, 96)
    phase = load_checkpoint(res["OUTPUT_CHECKPOINT"])[1].phases[-1]
    assert phase["weights"]["lambda_tv"] == 1e-4 and 0.7 < phase["looks"] < 1.3  # estimated on the 1-look band
    with pytest.raises(QgsProcessingException, match="OUTPUT .*y.tif is the input INPUT"):
        processing.run("despecknet:finetune", {"INPUT": src, "MODEL": base(tiny_model), "OUTPUT_MODEL": str(tmp_path / "t2.onnx"),
                                               "OUTPUT": src}, feedback=QgsProcessingFeedback())


def test_looks_remove_the_log_bias_from_the_target(tmp_path):
    from despecknet_qgis.core.domain import LOG_SCALE, log_speckle_mean
    from despecknet_qgis.core.patches import ImagePair, RasterPatches

    y, _ = speckled_scene(96, seed=46)
    src = write_tif(tmp_path / "y.tif", y)
    shift = log_speckle_mean(1.0) / LOG_SCALE
    assert log_speckle_mean(1.0) == pytest.approx(-0.5772, abs=1e-4)  # -Euler's gamma: -2.5 dB
    plain = RasterPatches([ImagePair(src)], 24, 24)
    debiased = RasterPatches([ImagePair(src, target_shift=shift)], 24, 24)
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    (ya, ta, _), (yb, tb, _) = next(plain.batches(8, rng_a)), next(debiased.batches(8, rng_b))
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_allclose(ta, ya)
    np.testing.assert_allclose(tb, yb - shift, atol=1e-6)


def five_look_model_tuned_on_1_look_speckle(tmp_path, seed, correlation):
    """Trained on 5-look uncorrelated speckle (tests/data/source_5looks_uncorrelated.pt: tools/adaptation_check.py
    --steps 400 --seed 5), tuned with the algorithm's defaults and the single-look preset on a 384x384 1-look
    scene: (gain in PSNR, noisy image, untuned and tuned outputs, the checkpoint's phase 2 record)."""
    import os

    from despecknet_qgis.core.export import export_onnx
    from despecknet_qgis.core.metrics import psnr_db
    from despecknet_qgis.core.simulate import simulate_reflectivity, simulate_speckle
    from despecknet_qgis.core.tiled_predict import despeckle_raster

    source = os.path.join(os.path.dirname(__file__), "data", "source_5looks_uncorrelated.pt")
    model, record = load_checkpoint(source)
    export_onnx(model, str(tmp_path / "untuned.onnx"), record, "source")
    rng = np.random.default_rng(seed)
    scene = simulate_reflectivity((384, 384), rng, parcel_size=48.0)
    y = scene.reflectivity * simulate_speckle((384, 384), 1.0, correlation, rng)
    src = write_tif(tmp_path / "y.tif", y)
    despeckle_raster(src, str(tmp_path / "untuned.tif"), Despeckler(str(tmp_path / "untuned.onnx"), "cpu"))
    rep = fine_tune(src, str(tmp_path / "tuned.onnx"), base_model=source, weights=PHASE2_SINGLELOOK, looks=1.0, seed=0)
    despeckle_raster(src, str(tmp_path / "tuned.tif"), Despeckler(rep.onnx_path, "cpu"))
    untuned, tuned = read_tif(tmp_path / "untuned.tif")[0][0], read_tif(tmp_path / "tuned.tif")[0][0]
    gain = psnr_db(tuned, scene.reflectivity) - psnr_db(untuned, scene.reflectivity)
    return gain, y, untuned, tuned, load_checkpoint(rep.checkpoint_path)[1].phases[-1]


def test_tuning_adapts_a_5_look_model_to_1_look_correlated_speckle(tmp_path):
    """The issue's evidence: the base keeps speckle (ratio spread 0.52), tuning gains 3.3 dB."""
    gain, y, untuned, tuned, _ = five_look_model_tuned_on_1_look_speckle(tmp_path, 105, 0.8)
    assert gain > 1.0, gain
    assert abs(np.mean(y / tuned) - 1.0) < 0.05
    assert abs(np.mean(y / untuned) - 1.0) > 0.1  # the untuned model was biased


@pytest.mark.parametrize("seed, correlation", [(106, 0.3), (107, 0.0)])
def test_a_base_too_dark_for_the_image_is_tuned_although_its_ratio_spread_looks_right(tmp_path, seed, correlation):
    """On 1-look speckle as correlated as real Sentinel-1 SLC (0.3) or white, the 5-look model's ratio image
    spreads like speckle (0.72, 0.73: inside FIT_RANGE) but its mean is 1.28 to 1.30: the output is 12 % too
    dark. Judged on the spread alone it was kept untuned; tuning gains 1.2 and 1.5 dB."""
    gain, y, untuned, tuned, phase = five_look_model_tuned_on_1_look_speckle(tmp_path, seed, correlation)
    assert FIT_RANGE[0] <= phase["ratio"]["base"]["spread"] <= FIT_RANGE[1]
    assert np.mean(y / untuned) > MOR_MAX
    assert phase["kept"] == "tuned", phase["why"]
    assert gain > 1.0, gain
    assert abs(np.mean(y / tuned) - 1.0) < 0.05


def test_a_ratio_image_that_spreads_like_speckle_fits_only_when_its_mean_is_not_too_high():
    def candidate(spread, mean_ratio):
        return Candidate({}, 1.0, RatioScore(1.0, spread, 0.1, 1000, mean_ratio))

    assert candidate(0.9, 0.86).fits  # the bundled model on real single-look dates
    assert candidate(0.9, MOR_MAX).fits
    assert not candidate(0.9, MOR_MAX * 1.01).fits
    assert not candidate(FIT_RANGE[0] * 0.99, 1.0).fits
    assert not candidate(None, 1.0).fits  # looks unknown


def test_batchnorm_statistics_stay_frozen_and_the_gain_is_recorded(tiny_model, tmp_path):
    """(MoR after calibration is checked with a trained model in the adaptation test.)"""
    y, _ = speckled_scene(128, seed=47)
    src = write_tif(tmp_path / "y.tif", y)
    rep = fine_tune(src, str(tmp_path / "t.onnx"), base_model=base(tiny_model), **FAST)
    start = load_checkpoint(base(tiny_model))[0].state_dict()
    tuned = load_checkpoint(rep.checkpoint_path)[0].state_dict()
    stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert len(stats) == 60 and all(torch.equal(start[k], tuned[k]) for k in stats)
    assert "radiometric_gain" in load_checkpoint(rep.checkpoint_path)[1].phases[-1]


def bundled_before_and_after_phase2(tmp_path, seed, looks, correlation, weights, preset_looks):
    """A realistic 256x256 scene observed with `looks` and `correlation`, despeckled by the bundled model
    before and after fine_tune with `weights` and `preset_looks`: (base, tuned, reference, report)."""
    from despecknet_qgis.core.simulate import observe, simulate_reflectivity
    from despecknet_qgis.core.tiled_predict import despeckle_raster

    rng = np.random.default_rng(seed)
    scene = simulate_reflectivity((256, 256), rng, parcel_size=48.0, realistic=True)
    y, reference = observe(scene.reflectivity, scene.targets, looks, correlation, rng)
    src = write_tif(tmp_path / "y.tif", y.astype(np.float32))
    despeckle_raster(src, str(tmp_path / "base.tif"), Despeckler(None, "cpu"))
    rep = fine_tune(src, str(tmp_path / "tuned.onnx"), weights=weights, looks=preset_looks)
    despeckle_raster(src, str(tmp_path / "tuned.tif"), Despeckler(rep.onnx_path, "cpu"))
    return read_tif(tmp_path / "base.tif")[0][0], read_tif(tmp_path / "tuned.tif")[0][0], reference, rep


def test_tuning_never_lowers_quality_where_the_base_model_already_fits(tmp_path):
    """Issue 8: with the defaults, phase 2 must not cost more than 0.1 dB where the model fits.

    The bundled model fits single-look correlated speckle; tuning it there used to cost
    about 1 dB. The ratio-image rule (core/adaptation.py) sees that it fits before tuning:
    the model stays exactly as it was, without the radiometric gain.
    """
    from despecknet_qgis.core.metrics import psnr_db

    base, tuned, reference, rep = bundled_before_and_after_phase2(tmp_path, 106, 1.0, 0.8, PHASE2_SINGLELOOK, 1.0)
    assert psnr_db(tuned, reference) > psnr_db(base, reference) - 0.1
    phase = load_checkpoint(rep.checkpoint_path)[1].phases[-1]
    assert phase["kept"] == "base" and rep.steps == 0  # not tuned at all
    assert phase["radiometric_gain"] == 1.0 and np.allclose(base, tuned, rtol=1e-4)
    # The fit range itself: model 0.5.0 keeps a little more of this correlated speckle (spread 0.77; 0.4.0 was
    # above 0.8), which is why the range reaches below 1 (README, Phase 2).
    assert FIT_RANGE[0] <= phase["ratio"]["base"]["spread"] <= FIT_RANGE[1]


def test_base_kept_after_rejected_tuning_keeps_its_quality_without_a_small_gain(tmp_path):
    """Issue 8: 2-look data tuned with the multi-look preset (4.4 looks): the base does not fit the assumed
    looks, tuning is tried and rejected, and the base's mean ratio (about 0.96) is within GAIN_TOLERANCE.
    The gain used to be applied anyway, and cost 0.11 dB on 2-look amplitude data in make bench-quality."""
    from despecknet_qgis.core.losses import PHASE2_MULTILOOK
    from despecknet_qgis.core.metrics import psnr_db

    base, tuned, reference, rep = bundled_before_and_after_phase2(tmp_path, 107, 2.0, 0.0, PHASE2_MULTILOOK, 4.4)
    phase = load_checkpoint(rep.checkpoint_path)[1].phases[-1]
    assert rep.steps > 0 and phase["kept"] == "base" and "tuned" in phase["ratio"]  # tuning was tried
    assert phase["radiometric_gain"] == 1.0 and np.allclose(base, tuned, rtol=1e-4)
    assert psnr_db(tuned, reference) > psnr_db(base, reference) - 0.1


def test_finetune_judges_the_ratio_image_against_the_bands_estimated_looks_not_the_presets(tmp_path):
    """The single-look preset with LOOKS 0 on 4.4-look data judged the ratio image against 1-look speckle:
    the base "did not fit", and tuned weights 5.4 dB worse were kept. The band's own looks are estimated now."""
    from despecknet_qgis.algorithms.finetune import FineTuneAlgorithm
    from despecknet_qgis.core.metrics import psnr_db
    from despecknet_qgis.core.progress import Progress
    from despecknet_qgis.core.simulate import observe, simulate_reflectivity
    from despecknet_qgis.core.tiled_predict import despeckle_raster

    rng = np.random.default_rng(106)
    scene = simulate_reflectivity((192, 192), rng, parcel_size=48.0, realistic=True)
    y, reference = observe(scene.reflectivity, scene.targets, 4.4, 0.7, rng)
    src = write_tif(tmp_path / "y.tif", y.astype(np.float32))
    despeckle_raster(src, str(tmp_path / "base.tif"), Despeckler(None, "cpu"))
    log = []
    rep = fine_tune(src, str(tmp_path / "t.onnx"), weights=PHASE2_SINGLELOOK, stride=12, batch_size=16,
                    progress=Progress(log=log.append), **FineTuneAlgorithm.looks_arguments(1, 0.0))
    phase = load_checkpoint(rep.checkpoint_path)[1].phases[-1]
    assert 3.0 < phase["looks"] < 6.0 and any("estimated on the band's flattest blocks" in m for m in log)
    despeckle_raster(src, str(tmp_path / "out.tif"), Despeckler(rep.onnx_path, "cpu"))
    base, out = read_tif(tmp_path / "base.tif")[0][0], read_tif(tmp_path / "out.tif")[0][0]
    assert psnr_db(out, reference) > psnr_db(base, reference) - 0.1
    # Looks given far from the estimate are used as given, and warned.
    log.clear()
    fine_tune(src, str(tmp_path / "t1.onnx"), weights=PHASE2_SINGLELOOK, stride=48, batch_size=16, looks=1.0,
              progress=Progress(log=log.append))
    assert any("far from the" in m and "estimated" in m for m in log)


def test_base_kept_after_rejected_tuning_is_not_brightened_by_a_gain_below_one(tmp_path):
    """A kept base whose mean ratio is below 1/1.1 (0.906 here: the multi-look preset's 4.4 looks on 1-look data)
    got that gain anyway and lost 0.43 dB; kept speckle lowers the ratio of an X_hat that is not too bright."""
    from despecknet_qgis.core.losses import PHASE2_MULTILOOK
    from despecknet_qgis.core.metrics import psnr_db

    base, tuned, reference, rep = bundled_before_and_after_phase2(tmp_path, 106, 1.0, 0.3, PHASE2_MULTILOOK, 4.4)
    phase = load_checkpoint(rep.checkpoint_path)[1].phases[-1]
    assert phase["kept"] == "base" and phase["radiometric_gain"] == 1.0
    assert psnr_db(tuned, reference) > psnr_db(base, reference) - 0.1


def test_ratio_score_tells_speckle_from_a_filter_that_keeps_it_or_removes_signal():
    """The rule's measure: var(ln R)/trigamma(L) is 1 for pure speckle, below when X_hat keeps speckle."""
    from despecknet_qgis.core.adaptation import ratio_score
    from despecknet_qgis.core.domain import LOG_SCALE
    from despecknet_qgis.core.simulate import simulate_speckle

    rng = np.random.default_rng(3)
    x = np.full((200, 200), 0.1)
    n = simulate_speckle(x.shape, 1.0, 0.0, rng)
    z = np.log(x * n).astype(np.float32) / LOG_SCALE
    valid = np.ones(x.shape, bool)
    perfect = ratio_score([(z, (np.log(x) / LOG_SCALE).astype(np.float32), valid)], 1.0)
    kept_half = ratio_score([(z, (np.log(x * n**0.5) / LOG_SCALE).astype(np.float32), valid)], 1.0)
    assert abs(perfect.spread - 1.0) < 0.05 and abs(perfect.structure) < 0.2
    assert kept_half.spread < 0.3 and kept_half.misfit > perfect.misfit


def test_an_image_whose_held_out_blocks_are_all_border_is_tuned_without_validation_instead_of_crashing(tmp_path):
    """Every held-out block in a GRD-like zero border ended in KeyError: 'total' (a Python traceback in QGIS)."""
    from despecknet_qgis.core.patches import ImagePair, RasterPatches

    y, _ = speckled_scene(192, looks=4, seed=3)
    y = y.astype(np.float32)
    y[:, 96:] = 0.0  # zeros without declared nodata: the border of a GRD
    src = write_tif(tmp_path / "grd.tif", y)
    base = export_tiny_model(tmp_path / "base.onnx")[0][:-5] + ".pt"
    seed = next(s for s in range(40) if RasterPatches([ImagePair(src, 1, zero_is_nodata=True)], 24, 24, 0.1, s).
                validation_blocks == [])
    messages = []
    report = fine_tune(src, str(tmp_path / "ft.onnx"), base_model=base, looks=4.0, patch=24, stride=24, batch_size=16,
                       seed=seed, acceptance=False, progress=Progress(log=messages.append))
    assert report.best_validation is None and (tmp_path / "ft.onnx").exists()
    assert any("training runs without validation" in m for m in messages)


def test_the_radiometric_gain_counts_restored_point_targets_as_despeckle_outputs_them():
    """A weak model left 0.6 % of pixels far above X_hat; they held a third of mean(Y/X_hat), so the gain
    (2.24) brightened the whole output, and despeckle then gave those pixels their measured intensity anyway:
    the output was 1.7 dB brighter than the image."""
    from despecknet_qgis.core.adaptation import output_mean_ratio

    rng = np.random.default_rng(0)
    ratio = rng.exponential(1.0, 200_000)  # 1-look speckle over a right X_hat
    ratio[:1200] = 200.0  # 0.6 %: scatterers the model darkened
    plain = output_mean_ratio(np.log(ratio), None)
    assert plain[0] == plain[1] == pytest.approx(ratio.mean()) and plain[1] > 2.0
    mean_after, gain = output_mean_ratio(np.log(ratio), 1.0)
    assert gain == pytest.approx(1.0, abs=0.01)  # the speckle itself needs no gain
    from scipy.special import gammaincinv

    limit = gammaincinv(1.0, 1 - 1e-5)  # the point-target test at its false-alarm rate, 1 look
    restored = np.where(ratio > gain * limit, 1.0, ratio / gain)  # despeckle's output: targets at R = 1
    assert restored.mean() == pytest.approx(1.0, abs=1e-4) and mean_after == pytest.approx(1.0, abs=0.01)


def test_valid_zeros_do_not_sway_the_ratio_image_rule():
    """Zeros of a band that declares another nodata are valid but hold no speckle: at ln 0 (the clip) they
    took a fitting model's spread from 0.92 to 3.1 with 1 % of them, and phase 2 tuned it."""
    from despecknet_qgis.core.adaptation import ratio_score
    from despecknet_qgis.core.domain import LOG_SCALE, Z_LIMIT
    from despecknet_qgis.core.simulate import simulate_speckle

    rng = np.random.default_rng(4)
    n = simulate_speckle((200, 200), 1.0, 0.0, rng)
    clean = np.zeros((200, 200), np.float32)  # X_hat = X = the band's mean level
    z = (np.log(n) / LOG_SCALE).astype(np.float32)
    valid = np.ones_like(z, bool)
    without = ratio_score([(z, clean, valid)], 1.0)
    z_zeros = z.copy()
    z_zeros.flat[rng.choice(z.size, z.size // 100, replace=False)] = -Z_LIMIT  # 1 % zeros
    with_zeros = ratio_score([(z_zeros, clean, valid)], 1.0)
    assert without.spread == pytest.approx(1.0, abs=0.05)
    assert with_zeros.spread == pytest.approx(without.spread, abs=0.02)
