"""A torch-based BentoML service for the memory comparison in scripts/bench_serving.py (not part of the
product): the FP wrn22-16 in PyTorch behind the same kind of /classify endpoint. Imports torch on purpose."""

from __future__ import annotations

import sys
from pathlib import Path

import bentoml
from PIL.Image import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@bentoml.service(name="torch_fp_classifier", workers=1)
class TorchFP:
    def __init__(self) -> None:
        import torch

        from bonn_serve.preprocess import preprocess
        from training.models import ARCHS, build_model

        torch.set_num_threads(1)
        self.torch, self.preprocess = torch, preprocess
        spec = ARCHS["wrn22-16"]["input"]
        self.spec = {
            "channels": 3,
            "resize": spec.resize,
            "crop": spec.size,
            "scale": 1 / 255,
            "mean": list(spec.mean),
            "std": list(spec.std),
        }
        self.model = build_model("wrn22-16", binary=False).eval()

    @bentoml.api
    def classify(self, image: Image) -> dict:
        x = self.torch.from_numpy(self.preprocess([image], self.spec))
        with self.torch.no_grad():
            logits = self.model(x)[0]
        return {"top1": int(logits.argmax())}
