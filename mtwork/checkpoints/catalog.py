"""Where the real upstream checkpoints are published: the one table of paper-scale sources.

Each entry names the file as its publisher releases it, the direct download URL, the checksum the
publisher gives (if any) and the ``mtwork.checkpoints.formats`` converter that reads it. Only what was
found in the publisher's own material is recorded (the page in ``page``, checked 2026-11 through the
code/doc search, not by downloading); anything that could not be confirmed is None and the entry's
``notes`` say why. Nothing here was downloaded or verified against the real file on this machine.

Checksum conventions the publishers use (``download`` checks whichever is given):

* torchvision names files ``<arch>-<first 8 hex of sha256>.pth`` and ``torch.hub`` checks that prefix;
* OpenMMLab's ``publish_model.py`` appends ``-<sha256[:8]>`` to the released file name;
* OpenAI's CLIP URLs carry the file's full sha256 as a path component (``clip.py`` and open_clip check it);
  open_clip's own GitHub releases end in ``-<sha256 prefix>.pt`` (open_clip checks it);
* MoCo's README lists the first 8 hex digits of each file's **md5**.

Sources without a direct URL (Google Drive pages, conversions from TensorFlow) have ``url=None``:
``fetch_source`` then only verifies a file the user placed at ``dest_dir / file_name`` by hand.
This module is data only (stdlib), so the CLI, the docs and the tests can read it cheaply.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional


@dataclass(frozen=True)
class UpstreamSource:
    """One published checkpoint.

    name: the source name (``checkpoints.catalog`` in params.yaml uses the same names).
    format: the converter in ``mtwork.checkpoints.formats.CHECKPOINT_FORMATS`` that reads the file.
    arch: the mtwork backbone arch of the network the file holds (``resnet50``: the torchvision/timm
        ResNet-50 keys after conversion; ``clip:RN50-quickgelu``: CLIP's modified ResNet-50, a different
        network, in the QuickGELU open_clip config its weights were trained with).
    file_name: the published file name (where ``fetch_source`` puts or expects it).
    url: direct download URL, or None when there is none (see ``notes``).
    sha256 / sha256_prefix / md5_prefix: the checksums the publisher gives (full digest / leading hex).
    page: where the publisher lists the file (README, model zoo, source file).
    notes: what is unconfirmed or special about this source.
    """

    name: str
    format: str
    arch: str
    file_name: str
    url: Optional[str]
    page: str
    sha256: Optional[str] = None
    sha256_prefix: Optional[str] = None
    md5_prefix: Optional[str] = None
    notes: str = ""

    @property
    def checksum(self) -> str:
        """The strongest published checksum as ``algo:hex`` (``sha256~`` for a prefix), or ``none``."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        if self.sha256_prefix:
            return f"sha256~{self.sha256_prefix}"
        if self.md5_prefix:
            return f"md5~{self.md5_prefix}"
        return "none"


_FB = "https://dl.fbaipublicfiles.com"

