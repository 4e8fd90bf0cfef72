"""Temporal reference labels on simulated stacks where the changed parcels are known."""
import numpy as np
import pytest
from osgeo import gdal

from conftest import read_tif, speckled_scene, write_tif
from despecknet_qgis.core.errors import DespeckNetError
from despecknet_qgis.core.simulate import db, simulate_reflectivity, simulate_speckle
from despecknet_qgis.core.temporal_label import (
    cv2_quantile,
    estimate_looks,
    omnibus_critical,
    omnibus_pvalue,
    omnibus_statistic,
    temporal_label,
)


def stack(tmp_path, dates=20, size=192, looks=4.4, changed_share=0.15, seed=0, scale=1.0, prefix="d",
          change="random", correlation=0.0):
    """change "random": each changed parcel draws a new +-6 dB offset at every date;
    "gradual": each changed parcel ramps by 2 to 6 dB (up or down) over the dates,
    linearly from first to last date or along a sigmoid (centre 30-70 % of the series,
    1 to 3 dates wide)."""
    rng = np.random.default_rng(seed)
    scene = simulate_reflectivity((size, size), rng, parcel_size=32.0)
    labels = np.unique(scene.parcels)
    changed = np.isin(scene.parcels, rng.choice(labels, int(round(changed_share * len(labels))), replace=False))
    n = labels.max() + 1
    if change == "gradual":
        amplitude = rng.uniform(2.0, 6.0, n) * rng.choice([-1.0, 1.0], n)
        sigmoid = rng.uniform(size=n) < 0.5
        centre, width = rng.uniform(0.3, 0.7, n) * (dates - 1), rng.uniform(1.0, 3.0, n)
    paths = []
    for t in range(dates):
        if change == "gradual":
            share = np.where(sigmoid, 1 / (1 + np.exp(-(t - centre) / width)), t / (dates - 1))
            factor = 10 ** (amplitude * share / 10)
        else:
            factor = 10 ** (rng.uniform(-6, 6, n) / 10)
        x = np.where(changed, scene.reflectivity * factor[scene.parcels], scene.reflectivity)
        y = scale * x * simulate_speckle((size, size), looks, correlation, rng)
        paths.append(write_tif(tmp_path / f"{prefix}{t:02d}.tif", y.astype(np.float32)))
    stack.scene = scene
    return paths, scene.reflectivity * scale, changed


def rates(tmp_path, paths, truth, changed, name="x", **kwargs):
    """Share of changed pixels masked, of stable pixels masked, and the label's mean dB error."""
    report = temporal_label(paths, str(tmp_path / f"{name}_label.tif"), str(tmp_path / f"{name}_mask.tif"), **kwargs)
    label, mask = read_tif(tmp_path / f"{name}_label.tif")[0][0], read_tif(tmp_path / f"{name}_mask.tif")[0][0]
    stable = mask == 1
    kept = stable & ~changed
    error_db = np.abs(db(label[kept]) - db(truth[kept])).mean()
    out = (~stable[changed]).mean() if changed.any() else 0.0, (~stable[~changed]).mean(), error_db
    print(f"{name}: rule {report.rule}, L {report.looks:.2f}, window ENL {report.window_looks or 0:.1f}: "
          f"changed masked {out[0]:.1%}, stable masked {out[1]:.2%}, label error {out[2]:.2f} dB")
    return out, report


def test_twenty_dates_with_changed_parcels(tmp_path):
    """The issue's acceptance case: 20 dates, 15% changed parcels (a new +-6 dB offset each date)."""
    paths, truth, changed = stack(tmp_path)
    (changed_masked, stable_masked, error_db), report = rates(tmp_path, paths, truth, changed, "default")
    label, mask = read_tif(tmp_path / "default_label.tif")[0][0], read_tif(tmp_path / "default_mask.tif")[0][0]
    stable = mask == 1
    assert np.isnan(label[~stable]).all() and np.isfinite(label[stable]).all()
    assert changed_masked > 0.85  # most changed pixels masked
    assert stable_masked < 0.05  # stable pixels kept
    assert error_db < 1.0
    assert 3.5 < report.looks < 5.0  # estimated L (true 4.4)
    assert report.stable_fraction == pytest.approx(stable.mean())
    # The default does at least as well as the per-pixel speckle test on this stack too.
    (old_changed, _, _), _ = rates(tmp_path, paths, truth, changed, "speckle_test", rule="speckle_test")
    assert changed_masked >= old_changed


