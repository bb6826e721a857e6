"""FCOS (Tian et al. 2019), anchor-free one-stage detection: head, target assignment, loss, decoding.

Conventions:
- points: the centre of each feature-map cell, ((j + 0.5) * s, (i + 0.5) * s) in input pixels for
  stride s, flattened row-major per level and concatenated over levels (finest first);
- box regression: distances (l, t, r, b) in input pixels from the point to the box sides,
  ``exp(scale_l * x) * s`` (the conv predicts log-distances in stride units). Not FCOS' later
  ``relu(scale_l * x) * s`` form: under full finetuning at a high learning rate one large step can
  push every regression output below zero, after which the ReLU passes no gradient and the head
  predicts empty boxes for good (seen here: mAP 0 with sensible class scores). exp never dies and
  starts every box at one stride per side;
- centerness is predicted from the regression tower (FCOS' "centerness_on_reg");
- class ids 0..K-1, background -1 in assigned targets;
- ignore regions (BDD100K's "other vehicle", "trailer", crowd boxes; ``ignore_boxes`` /
  ``ignore_labels`` of a target) are never positives. A point inside an ignore region of class k that
  is not a positive of class k leaves class k's logit there out of the classification loss: the
  official evaluation neither rewards nor punishes a class-k detection on that region, so training
  should not teach the head that it is background either (a group of parked cars in a crowd box is
  still cars). The point's other classes stay negatives, as a detection of another class there is a
  false positive in the evaluation. Box and centerness losses only ever see positives.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss

from mtwork.engine.distributed import rank_normaliser, world_size

# Per-level ranges of max(l,t,r,b) in input pixels. FCOS uses (0,64),(64,128),...(512,inf) on P3..P7;
# with only P3..P5 and small inputs, P5 takes every object larger than 128 px.
DEFAULT_SIZE_RANGES: Tuple[Tuple[float, float], ...] = ((0.0, 64.0), (64.0, 128.0), (128.0, math.inf))

# Upper bound of the predicted log-distance (stride units) before exp.
MAX_LOG_DISTANCE = 8.0

FCOSOutputs = Dict[str, object]  # {"cls": [(B,K,H_l,W_l)], "box": [(B,4,H_l,W_l)], "ctr": [(B,1,H_l,W_l)], "strides": tuple}


def _group_norm(channels: int) -> nn.Module:
    # gcd keeps 32 groups for the usual widths and still works for any width
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    layers: List[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), _group_norm(channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Scale(nn.Module):
    """A learnable scalar per level, so that one shared regression conv can serve every stride."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class FCOSHead(nn.Module):
    """Shared classification and regression towers applied to the FPN levels ``levels``.

    Args:
        in_channels: FPN width C.
        num_classes: K.
        strides: stride (px) of each used level, e.g. (8, 16, 32).
        levels: indices into the neck's list of maps, e.g. (1, 2, 3) for P3..P5 of a 4-level FPN.
        num_convs: conv+GroupNorm+ReLU blocks per tower.
        prior_prob: initial foreground probability of the classifier (bias = -log((1-p)/p)), which keeps
            the focal loss of the many background points from swamping the first steps.

    forward(features: list of FPN maps, input_size ignored) -> {"cls": list of (B,K,H_l,W_l) logits,
    "box": list of (B,4,H_l,W_l) ltrb px, "ctr": list of (B,1,H_l,W_l) logits, "strides": tuple}

    Optional language path (``enable_language``, used by the LV-Adapter): the classifier conv is
    replaced by region-text similarity, cls = exp(s) * cos(text_proj(cls_tower(x)), t_k) + b_k, with
    ``text`` (K,D) class embeddings passed to forward, a learnable log-scale s (CLIP's 1/0.07 at init,
    clamped at 100) and a per-class bias b_k initialised like the classifier's (prior probability).
    """

    #: what the language path of this head consumes (see ``mtwork.models.multitask``)
    language_input = "text"

    def __init__(self, in_channels: int, num_classes: int, strides: Sequence[int] = (8, 16, 32),
                 levels: Sequence[int] = (1, 2, 3), num_convs: int = 2, prior_prob: float = 0.01):
        super().__init__()
        if len(strides) != len(levels):
            raise ValueError(f"{len(strides)} strides for {len(levels)} levels")
        self.strides = tuple(int(s) for s in strides)
        self.levels = tuple(int(i) for i in levels)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.prior_prob = prior_prob
        self.text_proj: nn.Module | None = None
        self.cls_tower = _tower(in_channels, num_convs)
        self.reg_tower = _tower(in_channels, num_convs)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList([Scale() for _ in self.levels])
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def enable_language(self, text_dim: int, num_classes: int) -> None:
        """Classify by similarity to ``num_classes`` text embeddings of size ``text_dim`` (see above)."""
        if num_classes != self.num_classes:
            raise ValueError(f"{num_classes} class embeddings for a head of {self.num_classes} classes")
        # PyTorch's default init (not the towers' N(0, 0.01)): the output is L2-normalised, so only
        # its direction matters, and with weights of std 0.01 one Adam step (~lr per weight) would
        # turn every region vector a long way in one shared direction (the tower's ReLU outputs are
        # all >= 0) and, times the scale, push every logit far from the prior.
        self.text_proj = nn.Conv2d(self.in_channels, text_dim, 1)
        self.text_logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        prior = -math.log((1 - self.prior_prob) / self.prior_prob)
        self.text_bias = nn.Parameter(torch.full((num_classes,), prior))
        self.cls_logits = None  # replaced: no unused parameters left in the model

    def _text_logits(self, c: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        regions = F.normalize(self.text_proj(c), dim=1)  # (B,D,H,W)
        classes = F.normalize(text.to(regions.dtype), dim=-1)  # (K,D)
        scale = self.text_logit_scale.clamp(max=math.log(100.0)).exp()
        return scale * torch.einsum("bdhw,kd->bkhw", regions, classes) + self.text_bias.view(1, -1, 1, 1)

    def forward(self, features: Sequence[torch.Tensor], input_size: Sequence[int] | None = None,
                text: torch.Tensor | None = None) -> FCOSOutputs:
        if (self.text_proj is None) != (text is None):
            raise ValueError("pass text (K,D) exactly when the head classifies by text similarity "
                             f"(language path {'on' if self.text_proj is not None else 'off'})")
        cls, box, ctr = [], [], []
        for level, stride, scale in zip(self.levels, self.strides, self.scales):
            feat = features[level]
            c = self.cls_tower(feat)
            r = self.reg_tower(feat)
            cls.append(self.cls_logits(c) if self.text_proj is None else self._text_logits(c, text))
            # clamp: exp(8) * stride is far beyond any input, and keeps bf16/fp32 finite
            box.append(torch.exp(scale(self.bbox_pred(r)).clamp(max=MAX_LOG_DISTANCE)) * stride)
            ctr.append(self.centerness(r))
        return {"cls": cls, "box": box, "ctr": ctr, "strides": self.strides}


# --------------------------------------------------------------------------------------------------
# points and targets
# --------------------------------------------------------------------------------------------------
def level_points(height: int, width: int, stride: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(height*width, 2) xy centres of the cells of one level, row-major, in input pixels."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def ltrb_to_xyxy(points: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    """points (N,2) xy, ltrb (N,4) distances -> boxes (N,4) xyxy."""
    return torch.cat([points - ltrb[:, :2], points + ltrb[:, 2:]], dim=1)


def centerness_target(ltrb: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) for (N,4) positive distances -> (N,)."""
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values) * (tb.min(dim=1).values / tb.max(dim=1).values)
    return ratio.clamp(min=0).sqrt()


def fcos_targets(
    points: Sequence[torch.Tensor],
    strides: Sequence[int],
    boxes: torch.Tensor,
    labels: torch.Tensor,
    size_ranges: Sequence[Tuple[float, float]] = DEFAULT_SIZE_RANGES,
    center_radius: float = 1.5,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """FCOS assignment of one image's boxes to the points of every level.

    Args:
        points: per level (P_l,2) xy in input pixels (``level_points``).
        strides: per level stride (px).
        boxes: (N,4) xyxy input pixels; labels: (N,) long 0..K-1.
        size_ranges: per level (lo, hi): a point is eligible on its level when lo <= max(l,t,r,b) <= hi.
        center_radius: center sampling; a point must lie within ``center_radius * stride`` of the box
            centre (that square clipped to the box). 0 disables it (any point inside the box).
    Returns:
        labels (P,) long, -1 = background; ltrb (P,4) float distances to the assigned box (0 for
        background). A point eligible for several boxes takes the one with the smallest area.
    """
    if len(points) != len(strides) or len(strides) != len(size_ranges):
        raise ValueError(f"{len(points)} point levels, {len(strides)} strides, {len(size_ranges)} size ranges")
    pts = torch.cat(list(points))
    num_points = pts.shape[0]
    device = pts.device
    if boxes.numel() == 0:
        return torch.full((num_points,), -1, dtype=torch.long, device=device), pts.new_zeros((num_points, 4))
    boxes = boxes.to(device=device, dtype=torch.float32)
    labels = labels.to(device)
    per_level = [p.shape[0] for p in points]
    stride = torch.cat([pts.new_full((n,), float(s)) for n, s in zip(per_level, strides)])
    lo = torch.cat([pts.new_full((n,), float(r[0])) for n, r in zip(per_level, size_ranges)])
    hi = torch.cat([pts.new_full((n,), math.inf if r[1] is None else float(r[1])) for n, r in zip(per_level, size_ranges)])

    x, y = pts[:, 0:1], pts[:, 1:2]  # (P,1)
    x1, y1, x2, y2 = boxes.unbind(dim=1)  # (N,)
    ltrb = torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=2)  # (P,N,4)
    if center_radius > 0:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        rad = stride[:, None] * center_radius  # (P,1)
        inner = torch.stack([
            x - torch.maximum(cx - rad, x1), y - torch.maximum(cy - rad, y1),
            torch.minimum(cx + rad, x2) - x, torch.minimum(cy + rad, y2) - y,
        ], dim=2)
        inside = inner.min(dim=2).values > 0
    else:
        inside = ltrb.min(dim=2).values > 0
    reach = ltrb.max(dim=2).values
    in_range = (reach >= lo[:, None]) & (reach <= hi[:, None])
    area = ((x2 - x1) * (y2 - y1))[None, :].expand(num_points, -1).clone()
    area[~(inside & in_range)] = math.inf
    min_area, match = area.min(dim=1)
    target_labels = labels[match].clone()
    target_labels[torch.isinf(min_area)] = -1
    target_ltrb = ltrb[torch.arange(num_points, device=device), match]
    target_ltrb[target_labels < 0] = 0
    return target_labels, target_ltrb


# --------------------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------------------
def _flatten(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-level (B,C,H,W) -> (B, sum H*W, C), row-major like ``level_points``."""
    # explicit sizes, not -1: a batch of 0 images (a data-parallel rank without det labels) must work
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], m.shape[2] * m.shape[3], m.shape[1]) for m in maps], dim=1)


def output_points(outputs: Mapping[str, object]) -> List[torch.Tensor]:
    return [level_points(m.shape[-2], m.shape[-1], s, m.device) for m, s in zip(outputs["cls"], outputs["strides"])]


def select_images(outputs: Mapping[str, object], index: torch.Tensor) -> FCOSOutputs:
    """The outputs of the images ``index`` only (index: (n,) long or (B,) bool)."""
    return {
        "cls": [m[index] for m in outputs["cls"]],
        "box": [m[index] for m in outputs["box"]],
        "ctr": [m[index] for m in outputs["ctr"]],
        "strides": outputs["strides"],
    }


def ignore_mask(points: torch.Tensor, ignore_boxes: torch.Tensor, ignore_labels: torch.Tensor,
                num_classes: int) -> torch.Tensor:
    """(P,K) bool: point p lies strictly inside an ignore region of class k (points (P,2) xy input px,
    ignore_boxes (M,4) xyxy, ignore_labels (M,) 0..K-1)."""
    boxes = ignore_boxes.to(device=points.device, dtype=torch.float32)
    x, y = points[:, 0:1], points[:, 1:2]
    inside = (x > boxes[:, 0]) & (x < boxes[:, 2]) & (y > boxes[:, 1]) & (y < boxes[:, 3])  # (P,M)
    classes = F.one_hot(ignore_labels.to(points.device).long(), num_classes).float()  # (M,K)
    return (inside.float() @ classes) > 0


def fcos_loss(
    outputs: Mapping[str, object],
    targets: Sequence[Mapping[str, torch.Tensor]],
    size_ranges: Sequence[Tuple[float, float]] = DEFAULT_SIZE_RANGES,
    center_radius: float = 1.5,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> Dict[str, torch.Tensor]:
    """FCOS losses over a batch whose every image is labeled (select the labeled ones first).

    targets: one {"boxes": (N,4) xyxy input px, "labels": (N,) long} per image (N may be 0: then every
    point of that image is a negative and still counts in the classification loss), optionally with
    "ignore_boxes" (M,4) and "ignore_labels" (M,): the (point, class) pairs of ``ignore_mask`` that are
    not positives are left out of the classification loss (module docstring).
    Returns {"cls": focal loss sum / num_pos, "box": GIoU loss on positives weighted by centerness
    targets / their sum, "ctr": BCE on positives sum / num_pos}; num_pos is clamped to >= 1.
    Under data parallelism num_pos and the centerness sum are those of the global batch
    (``mtwork.engine.distributed.rank_normaliser``), and ``targets`` may be empty on a rank.
    """
    cls = _flatten(outputs["cls"])  # (B,P,K)
    box = _flatten(outputs["box"])  # (B,P,4)
    ctr = _flatten(outputs["ctr"])[..., 0]  # (B,P)
    if len(targets) != cls.shape[0]:
        raise ValueError(f"{len(targets)} targets for {cls.shape[0]} images")
    points = output_points(outputs)
    assigned = [fcos_targets(points, outputs["strides"], t["boxes"], t["labels"], size_ranges, center_radius)
                for t in targets]
    if assigned:
        labels = torch.stack([a[0] for a in assigned])  # (B,P)
        ltrb = torch.stack([a[1] for a in assigned])  # (B,P,4)
    else:
        labels = torch.full(cls.shape[:2], -1, dtype=torch.long, device=cls.device)
        ltrb = cls.new_zeros((*cls.shape[:2], 4))
    pos = labels >= 0

    onehot = torch.zeros_like(cls)
    onehot[pos, labels[pos]] = 1.0
    all_points = torch.cat(points)
    pts = all_points[None].expand(cls.shape[0], -1, -1)[pos]
    target_ltrb = ltrb[pos]
    ctr_target = centerness_target(target_ltrb)
    if world_size() == 1:
        num_pos = max(int(pos.sum()), 1)
        ctr_norm = ctr_target.sum().clamp(min=1e-6)
    else:  # the global batch's counts, one all-reduce for both
        num_pos, ctr_norm = rank_normaliser(torch.stack([pos.sum().float(), ctr_target.sum().float()]),
                                            minimum=0.0).unbind()
        num_pos, ctr_norm = num_pos.clamp(min=1.0 / world_size()), ctr_norm.clamp(min=1e-6 / world_size())
    ignored = [ignore_mask(all_points, t["ignore_boxes"], t["ignore_labels"], cls.shape[-1])
               if t.get("ignore_boxes") is not None and t["ignore_boxes"].numel() else None for t in targets]
    if any(m is not None for m in ignored):
        weight = torch.ones_like(cls)
        for b, mask in enumerate(ignored):
            if mask is not None:
                weight[b][mask & (onehot[b] == 0)] = 0.0
        loss_cls = (sigmoid_focal_loss(cls, onehot, alpha=focal_alpha, gamma=focal_gamma, reduction="none")
                    * weight).sum() / num_pos
    else:
        loss_cls = sigmoid_focal_loss(cls, onehot, alpha=focal_alpha, gamma=focal_gamma, reduction="sum") / num_pos
    giou = generalized_box_iou_loss(ltrb_to_xyxy(pts, box[pos]), ltrb_to_xyxy(pts, target_ltrb), reduction="none")
    loss_box = (giou * ctr_target).sum() / ctr_norm
    loss_ctr = F.binary_cross_entropy_with_logits(ctr[pos], ctr_target, reduction="sum") / num_pos
    return {"cls": loss_cls, "box": loss_box, "ctr": loss_ctr}


# --------------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def postprocess(
    outputs: Mapping[str, object],
    input_size: Sequence[int],
    score_thresh: float = 0.05,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    pre_nms_topk: int = 1000,
) -> List[Dict[str, torch.Tensor]]:
    """Head outputs -> per image {"boxes": (N,4) xyxy input px, "scores": (N,), "labels": (N,) long}.

    score = sqrt(sigmoid(cls) * sigmoid(centerness)); per level the (point, class) pairs above
    ``score_thresh`` are cut to the ``pre_nms_topk`` best, boxes are clipped to ``input_size`` (H,W),
    class-wise NMS (``batched_nms``) at ``nms_iou``, then the ``max_detections`` best are kept.
    """
    height, width = (int(s) for s in input_size)
    num_images = outputs["cls"][0].shape[0]
    results = []
    for i in range(num_images):
        all_boxes, all_scores, all_labels = [], [], []
        for cls_l, box_l, ctr_l, stride in zip(outputs["cls"], outputs["box"], outputs["ctr"], outputs["strides"]):
            k, h, w = cls_l.shape[1:]
            scores = (torch.sigmoid(cls_l[i]) * torch.sigmoid(ctr_l[i])).sqrt()  # (K,H,W)
            scores = scores.permute(1, 2, 0).reshape(-1)  # (H*W*K), point-major
            keep = torch.nonzero(scores > score_thresh).flatten()
            values = scores[keep]
            if values.numel() > pre_nms_topk:
                values, order = values.topk(pre_nms_topk)
                keep = keep[order]
            point_idx, labels = keep // k, keep % k
            pts = level_points(h, w, stride, cls_l.device)[point_idx]
            ltrb = box_l[i].permute(1, 2, 0).reshape(-1, 4)[point_idx]
            boxes = ltrb_to_xyxy(pts, ltrb)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            all_boxes.append(boxes)
            all_scores.append(values)
            all_labels.append(labels)
        boxes, scores, labels = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)
        keep = batched_nms(boxes.float(), scores.float(), labels, nms_iou)[:max_detections]
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return results
