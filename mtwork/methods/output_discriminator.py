"""Output-space discriminators for unsupervised domain adaptation (AdaptSegNet, Tsai et al. CVPR 2018),
one per task, as source 2's slides show for its UDA protocol.

A discriminator looks at a task's *prediction map* (the output space, not features) and says whether it
came from a source or a target image. Each task's map is first put into a comparable form
(``OUTPUT_VIEWS``): class probabilities (softmax) for segmentation, log-metres for depth (so that the
maps are O(1) whatever the scene's range), the unit normal map for normals, the [0, 1] map for edges.

``OutputDiscriminator`` is AdaptSegNet's fully-convolutional ``FCDiscriminator``: four 4x4 stride-2 convs
(``width``, 2, 4, 8 x ``width`` channels) with LeakyReLU(0.2), then a 4x4 stride-2 classifier conv to
one logit per (H/32, W/32) cell (a patch discriminator).

GAN losses (``GAN_LOSSES``) on a logit map z and a domain label y (1 = source, 0 = target), averaged
over the map: ``bce`` = binary cross-entropy with logits (AdaptSegNet's), ``lsgan`` = (z - y)^2 (least
squares, Mao et al. 2017). ``OutputDiscriminators`` holds one discriminator per task with its own Adam:

* ``update(source, target)``: one discriminator step per task on *detached* maps,
  ``L_D = (l(D(s), 1) + l(D(t), 0)) / 2`` (AdaptSegNet halves each term), gradients averaged over
  processes under data parallelism before the step;
* ``adversarial(target)``: the term that trains the *model*: ``l(D(t), 1)``, target maps judged as if
  they were source maps, through a frozen snapshot of the discriminator, so no gradient reaches it.

AdaptSegNet's order per iteration is kept: the model's adversarial term uses the discriminator as it is
before this iteration's discriminator step (``adversarial`` before ``update``).
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mtwork.registry import Registry

SOURCE_LABEL, TARGET_LABEL = 1.0, 0.0
#: Smallest depth (metres) of the log-depth view: predictions are positive, this only guards log(0).
MIN_DEPTH = 1e-3

GAN_LOSS_FNS = Registry("GAN loss")


@GAN_LOSS_FNS.register("bce")
def bce_gan_loss(logits: torch.Tensor, label: float) -> torch.Tensor:
    """mean over the map of -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))]."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(label)))


@GAN_LOSS_FNS.register("lsgan")
def lsgan_loss(logits: torch.Tensor, label: float) -> torch.Tensor:
    """mean over the map of (z - y)^2."""
    return ((logits - float(label)) ** 2).mean()


GAN_LOSSES = tuple(GAN_LOSS_FNS.names())


def gan_loss(name: str, logits: torch.Tensor, label: float) -> torch.Tensor:
    return GAN_LOSS_FNS.get(name)(logits, label)


# ---- what a discriminator sees of each task's prediction -------------------------------------------

#: task -> map from its activated prediction (B, C, H, W) (depth: metres, normals: unit vectors, edges:
#: [0, 1], semseg: logits) to the discriminator's input.
OUTPUT_VIEWS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "semseg": lambda logits: torch.softmax(logits, dim=1),
    "depth": lambda metres: torch.log(metres.clamp(min=MIN_DEPTH)),
    "normals": lambda normals: normals,
    "edges": lambda edges: edges,
}


def output_view(task: str, prediction: torch.Tensor) -> torch.Tensor:
    """The discriminator input of ``task``'s activated prediction (B, C, H, W) -> (B, C, H, W)."""
    try:
        view = OUTPUT_VIEWS[task]
    except KeyError:
        raise KeyError(f"no output-space view of task '{task}' (known: {', '.join(OUTPUT_VIEWS)})") from None
    if prediction.dim() == 3:
        prediction = prediction.unsqueeze(1)
    return view(prediction)


# ---- the networks ----------------------------------------------------------------------------------


class OutputDiscriminator(nn.Module):
    """AdaptSegNet's FCDiscriminator: (B, C, H, W) -> (B, 1, H/32, W/32) logits (1 = source)."""

    def __init__(self, in_channels: int, width: int = 64):
        super().__init__()
        if in_channels < 1 or width < 1:
            raise ValueError(f"discriminator needs in_channels >= 1 and width >= 1, got {in_channels}, {width}")
        chans = [in_channels, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(chans[-1], 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


AllReduce = Optional[Callable[[torch.Tensor], torch.Tensor]]


class OutputDiscriminators(nn.Module):
    """One ``OutputDiscriminator`` per task, their Adam (AdaptSegNet: betas 0.9, 0.99) and the GAN loss.

    ``channels``: {task: channels of its output view}; ``lr``: the discriminators' constant learning rate.
    Everything runs in float32 with autocast off: the discriminators are small, and their losses are
    read against each other across steps.
    """

    def __init__(self, channels: Mapping[str, int], width: int = 64, lr: float = 1e-4, loss: str = "bce"):
        super().__init__()
        if not channels:
            raise ValueError("at least one task needs a discriminator")
        GAN_LOSS_FNS.get(loss)  # a KeyError naming the known losses
        self.loss_name = loss
        self.nets = nn.ModuleDict({t: OutputDiscriminator(int(c), width) for t, c in channels.items()})
        self.optimizer = torch.optim.Adam(self.parameters(), lr=float(lr), betas=(0.9, 0.99))

    @property
    def tasks(self) -> Sequence[str]:
        return list(self.nets)

    def _judge(self, task: str, views: torch.Tensor, params: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        with torch.autocast(device_type=views.device.type, enabled=False):
            x = views.float()
            return self.nets[task](x) if params is None else functional_call(self.nets[task], params, (x,))

    def adversarial(self, target: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """{task: l(D_task(target view), source label)}: gradients reach the model's outputs only (the
        discriminator's weights enter as a detached snapshot)."""
        out = {}
        for task, views in target.items():
            frozen = {name: p.detach().clone() for name, p in self.nets[task].named_parameters()}
            out[task] = gan_loss(self.loss_name, self._judge(task, views, frozen), SOURCE_LABEL)
        return out

    def losses(self, source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """{task: (l(D(source), 1) + l(D(target), 0)) / 2} on detached views (the discriminators' loss)."""
        out = {}
        for task in self.nets:
            real = self._judge(task, source[task].detach())
            fake = self._judge(task, target[task].detach())
            out[task] = 0.5 * (gan_loss(self.loss_name, real, SOURCE_LABEL) + gan_loss(self.loss_name, fake, TARGET_LABEL))
        return out

    def update(self, source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
               all_reduce: AllReduce = None) -> Dict[str, torch.Tensor]:
        """One step of every discriminator; returns their (detached) losses. ``all_reduce``: the mean over
        processes under data parallelism (every process then takes the same step)."""
        self.optimizer.zero_grad(set_to_none=True)
        losses = self.losses(source, target)
        torch.stack(list(losses.values())).sum().backward()
        if all_reduce is not None:
            for p in self.parameters():
                if p.grad is not None:
                    p.grad.copy_(all_reduce(p.grad))
        self.optimizer.step()
        return {t: v.detach() for t, v in losses.items()}

    def training_state(self) -> Dict[str, object]:
        """Weights and optimizer state (an epoch checkpoint's part, for exact resume)."""
        return {"nets": self.nets.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_training_state(self, state: Mapping[str, object]) -> None:
        self.nets.load_state_dict(state["nets"])
        self.optimizer.load_state_dict(state["optimizer"])
