"""The fast CPU path (core/bf16.py): the ONNX weights read back, its accuracy against fp32, and its faults."""
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from despecknet_qgis.core import bf16
from despecknet_qgis.core.errors import InputError, ModelError, ResourceError
from despecknet_qgis.core.inference import Despeckler
from despecknet_qgis.core.onnx_graph import conv_chain
from despecknet_qgis.core.tiled_predict import despeckle_raster
from conftest import speckled_scene, write_tif

REASON = bf16.unavailable_reason()
needs_amx = pytest.mark.skipif(REASON is not None, reason=f"bf16 path unavailable here: {REASON}")


def _corrupt_copy(path, out):
    """`path` with one weight of the clean branch's third convolution set to NaN."""
    import onnx

    model = onnx.load(path)
    weight = next(t for t in model.graph.initializer if t.name == "clean.2.weight")
    raw = bytearray(weight.raw_data)
    raw[400:404] = np.array([np.nan], "<f4").tobytes()
    weight.raw_data = bytes(raw)
    onnx.save(model, out)
    return out


def test_conv_chain_reads_back_the_exported_folded_weights(tiny_model):
    from despecknet_qgis.core.export import _folded_layers

    path, model = tiny_model
    with open(path, "rb") as fh:
        data = fh.read()
    for branch in ("clean", "noise"):
        layers = conv_chain(data, branch)
        expected = _folded_layers(getattr(model, branch))
        assert len(layers) == len(expected) == 17
        for (w, b, relu), (we, be, relue) in zip(layers, expected):
            assert relu == relue
            np.testing.assert_array_equal(w, we)
            np.testing.assert_array_equal(b, be)
    assert conv_chain(data, "no such output") is None


