"""Every metric against values worked out by hand on small arrays."""
import math

import numpy as np
import pytest

from conftest import read_tif, speckled_scene, write_tif
from despecknet_qgis.core import metrics as mt
from despecknet_qgis.core.errors import DespeckNetError
from despecknet_qgis.core.quality import quality_metrics
from despecknet_qgis.core.region_stats import gamma_looks, region_statistics


def test_enl_and_cv_by_hand():
    v = np.array([1.0, 2.0, 3.0, 4.0])  # mean 2.5, sample variance 5/3
    assert mt.enl(v) == pytest.approx(2.5**2 / (5 / 3))
    assert mt.coefficient_of_variation(v) == pytest.approx(math.sqrt(5 / 3) / 2.5)
    assert mt.enl(np.full(10, 3.0)) == math.inf


@pytest.mark.parametrize("looks", [1.0, 4.0, 10.0])
def test_enl_of_pure_speckle_on_a_constant_is_the_number_of_looks(looks):
    sample = 5.0 * np.random.default_rng(0).gamma(looks, 1 / looks, 200_000)
    assert mt.enl(sample) == pytest.approx(looks, rel=0.03)
    assert mt.coefficient_of_variation(sample) == pytest.approx(1 / math.sqrt(looks), rel=0.02)
    assert gamma_looks(sample) == pytest.approx(looks, rel=0.03)


def test_psnr_dg_epi_cnn_by_hand():
    assert mt.psnr(1.0) == pytest.approx(20 * math.log10(255))
    assert mt.psnr(0.0) == math.inf
    assert mt.despeckling_gain(10.0, 1.0) == pytest.approx(10.0)
    assert mt.despeckling_gain(10.0, 0.0) == math.inf
    assert mt.epi_from_gradients(5.0, 5.0) == 1.0
    assert mt.epi_from_gradients(4.0, 5.0) == pytest.approx(0.8)
    assert mt.epi_from_gradients(6.0, 5.0) == pytest.approx(0.8)
    assert mt.epi_from_gradients(10.0, 5.0) == 0.0
    img = np.ones((3, 3))
    img[1, 1] = 100.0
    assert mt.c_nn(img, 1, 1) == pytest.approx(20.0)
    x = np.random.default_rng(1).uniform(1, 2, (32, 32))
    assert np.allclose(mt.ssim_map(x, x, 1.0), 1.0)


def test_quality_of_the_reference_itself(tmp_path):
    rng = np.random.default_rng(2)
    x = np.exp(rng.normal(0, 1, (64, 64)))
    y = x * rng.gamma(1.0, 1.0, x.shape)
    px, py = write_tif(tmp_path / "x.tif", x), write_tif(tmp_path / "y.tif", y)
    r = quality_metrics(px, py, px, points=[(10, 10)])
    assert r.psnr_8bit == math.inf and r.psnr_db == math.inf and r.dg == math.inf
    assert r.epi == 1.0 and r.ssim_8bit == pytest.approx(1.0) and r.ssim_db == pytest.approx(1.0)
    assert r.c_nn[0][2] == pytest.approx(r.c_nn[0][3])
    # Ratio of pure unit-mean exponential speckle: mean about 1, variance about 1.
    assert r.mor == pytest.approx(np.mean(y / x), rel=1e-6) and r.vor == pytest.approx(np.var(y / x, ddof=1), rel=1e-4)


def test_quality_streaming_equals_whole_image(tmp_path):
    rng = np.random.default_rng(3)
    x = np.exp(rng.normal(0, 1, (100, 90)))
    xh = x * rng.gamma(20.0, 1 / 20.0, x.shape)
    y = x * rng.gamma(1.0, 1.0, x.shape)
    paths = [write_tif(tmp_path / f"{n}.tif", a) for n, a in (("xh", xh), ("y", y), ("x", x))]
    whole = quality_metrics(*paths, window=512)
    tiled = quality_metrics(*paths, window=32)
    for key in ("mor", "vor", "psnr_8bit", "ssim_8bit", "psnr_db", "ssim_db", "dg", "epi"):
        assert getattr(tiled, key) == pytest.approx(getattr(whole, key), rel=1e-6), key
    # By hand: DG from the linear MSEs, 8-bit PSNR from the reference's range.
    assert whole.dg == pytest.approx(10 * np.log10(np.mean((y - x) ** 2) / np.mean((xh - x) ** 2)), rel=1e-6)
    lo, hi = x.min(), x.max()
    e8, x8 = mt.to_8bit(xh, lo, hi), mt.to_8bit(x, lo, hi)
    assert whole.psnr_8bit == pytest.approx(20 * np.log10(255 / np.sqrt(np.mean((e8 - x8) ** 2))), rel=1e-6)
    g = mt.sobel_magnitude
    assert whole.epi == pytest.approx(mt.epi_from_gradients(g(xh).sum(), g(x).sum()), rel=1e-6)


