"""Rebuilding a trained model (either architecture) from the ``model.pt`` the train stage wrote."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config import Params, from_dict, replace
from pipeline.utils.errors import PipelineError
from pipeline.models.networks import build_network


@dataclass
class TrainedModel:
    model: nn.Module  # in eval mode, on the requested device
    params: Params  # the params it was trained with (sections that rebuild it; the rest are defaults)
    label_map: list[dict]
    payload: dict[str, Any]

    @property
    def category_ids(self) -> list[int]:
        return [entry["category_id"] for entry in self.label_map]


def load_model(path: str | Path, device: torch.device) -> TrainedModel:
    """Rebuild a trained model from a ``model.pt`` the train stage wrote."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        # The saved weights replace whatever the run started from: its weight files are not needed.
        params = replace(from_dict(payload["params"]), **{"model.backbone.pretrained": None, "model.init_from": None})
        model = build_network(params, num_classes=len(payload["label_map"]))
        model.load_state_dict(payload["state_dict"])
    except FileNotFoundError:
        raise PipelineError(f"{path}: model file not found") from None
    except Exception as err:  # a foreign or damaged file: torch, KeyError or a state-dict mismatch
        raise PipelineError(f"{path}: not a model written by the train stage ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''})") from None
    return TrainedModel(model.to(device).eval(), params, payload["label_map"], payload)