@pytest.mark.parametrize("correlation", [0.0, 0.7])
def test_default_rule_masks_gradual_change(tmp_path, correlation):
    """Issue 8: parcels that change gradually (2-6 dB ramps) are masked; the per-pixel
    speckle test (the former default) misses most of them. 0.7: spatially correlated
    speckle (4 looks), whose window ENL the rule measures on the stack."""
    paths, truth, changed = stack(tmp_path, change="gradual", correlation=correlation)
    (changed_masked, stable_masked, error_db), report = rates(tmp_path, paths, truth, changed, "omnibus")
    assert report.rule == "omnibus"
    assert changed_masked >= 0.5
    assert stable_masked <= 0.05
    assert error_db < 1.0
    (old_changed, old_stable, _), _ = rates(tmp_path, paths, truth, changed, "speckle_test", rule="speckle_test")
    assert old_changed < 0.3 < changed_masked


@pytest.mark.parametrize("correlation", [0.0, 0.7])
def test_default_rule_false_alarms_follow_alpha(tmp_path, correlation):
    """Without change, the share of masked pixels is about ALPHA (1 %), texture, point
    targets and correlated speckle included: the window ENL is right."""
    paths, truth, changed = stack(tmp_path, dates=12, size=160, changed_share=0.0, seed=8, correlation=correlation)
    (_, stable_masked, _), _ = rates(tmp_path, paths, truth, changed, "null")
    assert stable_masked < 0.025


def test_omnibus_statistic_follows_its_chi_square_approximation():
    """-2 ln Q of Gamma data against the approximations: the rule's exact-mean correction at
    any looks, Box's (Conradsen et al.) from a few looks on."""
    rng = np.random.default_rng(1)
    for dates, looks in ((20, 4.4), (5, 1.0), (10, 30.0), (20, 0.7)):
        x = rng.gamma(looks, 1 / looks, (dates, 200_000))
        m2lnq = omnibus_statistic(np.log(x), looks)
        for alpha in (0.01, 0.05):
            assert 0.75 * alpha < (omnibus_pvalue(m2lnq, dates, looks) < alpha).mean() < 1.1 * alpha
            if looks > 4:
                assert (omnibus_pvalue(m2lnq, dates, looks, "box") < alpha).mean() == pytest.approx(alpha, rel=0.1)
        assert (m2lnq > omnibus_critical(dates, looks, 0.05)).mean() == pytest.approx(0.05, rel=0.12)


def test_omnibus_streams_by_windows(tmp_path, monkeypatch):
    """The test window and the multilook need a halo around each block: blocks change nothing
    (the looks are estimated on the same sample of the image in both runs)."""
    from despecknet_qgis.core import temporal_label as core

    sample = core._sample
    monkeypatch.setattr(core, "_sample", lambda tiles, *args: sample(core.windows(100, 100, 512), *args))
    paths, _, _ = stack(tmp_path, dates=6, size=100, seed=9, change="gradual")
    temporal_label(paths, str(tmp_path / "a.tif"), str(tmp_path / "ma.tif"), multilook=3, test_window=5)
    temporal_label(paths, str(tmp_path / "b.tif"), str(tmp_path / "mb.tif"), multilook=3, test_window=5, window=32)
    np.testing.assert_array_equal(read_tif(tmp_path / "ma.tif")[0][0], read_tif(tmp_path / "mb.tif")[0][0])
    # The multilook's running sums may differ in the last bit with the block's extent.
    np.testing.assert_allclose(read_tif(tmp_path / "a.tif")[0][0], read_tif(tmp_path / "b.tif")[0][0], rtol=1e-6)


@pytest.mark.parametrize("rule", ["speckle_test", "db_std", "omnibus"])
def test_scale_free_rules_give_the_same_mask_at_any_calibration(tmp_path, rule):
    paths, _, _ = stack(tmp_path, dates=8, size=96, seed=1)
    scaled, _, _ = stack(tmp_path, dates=8, size=96, seed=1, scale=1e-3, prefix="s")
    temporal_label(paths, str(tmp_path / "l1.tif"), str(tmp_path / "m1.tif"), rule=rule, looks=4.4)
    temporal_label(scaled, str(tmp_path / "l2.tif"), str(tmp_path / "m2.tif"), rule=rule, looks=4.4)
    np.testing.assert_array_equal(read_tif(tmp_path / "m1.tif")[0][0], read_tif(tmp_path / "m2.tif")[0][0])


