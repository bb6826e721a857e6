"""Linear probe: how much a frozen encoder's features say about semantic segmentation.

The question it answers is whether a pretrained encoder carries information that a randomly initialised
one does not (for source 2: does the SimMIM-pretrained Swin-V2 beat a random Swin-V2?). Protocol:

1. The frozen encoder runs once over the train and val images of a segmentation split, each letterboxed
   into ``input_size`` without augmentation (``EvalTransform``), and its 4 stage maps (strides 4, 8, 16,
   32) are kept.
2. For each probed *feature set* (one stage, or ``all``: every stage resized bilinearly to the stride-4
   grid and concatenated), the channels are standardised with the train set's mean and std and a single
   1x1 convolution (C -> K classes) is trained: full-batch AdamW on the cross-entropy of its logits,
   resized bilinearly to the input size, against the train masks resized (nearest) into the input frame
   (padding and the mask's 255 ignored), at a fixed random sample of labelled pixels per image (the
   resized features are read there directly, see ``fit_probe``). Standardising is linear, so the probe
   stays a linear map of the features; it only makes one learning rate fit every feature set.
3. The val images are scored as every segmentation run is: logits mapped back to the on-disk frame and a
   confusion matrix over every labelled pixel (``SegmentationEvaluator``): mIoU and pixel accuracy in %.

Everything is deterministic for a seed on CPU. ``mtwork probe`` (``cli.py``) runs it on converted Swin-V2
files (``models/pretrained/<source>.pt``) and on a random Swin-V2 with the same arch (``--random``).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

#: Name of the feature set that concatenates every stage at the stride of the first.
ALL_STAGES = "all"

#: ``encode(image (B,3,H,W)) -> [stage maps (B,C_i,H_i,W_i)]``, strides increasing.
Encoder = Callable[[torch.Tensor], Sequence[torch.Tensor]]


@dataclass(frozen=True)
class ProbeSettings:
    """How the linear probe trains. ``steps``: full-batch AdamW steps; ``lr``: its rate; ``weight_decay``
    on the linear map's weight; ``pixels_per_image``: labelled pixels sampled per train image;
    ``batch_size``: images per encoder forward (memory only, no effect on the result); ``seed``: the
    pixel sample and the probe's initialisation."""

    steps: int = 200
    lr: float = 0.02
    weight_decay: float = 0.01
    pixels_per_image: int = 256
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("steps", "pixels_per_image", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"probe setting '{key}' must be >= 1, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ValueError(f"probe setting 'lr' must be > 0, got {self.lr}")


@dataclass
class Features:
    """An encoder's frozen stage maps over a split, plus what training and scoring need.

    ``maps[i]``: (N, C_i, H_i, W_i) float32; ``targets``: (N, H, W) int64 class ids in the input frame
    (255 = ignore, padding included); ``batches``: the collated eval batches (on-disk masks, sizes)
    restricted to the kept images, in the order of the rows of ``maps`` and ``targets``.
    """

    maps: List[torch.Tensor]
    targets: torch.Tensor
    batches: List[Dict[str, Any]]


def stage_names(num_stages: int) -> List[str]:
    """Feature-set names: ``stage1`` .. ``stageN`` (1-based, as the papers count) and ``all``."""
    return [f"stage{i + 1}" for i in range(num_stages)] + [ALL_STAGES]


def _input_frame_target(mask: torch.Tensor, orig: Tuple[int, int], valid: Tuple[int, int], size: Tuple[int, int],
                        ignore_index: int) -> torch.Tensor:
    """On-disk mask (>= orig, 255-padded) -> (H, W) int64 in the input frame: the orig region resized
    (nearest) to the letterbox's valid region, the rest ``ignore_index``."""
    h0, w0 = orig
    vh, vw = valid
    region = mask[:h0, :w0].float()[None, None]
    region = F.interpolate(region, size=(vh, vw), mode="nearest")[0, 0].long()
    target = torch.full(tuple(size), ignore_index, dtype=torch.long)
    target[:vh, :vw] = region
    return target


@torch.no_grad()
def collect_features(encode: Encoder, dataset, task: str, batch_size: int) -> Features:
    """Run ``encode`` (frozen) over ``dataset`` (samples from ``EvalTransform``) and keep its stage maps.

    Only images labelled for ``task`` are kept. Raises ``ValueError`` when none is.
    """
    from torch.utils.data import DataLoader

    from mtwork.data.batch import batch_to_device, collate

    maps: List[List[torch.Tensor]] = []
    targets: List[torch.Tensor] = []
    batches: List[Dict[str, Any]] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in loader:
        batch = batch_to_device(batch, torch.device("cpu"))  # the model's input: normalised float images
        keep = batch["labeled"][task].nonzero().flatten()
        if keep.numel() == 0:
            continue
        image = batch["image"][keep]
        size = tuple(image.shape[-2:])
        outputs = [m.float() for m in encode(image)]
        if not maps:
            maps = [[] for _ in outputs]
        for store, m in zip(maps, outputs):
            store.append(m)
        for i in keep.tolist():
            orig = tuple(int(v) for v in batch["orig_size"][i])
            valid = tuple(int(v) for v in batch["valid_size"][i]) if "valid_size" in batch else size
            targets.append(_input_frame_target(batch[task][i], orig, valid, size, 255))
        batches.append(_select(batch, keep))
    if not targets:
        raise ValueError(f"no image of the probed split is labelled for '{task}'")
    return Features([torch.cat(m) for m in maps], torch.stack(targets), batches)


def _select(batch: Mapping[str, Any], keep: torch.Tensor, size: Optional[int] = None) -> Dict[str, Any]:
    """The rows ``keep`` of a collated batch of ``size`` samples (default: its images): per-sample tensors
    are indexed, per-sample lists picked, nested mappings (``labeled``) treated alike, the rest kept."""
    size = len(batch["image"]) if size is None else size
    index = keep.tolist()
    out: Dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size:
            out[key] = value[keep]
        elif isinstance(value, list) and len(value) == size:
            out[key] = [value[i] for i in index]
        elif isinstance(value, Mapping):
            out[key] = _select(value, keep, size)
        else:
            out[key] = value
    return out


def feature_set(maps: Sequence[torch.Tensor], name: str) -> torch.Tensor:
    """The (N, C, h, w) input of one probe: stage ``stageK`` as is, or ``all`` stages resized (bilinear)
    to the first stage's grid and concatenated along channels."""
    names = stage_names(len(maps))
    if name not in names:
        raise ValueError(f"unknown probe feature set '{name}'; known: {', '.join(names)}")
    if name != ALL_STAGES:
        return maps[int(name[len("stage"):]) - 1]
    size = tuple(maps[0].shape[-2:])
    return torch.cat([m if tuple(m.shape[-2:]) == size else
                      F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps], dim=1)


def sample_pixels(targets: torch.Tensor, per_image: int, generator: torch.Generator,
                  ignore_index: int = 255) -> torch.Tensor:
    """(M, 3) long rows (image, y, x): up to ``per_image`` labelled pixels of each target (N, H, W), drawn
    uniformly without replacement (all of them where an image has fewer)."""
    rows = []
    for i, target in enumerate(targets):
        ys, xs = torch.nonzero(target != ignore_index, as_tuple=True)
        if ys.numel() > per_image:
            keep = torch.randperm(ys.numel(), generator=generator)[:per_image]
            ys, xs = ys[keep], xs[keep]
        rows.append(torch.stack([torch.full_like(ys, i), ys, xs], dim=1))
    return torch.cat(rows)


def features_at(x: torch.Tensor, pixels: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(M, C): the maps x (N, C, h, w) resized bilinearly (align_corners=False, as ``F.interpolate``) to
    ``size`` = (H, W) and read at ``pixels`` (M, 3) rows (image, y, x), without building the (N, C, H, W)
    tensor. ``grid_sample`` with border padding clamps the source coordinate at the edges exactly as
    ``interpolate`` does."""
    height, width = size
    out = x.new_empty((pixels.shape[0], x.shape[1]))
    for i in pixels[:, 0].unique().tolist():
        sel = (pixels[:, 0] == i).nonzero().flatten()
        ys, xs = pixels[sel, 1].to(x.dtype), pixels[sel, 2].to(x.dtype)
        grid = torch.stack([(xs + 0.5) / width * 2 - 1, (ys + 0.5) / height * 2 - 1], dim=-1).view(1, 1, -1, 2)
        sampled = F.grid_sample(x[i:i + 1], grid, mode="bilinear", padding_mode="border", align_corners=False)
        out[sel] = sampled[0, :, 0].T
    return out


class LinearProbe(nn.Module):
    """Per-channel standardisation (fixed, from the train features) and one linear map C -> K, applied per
    pixel: (N, C, h, w) -> (N, K, h, w) (a 1x1 conv), or (M, C) -> (M, K) on sampled pixels."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int):
        super().__init__()
        self.register_buffer("mean", mean.flatten())
        self.register_buffer("std", std.flatten())
        self.linear = nn.Linear(mean.numel(), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return self.linear((x - self.mean) / self.std)
        z = (x.movedim(1, -1) - self.mean) / self.std
        return self.linear(z).movedim(-1, 1)


def fit_probe(x: torch.Tensor, targets: torch.Tensor, num_classes: int, settings: ProbeSettings,
              ignore_index: int = 255) -> LinearProbe:
    """Train a ``LinearProbe`` on features x (N, C, h, w) for targets (N, H, W) in the input frame.

    The logits the probe is scored on are its map resized bilinearly to (H, W); since resizing and a
    per-pixel linear map commute, training reads the resized features at ``settings.pixels_per_image``
    sampled labelled pixels per image (``features_at``) instead of resizing every map, then takes
    ``settings.steps`` full-batch AdamW steps on their cross-entropy.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    pixels = sample_pixels(targets, settings.pixels_per_image, generator, ignore_index)
    if pixels.numel() == 0:
        raise ValueError("the probe's train targets hold no labelled pixel")
    feats = features_at(x, pixels, tuple(targets.shape[-2:]))
    labels = targets[pixels[:, 0], pixels[:, 1], pixels[:, 2]]
    mean = feats.mean(dim=0)
    std = feats.std(dim=0).clamp_min(1e-6)  # a constant channel carries nothing; keep it finite
    probe = LinearProbe(mean, std, num_classes)
    with torch.no_grad():
        probe.linear.weight.normal_(0.0, 0.01, generator=generator)
        probe.linear.bias.zero_()
    optimizer = torch.optim.AdamW([{"params": [probe.linear.weight], "weight_decay": settings.weight_decay},
                                   {"params": [probe.linear.bias], "weight_decay": 0.0}], lr=settings.lr)
    z = (feats - mean) / std  # standardised once: the steps train ``probe.linear`` only
    for _ in range(settings.steps):
        loss = F.cross_entropy(probe.linear(z), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return probe.eval()


@torch.no_grad()
def score_probe(probe: LinearProbe, x: torch.Tensor, val: Features, evaluator) -> Dict[str, float]:
    """The probe's val metrics: logits at the input size, scored by ``evaluator`` (a task evaluator, e.g.
    ``SegmentationEvaluator``) on the on-disk frame, batch by batch as ``val.batches`` holds them."""
    evaluator.reset()
    start = 0
    for batch in val.batches:
        n = len(batch["image"])
        size = tuple(batch["image"].shape[-2:])
        logits = F.interpolate(probe(x[start:start + n]), size=size, mode="bilinear", align_corners=False)
        evaluator.process(logits, batch)
        start += n
    return evaluator.evaluate()


def probe_encoder(encode: Encoder, train_set, val_set, task: Any, settings: ProbeSettings = ProbeSettings(),
                  feature_sets: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, float]]:
    """Linear-probe ``encode``'s frozen features for the segmentation ``task`` (an mtwork task with
    ``name``, ``num_classes`` and ``evaluator()``): ``{feature set: {"miou": %, "pixel_acc": %}}``.

    ``train_set`` / ``val_set``: datasets of ``EvalTransform`` samples; ``feature_sets``: names from
    ``stage_names`` (default: each stage and ``all``).
    """
    train = collect_features(encode, train_set, task.name, settings.batch_size)
    val = collect_features(encode, val_set, task.name, settings.batch_size)
    names = list(feature_sets) if feature_sets is not None else stage_names(len(train.maps))
    evaluator = task.evaluator()
    results: Dict[str, Dict[str, float]] = {}
    for name in names:
        probe = fit_probe(feature_set(train.maps, name), train.targets, int(task.num_classes), settings)
        results[name] = score_probe(probe, feature_set(val.maps, name), val, evaluator)
    return results


# ----------------------------------------------------------------------------------------------------------
# Swin-V2 encoders on SynthDrive / BDD100K-layout data
# ----------------------------------------------------------------------------------------------------------
def swin_encoder(arch: str, input_size: Tuple[int, int], checkpoint: Optional[str | Path] = None,
                 seed: int = 0) -> Encoder:
    """A frozen Swin-V2 ``arch`` (``swin:<name>`` or ``<name>``) as an ``Encoder`` of its 4 stage maps:
    the weights of the converted file ``checkpoint`` (written by ``mtwork import-checkpoint``), or the
    model's own random initialisation under ``torch.manual_seed(seed)`` when ``checkpoint`` is None."""
    from mtwork.models.backbones import BackboneLoadError, load_converted
    from mtwork.models.swin import create_swinv2, encoder_maps

    name = arch.rpartition(":")[2]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_swinv2(name, tuple(input_size))
    if checkpoint is not None:
        converted = load_converted(checkpoint)
        if converted["arch"].rpartition(":")[2] != name:
            raise BackboneLoadError(f"{checkpoint}: holds a '{converted['arch']}' backbone, the probe needs '{arch}'")
        missing, unexpected = model.load_state_dict(converted["state_dict"], strict=False)
        if missing or unexpected:
            raise BackboneLoadError(f"{checkpoint}: keys do not fit '{arch}': missing {missing[:5]}, "
                                    f"unexpected {unexpected[:5]}")
    model.requires_grad_(False).eval()
    return lambda image: encoder_maps(model, image)


def probe_swin(data_root: str | Path, arch: str, input_size: Tuple[int, int], checkpoint: Optional[str | Path] = None,
               seed: int = 0, settings: ProbeSettings = ProbeSettings(), task: str = "semseg",
               feature_sets: Optional[Sequence[str]] = None,
               attributes: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Probe a Swin-V2 (``checkpoint``, or random with ``seed`` when None) on ``data_root``'s train/val
    split of ``task`` (the frames whose attributes match ``attributes``: a domain of a root that holds
    several): ``{"encoder", "arch", "input_size", "task", "settings", "train_images", "val_images",
    "seconds", "results": {feature set: {metric: %}}}``."""
    from mtwork.data.bdd100k import BDD100KDataset
    from mtwork.data.transforms import EvalTransform
    from mtwork.tasks import TASKS

    size = tuple(int(s) for s in input_size)
    sets = {split: BDD100KDataset(data_root, split, tasks=(task,), transform=EvalTransform(size), attributes=attributes)
            for split in ("train", "val")}
    for split, dataset in sets.items():
        if len(dataset) == 0:
            raise ValueError(f"{data_root}: the {split} split has no images labelled for '{task}'")
    t0 = time.perf_counter()
    results = probe_encoder(swin_encoder(arch, size, checkpoint, seed), sets["train"], sets["val"],
                            TASKS.create(task), settings, feature_sets)
    return {"encoder": str(checkpoint) if checkpoint is not None else f"random (seed {seed})", "arch": arch,
            "input_size": list(size), "task": task, "settings": asdict(settings),
            "train_images": sets["train"].labeled_counts()[task], "val_images": sets["val"].labeled_counts()[task],
            "seconds": round(time.perf_counter() - t0, 2), "results": results}
