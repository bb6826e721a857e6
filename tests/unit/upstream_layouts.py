"""Checkpoints in the key layouts of upstream self-supervised releases, built from one resnet18 state dict.

Each ``build_<format>`` returns an :class:`Upstream`: the object ``torch.load`` gives for that upstream
file (same top-level entries, key names, shapes and dtypes as the release, with resnet18 in place of
ResNet-50), plus what importing it must give. The converter docstrings in
``mtwork/checkpoints/formats.py`` say where each layout is published.

* The encoder a converter must keep is always :func:`encoder` (one cached resnet18 state dict with random
  weights and BN statistics), so builders cost almost nothing and the expected result is known exactly.
* Everything a converter must drop (momentum encoders, students, heads, queues) is a *decoy*: the right
  key, shape and dtype, filled with a constant per part (:func:`decoys`). A converter that keeps the wrong
  encoder or head returns constants where random weights belong, which the round trip catches. Decoys
  are expanded scalars, so a 4608x4608 DetCo head or a 65536-wide DINO head costs a few bytes on disk.
"""
from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Mapping, Optional, Set, Tuple

import torch
from torch import nn

from mtwork.models.backbones import create_features_model

ARCH = "resnet18"
Shape = Tuple[int, ...]


@dataclass
class Upstream:
    """One upstream checkpoint object, what importing it must give, and where its weights live.

    ``reference``: the backbone state (timm keys) the import must reproduce exactly.
    ``weights``: the dict inside ``obj`` holding tensors (mutated by the refusal tests).
    ``key``: backbone key -> the key of the same tensor in ``weights``.
    ``dropped``: upstream keys the report must list as dropped.
    """

    obj: Optional[dict]
    reference: Dict[str, torch.Tensor]
    weights: Optional[dict] = None
    key: Callable[[str], str] = lambda k: k
    dropped: Set[str] = field(default_factory=set)
    # Tensors the import must NOT reproduce (e.g. MoCo's key encoder), by backbone key.
    decoys: Dict[str, torch.Tensor] = field(default_factory=dict)

    def fresh(self) -> "Upstream":
        """A copy whose dicts can be edited (tensors are shared: the tests replace, never modify them)."""
        if self.weights is None:
            return replace(self)
        weights = dict(self.weights)
        if self.obj is self.weights:
            obj = weights
        else:
            obj = {k: (weights if v is self.weights else v) for k, v in self.obj.items()}
        return replace(self, obj=obj, weights=weights)


def randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    """Give BN buffers distinct values: fresh models all hold zeros/ones, which would hide a mix-up."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
            module.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
    return model


# --------------------------------------------------------------------------- building blocks


@functools.lru_cache(maxsize=None)
def _encoder() -> Dict[str, torch.Tensor]:
    torch.manual_seed(7)
    model = randomise_bn(create_features_model(ARCH), 7)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def encoder() -> Dict[str, torch.Tensor]:
    """The encoder every layout keeps, in the importer's key order (a new dict; never modify its tensors)."""
    return dict(_encoder())


def width() -> int:
    """Channels of the encoder's last stage (512 for resnet18, 2048 for ResNet-50)."""
    return _encoder()["layer4.1.bn2.weight"].shape[0]


def stage_channels() -> list:
    """Output channels of each stage: the last convolution's output in each ``layerN``."""
    state = _encoder()
    return [[v.shape[0] for k, v in state.items() if k.startswith(f"layer{i}.") and v.dim() == 4][-1]
            for i in range(1, 5)]


def shapes(state: Mapping[str, torch.Tensor]) -> Dict[str, Shape]:
    return {key: tuple(value.shape) for key, value in state.items()}


def decoys(layout: Mapping[str, Shape], fill: float, prefix: str = "") -> Dict[str, torch.Tensor]:
    """``prefix + key`` -> a tensor of that shape holding ``fill`` (BN step counters as integers)."""
    out = {}
    for key, shape in layout.items():
        dtype = torch.long if key.endswith("num_batches_tracked") else torch.float32
        out[prefix + key] = torch.tensor(fill, dtype=dtype).expand(shape)
    return out