def test_paper_rule_depends_on_scaling(tmp_path):
    """Why the other rules exist: the raw threshold keeps all or nothing depending on units."""
    paths, _, _ = stack(tmp_path, dates=8, size=64, seed=2, scale=1e-3)
    big, _, _ = stack(tmp_path, dates=8, size=64, seed=2, scale=1e3, prefix="b")
    small = temporal_label(paths, str(tmp_path / "a.tif"), rule="paper", threshold=0.1)
    large = temporal_label(big, str(tmp_path / "b.tif"), rule="paper", threshold=0.1)
    assert small.stable_fraction > 0.99 and large.stable_fraction < 0.01


def test_multiband_raster_as_dates_equals_separate_files(tmp_path):
    paths, _, _ = stack(tmp_path, dates=6, size=64, seed=3)
    bands = [read_tif(p)[0][0] for p in paths]
    multi = write_tif(tmp_path / "multi.tif", bands)
    temporal_label(paths, str(tmp_path / "a.tif"), looks=4.4)
    temporal_label([multi], str(tmp_path / "b.tif"), looks=4.4)
    np.testing.assert_array_equal(read_tif(tmp_path / "a.tif")[0][0], read_tif(tmp_path / "b.tif")[0][0])


def test_multilook_smooths_the_label(tmp_path):
    paths, truth, changed = stack(tmp_path, dates=5, size=96, seed=4)
    temporal_label(paths, str(tmp_path / "l1.tif"), looks=4.4)
    temporal_label(paths, str(tmp_path / "l5.tif"), looks=4.4, multilook=5)
    l1, l5 = read_tif(tmp_path / "l1.tif")[0][0], read_tif(tmp_path / "l5.tif")[0][0]
    # Where the 5x5 window lies inside one untextured parcel, multilooking only removes noise.
    from scipy import ndimage

    parcels = stack.scene.parcels
    inside = (ndimage.maximum_filter(parcels, 5) == ndimage.minimum_filter(parcels, 5))
    inside &= ndimage.binary_erosion(stack.scene.homogeneous, np.ones((5, 5)))
    both = np.isfinite(l1) & np.isfinite(l5) & ~changed & inside
    assert both.sum() > 500
    err1 = np.abs(db(l1[both]) - db(truth[both])).mean()
    err5 = np.abs(db(l5[both]) - db(truth[both])).mean()
    assert err5 < 0.8 * err1


def test_speckle_quantile_and_look_estimate():
    # For L looks, E[CV^2] is about 1/L; the 99% quantile lies above it.
    q = cv2_quantile(20, 4.0, 0.01)
    assert 0.25 < q < 0.7
    rng = np.random.default_rng(0)
    x = rng.gamma(3.0, 1 / 3.0, (50000, 10))
    assert estimate_looks(x.var(axis=1, ddof=1) / x.mean(axis=1) ** 2, 10) == pytest.approx(3.0, rel=0.1)


def test_nodata_pixels_are_nodata_in_label_and_mask(tmp_path):
    paths, _, _ = stack(tmp_path, dates=4, size=64, seed=5)
    arr = read_tif(paths[1])[0][0]
    arr[:10, :10] = -1.0
    paths[1] = write_tif(tmp_path / "hole.tif", arr, nodata=-1.0)
    temporal_label(paths, str(tmp_path / "l.tif"), str(tmp_path / "m.tif"), looks=4.4)
    label, mask = read_tif(tmp_path / "l.tif")[0][0], read_tif(tmp_path / "m.tif")[0][0]
    assert np.isnan(label[:10, :10]).all() and (mask[:10, :10] == 255).all()