def test_quality_ratio_raster_and_nodata(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.uniform(1, 2, (40, 40))
    y = x * rng.gamma(1.0, 1.0, x.shape)
    y[:5] = -1
    r = quality_metrics(write_tif(tmp_path / "x.tif", x), write_tif(tmp_path / "y.tif", y, nodata=-1.0),
                        ratio_output=str(tmp_path / "ratio.tif"))
    ratio = read_tif(tmp_path / "ratio.tif")[0][0]
    assert np.isnan(ratio[:5]).all()
    np.testing.assert_allclose(ratio[5:], (y / x)[5:], rtol=1e-6)
    assert r.pixels == 35 * 40 and r.psnr_8bit is None


def test_region_statistics_nodata_and_outside_pixels(tmp_path):
    v = np.arange(100, dtype=np.float64).reshape(10, 10) + 1
    v[0, 0] = -9999
    path = write_tif(tmp_path / "v.tif", v, nodata=-9999, origin=(0.0, 100.0), pixel=10.0)
    # Square covering pixel columns 0..2 and rows 0..2, plus a part outside the raster (x < 0).
    square = "POLYGON((-50 100, 30 100, 30 70, -50 70, -50 100))"
    st = region_statistics(path, [square])[0]
    expected = v[:3, :3].ravel()[1:]  # nodata excluded
    assert st.pixels == 8 and st.mean == pytest.approx(expected.mean())
    assert st.enl == pytest.approx(mt.enl(expected)) and st.too_small
    away = region_statistics(path, ["POLYGON((500 500, 600 500, 600 600, 500 500))"])[0]
    assert away.pixels == 0 and math.isnan(away.enl)
    with pytest.raises(DespeckNetError):
        region_statistics(path, ["POLYGON EMPTY"])


def test_glcm_homogeneity_by_hand():
    g = np.array([[0, 1], [1, 0]])
    # (0,1) and (1,0): two pairs each, |diff| 1 -> 1/2; the two diagonals: one pair each, equal -> 1.
    assert mt.glcm_homogeneity(g) == pytest.approx((4 * 0.5 + 2 * 1.0) / 6)
    assert mt.glcm_homogeneity(np.full((5, 5), 3)) == 1.0
    # A pair with an invalid member (-1) is left out. Valid pairs: row 1 (2, 0) -> 1/5; column 0 (0, 2) -> 1/5;
    # main diagonal (0, 0) -> 1; the anti-diagonal pair holds the -1.
    g = np.array([[0, -1], [2, 0]])
    assert mt.glcm_homogeneity(g) == pytest.approx((0.2 + 0.2 + 1.0) / 3)


def test_quantise_by_rank_gives_equal_populations():
    v = np.random.default_rng(4).exponential(1.0, (64, 64))
    valid = np.ones(v.shape, bool)
    valid[:4] = False
    q = mt.quantise_by_rank(v, valid, 8)
    assert (q[~valid] == -1).all()
    counts = np.bincount(q[valid], minlength=8)
    assert counts.min() >= counts.max() - 2 and len(counts) == 8
    # monotone: a larger value never gets a lower level
    order = np.argsort(v[valid])
    assert (np.diff(q[valid][order]) >= 0).all()


def test_ratio_structure_separates_pure_speckle_from_removed_signal():
    from scipy import ndimage

    rng = np.random.default_rng(5)
    shape = (128, 128)
    valid = np.ones(shape, bool)
    white = rng.gamma(1.0, 1.0, shape)
    signal = np.exp(ndimage.gaussian_filter(rng.standard_normal(shape), 3) * 8)  # smooth texture a filter removed
    assert mt.ratio_structure(white, valid) < 0.5
    assert mt.ratio_structure(white * signal, valid) > 5.0
    # gain-free: a radiometric bias of the ratio changes nothing
    assert mt.ratio_structure(3.0 * white * signal, valid) == pytest.approx(mt.ratio_structure(white * signal, valid))
    # an invalid band is ignored, not read as structure
    masked = white.copy()
    masked[:, :20] = 0.0
    valid[:, :20] = False
    assert mt.ratio_structure(masked, valid) < 0.5


def test_ratio_first_order_and_m_index():
    rng = np.random.default_rng(6)
    speckle = [s / s.mean() for s in (rng.gamma(4.0, 0.25, 2000) for _ in range(3))]  # mean exactly 1
    noisy = [5.0 * s for s in speckle]
    assert mt.ratio_first_order(noisy, speckle) == pytest.approx(0.0, abs=1e-12)  # ratio = the speckle itself
    # a 20 % radiometric bias: r_mu = 0.2, r_ENL = 0 -> 0.1
    assert mt.ratio_first_order(noisy, [0.8 * s for s in speckle]) == pytest.approx(0.1)
    # only half the speckle variance in the ratio (the filter left speckle in X_hat): ENL doubles, r_ENL = 1
    half = [1.0 + (s - 1.0) / np.sqrt(2.0) for s in speckle]
    assert mt.ratio_first_order(noisy, half) == pytest.approx(0.5)
    image = rng.gamma(4.0, 0.25, (64, 64))
    valid = np.ones(image.shape, bool)
    assert mt.m_index(noisy, speckle, image, valid) == pytest.approx(mt.ratio_structure(image, valid))


def test_most_homogeneous_windows():
    rng = np.random.default_rng(7)
    img = rng.gamma(1.0, 1.0, (64, 64)) * 10
    img[40:64, 0:24] = 5.0 + rng.normal(0, 0.01, (24, 24))  # flat corner
    valid = np.ones(img.shape, bool)
    valid[:, 56:] = False
    wins = mt.most_homogeneous_windows(img, valid, size=16, count=3)
    assert len(wins) == 3
    assert wins[0][0].start >= 40 and wins[0][1].stop <= 24  # flattest first
    taken = np.zeros(img.shape, int)
    for r, c in wins:
        taken[r, c] += 1
        assert valid[r, c].all()
    assert taken.max() == 1  # no overlap


def test_quality_keeps_the_ratio_figures_when_the_reference_is_constant_or_is_the_noisy_image(tmp_path):
    """Both raised 'math domain error', and the mean and variance of the ratio image were lost with it."""
    import math

    y, scene = speckled_scene(64, seed=3)
    ref = write_tif(tmp_path / "ref.tif", scene.reflectivity)
    noisy = write_tif(tmp_path / "noisy.tif", y)
    est = write_tif(tmp_path / "est.tif", 0.5 * (y + scene.reflectivity))
    same = quality_metrics(est, ref, ref)  # the noisy image is the reference: nothing to despeckle
    assert math.isnan(same.dg) and math.isfinite(same.psnr_db) and same.mor > 0
    flat = quality_metrics(est, noisy, write_tif(tmp_path / "flat.tif", np.full((64, 64), 0.1)))
    assert math.isnan(flat.psnr_db) and math.isnan(flat.psnr_8bit) and math.isnan(flat.ssim_8bit)
    assert flat.mor > 0 and flat.vor > 0 and math.isfinite(flat.dg)


def test_region_statistics_read_in_strips_equal_those_of_the_whole_sample(tmp_path, monkeypatch):
    # The polygon's whole bounding window was read at once: about 29 bytes a pixel, 11 GB for a polygon over
    # a 20000x20000 image. Now strips; the figures must not change.
    from despecknet_qgis.core import region_stats

    rng = np.random.default_rng(5)
    y = (0.1 * rng.gamma(3.0, 1 / 3.0, (300, 260))).astype(np.float32)
    y[40:60, :] = -1.0
    path = write_tif(tmp_path / "y.tif", y, nodata=-1.0, origin=(0.0, 0.0), pixel=10.0)  # rows downwards
    # a triangle and a far square, as one multipolygon: its window spans the image
    wkt = "MULTIPOLYGON(((5 -5,2500 -5,5 -2900,5 -5)),((2300 -2700,2590 -2700,2590 -2990,2300 -2990,2300 -2700)))"
    whole = region_statistics(path, [wkt], keep_values=True)[0]
    monkeypatch.setattr(region_stats, "STRIP_PIXELS", 700)  # 2 rows a strip
    monkeypatch.setattr(region_stats, "KEPT_VALUES", 1000)
    strips = region_statistics(path, [wkt], keep_values=True)[0]
    sample = whole.values
    assert whole.pixels == strips.pixels == sample.size > 20000
    assert strips.mean == pytest.approx(sample.mean(), rel=1e-12)
    assert strips.std == pytest.approx(sample.std(ddof=1), rel=1e-10)
    assert strips.enl == pytest.approx(mt.enl(sample), rel=1e-10)
    assert strips.cv == pytest.approx(mt.coefficient_of_variation(sample), rel=1e-10)
    assert strips.gamma_looks == pytest.approx(gamma_looks(sample), rel=1e-9)
    assert 300 < strips.values.size <= 1000  # the histogram's sample is bounded
    assert set(np.round(strips.values, 7)) <= set(np.round(sample, 7))


def test_negative_values_read_as_intensity_or_amplitude_are_refused_by_statistics_and_quality(tmp_path):
    # despeckle, classic filters and temporal labels refused a dB raster read as intensity; speckle statistics
    # and quality gave numbers (mean -15.06, ENL 8.1; MoR -170.8), or plausible ones for amplitude (ENL 1.62).
    y, _ = speckled_scene(64, seed=31)
    db = write_tif(tmp_path / "db.tif", 10 * np.log10(y))
    square = "POLYGON((500000 4000000,500400 4000000,500400 3999600,500000 3999600,500000 4000000))"
    for domain in ("intensity", "amplitude"):
        with pytest.raises(DespeckNetError, match="negative values.*decibel"):
            region_statistics(db, [square], domain=domain)
        with pytest.raises(DespeckNetError, match="negative values.*decibel"):
            quality_metrics(db, write_tif(tmp_path / "y.tif", y), domain=domain)
    assert region_statistics(db, [square], domain="decibel")[0].pixels == 400


def test_edge_and_structure_measures_leave_out_the_fill_beside_nodata(tmp_path):
    """The reference's fill beside a nodata border (a GRD's swath edge) entered both images' Sobel gradients and
    SSIM windows: EPI read 0.88 for an estimate whose edges keep 0.48 of the reference's gradient."""
    x = np.full((256, 256), 0.01)
    x[:, 128:] = 0.04
    x[64:128, 64:192] = 0.1
    y = x * np.random.default_rng(1).gamma(4.9, 1 / 4.9, x.shape)
    xh = np.sqrt(x * 0.04)  # the contrast halved in dB: about half the gradient
    valid = np.ones(x.shape, bool)
    valid[:, :40] = False

    def put(name, a, border):
        return write_tif(tmp_path / name, (np.where(valid, a, -9999.0) if border else a[:, 40:]).astype(np.float32),
                         nodata=-9999.0 if border else None)

    with_border = quality_metrics(put("xh.tif", xh, True), put("y.tif", y, True), put("x.tif", x, True))
    cut = quality_metrics(put("xh0.tif", xh, False), put("y0.tif", y, False), put("x0.tif", x, False))
    direct = mt.epi_from_gradients(mt.sobel_magnitude(xh[:, 40:]).sum(), mt.sobel_magnitude(x[:, 40:]).sum())
    assert with_border.epi == pytest.approx(direct, abs=0.01) and cut.epi == pytest.approx(direct, abs=0.01)
    assert with_border.ssim_db == pytest.approx(cut.ssim_db, abs=0.02)
    assert with_border.psnr_db == pytest.approx(cut.psnr_db, abs=1e-6)


def test_zeros_of_the_noisy_image_are_left_out_of_the_ratio_image(tmp_path):
    """A zero border in Y without declared nodata (as a GRD's) under an estimate positive there entered MoR and
    VoR as ratios of 0: MoR 0.74 for 0.99 (the rest of the plugin reads such zeros as nodata)."""
    rng = np.random.default_rng(3)
    x = np.full((64, 64), 0.2)
    y = x * rng.gamma(1.0, 1.0, x.shape)
    bordered = y.copy()
    bordered[:, :16] = 0.0
    est = write_tif(tmp_path / "xh.tif", x)
    plain = quality_metrics(est, write_tif(tmp_path / "y.tif", y))
    cut = quality_metrics(est, write_tif(tmp_path / "y0.tif", bordered), ratio_output=str(tmp_path / "r.tif"))
    inner = quality_metrics(write_tif(tmp_path / "xh_in.tif", x[:, 16:]), write_tif(tmp_path / "y_in.tif", y[:, 16:]))
    assert cut.mor == pytest.approx(inner.mor, rel=1e-9) and cut.vor == pytest.approx(inner.vor, rel=1e-9)
    assert abs(cut.mor - plain.mor) < 0.05
    ratio = read_tif(tmp_path / "r.tif")[0][0]
    assert np.isnan(ratio[:, :16]).all() and np.isfinite(ratio[:, 16:]).all()