def prefixed(prefix: str, state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}


def linear(name: str, out_dim: int, in_dim: int, bias: bool = True) -> Dict[str, Shape]:
    return {f"{name}.weight": (out_dim, in_dim), **({f"{name}.bias": (out_dim,)} if bias else {})}


def conv1x1(name: str, out_dim: int, in_dim: int, bias: bool = True) -> Dict[str, Shape]:
    return {f"{name}.weight": (out_dim, in_dim, 1, 1), **({f"{name}.bias": (out_dim,)} if bias else {})}


def batchnorm(name: str, channels: int, affine: bool = True) -> Dict[str, Shape]:
    params = {f"{name}.weight": (channels,), f"{name}.bias": (channels,)} if affine else {}
    return {**params, f"{name}.running_mean": (channels,), f"{name}.running_var": (channels,),
            f"{name}.num_batches_tracked": ()}


def optimizer_state(lr: float = 0.0) -> dict:
    """An optimizer ``state_dict()`` without momentum buffers (the converters only drop it whole)."""
    return {"state": {}, "param_groups": [{"lr": lr, "momentum": 0.9, "weight_decay": 1e-6, "params": [0, 1]}]}


def _upstream(obj: dict, wrapper: Optional[str], prefix: str,
              decoy_encoder: Optional[Dict[str, torch.Tensor]] = None) -> Upstream:
    """Wrap a built file: the kept encoder is ``weights[prefix + key]``; everything else is dropped."""
    weights = obj if wrapper is None else obj[wrapper]
    reference = encoder()
    kept = {prefix + key for key in reference}
    assert all(weights[k] is reference[k[len(prefix):]] for k in kept), "builder must store the encoder itself"
    top = {k for k in obj if k != wrapper} if wrapper is not None else set()
    return Upstream(obj=obj, reference=reference, weights=weights, key=lambda k: prefix + k,
                    dropped={k for k in weights if k not in kept} | top, decoys=decoy_encoder or {})


# --------------------------------------------------------------------------- layouts


def moco_v3_mlp(name: str, in_dim: int, hidden: int, out_dim: int) -> Dict[str, Shape]:
    """moco-v3 ``_build_mlp(2, ...)``: Linear(no bias), BN1d, ReLU, Linear(no bias), BN1d(affine=False)."""
    return {**linear(f"{name}.0", hidden, in_dim, bias=False), **batchnorm(f"{name}.1", hidden),
            **linear(f"{name}.3", out_dim, hidden, bias=False), **batchnorm(f"{name}.4", out_dim, affine=False)}


def build_moco_v3(prefix: str = "module.") -> Upstream:
    """facebookresearch/moco-v3 ``main_moco.py`` checkpoint of ``MoCo_ResNet`` (mlp_dim 4096, dim 256)."""
    enc = encoder()
    projector = moco_v3_mlp("fc", width(), 4096, 256)
    momentum = decoys(shapes(enc), -2.0)
    state = {
        **prefixed(f"{prefix}base_encoder.", enc),
        **decoys(projector, 1.0, f"{prefix}base_encoder."),
        **prefixed(f"{prefix}momentum_encoder.", momentum),
        **decoys(projector, -1.0, f"{prefix}momentum_encoder."),
        **decoys(moco_v3_mlp("predictor", 256, 4096, 256), 3.0, prefix),
    }
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 0}
    obj = {"epoch": 300, "arch": ARCH, "state_dict": state, "optimizer": optimizer_state(), "scaler": scaler}
    return _upstream(obj, "state_dict", f"{prefix}base_encoder.", momentum)


def build_simclr() -> Upstream:
    """tonylins/simclr-converter ``convert.py`` output: ``{"state_dict": torchvision keys + fc}``."""
    state = {**encoder(), **decoys(linear("fc", 1000, width()), 0.5)}
    return _upstream({"state_dict": state}, "state_dict", "")