def test_mismatched_stacks_name_the_offending_layer(tmp_path):
    paths, _, _ = stack(tmp_path, dates=3, size=64, seed=6)
    small = write_tif(tmp_path / "small.tif", np.ones((60, 64), np.float32))
    with pytest.raises(DespeckNetError, match="small.tif is 64x60"):
        temporal_label(paths + [small], str(tmp_path / "l.tif"))
    shifted = write_tif(tmp_path / "shifted.tif", np.ones((64, 64), np.float32), origin=(500010.0, 4000000.0))
    with pytest.raises(DespeckNetError, match="shifted.tif has another geotransform"):
        temporal_label(paths + [shifted], str(tmp_path / "l.tif"))
    other_crs = write_tif(tmp_path / "crs.tif", np.ones((64, 64), np.float32), epsg=32632)
    with pytest.raises(DespeckNetError, match="crs.tif has another CRS"):
        temporal_label(paths + [other_crs], str(tmp_path / "l.tif"))
    assert not (tmp_path / "l.tif").exists()


def test_looks_the_stability_tests_cannot_use_are_refused_with_what_to_give(tmp_path):
    # 1e-9 looks escaped as a raw "f(a) and f(b) must have different signs"; 1e-3 gave a NaN threshold that
    # called nothing stable, reported as success.
    from despecknet_qgis.core.errors import InputError
    from despecknet_qgis.core.temporal_label import temporal_label

    dates = [write_tif(tmp_path / f"d{k}.tif", speckled_scene(48, seed=40 + k)[0]) for k in range(3)]
    for looks, rule in ((1e-9, "omnibus"), (1e-3, "speckle_test"), (1e12, "omnibus")):
        with pytest.raises(InputError, match="`looks` must be from"):
            temporal_label(dates, str(tmp_path / "l.tif"), str(tmp_path / "m.tif"), rule=rule, looks=looks)
    assert temporal_label(dates, str(tmp_path / "l.tif"), str(tmp_path / "m.tif"), looks=1.0).valid_pixels > 0


@pytest.mark.parametrize("rule", ["omnibus", "speckle_test"])
def test_a_cancel_stops_the_looks_sampling_pass_before_it_reads_every_sampled_window(tmp_path, monkeypatch, rule):
    """The pass that estimates the looks read about 16 windows of every date before its first check."""
    from despecknet_qgis.core import temporal_label as core
    from despecknet_qgis.core.errors import Cancelled
    from despecknet_qgis.core.progress import Progress

    paths, _, _ = stack(tmp_path, dates=4, size=128, seed=3)
    reads, checks = [], []
    read_stack = core._read_stack
    monkeypatch.setattr(core, "_read_stack", lambda *a: reads.append(1) or read_stack(*a))
    cancel_after_first = Progress(is_cancelled=lambda: checks.append(1) or len(checks) > 1)
    with pytest.raises(Cancelled):
        temporal_label(paths, str(tmp_path / "l.tif"), str(tmp_path / "m.tif"), rule=rule, window=16,
                       progress=cancel_after_first)
    assert len(reads) <= 1
    assert not (tmp_path / "l.tif").exists() and not (tmp_path / "m.tif").exists()


def test_messages_name_the_cores_own_arguments(tmp_path):
    """They named Processing parameters (LOOKS, MULTILOOK, INPUT_DOMAIN), which a core caller does not have,
    and which the algorithm layer renames anyway."""
    from despecknet_qgis.core.errors import InputError, arguments_in

    paths, _, _ = stack(tmp_path, dates=3, size=64, seed=4)
    for kwargs, argument in ((dict(multilook=2), "multilook"), (dict(test_window=4), "test_window"),
                             (dict(rule="speckle_test", alpha=1.5), "alpha"), (dict(rule="x"), "rule")):
        with pytest.raises(InputError) as err:
            temporal_label(paths, str(tmp_path / "l.tif"), **kwargs)
        assert arguments_in(str(err.value)) == [argument]
    with pytest.raises(InputError, match="set `domain` to decibel"):
        temporal_label([write_tif(tmp_path / f"n{i}.tif", np.full((32, 32), -12.0, np.float32)) for i in range(2)],
                       str(tmp_path / "n.tif"))


def _logged(messages):
    from despecknet_qgis.core.progress import Progress

    return Progress(log=messages.append)


