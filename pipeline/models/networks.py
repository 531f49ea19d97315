"""The architectures of ``model.arch`` behind one interface, so that training and inference dispatch once.

A :class:`Network` builds its model from params, runs the training forward (inside the train loop's
autocast), turns what that returns into loss terms (their sum is ``total``), and runs inference into the
detections of :func:`pipeline.models.yolact.postprocess.detect`: boxes normalised to [0, 1], 0-based labels, scores and
mask probabilities, which :func:`pipeline.models.detections.to_image` takes to the original image for both.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN

from pipeline.config import EvalParams, LossParams, Params
from pipeline.models.yolact.loss import yolact_loss
from pipeline.models.mask_rcnn import build_mask_rcnn, to_detections, torchvision_targets
from pipeline.models.yolact.model import build_model
from pipeline.models.detections import Detections
from pipeline.models.folding import fold_batchnorm
from pipeline.models.yolact.postprocess import detect


class Network:
    """What the train loop and inference need from one architecture."""

    loss_terms: tuple[str, ...] = ()  # the loss columns of the training log, besides their sum

    def build(self, params: Params, num_classes: int) -> nn.Module:
        """The model of ``params`` for ``num_classes`` classes (background excluded)."""
        raise NotImplementedError

    def forward(self, model: nn.Module, images: Tensor, targets: Sequence[dict[str, Any]], seed: int) -> Any:
        """The train-mode forward of ``images [B, 3, S, S]`` with their targets; ``seed``: this step's seed
        (:func:`pipeline.training.sampling.step_seed`) for whatever the forward draws at random."""
        raise NotImplementedError

    def loss(self, outputs: Any, targets: Sequence[dict[str, Any]], loss_params: LossParams,
             world_size: int = 1) -> dict[str, Tensor]:
        """Scalar float32 loss terms :attr:`loss_terms` and ``total``, what the optimizer minimises."""
        raise NotImplementedError

    def inference_model(self, model: nn.Module) -> nn.Module:
        """The eval-mode model :meth:`detect` runs: ``model`` itself, or a copy made faster for inference."""
        return model.eval()

    def detect(self, model: nn.Module, images: Tensor, eval_params: EvalParams,
               use_focal_loss: bool) -> list[Detections]:
        """Detections per image of an eval-mode ``model`` (from :meth:`inference_model`), with the thresholds
        of ``eval_params``."""
        raise NotImplementedError


class YolactNetwork(Network):
    """:class:`pipeline.models.yolact.model.Yolact`, :func:`pipeline.models.yolact.loss.yolact_loss` and :func:`pipeline.models.yolact.postprocess.detect`."""

    loss_terms = ("box", "conf", "mask", "semantic")

    def build(self, params: Params, num_classes: int) -> nn.Module:
        return build_model(params, num_classes)

    def forward(self, model: nn.Module, images: Tensor, targets: Sequence[dict[str, Any]], seed: int) -> Any:
        return model(images)

    def loss(self, outputs: Any, targets: Sequence[dict[str, Any]], loss_params: LossParams,
             world_size: int = 1) -> dict[str, Tensor]:
        return yolact_loss(outputs, targets, loss_params, world_size=world_size)

    def inference_model(self, model: nn.Module) -> nn.Module:
        """A copy with BatchNorm folded into the convolutions (:func:`pipeline.models.folding.fold_batchnorm`)."""
        return fold_batchnorm(model)

    def detect(self, model: nn.Module, images: Tensor, eval_params: EvalParams,
               use_focal_loss: bool) -> list[Detections]:
        return detect_outputs(model(images), eval_params, use_focal_loss)


class MaskRCNNNetwork(Network):
    """torchvision's ``MaskRCNN`` of :func:`pipeline.models.mask_rcnn.build_mask_rcnn`, its own losses and
    post-processing (per-class NMS over all its RoIs: ``eval.nms`` and ``eval.top_k`` are YOLACT's), run at
    inference as torchvision ships it."""

    loss_terms = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")

    def build(self, params: Params, num_classes: int) -> nn.Module:
        return build_mask_rcnn(params, num_classes)

    def forward(self, model: nn.Module, images: Tensor, targets: Sequence[dict[str, Any]], seed: int) -> Any:
        """torchvision's loss dict: the losses are computed inside the forward. The RPN's and the RoI heads'
        samplers draw from torch's global RNG; seeding it per step makes a resumed run draw what the
        uninterrupted one drew (the train loop's own RNG use would otherwise shift the stream)."""
        devices = [images.device.index] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return model(list(images), torchvision_targets(targets, images.shape[-1]))

    def loss(self, outputs: Any, targets: Sequence[dict[str, Any]], loss_params: LossParams,
             world_size: int = 1) -> dict[str, Tensor]:
        """torchvision's terms in float32 and their plain sum, as torchvision's references train on; each term is
        a mean over the process's own samples (DDP then averages the gradients)."""
        losses = {name: outputs[name].float() for name in self.loss_terms}
        losses["total"] = sum(losses.values())
        return losses

    def detect(self, model: nn.Module, images: Tensor, eval_params: EvalParams,
               use_focal_loss: bool) -> list[Detections]:
        heads = model.roi_heads
        heads.score_thresh, heads.nms_thresh = eval_params.score_threshold, eval_params.nms_iou
        heads.detections_per_img = eval_params.max_detections
        return to_detections(model(list(images)), images.shape[-1])


NETWORKS: dict[str, Network] = {"yolact": YolactNetwork(), "mask_rcnn": MaskRCNNNetwork()}


def network(arch: str) -> Network:
    """The :class:`Network` of a ``model.arch`` value."""
    return NETWORKS[arch]


def network_of(model: nn.Module) -> Network:
    """The :class:`Network` of a built model."""
    return NETWORKS["mask_rcnn" if isinstance(model, MaskRCNN) else "yolact"]


def build_network(params: Params, num_classes: int) -> nn.Module:
    """The model of ``params.model.arch`` (``num_classes`` excludes background)."""
    return network(params.model.arch).build(params, num_classes)


def detect_outputs(out: dict[str, Tensor], eval_params: EvalParams, use_focal_loss: bool) -> list[Detections]:
    """:func:`pipeline.models.yolact.postprocess.detect` on YOLACT's raw output dict (PyTorch's, or ONNX Runtime's from
    :mod:`pipeline.deploy.export`) with the thresholds of ``eval_params``."""
    ep = eval_params
    return detect(out["loc"], out["conf"], out["mask"], out["proto"], out["priors"],
                  score_threshold=ep.score_threshold, nms=ep.nms, nms_iou=ep.nms_iou, top_k=ep.top_k,
                  max_detections=ep.max_detections, use_focal_loss=use_focal_loss)
