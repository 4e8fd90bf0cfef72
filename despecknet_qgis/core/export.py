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


class _Exportable(torch.nn.Module):
    def __init__(self, model: DeSpeckNet):
        super().__init__()
        self.model = model

    def forward(self, y):
        return self.model(y)


def export_onnx(model: DeSpeckNet, path: str, record: TrainingRecord, version: str, description: str = "",
                atomic: bool = True) -> None:
    """Write the model to `path` and read it back.

    atomic: write a partial file beside `path` and move it into place, so a reader never
    sees a half-written model; False writes `path` itself (for a caller that writes into
    its own partial file and moves several files together).
    """
    model = model.eval().to(memory_format=torch.contiguous_format)
    dummy = torch.zeros(1, 1, 64, 64)
    h, w = torch.export.Dim("height", min=1), torch.export.Dim("width", min=1)
    tmp = partial_path(path) if atomic else path
    try:
        onnx_program = torch.onnx.export(
            _Exportable(model).eval(),  # the wrapper too: torch warns about a module in training mode
            (dummy,),
            input_names=[ModelInfo.INPUT],
            output_names=list(ModelInfo.OUTPUTS),
            dynamic_shapes={"y": {2: h, 3: w}},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        onnx_program.optimize()
        proto = onnx_program.model_proto
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