def nonlinear_neck(name: str, in_dim: int, hidden: int, out_dim: int) -> Dict[str, Shape]:
    """mmselfsup ``NonLinearNeck`` as BYOL configures it: fc0(bias), bn0, fc1(no bias), no last BN."""
    return {**linear(f"{name}.fc0", hidden, in_dim), **batchnorm(f"{name}.bn0", hidden),
            **linear(f"{name}.fc1", out_dim, hidden, bias=False)}


def build_byol() -> Upstream:
    """mmselfsup 1.x BYOL checkpoint: online backbone/neck/head, ``CosineEMA`` target (``target_net.module``)."""
    enc = encoder()
    target = decoys(shapes(enc), -2.0)
    state = {
        **prefixed("backbone.", enc),
        **decoys(nonlinear_neck("neck", width(), 4096, 256), 1.0),
        **decoys(nonlinear_neck("head.predictor", 256, 4096, 256), 3.0),
        "target_net.steps": torch.tensor(250200),
        **prefixed("target_net.module.0.", target),
        **decoys(nonlinear_neck("target_net.module.1", width(), 4096, 256), -1.0),
    }
    obj = {
        "meta": {"epoch": 200, "iter": 250200, "mmengine_version": "0.7.0", "seed": 0,
                 "experiment_name": "byol_resnet50_16xb256-coslr-200e_in1k"},
        "state_dict": state,
        "message_hub": {"log_scalars": {}, "runtime_info": {"epoch": 200, "iter": 250200}, "resumed_keys": {}},
        "optimizer": optimizer_state(),
        "param_schedulers": [{"T_max": 190, "eta_min": 0.0, "base_values": [4.8], "last_step": 200}],
    }
    return _upstream(obj, "state_dict", "backbone.", target)


def build_byol_openselfsup() -> Upstream:
    """OpenSelfSup / mmselfsup 0.x BYOL: ``online_net.{0,1}`` (backbone and neck again), ``target_net.{0,1}``."""
    enc = encoder()
    target = decoys(shapes(enc), -2.0)
    state = {
        **prefixed("online_net.0.", enc),
        **decoys(nonlinear_neck("online_net.1", width(), 4096, 256), 1.0),
        **prefixed("target_net.0.", target),
        **decoys(nonlinear_neck("target_net.1", width(), 4096, 256), -1.0),
        **prefixed("backbone.", enc),
        **decoys(nonlinear_neck("head.predictor", 256, 4096, 256), 3.0),
    }
    return _upstream({"meta": {"epoch": 200}, "state_dict": state, "optimizer": optimizer_state()},
                     "state_dict", "backbone.", target)


def swav_heads() -> Dict[str, Shape]:
    """facebookresearch/swav ``src/resnet50.py``: projection_head (hidden_mlp 2048, feat_dim 128), 3000 prototypes."""
    return {**linear("projection_head.0", 2048, width()), **batchnorm("projection_head.1", 2048),
            **linear("projection_head.3", 128, 2048), **linear("prototypes", 3000, 128, bias=False)}


def build_swav() -> Upstream:
    """The released SwAV file (``swav_800ep_pretrain.pth.tar``): a bare state dict of the DDP model."""
    state = prefixed("module.", {**encoder(), **decoys(swav_heads(), 1.5)})
    return _upstream(state, None, "module.")


def dino_head(name: str = "head") -> Dict[str, Shape]:
    """facebookresearch/dino ``DINOHead`` (3 layers, hidden 2048, bottleneck 256, out_dim 65536, weight norm)."""
    return {**linear(f"{name}.mlp.0", 2048, width()), **linear(f"{name}.mlp.2", 2048, 2048),
            **linear(f"{name}.mlp.4", 256, 2048),
            f"{name}.last_layer.weight_g": (65536, 1), f"{name}.last_layer.weight_v": (65536, 256)}