@pytest.mark.parametrize("rule", ["omnibus", "speckle_test", "db_std"])
def test_a_date_off_the_others_level_over_the_whole_image_is_reported(tmp_path, rule):
    """A date 3 dB off (another calibration) lowered the estimated looks and let every pixel pass, silently."""
    paths, _, _ = stack(tmp_path, dates=6, size=128, changed_share=0.0, seed=11)
    ds = gdal.Open(paths[4], gdal.GA_Update)
    band = ds.GetRasterBand(1)
    band.WriteArray(band.ReadAsArray() * 2.0)
    band = ds = None
    messages = []
    temporal_label(paths, str(tmp_path / "l.tif"), str(tmp_path / "m.tif"), rule=rule, progress=_logged(messages))
    warned = [m for m in messages if m.startswith("Warning") and paths[4] in m]
    assert len(warned) == 1 and "+3.0 dB above" in warned[0]
    assert not any(p in m for m in messages if m.startswith("Warning") for p in paths[:4] + paths[5:])


def test_dates_that_hardly_vary_are_refused_and_implausible_looks_are_warned(tmp_path):
    """Copies of one date gave L = 1000 (the top of the search) and called every pixel stable."""
    rng = np.random.default_rng(12)
    y = 5.0 * rng.gamma(1.0, 1.0, (96, 96))
    copies = [write_tif(tmp_path / f"c{t}.tif", (y * (1 + 1e-4 * rng.standard_normal(y.shape))).astype(np.float32))
              for t in range(4)]
    with pytest.raises(DespeckNetError, match="hardly vary over time.*copies.*Give `looks`"):
        temporal_label(copies, str(tmp_path / "l.tif"), str(tmp_path / "m.tif"))
    assert not (tmp_path / "l.tif").exists()
    # given, the looks are the user's to decide
    temporal_label(copies, str(tmp_path / "l.tif"), str(tmp_path / "m.tif"), looks=4.4, test_window=1)
    # 40-look speckle: more than a SAR product gives a pixel
    messages = []
    many = [write_tif(tmp_path / f"m{t}.tif", (y * rng.gamma(40, 1 / 40, y.shape)).astype(np.float32)) for t in range(4)]
    temporal_label(many, str(tmp_path / "label2.tif"), str(tmp_path / "mask2.tif"), progress=_logged(messages))
    assert any(m.startswith("Warning: estimated looks") for m in messages)


@pytest.mark.parametrize("rule", ["speckle_test", "db_std", "paper", "omnibus"])
def test_a_zero_hole_in_one_date_is_never_averaged_into_a_stable_label(tmp_path, rule):
    """With nodata declared as -9999, zeros in one date are values: the speckle test kept 85 % of such a hole
    as stable, with a label 20 % too dark."""
    paths, _, _ = stack(tmp_path, dates=5, size=96, changed_share=0.0, seed=13)
    for i, p in enumerate(paths):
        ds = gdal.Open(p, gdal.GA_Update)
        band = ds.GetRasterBand(1)
        a = band.ReadAsArray()
        if i == 2:
            a[30:50, 30:50] = 0.0
        band.WriteArray(a)
        band.SetNoDataValue(-9999.0)
        band = ds = None
    temporal_label(paths, str(tmp_path / "l.tif"), str(tmp_path / "m.tif"), rule=rule,
                   threshold=None if rule in ("omnibus", "speckle_test") else 1e9)
    mask = read_tif(tmp_path / "m.tif")[0][0]
    assert (mask[30:50, 30:50] != 1).all()
    assert (mask[60:, 60:] == 1).mean() > 0.5


def test_two_dates_give_the_omnibus_test_all_of_alpha(tmp_path):
    """With two dates the trend test is the omnibus test again; splitting alpha between them masked half of it."""
    paths, truth, changed = stack(tmp_path, dates=2, size=256, changed_share=0.0, seed=14)
    (_, stable_masked, _), report = rates(tmp_path, paths, truth, changed, "two", looks=4.4)
    assert 0.007 < stable_masked < 0.016


