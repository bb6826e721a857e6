"""The UDA run's recipe (protocol ``uda``, ``mtwork.protocols.uda``), on the training engine unchanged.

Data: the engine's dataset is the source domain's labelled train split; the train transform of each
source sample also draws, from the same per-sample seeded generator, one image of the target domain's
train split, reads it *without* its labels and augments it the same way (``PairedTransform``: the
pairing is reproducible and independent of the number of processes). The collate function stacks the
target images after the source images into one batch image (B_source + B_target, 3, H, W), so one
forward pass serves both (the Swin models have only LayerNorms: no batch statistics mix the domains);
``batch["source_size"]`` says where the source images end.

Losses of a step (``UdaRecipe.losses``):

    L = sum_t w_t L_t(source)                                  # the tasks' supervised losses (vit.loss_weights)
      + lambda_adv * sum_t l(D_t(view_t(target)), source)      # fool each task's discriminator
      [+ weight * CE(semseg(target), confident pseudo-labels)] # vit.uda.pseudo_labels

and, inside the same call, one step of every discriminator on the detached source and target views
(``mtwork.methods.output_discriminator``), with its own Adam, after the adversarial term was formed
(AdaptSegNet's order). The discriminators' weights and optimizer state are part of the recipe's
state, so a resumed run continues exactly. With gradient accumulation the discriminators step once
per micro-batch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import torch

from mtwork.engine.recipe import StepContext
from mtwork.methods.output_discriminator import OutputDiscriminators, output_view
from mtwork.methods.pseudo_labels import pseudo_label_loss
from mtwork.protocols.transfer_recipe import TransferRecipe
from mtwork.train_vit import activate, task_out_channels, vit_dataset

#: Keys of a raw sample that are not labels (what a target image keeps).
IMAGE_KEYS = ("image", "name", "orig_size")
SOURCE_SIZE = "source_size"
TARGET_IMAGE = "target_image"


class PairedTransform:
    """The train transform of a source sample, plus one unlabelled target image drawn with the same
    generator: ``target = target_dataset.raw_sample(randint(len(target_dataset)))`` without labels,
    transformed like a source image. Returns the source sample with ``target_image`` (3, H, W)."""

    def __init__(self, transform: Callable[..., Dict[str, Any]], target_dataset: Any):
        if len(target_dataset) == 0:
            from mtwork.data.bdd100k import DatasetError

            raise DatasetError(f"{getattr(target_dataset, 'root', 'the target domain')}: the UDA target domain has "
                               "no training image")
        self.transform = transform
        self.target = target_dataset

    def __call__(self, sample: Dict[str, Any], generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
        out = self.transform(sample, generator=generator)
        index = int(torch.randint(len(self.target), (), generator=generator))
        raw = self.target.raw_sample(index)
        unlabelled = {k: raw[k] for k in IMAGE_KEYS}
        target = self.transform(unlabelled, generator=generator)
        height, width = target["image"].shape[-2:]
        out[TARGET_IMAGE] = target["image"]
        out[TARGET_IMAGE + "_box"] = tuple(target.get("image_box", (0, 0, width, height)))  # its real pixels
        return out


def paired_collate(collate: Callable[[Sequence[Dict[str, Any]]], Dict[str, Any]]):
    """A collate function: ``collate`` of the source samples, their target images appended to ``image``."""

    def collate_pairs(samples: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        targets = torch.stack([s[TARGET_IMAGE] for s in samples])
        boxes = torch.tensor([list(s[TARGET_IMAGE + "_box"]) for s in samples], dtype=torch.long)
        batch = collate([{k: v for k, v in s.items() if not k.startswith(TARGET_IMAGE)} for s in samples])
        batch["image"] = torch.cat([batch["image"], targets])
        # the uint8 contract: batch_to_device normalises every image and zeroes the padding of each
        batch["image_box"] = torch.cat([batch["image_box"], boxes])
        batch["valid_size"] = torch.cat([batch["valid_size"], boxes[:, [3, 2]]])
        batch[SOURCE_SIZE] = len(samples)
        return batch

    return collate_pairs


class UdaRecipe(TransferRecipe):
    """Labelled source + unlabelled target batches, per-task output-space discriminators (module docstring)."""

    def __init__(self, params: Mapping[str, Any], run, data_root, checkpoint, domain=None, *, init_dir: Path,
                 target_root: Path):
        super().__init__(params, run, data_root, checkpoint, domain, init_dir=init_dir)
        spec = params["vit"]["uda"]
        target = self.protocol.train_domains(params, run)[1]
        self.target_domain = target
        self.target_dataset = vit_dataset(params, target_root, "train", run.tasks, domain=target)
        self.transform = PairedTransform(self.transform, self.target_dataset)
        self.collate = paired_collate(self.collate)
        self.adv_weight = float(spec["adversarial_weight"])
        self.pseudo = spec["pseudo_labels"]
        # initialised from the global RNG that seed_everything(run.seed) set in VitRecipe.__init__
        self.discriminators = OutputDiscriminators(
            {t: task_out_channels(self.tasks[t]) for t in run.tasks}, width=int(spec["discriminator_width"]),
            lr=float(spec["discriminator_lr"]), loss=spec["gan_loss"])

    def to(self, device: torch.device) -> None:
        super().to(device)
        self.discriminators.to(device)

    def log_header(self) -> Dict[str, Any]:
        return {**super().log_header(), "target_domain": self.target_domain,
                "target_images": len(self.target_dataset),
                "uda": {"adversarial_weight": self.adv_weight, "gan_loss": self.discriminators.loss_name,
                        "pseudo_labels": self.pseudo,
                        "discriminator_params": sum(p.numel() for p in self.discriminators.parameters())}}

    def losses(self, outputs: Any, batch: Mapping[str, Any], ctx: StepContext):
        b = int(batch[SOURCE_SIZE])
        preds = {t: activate(self.tasks[t], raw.float()) for t, raw in outputs.items()}
        source = {t: p[:b] for t, p in preds.items()}
        target = {t: p[b:] for t, p in preds.items()}
        supervised = {t: self.weights[t] * self.tasks[t].loss(source[t], batch, batch["labeled"][t])
                      for t in self.tasks if t in ctx.present}
        total = self.balancer.weighted_loss(supervised)  # the engine calls only when a source label is present
        source_views = {t: output_view(t, source[t]) for t in self.discriminators.tasks}
        target_views = {t: output_view(t, target[t]) for t in self.discriminators.tasks}
        adversarial = self.discriminators.adversarial(target_views)
        disc = self.discriminators.update(source_views, target_views, ctx.all_reduce)
        total = total + self.adv_weight * torch.stack(list(adversarial.values())).sum()
        parts: Dict[str, Any] = {t: v.detach() for t, v in supervised.items()}
        parts.update({f"adv_{t}": v.detach() for t, v in adversarial.items()})
        parts.update({f"disc_{t}": v for t, v in disc.items()})
        if self.pseudo is not None and "semseg" in target:
            loss, share = pseudo_label_loss(target["semseg"], float(self.pseudo["threshold"]))
            total = total + float(self.pseudo["weight"]) * loss
            parts["pseudo_semseg"] = loss.detach()
            parts["pseudo_semseg_share"] = share
        return total, parts

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "discriminators": self.discriminators.training_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if "discriminators" in state:
            self.discriminators.load_training_state(state["discriminators"])
