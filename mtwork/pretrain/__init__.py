"""Embedded self-supervised pretraining on unlabeled images, each method writing its upstream layout.

``PRETRAINERS``: checkpoint format name -> ``pretrain_<method>(image_dirs, out, arch=..., epochs=...,
batch_size=..., crop=..., lr=..., seed=..., num_threads=..., progress=..., **method-specific) -> dict``.
The file a pretrainer writes imports with ``import_checkpoint(<same name>, out, ...)``.
"""
from mtwork.pretrain.common import PRETRAINERS
from mtwork.pretrain.byol import pretrain_byol
from mtwork.pretrain.densecl import pretrain_densecl
from mtwork.pretrain.dino import pretrain_dino
from mtwork.pretrain.moco import pretrain_moco_v2
from mtwork.pretrain.simclr import pretrain_simclr
from mtwork.pretrain.simmim import pretrain_simmim

__all__ = ["PRETRAINERS", "pretrain_byol", "pretrain_densecl", "pretrain_dino", "pretrain_moco_v2", "pretrain_simclr",
           "pretrain_simmim"]