def test_the_label_names_every_date_and_the_looks_its_tests_used(tmp_path):
    """Its provenance named the first date only (of 5) and not the looks or window of the test."""
    from osgeo import gdal

    from despecknet_qgis.core.simulate import simulate_speckle

    rng = np.random.default_rng(9)
    paths = [write_tif(tmp_path / f"d{k}.tif", (0.1 * simulate_speckle((48, 48), 1.0, 0.0, rng)).astype(np.float32))
             for k in range(4)]
    temporal_label(paths, str(tmp_path / "l.tif"), str(tmp_path / "m.tif"), looks=1.0)
    meta = gdal.Open(str(tmp_path / "l.tif")).GetMetadata()
    assert meta["DESPECKNET_DATE_SOURCES"] == "d0.tif:1, d1.tif:1, d2.tif:1, d3.tif:1"
    assert meta["DESPECKNET_LOOKS"] == "1.00" and meta["DESPECKNET_TEST_WINDOW"] == "3"


def _scene_replaced(tmp_path, dates, split, size=128, seed=1):
    """`dates` single-look dates of one scene, then from date `split` on of another of the same mean level."""
    rng = np.random.default_rng(seed)
    a, b = (simulate_reflectivity((size, size), rng, parcel_size=32.0).reflectivity for _ in range(2))
    b *= a.mean() / b.mean()
    return [write_tif(tmp_path / f"s{t:02d}.tif", ((a if t < split else b) *
                                                   simulate_speckle((size, size), 1.0, 0.0, rng)).astype(np.float32))
            for t in range(dates)], np.abs(db(a) - db(b))


def test_few_single_look_dates_warn_that_changes_pass_as_stable_and_a_low_look_estimate_says_give_looks(tmp_path):
    """Five single-look dates of a scene replaced after the third: 53 % of the pixels changing by more than 6 dB
    were labelled stable, silently (the look estimate, 0.72, took the change for speckle)."""
    paths, change = _scene_replaced(tmp_path, 5, 3)
    messages = []
    report = temporal_label(paths, str(tmp_path / "l.tif"), str(tmp_path / "m.tif"), progress=_logged(messages))
    warnings = [m for m in messages if m.startswith("Warning")]
    assert report.looks < 0.9
    assert any("below the one look of any SAR intensity" in m and "give `looks`" in m for m in warnings), messages
    low_power = [m for m in warnings if "will enter the label as stable" in m]
    assert len(low_power) == 1 and "a 6 dB change on the last 2 of the 5 dates is caught in" in low_power[0]
    # the warning is true of this stack: most pixels changing by more than 3 dB are labelled stable (0.58)
    passed = {t: (read_tif(tmp_path / "m.tif")[0][0][change > t] == 1).mean() for t in (3, 6)}
    assert passed[3] > 0.5
    # with the looks given, more changes are caught (0.45, 0.09 of 0.58, 0.24 pass), and the looks warning is gone
    messages.clear()
    temporal_label(paths, str(tmp_path / "l1.tif"), str(tmp_path / "m1.tif"), looks=1.0, progress=_logged(messages))
    assert not any("below the one look" in m for m in messages)
    for t, share in passed.items():
        assert (read_tif(tmp_path / "m1.tif")[0][0][change > t] == 1).mean() < share - 0.1


def test_a_long_multilook_stack_reports_its_detection_rate_without_a_warning(tmp_path):
    paths, _, _ = stack(tmp_path, dates=20, size=96, changed_share=0.0, seed=3)
    messages = []
    temporal_label(paths, str(tmp_path / "l.tif"), str(tmp_path / "m.tif"), progress=_logged(messages))
    assert not any(m.startswith("Warning") for m in messages), messages
    assert any(m.startswith("detection: a 6 dB change on the last 10 of the 20 dates is caught in 100 %")
               for m in messages), messages


def test_the_temporal_label_algorithm_logs_the_core_s_advice_in_its_parameter_names(provider, tmp_path):
    """The core's log lines said "give `looks`", "a larger `test_window`": the toolbox user sets LOOKS and TEST_WINDOW."""
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    paths, _ = _scene_replaced(tmp_path, 5, 3)

    class Collect(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.lines = []

        def pushInfo(self, info):
            self.lines.append(info)

    feedback = Collect()
    processing.run("despecknet:temporallabel", {"INPUTS": paths, "OUTPUT": str(tmp_path / "l.tif")},
                   context=QgsProcessingContext(), feedback=feedback)
    text = "\n".join(feedback.lines)
    assert "give LOOKS (1 for single-look dates)" in text and "a larger TEST_WINDOW" in text, text
    assert "`" not in text, text