def build_dino() -> Upstream:
    """``main_dino.py``'s checkpoint (``dino_resnet50_pretrain_full_checkpoint.pth``); the teacher is kept."""
    student_backbone = decoys(shapes(encoder()), -1.0)
    teacher = prefixed("module.", {**prefixed("backbone.", encoder()), **decoys(dino_head(), 2.0)})
    student = prefixed("module.", {**prefixed("backbone.", student_backbone), **decoys(dino_head(), -3.0)})
    args = argparse.Namespace(arch=ARCH, out_dim=65536, use_bn_in_head=False, epochs=800, lr=0.03)
    obj = {"student": student, "teacher": teacher, "optimizer": optimizer_state(), "epoch": 800, "args": args,
           "dino_loss": {"center": torch.zeros(1, 65536)}}
    return _upstream(obj, "teacher", "module.backbone.", student_backbone)


def densecl_neck() -> Dict[str, Shape]:
    """WXinlong/DenseCL ``DenseCLNeck`` (hid 2048, out 128): mlp = fc-relu-fc, mlp2 = 1x1 conv-relu-conv."""
    return {**linear("mlp.0", 2048, width()), **linear("mlp.2", 128, 2048),
            **conv1x1("mlp2.0", 2048, width()), **conv1x1("mlp2.2", 128, 2048)}


def build_densecl() -> Upstream:
    """OpenSelfSup training checkpoint of DenseCL (``epoch_200.pth``): queues, encoder_q/k, backbone."""
    enc = encoder()
    key_encoder = decoys(shapes(enc), -2.0)
    queue = decoys({"queue": (128, 65536)}, 0.25)["queue"]
    state = {
        "queue": queue, "queue_ptr": torch.zeros(1, dtype=torch.long),
        "queue2": queue, "queue2_ptr": torch.zeros(1, dtype=torch.long),
        **prefixed("encoder_q.0.", enc),
        **decoys(densecl_neck(), 1.0, "encoder_q.1."),
        **prefixed("encoder_k.0.", key_encoder),
        **decoys(densecl_neck(), -1.0, "encoder_k.1."),
        **prefixed("backbone.", enc),  # the same module as encoder_q.0
    }
    obj = {"meta": {"epoch": 200, "iter": 500400, "mmcv_version": "1.0.3"}, "state_dict": state,
           "optimizer": optimizer_state()}
    return _upstream(obj, "state_dict", "backbone.", key_encoder)


def pixpro_mlp2d(name: str, in_dim: int, inner: int, out_dim: int) -> Dict[str, Shape]:
    """zdaxie/PixPro ``MLP2d``: linear1 (1x1 conv), bn1, relu1, linear2 (1x1 conv)."""
    return {**conv1x1(f"{name}.linear1", inner, in_dim), **batchnorm(f"{name}.bn1", inner),
            **conv1x1(f"{name}.linear2", out_dim, inner)}


def build_pixpro() -> Upstream:
    """``main_pretrain.py`` checkpoint of PixPro-base (transform layer 1, no instance branch, apex O1)."""
    enc = encoder()
    key_encoder = decoys(shapes(enc), -2.0)
    model = prefixed("module.", {
        **prefixed("encoder.", enc),
        **decoys(pixpro_mlp2d("projector", width(), 4096, 256), 1.0),
        **prefixed("encoder_k.", key_encoder),
        **decoys(pixpro_mlp2d("projector_k", width(), 4096, 256), -1.0),
        **decoys(conv1x1("value_transform", 256, 256), 0.5),
    })
    opt = argparse.Namespace(arch=ARCH, model="PixPro", head_type="early_return", epochs=400,
                             pixpro_transform_layer=1, pixpro_ins_loss_weight=0.0, amp_opt_level="O1")
    obj = {"opt": opt, "model": model, "optimizer": optimizer_state(),
           "scheduler": {"last_epoch": 400, "base_lrs": [1.0]}, "epoch": 400,
           "amp": {"loss_scaler0": {"loss_scale": 65536.0, "unskipped": 0}}}
    return _upstream(obj, "model", "module.encoder.", key_encoder)


