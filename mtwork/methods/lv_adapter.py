"""LV-Adapter (source 1): language priors from a frozen CLIP text tower, on top of multi-scale adapters.

Source 1 describes the LV-Adapter only as "language priors via task-specific prompting and alignment
between visual and textual features" (a secondary summary: cross-attention from language to vision
giving "language-aware contexts" for pixel-class matching). Its code and exact design could not be
read, so this is **our documented reading** (docs/lv_adapter.md gives each choice and its reason; the
closest public design is DenseCLIP: learnable context + class names into the CLIP text encoder, and
pixel-text score maps):

1. **Task-specific prompts**: for each task, M learnable context vectors (shared by the task's
   classes) followed by each class name, "[ctx_1 .. ctx_M] road." -> the *frozen* CLIP text tower ->
   one embedding per class, (K_t, D). Recomputed at every forward, so the context vectors learn
   through the frozen tower; the tokenised prompts and the class-name token embeddings are fixed
   (cached buffers).
2. **Language-to-vision cross-attention** at each backbone scale (after the multi-scale bottleneck
   adapters): queries from the visual map projected to D, keys/values from the concatenated text
   embeddings of all tasks; the result is projected back and *added* through a zero-initialised
   projection, so at initialisation the method computes exactly the multi-scale-adapter model.
3. **Pixel-text score maps** for each segmentation task: cosine similarity between the finest FPN
   level projected to D and the task's class embeddings -> (B, K, H/4, W/4). They enter the task's
   segmentation head (concatenated to its fused stride-4 features) and, times a learnable
   temperature, an auxiliary **alignment loss** (cross-entropy of the upsampled score maps against
   the task's labels, labeled samples only, weight ``align_weight``).
4. **Region-text classification** for detection: the FCOS head's classification scores are the
   cosine similarity between its classification-tower features projected to D and the 10 class
   embeddings, times a learnable scale, plus a learned per-class bias (prior-probability init).

The frozen text tower is held *outside* the module tree: it is not a parameter or buffer of the model
(no optimizer, stage or DDP sees it, the parameter counts exclude it, and it is not saved with runs;
it is rebuilt from the CLIP checkpoint recorded in the run's ``model_config``). It still moves with
``model.to(device)``, and a fingerprint of its weights *is* saved, so loading a run's weights with a
different text tower is refused.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mtwork.methods.base import METHODS
from mtwork.methods.multiscale_adapter import MultiScaleAdapter

#: Learnable context vectors per task (DenseCLIP uses 8 with RN50; CoOp 4-16).
DEFAULT_NUM_CONTEXT = 8
#: Weight of the alignment loss (DenseCLIP's identity-head loss weight).
DEFAULT_ALIGN_WEIGHT = 0.4
#: Largest default width of the language-to-vision attention.
DEFAULT_MAX_ATTN_DIM = 256
#: CLIP's initial temperature 0.07 as a log-scale, and its clamp (scale <= 100).
INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)
#: Std of the random initialisation of the context vectors (CoOp, DenseCLIP use ~N(0, 0.02)).
CONTEXT_INIT_STD = 0.02
#: The placeholder word whose token slots the context vectors replace (one BPE token each).
PLACEHOLDER = "X"


def default_class_names() -> Dict[str, Tuple[str, ...]]:
    """{task: class names} of the driving tasks, from ``mtwork.data.bdd100k`` (the one place they live)."""
    from mtwork.data.bdd100k import DET_CATEGORIES, DRIVABLE_CLASSES, SEMSEG_CLASSES

    return {"semseg": SEMSEG_CLASSES, "drivable": DRIVABLE_CLASSES, "det": DET_CATEGORIES}


# --------------------------------------------------------------------------------------------------
# the frozen text tower
# --------------------------------------------------------------------------------------------------
class FrozenTextTower(nn.Module):
    """open_clip's text transformer, frozen, that encodes prompt *embeddings* (not token ids).

    forward(embeddings (N,L,W) token embeddings, tokens (N,L) the token ids they came from) -> (N,D),
    exactly ``CLIP.encode_text`` when ``embeddings = token_embedding(tokens)``. Every parameter has
    ``requires_grad=False`` and the tower stays in eval mode; gradients still flow to ``embeddings``.
    With a causal mask and an end-of-text pooling the sequence is cut after the last end-of-text token
    (later positions cannot influence earlier ones), which is exact and makes short prompts cheap.
    """

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        # open_clip's CLIP keeps the text modules on the model; CustomTextCLIP under ``.text``.
        source = getattr(clip_model, "text", clip_model)
        if not hasattr(source, "token_embedding") or not hasattr(source, "transformer"):
            raise ValueError(
                f"{type(source).__name__}: only open_clip's own text transformer is supported "
                "(not Hugging Face text towers)"
            )
        if getattr(source, "cls_emb", None) is not None:
            raise ValueError("text towers with an appended CLS embedding (CoCa) are not supported")
        self.token_embedding = source.token_embedding
        self.positional_embedding = source.positional_embedding
        self.transformer = source.transformer
        self.ln_final = source.ln_final
        self.text_projection = source.text_projection
        mask = getattr(source, "attn_mask", None)
        self.register_buffer("attn_mask", None if mask is None else mask.detach().clone(), persistent=False)
        self.pool_type = getattr(source, "pool_type", None) or getattr(clip_model, "text_pool_type", "argmax")
        self.eos_id = getattr(source, "eos_id", None)
        if self.eos_id is None:
            self.eos_id = getattr(clip_model, "text_eos_id", None)
        if self.pool_type not in ("argmax", "eos", "first", "last"):
            raise ValueError(f"unsupported text pooling '{self.pool_type}'")
        self.width = int(self.token_embedding.embedding_dim)
        self.context_length = int(self.positional_embedding.shape[0])
        projection = self.text_projection
        if projection is None:
            self.embed_dim = self.width
        elif isinstance(projection, nn.Linear):
            self.embed_dim = int(projection.out_features)
        else:
            self.embed_dim = int(projection.shape[1])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenTextTower":
        return super().train(False)  # frozen: never in training mode (no dropout in CLIP anyway)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N,L) token ids -> (N,L,W) token embeddings (no gradient)."""
        with torch.no_grad():
            return self.token_embedding(tokens)

    def pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N,) position whose final feature is the sequence embedding (open_clip's text pooling)."""
        n, length = tokens.shape
        if self.pool_type == "argmax":  # the end-of-text token has the largest id
            return tokens.argmax(dim=-1)
        if self.pool_type == "eos":
            return (tokens == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "first":
            return torch.zeros(n, dtype=torch.long, device=tokens.device)
        return torch.full((n,), length - 1, dtype=torch.long, device=tokens.device)

    def forward(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        index = self.pool_index(tokens)
        length = embeddings.shape[1]
        if self.attn_mask is not None and self.pool_type in ("argmax", "eos"):
            length = int(index.max()) + 1  # causal: positions after the pooled one do not matter
        cast = self.transformer.get_cast_dtype() if hasattr(self.transformer, "get_cast_dtype") else embeddings.dtype
        x = embeddings[:, :length].to(cast) + self.positional_embedding[:length].to(cast)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), index]
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection


def load_text_tower(clip_model_name: str, checkpoint: str | Path | None):
    """(FrozenTextTower, tokenizer) of open_clip model ``clip_model_name`` loaded from ``checkpoint``
    (an open_clip checkpoint file or tag; None: random weights, for tests only: warns)."""
    from mtwork.models.clip_backbone import clip_tokenizer, create_clip_model

    if checkpoint is None:
        warnings.warn(
            f"lv_adapter: no text_encoder_checkpoint given, the '{clip_model_name}' text tower is randomly "
            "initialised (language priors are then meaningless; pass a CLIP checkpoint)",
            stacklevel=3,
        )
    model = create_clip_model(clip_model_name, checkpoint)
    return FrozenTextTower(model), clip_tokenizer(clip_model_name)


def tower_fingerprint(tower: nn.Module) -> int:
    """A 63-bit hash of the tower's weights (names, shapes, dtypes and bytes), as an int64."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tower.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return int.from_bytes(digest.digest()[:8], "big") >> 1


# --------------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------------
class TaskPrompts(nn.Module):
    """Per task, M learnable context vectors followed by each class name: "[ctx_1..ctx_M] road.".

    The prompt text "X X ... X road." is tokenised once; the context vectors replace the token
    embeddings of the M placeholder slots (CoOp's construction). Buffers (not saved, rebuilt from the
    text tower and the class names): ``tokens_<task>`` (K,L), ``prefix_<task>`` (K,1,W) the
    start-of-text embedding, ``suffix_<task>`` (K,L-1-M,W) the class-name, "." and end-of-text
    embeddings. Parameter: ``context[task]`` (M,W).

    forward(tower) -> {task: (K_t, D) text embeddings}, one tower call for all tasks.
    """

    def __init__(self, class_names: Mapping[str, Sequence[str]], tower: FrozenTextTower, tokenizer,
                 num_context: int = DEFAULT_NUM_CONTEXT, init_std: float = CONTEXT_INIT_STD):
        super().__init__()
        if num_context < 1:
            raise ValueError(f"num_context must be >= 1, got {num_context}")
        self.tasks = tuple(class_names)
        self.num_context = num_context
        self.class_names = {t: tuple(names) for t, names in class_names.items()}
        self.context = nn.ParameterDict()
        placeholder = tokenizer([PLACEHOLDER])[0][1]
        for task, names in self.class_names.items():
            if not names:
                raise ValueError(f"task '{task}' has no class names to prompt")
            texts = [" ".join([PLACEHOLDER] * num_context) + f" {name}." for name in names]
            tokens = tokenizer(texts)
            slots = tokens[:, 1 : 1 + num_context]
            index = tower.pool_index(tokens)
            # The context slots hold the placeholder, and the end-of-text token comes after the class
            # name with room to spare (a tokenizer that truncates puts it at the last position).
            fits = bool((index > num_context).all()) and bool((index < tokens.shape[1] - 1).all())
            if not bool((slots == placeholder).all()) or (tower.pool_type in ("argmax", "eos") and not fits):
                raise ValueError(f"task '{task}': prompts do not fit the text context: {texts}")
            embeddings = tower.embed_tokens(tokens)
            self.register_buffer(f"tokens_{task}", tokens, persistent=False)
            self.register_buffer(f"prefix_{task}", embeddings[:, :1].clone(), persistent=False)
            self.register_buffer(f"suffix_{task}", embeddings[:, 1 + num_context :].clone(), persistent=False)
            self.context[task] = nn.Parameter(torch.randn(num_context, tower.width) * init_std)

    def forward(self, tower: FrozenTextTower) -> Dict[str, torch.Tensor]:
        embeddings, tokens, sizes = [], [], []
        for task in self.tasks:
            prefix, suffix = getattr(self, f"prefix_{task}"), getattr(self, f"suffix_{task}")
            k = prefix.shape[0]
            context = self.context[task].to(prefix.dtype).unsqueeze(0).expand(k, -1, -1)
            embeddings.append(torch.cat([prefix, context, suffix], dim=1))
            tokens.append(getattr(self, f"tokens_{task}"))
            sizes.append(k)
        encoded = tower(torch.cat(embeddings), torch.cat(tokens))
        return dict(zip(self.tasks, encoded.split(sizes)))


# --------------------------------------------------------------------------------------------------
# vision-language modules
# --------------------------------------------------------------------------------------------------
class LanguageToVision(nn.Module):
    """x + out(attention(queries from x, keys/values from the text embeddings)) on (B,C,H,W).

    query: 1x1 conv C -> A then LayerNorm; text: LayerNorm over D, projected to A for keys and values
    inside ``nn.MultiheadAttention`` (``kdim = vdim = D``) with ``heads`` heads; out: 1x1 conv A -> C
    with zero weight and bias (identity at initialisation). A = ``attn_dim`` (default D).
    forward(x (B,C,H,W), text (N,D)) -> (B,C,H,W).
    """

    def __init__(self, channels: int, text_dim: int, heads: int, attn_dim: Optional[int] = None):
        super().__init__()
        attn_dim = attn_dim or text_dim
        if attn_dim % heads:
            raise ValueError(f"attention dim {attn_dim} is not divisible by {heads} attention heads")
        self.query = nn.Conv2d(channels, attn_dim, 1)
        self.query_norm = nn.LayerNorm(attn_dim)
        self.text_norm = nn.LayerNorm(text_dim)
        self.attn = nn.MultiheadAttention(attn_dim, heads, kdim=text_dim, vdim=text_dim, batch_first=True)
        self.out = nn.Conv2d(attn_dim, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        queries = self.query_norm(self.query(x).flatten(2).transpose(1, 2))  # (B,HW,A)
        keys = self.text_norm(text.to(queries.dtype)).unsqueeze(0).expand(b, -1, -1)  # (B,N,D)
        context, _ = self.attn(queries, keys, keys, need_weights=False)
        return x + self.out(context.transpose(1, 2).reshape(b, -1, h, w))


@dataclass
class AlignmentLoss:
    """The auxiliary pixel-text alignment term of one segmentation task (a ``multitask_loss`` aux term).

    logits: (B,K,h,w) temperature-scaled score maps; ``loss(batch)``: cross-entropy of the logits
    upsampled (bilinear) to the label size against ``batch[task]`` (255 ignored), over the samples
    with ``batch["labeled"][task]`` only; None when no sample of the batch is labeled, unless
    ``required`` (data parallelism: the task is labeled on another rank, whose normalisation this rank
    must join; then a graph-connected zero).
    """

    task: str
    logits: torch.Tensor = field(repr=False)
    weight: float = DEFAULT_ALIGN_WEIGHT

    def loss(self, batch: Mapping[str, Any], required: bool = False) -> Optional[torch.Tensor]:
        from mtwork.tasks.segmentation import segmentation_loss

        labeled = batch["labeled"][self.task].to(self.logits.device)
        if not required and not bool(labeled.any()):
            return None
        target = batch[self.task].to(self.logits.device)[labeled]
        logits = F.interpolate(self.logits[labeled].float(), size=tuple(target.shape[-2:]),
                               mode="bilinear", align_corners=False)
        return segmentation_loss(logits, target, torch.ones(target.shape[0], dtype=torch.bool, device=target.device))


class LVAdapter(nn.Module):
    """Multi-scale adapters + language priors from a frozen CLIP text tower (module docstring).

    Args:
        channels: the backbone's per-scale channels.
        tower, tokenizer: the frozen text tower (``load_text_tower``) and its tokenizer.
        class_names: {task: class names} of the prompted tasks (order = the task's class ids).
        reduction: the bottleneck adapters' reduction.
        fpn_channels: width of the FPN maps (input of the pixel projection).
        num_context: M, learnable context vectors per task.
        score_map_tasks: tasks whose heads take pixel-text score maps (segmentation heads).
        text_tasks: tasks whose heads take the class embeddings (the detection head).
        align_weight: weight of the alignment loss (0 disables it).
        attn_dim: width A of the cross-attention (default min(D, 256): at stride 4 the queries are
            the largest activations of the method, and RN50's D is 1024).
        attn_heads: heads of the cross-attention (default A // 64, at least 1).

    ``forward(features, text=None)`` (the method contract: list of L maps -> list of L maps) applies
    the adapters and the cross-attention; ``encode_prompts()`` gives the text embeddings and
    ``language_outputs(neck_maps, text)`` the head inputs and auxiliary losses (``MultiTaskModel``
    calls all three; ``text`` is computed once per forward).
    """

    uses_language = True

    def __init__(self, channels: Sequence[int], tower: FrozenTextTower, tokenizer,
                 class_names: Mapping[str, Sequence[str]], reduction: int = 4, fpn_channels: int = 64,
                 num_context: int = DEFAULT_NUM_CONTEXT, score_map_tasks: Sequence[str] = (),
                 text_tasks: Sequence[str] = (), align_weight: float = DEFAULT_ALIGN_WEIGHT,
                 attn_dim: Optional[int] = None, attn_heads: Optional[int] = None):
        super().__init__()
        unknown = sorted(t for t in set(score_map_tasks) | set(text_tasks) if t not in class_names)
        if unknown:
            raise KeyError(f"lv_adapter: no class names for tasks {unknown}")
        if align_weight < 0:
            raise ValueError(f"align_weight must be >= 0, got {align_weight}")
        self.text_dim = tower.embed_dim
        attn_dim = attn_dim or min(self.text_dim, DEFAULT_MAX_ATTN_DIM)
        heads = attn_heads or max(1, attn_dim // 64)
        self.adapters = MultiScaleAdapter(channels, reduction)
        self.prompts = TaskPrompts(class_names, tower, tokenizer, num_context)
        self.cross_attention = nn.ModuleList([LanguageToVision(c, self.text_dim, heads, attn_dim) for c in channels])
        self.score_map_tasks = tuple(score_map_tasks)
        self.text_tasks = tuple(text_tasks)
        self.align_weight = float(align_weight)
        self.pixel_proj = nn.Conv2d(fpn_channels, self.text_dim, 1) if self.score_map_tasks else None
        # the alignment loss's temperatures (only with the loss: no parameter is left without a use)
        self.score_logit_scale = nn.ParameterDict(
            {t: nn.Parameter(torch.tensor(INIT_LOGIT_SCALE)) for t in self.score_map_tasks if self.align_weight > 0}
        )
        # Outside the module tree on purpose (see the module docstring); ``_apply`` moves it.
        object.__setattr__(self, "_text_tower", tower)
        self.register_buffer("text_tower_fingerprint", torch.tensor([tower_fingerprint(tower)], dtype=torch.long))

    @property
    def text_tower(self) -> FrozenTextTower:
        return self._text_tower

    def _apply(self, fn, recurse: bool = True):  # .to(), .cuda(), .float(), ...: the tower follows
        super()._apply(fn, recurse)
        self._text_tower._apply(fn, recurse)
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "text_tower_fingerprint"
        if key in state_dict and not torch.equal(state_dict[key].cpu(), self.text_tower_fingerprint.cpu()):
            error_msgs.append(
                f"{key}: the weights were trained with a different CLIP text tower than the one this "
                "model was built with (check text_encoder_checkpoint / clip_model_name)"
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def encode_prompts(self) -> Dict[str, torch.Tensor]:
        """{task: (K_t, D)} class embeddings of the current prompts (gradients reach the context)."""
        return self.prompts(self._text_tower)

    def forward(self, features: Sequence[torch.Tensor],
                text: Optional[Mapping[str, torch.Tensor]] = None) -> List[torch.Tensor]:
        if len(features) != len(self.cross_attention):
            raise ValueError(f"lv_adapter built for {len(self.cross_attention)} scales, got {len(features)} maps")
        if text is None:
            text = self.encode_prompts()
        tokens = torch.cat([text[t] for t in self.prompts.tasks])  # (sum K_t, D)
        features = self.adapters(features)
        return [cross(f, tokens) for cross, f in zip(self.cross_attention, features)]

    def score_maps(self, finest: torch.Tensor, text: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """{task: (B,K,h,w) cosine similarity} of the finest FPN map (B,C,h,w) and each score-map
        task's class embeddings."""
        if self.pixel_proj is None:
            return {}
        pixels = F.normalize(self.pixel_proj(finest), dim=1)
        return {
            t: torch.einsum("bdhw,kd->bkhw", pixels, F.normalize(text[t].to(pixels.dtype), dim=-1))
            for t in self.score_map_tasks
        }

    def language_outputs(self, neck_features: Sequence[torch.Tensor], text: Mapping[str, torch.Tensor]
                         ) -> Tuple[Dict[str, Dict[str, torch.Tensor]], Dict[str, AlignmentLoss]]:
        """({task: keyword inputs of its head}, {name: auxiliary loss term})."""
        head_inputs: Dict[str, Dict[str, torch.Tensor]] = {t: {"text": text[t]} for t in self.text_tasks}
        aux: Dict[str, AlignmentLoss] = {}
        for task, cosine in self.score_maps(neck_features[0], text).items():
            head_inputs[task] = {"score_map": cosine}
            if self.align_weight > 0:
                scale = self.score_logit_scale[task].clamp(max=MAX_LOGIT_SCALE).exp()
                aux[f"lv_align_{task}"] = AlignmentLoss(task, scale * cosine, self.align_weight)
        return head_inputs, aux


@METHODS.register("lv_adapter")
def lv_adapter(
    channels: Sequence[int],
    reduction: int = 4,
    text_encoder_checkpoint: str | Path | None = None,
    clip_model_name: Optional[str] = None,
    class_names: Optional[Mapping[str, Sequence[str]]] = None,
    fpn_channels: int = 64,
    num_context: int = DEFAULT_NUM_CONTEXT,
    score_map_tasks: Sequence[str] = (),
    text_tasks: Sequence[str] = (),
    align_weight: float = DEFAULT_ALIGN_WEIGHT,
    attn_dim: Optional[int] = None,
    attn_heads: Optional[int] = None,
) -> LVAdapter:
    """The LV-Adapter with the text tower of open_clip ``clip_model_name`` (default: the embedded tiny
    CLIP) loaded from ``text_encoder_checkpoint``; ``class_names`` default to the three driving tasks'."""
    from mtwork.models.clip_backbone import MTWORK_TINY_CLIP_NAME

    tower, tokenizer = load_text_tower(clip_model_name or MTWORK_TINY_CLIP_NAME, text_encoder_checkpoint)
    names = dict(default_class_names() if class_names is None else class_names)
    return LVAdapter(channels, tower, tokenizer, names, reduction=reduction, fpn_channels=fpn_channels,
                     num_context=num_context, score_map_tasks=score_map_tasks, text_tasks=text_tasks,
                     align_weight=align_weight, attn_dim=attn_dim, attn_heads=attn_heads)


lv_adapter.uses_language = True  # build_multitask_model passes the language options to such methods