def test_conv_chain_refuses_graphs_that_are_not_a_plain_convolution_chain(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    x = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, "h", "w"])
    out = helper.make_tensor_value_info("clean", TensorProto.FLOAT, [1, 1, "h", "w"])
    strided = helper.make_node("Conv", ["y", "w"], ["clean"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    mul = helper.make_node("Mul", ["y", "y"], ["clean"])
    for node in (strided, mul):
        model = helper.make_model(helper.make_graph([node], "g", [x], [out], [w]))
        assert conv_chain(model.SerializeToString(), "clean") is None
    same = helper.make_node("Conv", ["y", "w"], ["clean"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    layers = conv_chain(helper.make_model(helper.make_graph([same], "g", [x], [out], [w])).SerializeToString(), "clean")
    assert len(layers) == 1 and not layers[0][2] and layers[0][1].shape == (1,)
    onnx.checker.check_model(helper.make_model(helper.make_graph([same], "g", [x], [out], [w])))


def test_bf16_with_the_cuda_device_is_refused_before_any_work():
    with pytest.raises(InputError, match="bf16 is the CPU's fast path"):
        Despeckler(None, "cuda", precision="bf16")
    with pytest.raises(InputError, match="Unknown `precision` 'int4'"):
        Despeckler(None, "cpu", precision="int4")


def test_explicit_bf16_fails_with_a_reason_rather_than_falling_back(tiny_model, tmp_path):
    corrupt = _corrupt_copy(tiny_model[0], str(tmp_path / "corrupt.onnx"))
    if REASON is not None:
        with pytest.raises(ResourceError, match="bf16 was asked for"):
            Despeckler(tiny_model[0], "cpu", precision="bf16")
        assert Despeckler(tiny_model[0], "cpu").precision == "fp32"
        return
    with pytest.raises(ModelError, match="NaN or infinite weights"):
        Despeckler(corrupt, "cpu", precision="bf16")


@needs_amx
def test_auto_keeps_corrupt_weights_on_the_fp32_path_where_their_nan_shows(tiny_model, tmp_path):
    """oneDNN's fused ReLU maps NaN to 0: on the bf16 path corrupt weights would give a finite, wrong image."""
    corrupt = _corrupt_copy(tiny_model[0], str(tmp_path / "corrupt.onnx"))
    d = Despeckler(corrupt, "cpu", with_noise=False)
    assert d.precision == "fp32" and "NaN" in d.precision_note
    with pytest.raises(ModelError, match="NaN or infinite"):
        d.predict(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
    assert Despeckler(tiny_model[0], "cpu").precision == "bf16"


@needs_amx
@pytest.mark.parametrize("band_rows", [3, 8, 41])
def test_bf16_bands_give_what_one_float32_pass_over_the_window_gives(tiny_model, monkeypatch, band_rows):
    """Streaming by bands (rows carried between bands, zero rows above the first and below the last)
    computes the zero-padded convolution chain; 3 rows per band is fewer than the layers, so the
    deeper layers get their first rows only bands later."""
    import torch

    with open(tiny_model[0], "rb") as fh:
        layers = conv_chain(fh.read(), "clean")
    z = np.random.default_rng(3).standard_normal((157, 130)).astype(np.float32)
    monkeypatch.setattr(bf16, "MIN_BAND_ROWS", 1)
    monkeypatch.setattr(bf16, "BAND_PIXELS", band_rows * z.shape[1])
    streamed = bf16.BF16Network(layers).predict(z)
    with torch.inference_mode():
        h = torch.from_numpy(z)[None, None]
        for w, b, relu in layers:
            h = torch.nn.functional.conv2d(h, torch.from_numpy(w), torch.from_numpy(b), padding=w.shape[2] // 2)
            h = torch.relu(h) if relu else h
    whole = h[0, 0].numpy()
    scale = max(1.0, float(np.abs(whole).max()))
    # bfloat16 activations: small, unbiased differences everywhere, the first and last rows included.
    for rows in (slice(0, 20), slice(20, -20), slice(-20, None)):
        assert np.abs(streamed[rows] - whole[rows]).max() < 3e-2 * scale
        assert abs(float((streamed[rows] - whole[rows]).mean())) < 2e-3 * scale


@needs_amx
def test_bf16_public_operators_give_what_the_fused_path_gives(tiny_model):
    """The path for a PyTorch without oneDNN's fused convolution entry points."""
    with open(tiny_model[0], "rb") as fh:
        layers = conv_chain(fh.read(), "clean")
    z = np.random.default_rng(6).standard_normal((150, 170)).astype(np.float32)
    fused = bf16.BF16Network(layers).predict(z)
    public = bf16.BF16Network(layers, fused=False)
    assert not public._fused
    plain = public.predict(z)
    assert np.abs(plain - fused).mean() < 1e-3 * max(1.0, float(np.abs(fused).mean()))


@needs_amx
def test_bf16_despeckles_the_bundled_model_within_hundredths_of_a_db_of_fp32(tmp_path):
    y, scene = speckled_scene(300, seed=21)
    x = scene.reflectivity
    src = write_tif(tmp_path / "y.tif", y)
    outputs = {}
    for precision in ("fp32", "bf16"):
        out = str(tmp_path / f"{precision}.tif")
        report = despeckle_raster(src, out, Despeckler(None, "cpu", with_noise=False, precision=precision))
        assert report.precision == precision
        ds = gdal.Open(out)
        assert ds.GetMetadataItem("DESPECKNET_PRECISION") == precision
        outputs[precision] = ds.GetRasterBand(1).ReadAsArray().astype(np.float64)
    db = {k: 10 * np.log10(v) for k, v in outputs.items()}
    truth = 10 * np.log10(x)
    psnr = {k: 10 * np.log10(np.ptp(truth) ** 2 / np.mean((v - truth) ** 2)) for k, v in db.items()}
    assert abs(psnr["bf16"] - psnr["fp32"]) < 0.05, psnr
    assert np.abs(db["bf16"] - db["fp32"]).mean() < 0.05
    assert abs(outputs["bf16"].mean() / outputs["fp32"].mean() - 1) < 0.005


@needs_amx
def test_bf16_one_network_used_by_two_threads_at_once_keeps_each_result(tiny_model):
    """The batch path's worker threads share one loaded model: each call needs its own band buffers."""
    from concurrent.futures import ThreadPoolExecutor

    with open(tiny_model[0], "rb") as fh:
        net = bf16.load_branch(fh.read(), "clean")
    rng = np.random.default_rng(8)
    inputs = [rng.standard_normal((300, 260 + 20 * k)).astype(np.float32) for k in range(6)]
    alone = [net.predict(z) for z in inputs]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(net.predict, inputs * 2))
    for k, result in enumerate(together):
        np.testing.assert_array_equal(result, alone[k % len(inputs)])


def _chain_model(path, final_relu=False, layers=3, pads=True, receptive_field="35", identity=False,
                 input_shape=(1, 1, "h", "w"), input_type=None):
    """A small deSpeckNet-like ONNX model (both branches a chain of 3x3 convolutions), deSpeckNet metadata.
    `identity`: an Identity node after each branch's first convolution (a graph conv_chain cannot read)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    if input_type is not None:  # the input in another type, cast to float for the convolutions
        nodes.append(helper.make_node("Cast", ["y"], ["y.f"], to=TensorProto.FLOAT))
    for branch in ("clean", "noise"):
        x = "y" if input_type is None else "y.f"
        for i in range(layers):
            cin, cout = (1 if i == 0 else 8), (1 if i == layers - 1 else 8)
            w = (rng.standard_normal((cout, cin, 3, 3)) * 0.2).astype(np.float32)
            inits += [numpy_helper.from_array(w, f"{branch}{i}.w")]
            last = i == layers - 1
            out = branch if last and not final_relu else f"{branch}{i}.c"
            nodes.append(helper.make_node("Conv", [x, f"{branch}{i}.w"], [out], kernel_shape=[3, 3],
                                          **({"pads": [1, 1, 1, 1]} if pads else {})))
            x = out
            if identity and i == 0 and not last:
                nodes.append(helper.make_node("Identity", [x], [f"{branch}{i}.id"]))
                x = f"{branch}{i}.id"
            if not last or final_relu:
                relu_out = branch if last else f"{branch}{i}.r"
                nodes.append(helper.make_node("Relu", [x], [relu_out]))
                x = relu_out
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("y", input_type or TensorProto.FLOAT,
                                                                         list(input_shape))],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("clean", "noise")],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"format": "despecknet-onnx/1", "model_version": "test", "domain": "log_intensity", "log_scale": "2.0",
            "z_limit": "10.0", "receptive_field": receptive_field, "training": "{}"}
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))
    return str(path)


def test_graphs_the_bf16_path_would_compute_wrongly_go_to_fp32_under_auto(tmp_path):
    """A final ReLU was dropped (4.8 dB off, silently, under auto), a Conv without pads ran as a same-size
    one, and a one-convolution branch failed on every tile."""
    from despecknet_qgis.core.model_info import FORMAT

    z = np.random.default_rng(1).standard_normal((40, 50)).astype(np.float32)
    for name, kw in (("final_relu", dict(final_relu=True)), ("one_conv", dict(layers=1)), ("no_pads", dict(pads=False))):
        path = _chain_model(tmp_path / f"{name}.onnx", **kw)
        assert FORMAT == "despecknet-onnx/1"
        # The graph check itself needs no AMX; asking for bf16 is refused either way, for the graph
        # where the CPU has AMX and for the CPU where it has not.
        with pytest.raises(ModelError, match="bf16 path|precision"):
            bf16.load_branch(Path(path).read_bytes(), "clean")
        with pytest.raises(ModelError if REASON is None else ResourceError, match="bf16 path|precision"):
            Despeckler(path, "cpu", with_noise=False, precision="bf16")
        auto = Despeckler(path, "cpu", with_noise=False, precision="auto")
        assert auto.precision == "fp32"
        if name != "no_pads":  # ONNX Runtime itself refuses the shrinking graph, with a clear ModelError
            np.testing.assert_array_equal(auto.predict(z)[0],
                                          Despeckler(path, "cpu", with_noise=False, precision="fp32").predict(z)[0])


def test_a_receptive_field_in_the_metadata_that_cannot_be_is_refused(tmp_path):
    """-5 left every output pixel nodata without an error."""
    for value in ("-5", "0", "34", "100001"):
        with pytest.raises(ModelError, match=f"states a receptive field of {value} pixels"):
            Despeckler(_chain_model(tmp_path / f"rf{value}.onnx", receptive_field=value), "cpu")


def test_a_receptive_field_stated_smaller_than_the_network_s_own_is_refused(tmp_path):
    """Stated 3 for a chain that sees 35 pixels: tiles of 64 and 512 differed by up to 10.9 dB (seams)."""
    path = _chain_model(tmp_path / "small.onnx", layers=17, receptive_field="3")
    with pytest.raises(ModelError, match="states a receptive field of 3 pixels, but its clean branch sees 35"):
        Despeckler(path, "cpu")
    Despeckler(_chain_model(tmp_path / "right.onnx", layers=17, receptive_field="35"), "cpu")


def test_a_receptive_field_stated_smaller_than_what_a_graph_of_other_operators_sees_is_refused(tmp_path):
    """The structural check reads plain convolution chains only: weights in float16 behind Cast nodes, or any
    other operator, kept a statement of 3 for 35 pixels (seams of 1.4 dB, whole tiles of nodata)."""
    path = _chain_model(tmp_path / "other.onnx", layers=17, receptive_field="3", identity=True)
    with pytest.raises(ModelError, match="states a receptive field of 3 pixels, but its output changes with pixels "
                                         "farther away"):
        Despeckler(path, "cpu", with_noise=False)
    Despeckler(_chain_model(tmp_path / "true.onnx", layers=17, receptive_field="35", identity=True), "cpu",
               with_noise=False)


def test_a_model_with_a_fixed_tile_size_or_a_float16_input_is_refused_when_loaded(tmp_path):
    """It failed on the first tile, after the whole statistics pass, in ONNX Runtime's words."""
    from onnx import TensorProto

    with pytest.raises(ModelError, match=r"shape \[1, 1, 64, 64\].* height and width are dynamic"):
        Despeckler(_chain_model(tmp_path / "fixed.onnx", input_shape=(1, 1, 64, 64)), "cpu")
    with pytest.raises(ModelError, match=r"takes tensor\(float16\) input"):
        Despeckler(_chain_model(tmp_path / "half.onnx", input_type=TensorProto.FLOAT16), "cpu")


def test_a_model_whose_weights_another_file_holds_is_refused_with_or_without_the_noise_branch(tmp_path):
    """Its digest covered the .onnx alone: new weights in the .data file passed as the old model (a batch rerun
    kept stale outputs as up to date); without the noise branch it was refused in ONNX Runtime's words."""
    import onnx

    path = str(tmp_path / "ext.onnx")
    onnx.save(onnx.load(_chain_model(tmp_path / "one.onnx")), path, save_as_external_data=True,
              all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    for with_noise in (False, True):
        with pytest.raises(ModelError, match="in another file \\(ONNX external data\\).* save_as_external_data=False"):
            Despeckler(path, "cpu", with_noise=with_noise)


def test_outputs_name_the_digest_of_the_model_that_made_them(tiny_model, tmp_path):
    """The digest was taken from the file after the statistics pass: a model replaced meanwhile (a training
    committing into that name) was named for pixels another model made."""
    import hashlib
    import shutil

    model = str(tmp_path / "m.onnx")
    shutil.copy(tiny_model[0], model)
    digest = hashlib.sha256(open(model, "rb").read()).hexdigest()
    d = Despeckler(model, "cpu", with_noise=False)
    with open(model, "ab") as fh:  # another model in its place (any other bytes)
        fh.write(b"\0")
    y, _ = speckled_scene(64, seed=2)
    despeckle_raster(write_tif(tmp_path / "y.tif", y), str(tmp_path / "x.tif"), d)
    assert gdal.Open(str(tmp_path / "x.tif")).GetMetadataItem("DESPECKNET_MODEL_SHA256") == digest == d.sha256


def test_a_model_seeing_less_than_the_point_target_margin_writes_every_tile(tmp_path):
    """A consistent 3-pixel model, point targets off, its own radius as overlap (the default): the windows were
    cut with negative slices and every tile but the first was written as nodata, reported done."""
    path = _chain_model(tmp_path / "small.onnx", layers=1, receptive_field="3")
    d = Despeckler(path, "cpu", with_noise=False)
    y, _ = speckled_scene(64, seed=3)
    src = write_tif(tmp_path / "y.tif", y)
    for tile in (16, 64):
        despeckle_raster(src, str(tmp_path / f"x{tile}.tif"), d, tile_size=tile, point_targets=False)
    small, whole = (gdal.Open(str(tmp_path / f"x{t}.tif")).ReadAsArray() for t in (16, 64))
    assert np.isfinite(small).all() and (small > 0).all()
    np.testing.assert_allclose(small, whole, rtol=1e-5)
