"""VTAGML (source 2): Vision-Transformer adapters for generalizable multi-task learning on a frozen Swin-V2.

Model = frozen timm ``SwinTransformerV2`` encoder + adapter blocks in place of some of its blocks (paper:
the last 4 blocks of stage 3 and both blocks of stage 4) + one Swin decoder and head per task
(``mtwork.models.swin_decoder``). An adapter block is the pretrained block with

- Task-Adapted Attention (``mtwork.methods.taa``) in place of its window attention,
- Task-Scaled Norm (``mtwork.methods.tsn``) in place of its two LayerNorms,
- a bottleneck adapter on the block output, with a skip from the previous adapter (see
  ``VTAGMLAdapterBlock``).

The task embedding of target task t is ``e'_t = sum_s affinity[s, t] * E[s]`` over a learned (T, D)
table E: the affinity-weighted mix of the task embeddings with the weights of t's *column* (the affinity
is oriented as the paper's figure, rows source, columns target; ``mtwork.methods.troa``). The affinity
matrix comes from TROA (identity when none is given), which takes per-task gradients with respect to
``shared_adapter_parameters()``.

What trains in the adapted blocks (``adapted_block_training``):

- ``frozen`` (mtwork's default; the paper's stated setting of a frozen encoder): only what the adapter
  blocks add (TAA's A and FiLM maps, TSN's FiLM maps, bottleneck projections, skips); the replaced
  blocks' pretrained qkv, attention projection, position-bias MLP, logit scale, LayerNorms and MLP stay
  frozen.
- ``full`` (as the released code trains them, ``freeze_encoder_layers`` in its ``train_*.py``): every
  parameter of the replaced blocks is trainable too, plus the patch embedding. The released code also
  unfreezes the encoder's final LayerNorm, which it applies to the last stage's output; mtwork's
  decoders read the stage outputs *before* that norm (as timm's ``features_only`` does), so the final
  norm takes no part in the computation here and stays frozen rather than being counted as trainable
  while receiving no gradient (2 x C_4 parameters: 2,048 for Swin-V2-B).

One backbone pass per image for all tasks: everything before the first adapted block is
task-independent and runs once per batch (under ``torch.no_grad`` as it is frozen); only the adapted
part (adapted blocks, the frozen blocks and patch merging between and after them) and the decoders run
once per task. The released code instead fed every image once per task, T times the encoder work.

Baselines built on the same encoder and decoders (``create_vtagml_model(baseline=...)``):
``full_finetune`` (whole encoder trainable, shared by all tasks, no adapters) and ``multiscale_adapter``
(frozen encoder + source 1's multi-scale bottleneck adapters on the 4 stage outputs).

Adapter files hold only what was trained plus a small config naming the backbone arch and the sha256 of
its checkpoint source; loading refuses an adapter trained on another backbone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.models.swin_transformer_v2 import SwinTransformerV2, SwinTransformerV2Block, window_partition, \
    window_reverse
from torch import nn

from mtwork.methods.multiscale_adapter import MultiScaleAdapter
from mtwork.methods.taa import TaskAdaptedAttention
from mtwork.methods.tsn import TaskScaledNorm
from mtwork.models.swin import encoder_maps, swin_channels
from mtwork.models.swin_decoder import SwinDecoder

#: What trains in the adapted blocks (``VTAGMLModel``'s ``adapted_block_training``).
ADAPTED_BLOCK_TRAINING = ("frozen", "full")

#: Format tag and version of adapter files written by ``save_adapter``.
ADAPTER_FORMAT = "mtwork-swin-adapter"
ADAPTER_VERSION = 1

BlockId = Tuple[int, int]

#: Std of the task-embedding table E at initialisation: 1, the N(0, 1) of ``nn.Embedding``, the lookup
#: table of the released code (``task_type_embeddings``). TAA's and TSN's FiLM maps start at zero, so
#: the scale of E leaves the model exact at initialisation; it sets how fast the task-specific
#: modulation grows: each FiLM output is a dot product with e (D values), and AdamW moves the FiLM
#: weights by about ``lr`` per step whatever e's scale, so ``gamma(e)`` and ``beta(e)`` grow in
#: proportion to |e|. At 0.02 (mtwork's earlier choice) TAA's task bias stayed below 1 % of the
#: attention logits' spread after a short schedule, and the "- TAA" ablation changed the features by
#: 0.2 % (docs/vit_adapters.md, "How much TAA and TSN act").
TASK_EMBED_INIT_STD = 1.0


# ----------------------------------------------------------------------------------------------------------
# adapter block
# ----------------------------------------------------------------------------------------------------------
class HiddenSkip(nn.Module):
    """Carries the previous adapter's hidden map (B, H', W', r') to this adapter's (B, H, W, r).

    Identity when sizes agree (consecutive blocks of a stage). Across a patch merging the map is
    average-pooled to the new token grid and linearly projected to the new bottleneck width.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim) if in_dim != out_dim else nn.Identity()

    def forward(self, h: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        if tuple(h.shape[1:3]) != tuple(size):
            h = F.adaptive_avg_pool2d(h.permute(0, 3, 1, 2), size).permute(0, 2, 3, 1)
        return self.proj(h)


class VTAGMLAdapterBlock(nn.Module):
    """A timm ``SwinTransformerV2Block`` with TAA, TSN and a bottleneck adapter; starts equal to the block.

    Forward, x (B, H, W, C) channels-last, e the task embedding ((D,) or (B, D)), h_prev the previous
    adapter's hidden map or None:

        x = x + drop_path(norm1(attn(x), e))          # post-norm as in Swin-V2; attn = TAA, norm1 = TSN
        x = x + drop_path(norm2(mlp(x), e))           # norm2 = TSN; mlp: the pretrained one
        h = GELU(down(x) + skip(h_prev))              # bottleneck hidden map (B, H, W, r)
        y = x + up(h)                                 # up starts at zero: y == block(x) at init
        return y, h

    Our reading of the paper's "skip from the previous adapter": the adapter of block i receives the
    adapter (hidden) output of block i-1 added to its own down-projected input, before the
    non-linearity; the first adapted block has no skip. Across stages the hidden map is resampled by
    ``HiddenSkip``. The adapter is shared by all tasks; the task enters only through TAA and TSN.

    The pretrained block is shared (not copied): its qkv, proj, position-bias MLP, LayerNorm weights and
    MLP are those of the encoder, frozen or trained as the owning model's ``adapted_block_training``
    says (this block does not decide). ``use_taa`` / ``use_tsn`` False (ablations) use
    the pretrained attention / LayerNorms unchanged.

    Args:
        block: the pretrained timm block this one replaces.
        task_embed_dim: D.
        reduction: bottleneck width r = C // reduction.
        prev_hidden_dim: r of the previous adapter, or None for the first adapted block.
    """

    def __init__(self, block: SwinTransformerV2Block, task_embed_dim: int, reduction: int = 4,
                 prev_hidden_dim: Optional[int] = None, use_taa: bool = True, use_tsn: bool = True):
        super().__init__()
        if not isinstance(block, SwinTransformerV2Block):
            raise TypeError(f"adapter blocks replace timm SwinTransformerV2Block, got {type(block).__name__}")
        if reduction < 1:
            raise ValueError(f"adapter reduction must be >= 1, got {reduction}")
        self.block = block
        self.use_taa, self.use_tsn = bool(use_taa), bool(use_tsn)
        dim = int(block.dim)
        self.hidden_dim = max(dim // reduction, 1)
        self.taa = TaskAdaptedAttention(block.attn, task_embed_dim) if use_taa else None
        self.norm1 = TaskScaledNorm(block.norm1, task_embed_dim) if use_tsn else None
        self.norm2 = TaskScaledNorm(block.norm2, task_embed_dim) if use_tsn else None
        self.down = nn.Linear(dim, self.hidden_dim)
        self.act = nn.GELU()
        self.up = nn.Linear(self.hidden_dim, dim)
        nn.init.zeros_(self.up.weight)  # identity adapter at init
        nn.init.zeros_(self.up.bias)
        self.skip = HiddenSkip(prev_hidden_dim, self.hidden_dim) if prev_hidden_dim is not None else None

    def _norm(self, which: int, x: torch.Tensor, e: Optional[torch.Tensor]) -> torch.Tensor:
        tsn = self.norm1 if which == 1 else self.norm2
        if tsn is not None:
            return tsn(x, e)
        return (self.block.norm1 if which == 1 else self.block.norm2)(x)

    def _attn(self, x: torch.Tensor, e: Optional[torch.Tensor]) -> torch.Tensor:
        """timm's ``SwinTransformerV2Block._attn`` with the attention call made task-aware."""
        blk = self.block
        b, h, w, c = x.shape
        has_shift = any(blk.shift_size)
        shifted = torch.roll(x, shifts=(-blk.shift_size[0], -blk.shift_size[1]), dims=(1, 2)) if has_shift else x
        pad_h = (blk.window_size[0] - h % blk.window_size[0]) % blk.window_size[0]
        pad_w = (blk.window_size[1] - w % blk.window_size[1]) % blk.window_size[1]
        shifted = F.pad(shifted, (0, 0, 0, pad_w, 0, pad_h))
        _, hp, wp, _ = shifted.shape
        windows = window_partition(shifted, blk.window_size).view(-1, blk.window_area, c)
        mask = blk.get_attn_mask(shifted) if getattr(blk, "dynamic_mask", False) else blk.attn_mask
        if self.taa is not None:
            out = self.taa(windows, e, mask=mask)
        else:
            out = blk.attn(windows, mask=mask)
        out = out.view(-1, blk.window_size[0], blk.window_size[1], c)
        shifted = window_reverse(out, blk.window_size, (hp, wp))[:, :h, :w, :].contiguous()
        return torch.roll(shifted, shifts=blk.shift_size, dims=(1, 2)) if has_shift else shifted

    def forward(self, x: torch.Tensor, task_embedding: Optional[torch.Tensor] = None,
                hidden: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """x (B, H, W, C) -> (y (B, H, W, C), hidden (B, H, W, r))."""
        blk = self.block
        b, h, w, c = x.shape
        x = x + blk.drop_path1(self._norm(1, self._attn(x, task_embedding), task_embedding))
        x = x.reshape(b, -1, c)
        x = x + blk.drop_path2(self._norm(2, blk.mlp(x), task_embedding))
        x = x.reshape(b, h, w, c)
        z = self.down(x)
        if hidden is not None:
            if self.skip is None:
                raise ValueError("this adapter block was built without a skip from a previous adapter")
            z = z + self.skip(hidden, (h, w))
        hid = self.act(z)
        return x + self.up(hid), hid

    def adapter_parameters(self) -> List[nn.Parameter]:
        """The parameters this block adds (TAA, TSN FiLM, projections, skip); never the pretrained ones."""
        pretrained = {id(p) for p in self.block.parameters()}
        return [p for p in self.parameters() if id(p) not in pretrained]


# ----------------------------------------------------------------------------------------------------------
# shared plumbing of the Swin multi-task models
# ----------------------------------------------------------------------------------------------------------
def default_adapted_blocks(depths: Sequence[int]) -> List[BlockId]:
    """The paper's set, 0-based (stage, block): the last 4 blocks of stage 3 and all blocks of stage 4.

    For Swin-V2-B (depths 2, 2, 18, 2) that is stage index 2 blocks 14..17 and stage index 3 blocks 0, 1
    (the paper's 1-based "stage-3 blocks 15-18 and both stage-4 blocks").
    """
    if len(depths) != 4 or depths[2] < 4:
        raise ValueError(f"the paper's adapted blocks need 4 stages with >= 4 blocks in stage 3, got depths "
                         f"{tuple(depths)}")
    return [(2, j) for j in range(depths[2] - 4, depths[2])] + [(3, j) for j in range(depths[3])]


def _stage_heads(encoder: SwinTransformerV2) -> List[int]:
    return [int(layer.blocks[0].num_heads) for layer in encoder.layers]


def _window(encoder: SwinTransformerV2) -> int:
    return int(max(encoder.layers[0].blocks[0].attn.window_size))


class _SwinMultiTaskModel(nn.Module):
    """Encoder + per-task ``SwinDecoder`` plumbing shared by VTAGML and its baselines.

    Subclasses implement ``encode(image, affinity) -> {task: [4 maps (B, C_i, H_i, W_i)]}``,
    ``shared_adapter_parameters()`` and ``_config()``.
    """

    kind = "base"

    def __init__(self, encoder: SwinTransformerV2, tasks: Mapping[str, int], freeze_encoder: bool,
                 decoder_dims: Optional[Sequence[int]] = None, decoder_heads: Optional[Sequence[int]] = None,
                 decoder_window: Optional[int] = None, decoder_depth: int = 2):
        super().__init__()
        if not isinstance(encoder, SwinTransformerV2):
            raise TypeError(f"expected a timm SwinTransformerV2 encoder, got {type(encoder).__name__}")
        if not tasks:
            raise ValueError("at least one task is needed")
        self.encoder = encoder
        self.tasks: Dict[str, int] = {str(k): int(v) for k, v in tasks.items()}
        self.task_names: List[str] = list(self.tasks)
        self.freeze_encoder = bool(freeze_encoder)
        self.encoder.requires_grad_(not self.freeze_encoder)
        channels = swin_channels(encoder)
        sizes = [tuple(int(s) for s in layer.output_resolution) for layer in encoder.layers]
        self.feature_sizes = sizes
        self.decoder_settings = dict(
            dims=list(decoder_dims) if decoder_dims is not None else channels[::-1],
            heads=list(decoder_heads) if decoder_heads is not None else _stage_heads(encoder)[::-1],
            window_size=int(decoder_window) if decoder_window is not None else _window(encoder),
            depth=int(decoder_depth))
        self.decoders = nn.ModuleDict({
            name: SwinDecoder(channels, sizes, out_ch, **self.decoder_settings)
            for name, out_ch in self.tasks.items()})
        if self.freeze_encoder:
            self.encoder.eval()

    def train(self, mode: bool = True) -> "_SwinMultiTaskModel":
        super().train(mode)
        if self.freeze_encoder:
            # frozen weights keep inference behaviour (no stochastic depth / dropout) under .train();
            # also resets the pretrained blocks that adapter blocks share
            self.encoder.eval()
        return self

    # -- interface ------------------------------------------------------------------------------------
    def encode(self, image: torch.Tensor, affinity: Optional[torch.Tensor] = None) -> Dict[str, List[torch.Tensor]]:
        raise NotImplementedError

    def shared_adapter_parameters(self) -> List[nn.Parameter]:
        raise NotImplementedError

    def _config(self) -> Dict[str, Any]:
        return {"kind": self.kind, "tasks": dict(self.tasks), "decoder": dict(self.decoder_settings)}

    def parameter_budget(self) -> Dict[str, int]:
        """Trainable parameters per ``adapted_block_training`` setting; {} where the setting does not apply
        (the baselines; ``VTAGMLModel`` overrides)."""
        return {}

    def forward(self, image: torch.Tensor, affinity: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """image (B, 3, H, W) -> {task: (B, C_t, H, W)} predictions at input resolution (raw logits/values)."""
        feats = self.encode(image, affinity)
        size = tuple(image.shape[-2:])
        return {name: self.decoders[name](feats[name], out_size=size) for name in self.task_names}

    # -- parameters and adapter files -----------------------------------------------------------------
    def count_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (shared tensors counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        """What training changes: every parameter with requires_grad (adapters, task embeddings, decoders,
        heads; plus the encoder for ``full_finetune``). Frozen pretrained weights are never included."""
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}

    def save_adapter(self, path: Union[str, Path], backbone_info: Mapping[str, Any]) -> Path:
        """Write the trained weights and a small config; ``backbone_info`` names the backbone:
        ``{"arch": ..., "sha256": <of the checkpoint source file>}`` (further keys are kept as provenance)."""
        info = _check_backbone_info(backbone_info)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        from mtwork.io import save_torch_to

        save_torch_to(path, {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "backbone": info,
                             "config": self._config(), "state_dict": self.trainable_state_dict()})
        return path

    def load_adapter(self, path: Union[str, Path], backbone_info: Mapping[str, Any]) -> None:
        """Load an adapter file written by ``save_adapter`` into this model; refuses (ValueError) a file of
        another format, a backbone arch or checkpoint sha256 other than ``backbone_info``'s, another model
        config, or a state dict that does not cover exactly this model's trainable parameters."""
        info = _check_backbone_info(backbone_info)
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != ADAPTER_FORMAT:
            raise ValueError(f"{path} is not an mtwork adapter file (format {ADAPTER_FORMAT!r})")
        saved = blob["backbone"]
        if (saved.get("arch"), saved.get("sha256")) != (info["arch"], info["sha256"]):
            raise ValueError(
                f"adapter {path} was trained on backbone arch={saved.get('arch')!r} "
                f"sha256={saved.get('sha256')!r}, but this model's backbone is arch={info['arch']!r} "
                f"sha256={info['sha256']!r}; refusing to load it")
        config = self._config()
        if _plain(blob["config"]) != _plain(config):
            raise ValueError(f"adapter {path} was saved from a model configured as {blob['config']}, "
                             f"this model is {config}")
        state = blob["state_dict"]
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(f"adapter {path} does not match this model: missing {missing[:5]} "
                             f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
        for name, p in params.items():
            if tuple(state[name].shape) != tuple(p.shape):
                raise ValueError(f"adapter {path}: {name} has shape {tuple(state[name].shape)}, "
                                 f"the model expects {tuple(p.shape)}")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state[name])


def _check_backbone_info(info: Mapping[str, Any]) -> Dict[str, Any]:
    missing = [k for k in ("arch", "sha256") if not info.get(k)]
    if missing:
        raise ValueError(f"backbone_info needs {missing} (the arch and the sha256 of its checkpoint source)")
    return {str(k): v for k, v in info.items()}


def _plain(obj: Any) -> Any:
    """Tuples to lists, recursively, so a config compares equal after a save/load round trip."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------------------
# VTAGML
# ----------------------------------------------------------------------------------------------------------
class VTAGMLModel(_SwinMultiTaskModel):
    """Frozen Swin-V2 + VTAGML adapter blocks + task embeddings + per-task Swin decoders.

    Args:
        encoder: a timm ``SwinTransformerV2`` (e.g. ``mtwork.models.swin.create_swinv2``) holding the
            pretrained weights; it is frozen (requires_grad False, eval mode kept under ``.train()``).
        tasks: task name -> output channels, in the order of the affinity matrix's rows and columns.
        adapted_blocks: 0-based (stage, block) pairs to replace (default: ``default_adapted_blocks``).
        task_embed_dim: D of the learned task embedding table E (T, D).
        adapter_reduction: bottleneck width r = C // adapter_reduction.
        decoder_dims, decoder_heads, decoder_window, decoder_depth: see ``SwinDecoder``.
        use_taa, use_tsn: ablation switches (off: pretrained attention / LayerNorm, still frozen).
        adapted_block_training: ``"frozen"`` or ``"full"`` (module docstring): whether the replaced
            blocks' pretrained parameters and the patch embedding train too.
    """

    kind = "vtagml"

    def __init__(self, encoder: SwinTransformerV2, tasks: Mapping[str, int],
                 adapted_blocks: Optional[Sequence[BlockId]] = None, task_embed_dim: int = 64,
                 adapter_reduction: int = 4, decoder_dims: Optional[Sequence[int]] = None,
                 decoder_heads: Optional[Sequence[int]] = None, decoder_window: Optional[int] = None,
                 decoder_depth: int = 2, use_taa: bool = True, use_tsn: bool = True,
                 adapted_block_training: str = "frozen"):
        if adapted_block_training not in ADAPTED_BLOCK_TRAINING:
            raise ValueError(f"adapted_block_training must be one of {list(ADAPTED_BLOCK_TRAINING)}, "
                             f"got {adapted_block_training!r}")
        super().__init__(encoder, tasks, freeze_encoder=True, decoder_dims=decoder_dims,
                         decoder_heads=decoder_heads, decoder_window=decoder_window, decoder_depth=decoder_depth)
        depths = [len(layer.blocks) for layer in encoder.layers]
        if adapted_blocks is None:
            adapted_blocks = default_adapted_blocks(depths)
        blocks = sorted({(int(s), int(b)) for s, b in adapted_blocks})
        if not blocks:
            raise ValueError("VTAGML needs at least one adapted block")
        for s, b in blocks:
            if not (0 <= s < len(depths) and 0 <= b < depths[s]):
                raise ValueError(f"adapted block (stage {s}, block {b}) does not exist in an encoder with "
                                 f"depths {tuple(depths)}")
        self.adapted_blocks: List[BlockId] = blocks
        self.use_taa, self.use_tsn = bool(use_taa), bool(use_tsn)
        self.task_embed_dim, self.adapter_reduction = int(task_embed_dim), int(adapter_reduction)
        # learned task embeddings E (T, D), N(0, TASK_EMBED_INIT_STD^2): tasks differ from the start
        self.task_embedding = nn.Parameter(torch.randn(len(self.task_names), self.task_embed_dim) * TASK_EMBED_INIT_STD)
        self.adapters = nn.ModuleDict()
        prev_hidden: Optional[int] = None
        for s, b in blocks:
            blk = VTAGMLAdapterBlock(encoder.layers[s].blocks[b], self.task_embed_dim, self.adapter_reduction,
                                     prev_hidden_dim=prev_hidden, use_taa=use_taa, use_tsn=use_tsn)
            self.adapters[self._key(s, b)] = blk
            prev_hidden = blk.hidden_dim
        # the task-independent shared prefix ends just before the first adapted block
        self.first_adapted: BlockId = blocks[0]
        self.adapted_block_training = adapted_block_training
        for module in self._full_training_modules():
            module.requires_grad_(adapted_block_training == "full")
        self.encoder.eval()

    def _full_training_modules(self) -> List[nn.Module]:
        """The pretrained modules that ``adapted_block_training="full"`` trains: the replaced blocks and
        the patch embedding (see the module docstring for the final norm)."""
        return [self.encoder.patch_embed] + [self.encoder.layers[s].blocks[b] for s, b in self.adapted_blocks]

    def parameter_budget(self) -> Dict[str, int]:
        """Trainable parameters of this model under each ``adapted_block_training`` setting, whichever it
        was built with: {"frozen": n, "full": n} (shared tensors counted once)."""
        encoder_ids = {id(p) for p in self.encoder.parameters()}
        own = sum(p.numel() for p in self.parameters() if id(p) not in encoder_ids)
        extra = {id(p): p.numel() for m in self._full_training_modules() for p in m.parameters()}
        return {"frozen": own, "full": own + sum(extra.values())}

    @staticmethod
    def _key(stage: int, block: int) -> str:
        return f"s{stage}_b{block}"

    def _config(self) -> Dict[str, Any]:
        return {**super()._config(), "adapted_blocks": [list(b) for b in self.adapted_blocks],
                "task_embed_dim": self.task_embed_dim, "adapter_reduction": self.adapter_reduction,
                "use_taa": self.use_taa, "use_tsn": self.use_tsn,
                "adapted_block_training": self.adapted_block_training}

    def task_embeddings(self, affinity: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(T, D): row t = ``sum_s affinity[s, t] * E[s]`` = ``(affinity^T E)[t]``, target t's column of the
        affinity (rows source, columns target) mixing the table E; affinity (T, T) or None (E itself)."""
        if affinity is None:
            return self.task_embedding
        t = len(self.task_names)
        if tuple(affinity.shape) != (t, t):
            raise ValueError(f"affinity must be ({t}, {t}) for tasks {self.task_names}, got {tuple(affinity.shape)}")
        return affinity.to(self.task_embedding).T @ self.task_embedding

    def _shared_prefix(self, image: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Task-independent part: patch embedding up to the first adapted block (run once).

        Returns the token map entering the first adapted block (B, H, W, C) and the (B, C_i, H_i, W_i)
        outputs of the stages completed before it.
        """
        enc = self.encoder
        s0, b0 = self.first_adapted
        maps: List[torch.Tensor] = []
        # all frozen: no graph is kept for what no gradient can reach; a trainable patch embedding
        # ("full") needs the graph through the frozen blocks after it
        needs_graph = any(p.requires_grad for p in enc.patch_embed.parameters())
        with torch.set_grad_enabled(needs_graph and torch.is_grad_enabled()):
            x = enc.patch_embed(image)
            for s in range(s0):
                x = enc.layers[s](x)
                maps.append(x.permute(0, 3, 1, 2).contiguous())
            x = enc.layers[s0].downsample(x)
            for b in range(b0):
                x = enc.layers[s0].blocks[b](x)
        return x, maps

    def _task_part(self, x: torch.Tensor, maps: List[torch.Tensor], e: torch.Tensor) -> List[torch.Tensor]:
        """From the first adapted block to the last stage, for one task embedding e (D,) or (B, D)."""
        enc = self.encoder
        s0, b0 = self.first_adapted
        maps = list(maps)
        hidden: Optional[torch.Tensor] = None
        for s in range(s0, len(enc.layers)):
            layer = enc.layers[s]
            if s > s0:
                x = layer.downsample(x)  # frozen patch merging; gradients flow through it to earlier adapters
            for b in range(b0 if s == s0 else 0, len(layer.blocks)):
                key = self._key(s, b)
                if key in self.adapters:
                    x, hidden = self.adapters[key](x, e, hidden)
                else:
                    x = layer.blocks[b](x)
            maps.append(x.permute(0, 3, 1, 2).contiguous())
        return maps

    def encode(self, image: torch.Tensor, affinity: Optional[torch.Tensor] = None) -> Dict[str, List[torch.Tensor]]:
        """image (B, 3, H, W) -> {task: 4 maps (B, C_i, H_i, W_i)}, strides 4..32; maps of stages before the
        first adapted block are the same tensors for every task."""
        emb = self.task_embeddings(affinity)
        x, maps = self._shared_prefix(image)
        return {name: self._task_part(x, maps, emb[t]) for t, name in enumerate(self.task_names)}

    def shared_adapter_parameters(self) -> List[nn.Parameter]:
        """The trainable parameters shared by all tasks, what TROA takes per-task gradients of: the
        adapter blocks' own (TAA A and FiLM nets, TSN FiLM nets, adapter projections and skips), and with
        ``adapted_block_training="full"`` also the replaced blocks' pretrained parameters and the patch
        embedding. Task embeddings and decoders are not shared."""
        params: List[nn.Parameter] = []
        for blk in self.adapters.values():
            params.extend(blk.adapter_parameters())
        seen = {id(p) for p in params}
        for module in self._full_training_modules():
            params.extend(p for p in module.parameters() if p.requires_grad and id(p) not in seen)
        return params

    @torch.no_grad()
    def modulation_effects(self, image: torch.Tensor, affinity: Optional[torch.Tensor] = None) -> Dict[str, Dict[str, float]]:
        """How much TAA and TSN change what the adapted blocks compute, per task (a diagnostic; no state changes).

        For each task t, on ``image`` (B, 3, H, W) with t's embedding ``e'_t`` (``task_embeddings(affinity)``):

        - ``taa_feature`` / ``tsn_feature``: the relative change of the last stage's output map when the
          adapter blocks' TAA (resp. TSN) is replaced by the pretrained attention (resp. LayerNorms), as the
          "- TAA" / "- TSN" ablations do with the same weights: ``||f - f_off|| / ||f||`` (0 when the model
          has no TAA / TSN);
        - ``taa_logit_ratio``: TAA's task bias ``A'(e)`` against the pretrained logits it is added to
          (cosine term + position bias), each measured as the std over keys of one query's row (what the
          softmax responds to), averaged over rows, windows and TAA blocks;
        - ``tsn_gamma``: mean ``|gamma(e)|`` of the TSN layers (the relative change of the LayerNorm
          scale); ``tsn_weight``: mean ``|weight|`` of the pretrained LayerNorms it scales (Swin-V2's
          residual post-norms: their size bounds what ``gamma`` can do); ``tsn_beta``: mean ``|beta(e)|``.
        """
        was_training = self.training
        self.eval()
        try:
            emb = self.task_embeddings(affinity)
            x, maps = self._shared_prefix(image)
            taas = [blk.taa for blk in self.adapters.values() if blk.taa is not None]
            tsns = [n for blk in self.adapters.values() for n in (blk.norm1, blk.norm2) if n is not None]
            captured: List[Tuple[TaskAdaptedAttention, torch.Tensor, Optional[torch.Tensor]]] = []

            def capture(module, args, kwargs):
                captured.append((module, args[0], kwargs.get("mask")))

            report: Dict[str, Dict[str, float]] = {}
            for t, name in enumerate(self.task_names):
                e = emb[t]
                captured.clear()
                handles = [m.register_forward_pre_hook(capture, with_kwargs=True) for m in taas]
                try:
                    full = self._task_part(x, maps, e)[-1]
                finally:
                    for h in handles:
                        h.remove()
                ratios = []
                for taa, windows, mask in captured:
                    bias = taa.task_bias(e)  # (heads, N, N)
                    pretrained = taa.logits(windows, None, None)  # (B_*, heads, N, N), no shift mask
                    ratios.append(float(bias.std(dim=-1).mean() / pretrained.std(dim=-1).mean().clamp_min(1e-12)))
                entry = {"taa_logit_ratio": sum(ratios) / len(ratios) if ratios else 0.0}
                for key, switch in (("taa_feature", "taa"), ("tsn_feature", "tsn")):
                    with self._switched_off(switch) as changed:
                        off = self._task_part(x, maps, e)[-1] if changed else full
                    entry[key] = float((full - off).norm() / full.norm().clamp_min(1e-12))
                if tsns:
                    entry["tsn_gamma"] = float(torch.stack([n.gamma(e).abs().mean() for n in tsns]).mean())
                    entry["tsn_beta"] = float(torch.stack([n.beta(e).abs().mean() for n in tsns]).mean())
                    entry["tsn_weight"] = float(torch.stack([n.norm.weight.abs().mean() for n in tsns]).mean())
                report[name] = entry
            return report
        finally:
            self.train(was_training)

    def _switched_off(self, which: str):
        """Context manager: the adapter blocks' TAA (``which="taa"``) or TSN (``"tsn"``) modules detached
        for its duration, so the blocks use the pretrained attention / LayerNorms; yields whether any was."""
        from contextlib import contextmanager

        @contextmanager
        def manager():
            saved = []
            for blk in self.adapters.values():
                for attr in (("taa",) if which == "taa" else ("norm1", "norm2")):
                    module = getattr(blk, attr)
                    if module is not None:
                        saved.append((blk, attr, module))
                        setattr(blk, attr, None)
            try:
                yield bool(saved)
            finally:
                for blk, attr, module in saved:
                    setattr(blk, attr, module)

        return manager()


# ----------------------------------------------------------------------------------------------------------
# baselines on the same encoder and decoders
# ----------------------------------------------------------------------------------------------------------
class FullFinetuneSwinModel(_SwinMultiTaskModel):
    """Baseline: the whole encoder is trainable and shared by all tasks; no adapters; per-task decoders.
    ``affinity`` is accepted for a uniform call signature and ignored."""

    kind = "full_finetune"

    def __init__(self, encoder: SwinTransformerV2, tasks: Mapping[str, int], **decoder_kwargs: Any):
        super().__init__(encoder, tasks, freeze_encoder=False, **decoder_kwargs)

    def encode(self, image: torch.Tensor, affinity: Optional[torch.Tensor] = None) -> Dict[str, List[torch.Tensor]]:
        maps = encoder_maps(self.encoder, image)  # one pass, shared by all tasks
        return {name: maps for name in self.task_names}

    def shared_adapter_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]


class MultiScaleAdapterSwinModel(_SwinMultiTaskModel):
    """Baseline: frozen encoder + source 1's multi-scale bottleneck adapters (one per stage output, shared
    by all tasks) + per-task decoders. ``affinity`` is accepted and ignored."""

    kind = "multiscale_adapter"

    def __init__(self, encoder: SwinTransformerV2, tasks: Mapping[str, int], adapter_reduction: int = 4,
                 **decoder_kwargs: Any):
        super().__init__(encoder, tasks, freeze_encoder=True, **decoder_kwargs)
        self.adapter_reduction = int(adapter_reduction)
        self.adapter = MultiScaleAdapter(swin_channels(encoder), self.adapter_reduction)

    def _config(self) -> Dict[str, Any]:
        return {**super()._config(), "adapter_reduction": self.adapter_reduction}

    def encode(self, image: torch.Tensor, affinity: Optional[torch.Tensor] = None) -> Dict[str, List[torch.Tensor]]:
        with torch.no_grad():
            maps = encoder_maps(self.encoder, image)
        maps = self.adapter(maps)
        return {name: maps for name in self.task_names}

    def shared_adapter_parameters(self) -> List[nn.Parameter]:
        return list(self.adapter.parameters())


#: ``baseline`` name -> model class; None is VTAGML itself.
MODEL_KINDS = {None: VTAGMLModel, "vtagml": VTAGMLModel, "full_finetune": FullFinetuneSwinModel,
               "multiscale_adapter": MultiScaleAdapterSwinModel}


def create_vtagml_model(encoder: SwinTransformerV2, tasks: Mapping[str, int], baseline: Optional[str] = None,
                        **kwargs: Any) -> _SwinMultiTaskModel:
    """VTAGML (``baseline=None``) or one of its baselines (``"full_finetune"``, ``"multiscale_adapter"``)
    on ``encoder`` with per-task decoders; ``kwargs`` go to the chosen class."""
    try:
        cls = MODEL_KINDS[baseline]
    except KeyError:
        known = ", ".join(sorted(k for k in MODEL_KINDS if k))
        raise ValueError(f"unknown VTAGML baseline {baseline!r}; known: {known} (or None)") from None
    return cls(encoder, tasks, **kwargs)