def detco_query_encoder() -> Tuple[Dict[str, torch.Tensor], Dict[str, Shape]]:
    """shuuchen/DetCo.pytorch ``detco/models.py`` ResNet: the trunk, the stages again as ``layers.{0..3}``,
    and per stage a global and a local (3x3 jigsaw, 9x channels) head ``mlp = Linear, ReLU, Linear(dim 128)``.

    Returns (the query encoder's tensors, the shapes of its heads).
    """
    enc = encoder()
    aliases = {f"layers.{i - 1}.{k[len(f'layer{i}.'):]}": v
               for i in range(1, 5) for k, v in enc.items() if k.startswith(f"layer{i}.")}
    heads: Dict[str, Shape] = {}
    for kind, factor in (("global_mlps", 1), ("local_mlps", 9)):
        for i, channels in enumerate(stage_channels()):
            dim = channels * factor
            heads.update({**linear(f"{kind}.{i}.mlp.0", dim, dim), **linear(f"{kind}.{i}.mlp.2", 128, dim)})
    return {**enc, **aliases}, heads


def build_detco() -> Upstream:
    """shuuchen/DetCo.pytorch ``main_detco.py`` checkpoint (facebookresearch/moco's checkpoint layout)."""
    query, heads = detco_query_encoder()
    key_encoder = decoys({**shapes(query), **heads}, -2.0)
    state = {
        **decoys({"queue": (8, 128, 65536)}, 0.25, "module."),
        "module.queue_ptr": torch.zeros(1, dtype=torch.long),
        **prefixed("module.encoder_q.", query),
        **decoys(heads, 1.0, "module.encoder_q."),
        **prefixed("module.encoder_k.", key_encoder),
    }
    obj = {"epoch": 200, "arch": ARCH, "state_dict": state, "optimizer": optimizer_state()}
    return _upstream(obj, "state_dict", "module.encoder_q.", {k: key_encoder[k] for k in encoder()})


# --------------------------------------------------------------------------- full-size networks


def constant_encoder(arch: str) -> Dict[str, torch.Tensor]:
    """torchvision ``arch``'s trunk (its ``state_dict()`` keys and shapes without ``fc``, read on the meta
    device) with key ``i`` holding the constant ``i + 1`` (BN step counters as int64 ``i + 1``).

    Each tensor is a scalar expanded to its shape, so a 25 M-parameter ResNet-50 costs bytes until the
    importer copies it, and a key that lands under another key's name shows as the wrong constant."""
    import torchvision

    with torch.device("meta"):
        model = getattr(torchvision.models, arch)()
    layout = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("fc.")}
    out = {}
    for i, (key, shape) in enumerate(layout.items()):
        dtype = torch.long if key.endswith("num_batches_tracked") else torch.float32
        out[key] = torch.tensor(i + 1, dtype=dtype).expand(shape)
    return out


def build_moco_v2_file(enc: Dict[str, torch.Tensor], arch: str, queue: int = 65536) -> dict:
    """facebookresearch/moco ``main_moco.py`` checkpoint of MoCo v2 (``--mlp``, dim 128) around the query
    encoder ``enc`` (torchvision keys), as ``moco_v2_800ep_pretrain.pth.tar`` is for ``arch`` resnet50::

        {"epoch", "arch", "optimizer", "state_dict": {"module.queue", "module.queue_ptr",
         "module.encoder_q.<enc>", "module.encoder_q.fc.{0,2}.*", "module.encoder_k.*"}}
    """
    width = [v.shape[0] for k, v in enc.items() if k.startswith("layer4.") and v.dim() == 4][-1]
    head = {**linear("fc.0", width, width), **linear("fc.2", 128, width)}
    state = {
        **decoys({"queue": (128, queue)}, 0.25, "module."),
        "module.queue_ptr": torch.zeros(1, dtype=torch.long),
        **prefixed("module.encoder_q.", enc),
        **decoys(head, 1.0, "module.encoder_q."),
        **decoys({**shapes(enc), **head}, -2.0, "module.encoder_k."),
    }
    return {"epoch": 800, "arch": arch, "state_dict": state, "optimizer": optimizer_state()}