_ENTRIES = (
    UpstreamSource(
        name="supervised_imagenet",
        format="torchvision",
        arch="resnet50",
        file_name="resnet50-0676ba61.pth",
        url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
        sha256_prefix="0676ba61",
        page="torchvision.models.ResNet50_Weights.IMAGENET1K_V1 (torchvision/models/resnet.py)",
        notes="URL read from the installed torchvision 0.29.1; the hash in the name is torch.hub's sha256 prefix.",
    ),
    UpstreamSource(
        name="supervised_imagenet_v2",
        format="torchvision",
        arch="resnet50",
        file_name="resnet50-11ad3fa6.pth",
        url="https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
        sha256_prefix="11ad3fa6",
        page="torchvision.models.ResNet50_Weights.IMAGENET1K_V2 (torchvision/models/resnet.py)",
        notes="torchvision's newer training recipe (80.9% top-1); URL read from the installed torchvision 0.29.1.",
    ),
    UpstreamSource(
        name="moco_v2",
        format="moco",
        arch="resnet50",
        file_name="moco_v2_800ep_pretrain.pth.tar",
        url=f"{_FB}/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar",
        md5_prefix="a04e12f8",
        page="https://github.com/facebookresearch/moco (README, Models table)",
        notes="The README gives an md5 prefix, no sha256.",
    ),
    UpstreamSource(
        name="moco_v3",
        format="moco_v3",
        arch="resnet50",
        file_name="r-50-1000ep.pth.tar",
        url=f"{_FB}/moco-v3/r-50-1000ep/r-50-1000ep.pth.tar",
        page="https://github.com/facebookresearch/moco-v3 (CONFIG.md, ResNet-50 models)",
        notes="No checksum published.",
    ),
    UpstreamSource(
        name="swav",
        format="swav",
        arch="resnet50",
        file_name="swav_800ep_pretrain.pth.tar",
        url=f"{_FB}/deepcluster/swav_800ep_pretrain.pth.tar",
        page="https://github.com/facebookresearch/swav (hubconf.py resnet50, README model zoo)",
        notes="No checksum published.",
    ),
    UpstreamSource(
        name="dino",
        format="dino",
        arch="resnet50",
        file_name="dino_resnet50_pretrain.pth",
        url=f"{_FB}/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
        page="https://github.com/facebookresearch/dino (hubconf.py dino_resnet50)",
        notes="The backbone-only release (no fc); no checksum published.",
    ),
    UpstreamSource(
        name="densecl",
        format="densecl",
        arch="resnet50",
        file_name="densecl_r50_imagenet_200ep.pth",
        url="https://cloudstor.aarnet.edu.au/plus/s/hdAg5RYm8NNM2QP/download",
        page="https://github.com/WXinlong/DenseCL (README, Models: DenseCL ImageNet ResNet-50 200ep)",
        notes="The URL is the README's link to AARNet CloudStor; whether that host still serves it was not "
        "checked here. The file name is the one users cite (the link does not show it). No checksum published.",
    ),
    UpstreamSource(
        name="pixpro",
        format="pixpro",
        arch="resnet50",
        file_name="pixpro_base_r50_400ep_md5_919c6612.pth",
        url=None,
        page="https://drive.google.com/file/d/1Ox2RoFbTrrllbwvITdZvwkNnKUQSUPmV/view?usp=sharing "
        "(zdaxie/PixPro README, 400 epochs, ResNet-50)",
        notes="Google Drive page only (no direct URL): download by hand. The file name is the one users cite; "
        "PixPro embeds an md5 prefix in its names, but the release page does not show this name, so the "
        "prefix is not recorded as a checksum.",
    ),
    UpstreamSource(
        name="detco",
        format="detco",
        arch="resnet50",
        file_name="detco_200ep.pth",
        url=None,
        page="https://drive.google.com/file/d/1w8cO8VyTUhyOY55nd-YbPxBXyJnhnDXR/view?usp=sharing "
        "(xieenze/DetCo README, DetCo-200ep; also on Baidu Drive)",
        notes="Google Drive page only: download by hand. The published file name and key layout could not be "
        "read; 'detco_200ep.pth' is mtwork's name for the place fetch_source looks. No checksum published.",
    ),
    UpstreamSource(
        name="simclr",
        format="simclr",
        arch="resnet50",
        file_name="r50_1x_sk0.pth",
        url=None,
        page="https://github.com/Separius/SimCLRv2-Pytorch (convert.py) from the TensorFlow checkpoint at "
        "https://storage.googleapis.com/simclr-checkpoints/simclrv2/pretrained/r50_1x_sk0/",
        notes="Google publishes TensorFlow checkpoints only; there is no published PyTorch file. Convert with "
        "Separius/SimCLRv2-Pytorch (download.py r50_1x_sk0, then convert.py, which writes r50_1x_sk0.pth). "
        "No checksum exists for the converted file.",
    ),
    UpstreamSource(
        name="byol",
        format="byol",
        arch="resnet50",
        file_name="byol_resnet50_8xb32-accum16-coslr-300e_in1k_20220225-a0daa54a.pth",
        url="https://download.openmmlab.com/mmselfsup/byol/"
        "byol_resnet50_8xb32-accum16-coslr-300e_in1k_20220225-a0daa54a.pth",
        sha256_prefix="a0daa54a",
        page="https://github.com/open-mmlab/mmselfsup (docs/en/model_zoo.md, BYOL 300e)",
        notes="OpenMMLab's reproduction (DeepMind's release is JAX); the name suffix is the sha256 prefix "
        "written by mmselfsup's tools/model_converters/publish_model.py.",
    ),
    UpstreamSource(
        name="clip_rn50",
        format="clip",
        arch="clip:RN50-quickgelu",
        file_name="RN50.pt",
        url="https://openaipublic.azureedge.net/clip/models/"
        "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
        sha256="afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
        page="open_clip pretrained.py: RN50 'openai' (read from the installed open_clip_torch 3.3.0)",
        notes="OpenAI's weights as open_clip lists them: a TorchScript archive of CLIP's modified ResNet-50 "
        "(attention pooling, 3-conv stem), not a torchvision ResNet-50, trained with QuickGELU (open_clip config "
        "'RN50-quickgelu'; its 'RN50' config has GELU). The sha256 is the URL's path component.",
    ),
    UpstreamSource(
        name="clip_rn50_yfcc15m",
        format="clip",
        arch="clip:RN50-quickgelu",
        file_name="rn50-quickgelu-yfcc15m-455df137.pt",
        url="https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/"
        "rn50-quickgelu-yfcc15m-455df137.pt",
        sha256_prefix="455df137",
        page="open_clip pretrained.py: RN50 'yfcc15m' (open_clip's own GitHub release v0.2-weights)",
        notes="Trained by open_clip on YFCC-15M; quick-GELU model config ('RN50-quickgelu').",
    ),
)

