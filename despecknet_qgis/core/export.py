"""Export a trained deSpeckNet to a single-file ONNX model that records what inference needs."""
from __future__ import annotations

import json
from dataclasses import asdict

import torch

from . import domain
from .files import commit_files, partial_path, remove_quietly
from .model import RECEPTIVE_FIELD, DeSpeckNet
from .model_info import FORMAT, ModelInfo
from .training import TrainingRecord

OPSET = 18
IR_VERSION = 10  # readable by ONNX Runtime 1.16 and later


def _folded_layers(branch: torch.nn.Sequential):
    """(weight, bias, relu) of each convolution of a branch, with its BatchNorm folded in (eval statistics).

    Folded in float64, so the exported model matches PyTorch's eval output within float32 rounding.
    """
    layers, out, i = list(branch), [], 0
    while i < len(layers):
        conv = layers[i]
        if not isinstance(conv, torch.nn.Conv2d):
            raise TypeError(f"unexpected layer {conv!r} in a deSpeckNet branch")
        w = conv.weight.detach().double().cpu()
        b = conv.bias.detach().double().cpu() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        i += 1
        if i < len(layers) and isinstance(layers[i], torch.nn.BatchNorm2d):
            bn = layers[i]
            scale = bn.weight.detach().double().cpu() / torch.sqrt(bn.running_var.detach().double().cpu() + bn.eps)
            w = w * scale[:, None, None, None]
            b = (b - bn.running_mean.detach().double().cpu()) * scale + bn.bias.detach().double().cpu()
            i += 1
        relu = i < len(layers) and isinstance(layers[i], torch.nn.ReLU)
        i += int(relu)
        out.append((w.float().numpy(), b.float().numpy(), relu))
    return out


def model_proto(model: DeSpeckNet):
    """The network as an ONNX graph, written directly: Conv (BatchNorm folded) and Relu nodes.

    The architecture is fixed, so this takes milliseconds, where torch.onnx's exporter took
    about 8 s (a large share of a one-Mpixel phase 2) and needed the onnxscript package.
    """
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers = [], []
    for branch_name, output in zip(("clean", "noise"), ModelInfo.OUTPUTS):
        x = ModelInfo.INPUT
        layers = _folded_layers(getattr(model, branch_name))
        for k, (w, b, relu) in enumerate(layers):
            name = f"{branch_name}.{k}"
            initializers += [numpy_helper.from_array(w, f"{name}.weight"), numpy_helper.from_array(b, f"{name}.bias")]
            last = k == len(layers) - 1
            conv_out = output if last else f"{name}.conv"
            nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [conv_out], name=f"{name}.Conv",
                                          kernel_shape=list(w.shape[2:]), pads=[w.shape[2] // 2, w.shape[3] // 2] * 2))
            x = conv_out
            if relu:
                nodes.append(helper.make_node("Relu", [x], [f"{name}.relu"], name=f"{name}.Relu"))
                x = f"{name}.relu"
    shape = [1, 1, "height", "width"]
    graph = helper.make_graph(
        nodes, "despecknet", [helper.make_tensor_value_info(ModelInfo.INPUT, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape) for o in ModelInfo.OUTPUTS], initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="despecknet_qgis")
    proto.ir_version = IR_VERSION
    return proto


def export_onnx(model: DeSpeckNet, path: str, record: TrainingRecord, version: str, description: str = "",
                atomic: bool = True) -> None:
    """Write the model to `path` and read it back.

    atomic: write a partial file beside `path` and move it into place, so a reader never
    sees a half-written model; False writes `path` itself (for a caller that writes into
    its own partial file and moves several files together).
    """
    tmp = partial_path(path) if atomic else path
    try:
        proto = model_proto(model.eval())
        info = {
            "format": FORMAT,
            "model_version": version,
            "description": description,
            "domain": "log_intensity",
            "log_scale": str(domain.LOG_SCALE),
            "z_limit": str(domain.Z_LIMIT),
            "normalisation": "z = clip((ln(I) - offset) / log_scale, -z_limit, z_limit); "
            "offset = mean of ln(I) over the valid pixels of the band; I = intensity",
            "outputs": "clean: ln(X_hat) normalised like the input; noise: ln(N_hat) / log_scale",
            "receptive_field": str(RECEPTIVE_FIELD),
            "training": json.dumps(asdict(record)),
        }
        del proto.metadata_props[:]
        for k, v in info.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        import onnx

        onnx.save_model(proto, tmp)
        back = onnx.load_model(tmp)  # read back: a full disk can leave a truncated file behind
        if {e.key: e.value for e in back.metadata_props}.get("format") != FORMAT:
            raise OSError(f"{tmp} did not read back as the model just written")
        if atomic:
            commit_files([(tmp, path)])
    finally:
        if atomic:
            remove_quietly(tmp)