# --------------------------------------------------------------------------- SimCLR v2 (Separius)


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride, padding=(kernel - 1) // 2, bias=False)


class _BatchNormRelu(nn.Sequential):
    def __init__(self, channels: int, relu: bool = True):
        super().__init__(nn.BatchNorm2d(channels), nn.ReLU() if relu else nn.Identity())


class _Projection(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.shortcut = _conv(cin, cout, 1, stride)
        self.bn = _BatchNormRelu(cout, relu=False)

    def forward(self, x):
        return self.bn(self.shortcut(x))


class _BottleneckBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int, project: bool):
        super().__init__()
        self.projection = _Projection(cin, planes * 4, stride) if project else nn.Identity()
        self.net = nn.Sequential(_conv(cin, planes, 1), _BatchNormRelu(planes), _conv(planes, planes, 3, stride),
                                 _BatchNormRelu(planes), _conv(planes, planes * 4, 1),
                                 _BatchNormRelu(planes * 4, relu=False))

    def forward(self, x):
        return torch.relu(self.projection(x) + self.net(x))


class _Blocks(nn.Module):
    def __init__(self, count: int, cin: int, planes: int, stride: int):
        super().__init__()
        self.blocks = nn.ModuleList([_BottleneckBlock(cin, planes, stride, True)] +
                                    [_BottleneckBlock(planes * 4, planes, 1, False) for _ in range(count - 1)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class SimCLRv2ResNet(nn.Module):
    """The module tree of Separius/SimCLRv2-Pytorch ``resnet.py`` for selective-kernel-free (sk0), 1x models.

    ``net.0`` is the stem (7x7 conv, BN+ReLU, max pool), ``net.1..4`` the stages (``blocks.{i}`` with a
    ``projection`` shortcut on the first block and the residual branch ``net``), ``fc`` the supervised head.
    ``forward`` returns the last feature map (no pooling), to compare with a torchvision trunk.
    """

    def __init__(self, layers=(3, 4, 6, 3)):
        super().__init__()
        stages, cin = [], 64
        for i, count in enumerate(layers):
            stages.append(_Blocks(count, cin, 64 * 2 ** i, 1 if i == 0 else 2))
            cin = 64 * 2 ** i * 4
        stem = nn.Sequential(_conv(3, 64, 7, 2), _BatchNormRelu(64), nn.MaxPool2d(3, 2, 1))
        self.net = nn.Sequential(stem, *stages)
        self.fc = nn.Linear(cin, 1000)
        self.channels_out = cin

    def forward(self, x):
        return self.net(x)


def contrastive_head(channels: int, out_dim: int = 128) -> Dict[str, Shape]:
    """Separius ``ContrastiveHead``: ``layers`` = 3 x (Linear no bias, BN1d[, ReLU]) -> indices 0,1,3,4,6,7."""
    head: Dict[str, Shape] = {}
    for i, index in enumerate((0, 3, 6)):
        dim = out_dim if i == 2 else channels
        head.update({**linear(f"layers.{index}", dim, channels, bias=False), **batchnorm(f"layers.{index + 1}", dim)})
    return head


def simclr_v2_file(model: SimCLRv2ResNet) -> dict:
    """Separius ``convert.py`` output: ``{"resnet": model.state_dict(), "head": ContrastiveHead state}``."""
    resnet = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"resnet": resnet, "head": decoys(contrastive_head(model.channels_out), 0.5)}


BUILDERS: Dict[str, Callable[[], Upstream]] = {
    "moco_v3": build_moco_v3,
    "simclr": build_simclr,
    "byol": build_byol,
    "swav": build_swav,
    "dino": build_dino,
    "densecl": build_densecl,
    "pixpro": build_pixpro,
    "detco": build_detco,
}