# open_clip's ModifiedResNet CLIP configs (RN50, RN101, RN50x4, RN50x16, RN50x64). Every published weight
# for them, OpenAI's release and open_clip's own (yfcc15m, cc12m), was trained with QuickGELU
# (x * sigmoid(1.702 x)); open_clip's configs of these names build nn.GELU, its "<name>-quickgelu" twins
# QuickGELU (open_clip pretrained.py marks every RN* tag quick_gelu=True). The parameters are the same,
# so loading into the GELU config raises nothing and silently shifts every text embedding.
_CLIP_RESNET = re.compile(r"RN\d+(?:x\d+)?")


def quickgelu_config_for(model_name: str) -> Optional[str]:
    """The open_clip config that published weights of ``model_name`` need, when ``model_name`` is not it:
    ``"RN50"`` -> ``"RN50-quickgelu"``; None for a QuickGELU config or any other name (ViTs, the tiny CLIP)."""
    return f"{model_name}-quickgelu" if _CLIP_RESNET.fullmatch(model_name) else None


#: name -> UpstreamSource, in table order.
SOURCES: Dict[str, UpstreamSource] = {entry.name: entry for entry in _ENTRIES}


def source_names() -> List[str]:
    return list(SOURCES)


def get_source(name: str) -> UpstreamSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise KeyError(f"unknown checkpoint source '{name}' (known: {', '.join(SOURCES)})") from None


def markdown_table() -> str:
    """The catalog as a Markdown table (docs/paper_scale.md holds a copy; a test keeps them in sync)."""
    rows = ["| source | format | file | checksum | direct URL |", "|---|---|---|---|---|"]
    for s in _ENTRIES:
        url = f"<{s.url}>" if s.url else "none (see notes)"
        rows.append(f"| `{s.name}` | `{s.format}` | `{s.file_name}` | `{s.checksum}` | {url} |")
    return "\n".join(rows)
