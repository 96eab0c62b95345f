"""MoME and its base, the CLIP-Driven Universal Model.

Explained in the book: *Chapter 4, MoME* (``chapters/04_mome``), section 2 "The architecture" (and section 5,
"Where the router looks", for the router's weights).

Only MoME's abstract is public (Rezvani et al., arXiv 2510.26996) and no code. It states: a vision branch with
**multi-scale decoder-layer experts**, a text branch of **CLIP embeddings**, and a **text-guided router** that fuses
the scales **pixel-wise** and yields **class-specific segmentation heads**, trained on 10 partially labelled CT data
sets (3,410 scans) -- the setting of the CLIP-Driven Universal Model (Liu et al., ICCV 2023), which this module
builds first and MoME extends (the book's reconstruction, our proposal; every MoME detail below is an assumption
and is named as one in the chapter).

**Universal Model** (facts from its code):

* MONAI ``SwinUNETR`` (feature size 48, 1 input channel, 96^3 patches); its decoder gives, for a 96^3 input,
  ``dec4`` 768@3^3, ``dec3`` 384@6^3, ``dec2`` 192@12^3, ``dec1`` 96@24^3, ``dec0`` 48@48^3 and ``out`` 48@96^3
  (:meth:`UniversalSeg.forward_features`; the modules are MONAI's, only their outputs are collected).
* Class text embeddings ``t_c`` of "A computerized tomography of a {organ}" (CLIP ViT-B/32, 512-d), mapped by
  ``text_to_vision`` = Linear(512 -> 256) + ReLU.
* An image code from ``dec4``: GroupNorm(16) -> ReLU -> global average pool -> 1x1x1 conv (768 -> 256).
* A ``controller`` (1x1x1 conv, 512 -> 153) on ``[image code; text code]`` gives, per image and class, the weights
  of three dynamic 1x1x1 convolutions 8 -> 8 -> 8 -> 1 (64 + 64 + 8 weights, then 8 + 8 + 1 biases, ReLU between),
  applied to ``precls`` = GroupNorm -> ReLU -> 1x1x1 conv (48 -> 8) of ``out``: one logit map per class, a sigmoid
  per class (multi-label).

**MoME** (reconstruction): the experts are decoder outputs (``experts``, default all five of ``dec3 .. out``), each
projected like ``precls`` to the head width 8 and upsampled (trilinear) to the output grid: ``E_e(x)``. For every
class ``c`` and voxel ``x`` a router gives softmax weights over the experts,

``w_{c,e}(x) = softmax_e( W_2 ReLU(W_v V(x) + W_t u_c + b_1) + b_2 )``, with ``V(x) = [E_1(x); ...; E_E(x)]``

and ``u_c`` the class's text code, and the class's dynamic head reads ``F_c(x) = sum_e w_{c,e}(x) E_e(x)``. With a
single expert ``("out",)`` and no router the model *is* the Universal Model, so both come from the same code.

Example:
    >>> model = build_model("mome_test")
    >>> out = model(torch.rand(1, 1, 32, 32, 32))
    >>> tuple(out.logits.shape), tuple(out.router.shape)
    ((1, 3, 32, 32, 32), (1, 3, 2, 32, 32, 32))
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.nets import SwinUNETR
from torch import nn

from medmoe.utils import check_rank, resolve_config

__all__ = ["DECODER_LEVELS", "MoMEConfig", "CONFIGS", "MoMEOutput", "TextGuidedRouter", "UniversalSeg", "build_model",
           "build_swinunetr", "load_self_supervised", "dynamic_head", "example_inputs"]

#: Decoder outputs of MONAI's SwinUNETR, coarse to fine, with their width in units of ``feature_size`` and their
#: downsampling factor.
DECODER_LEVELS: dict[str, tuple[int, int]] = {"dec4": (16, 32), "dec3": (8, 16), "dec2": (4, 8), "dec1": (2, 4),
                                              "dec0": (1, 2), "out": (1, 1)}
_HEAD_WIDTH = 8
_WEIGHTS, _BIASES = (_HEAD_WIDTH * _HEAD_WIDTH, _HEAD_WIDTH * _HEAD_WIDTH, _HEAD_WIDTH), (_HEAD_WIDTH, _HEAD_WIDTH, 1)
#: Values the controller produces per (image, class): 153 for the 8 -> 8 -> 8 -> 1 dynamic head.
NUM_DYNAMIC_PARAMS = sum(_WEIGHTS) + sum(_BIASES)


@dataclass(frozen=True)
class MoMEConfig:
    """A Universal Model / MoME configuration (data, as timm's configs).

    Explained in the book: Chapter 4, section 2 "The architecture".

    Attributes:
        num_classes: C, one sigmoid output per class (32 in the Universal Model's template).
        feature_size: SwinUNETR's ``feature_size`` (48 in the paper setting).
        depths, num_heads: SwinUNETR's stages.
        window_size: Swin attention window (7; 4 for 32^3 patches, whose first stage is 16^3 tokens).
        roi_size: the training patch and sliding-window size (96); must be divisible by 32.
        norm: SwinUNETR's ``norm_name`` (``"instance"``, as the Universal Model; the bottleneck of a 32^3 patch
            is a single voxel, which instance norm cannot normalise in training, so the quick profile uses
            ``("group", {"num_groups": 4})``).
        text_dim: width of the class text embeddings (512 for CLIP ViT-B/32, 384 for MiniLM).
        code_dim: width of the text and image codes (256).
        experts: decoder outputs used as experts (keys of :data:`DECODER_LEVELS`); ``("out",)`` with
            ``router=False`` is the Universal Model.
        router: use the text-guided router (MoME); needs at least two experts.
        router_hidden: hidden width of the router's MLP.
        use_checkpoint: SwinUNETR's gradient checkpointing (saves memory on 96^3 patches).
        text_code: where a class's code ``u_c`` comes from: ``"text"`` (the Universal Model's
            ``word_embedding``: ReLU(Linear(t_c)) of the class text embedding) or ``"learned"`` (its
            ``rand_embedding``: an ``nn.Embedding(C, code_dim)`` learnt from N(0, 1), no text at all).
        router_init: ``"default"`` (PyTorch's initialisation: the router starts near uniform, 1/E per expert) or
            ``"universal"`` (the book's choice for MoME: the router's output layer starts at zero weight and a bias
            that gives ``out`` the weight ``router_init_weight`` at every voxel and class, the rest shared by the
            other experts, so MoME starts close to the Universal Model, whose only feature is ``out``). Needs
            ``"out"`` among the experts.
        router_init_weight: w(out) at initialisation under ``router_init="universal"`` (below 1, so that the other
            experts still get a gradient).
    """

    num_classes: int = 32
    feature_size: int = 48
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    roi_size: int = 96
    norm: str | tuple = "instance"
    window_size: int = 7
    text_dim: int = 512
    code_dim: int = 256
    experts: tuple[str, ...] = ("dec3", "dec2", "dec1", "dec0", "out")
    router: bool = True
    router_hidden: int = 16
    use_checkpoint: bool = False
    text_code: str = "text"
    router_init: str = "default"
    router_init_weight: float = 0.95


_QUICK = dict(num_classes=6, feature_size=12, num_heads=(3, 3, 6, 12), roi_size=32, norm=("group", {"num_groups": 4}),
              window_size=4, text_dim=384, code_dim=64)
_TEST = dict(num_classes=3, feature_size=12, num_heads=(3, 3, 3, 3), depths=(1, 1, 1, 1), roi_size=32,
             norm=("group", {"num_groups": 4}), window_size=4, text_dim=16, code_dim=16)
#: Named configurations: the paper-size ones (Universal Model: SwinUNETR-48, CLIP 512-d, 32 classes), the quick
#: profile's (feature size 12, MiniLM 384-d, the phantoms' 6 classes, 32^3 patches, experts dec2 .. out) and tiny
#: ones for tests. MoME's paper and quick configurations start the router as the Universal Model
#: (``router_init="universal"``, the book's choice).
CONFIGS: dict[str, MoMEConfig] = {
    "universal_paper": MoMEConfig(experts=("out",), router=False),
    "mome_paper": MoMEConfig(router_init="universal"),
    "universal_quick": MoMEConfig(**_QUICK, experts=("out",), router=False),
    # quick: a 32^3 patch makes dec3 a 2^3 grid (one voxel per 16^3 block), too coarse to place an organ; it is
    # dropped, and the coarsest expert kept is dec2 (4^3).
    "mome_quick": MoMEConfig(**_QUICK, experts=("dec2", "dec1", "dec0", "out"), router_init="universal"),
    "universal_test": MoMEConfig(**_TEST, experts=("out",), router=False),
    "mome_test": MoMEConfig(**_TEST, experts=("dec0", "out"), router_hidden=4),
}


class MoMEOutput(NamedTuple):
    """What :class:`UniversalSeg` returns. Explained in the book: Chapter 4, section 2 "The architecture".

    Attributes:
        logits: ``(B, C, D, H, W)``, one sigmoid logit map per class.
        router: ``(B, C, E, D, H, W)`` the router's weights per class, expert and voxel (sum to 1 over ``E``);
            ``None`` for the Universal Model.
    """

    logits: torch.Tensor
    router: torch.Tensor | None


def _norm_relu(channels: int) -> list[nn.Module]:
    return [nn.GroupNorm(math.gcd(16, channels), channels), nn.ReLU(inplace=True)]


def dynamic_head(features: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The Universal Model's class-specific head: three 1x1x1 convolutions 8 -> 8 -> 8 -> 1 whose weights come from
    the controller, ReLU between them.

    Args:
        features: ``(B, 8, N)`` (the same for every class: Universal Model) or ``(B, C, 8, N)`` (per class: MoME).
        params: ``(B, C, 153)``: weights of the three layers (64, 64, 8), then their biases (8, 8, 1).

    Returns:
        ``(B, C, N)`` logits.
    """
    b, c, _ = params.shape
    w1, w2, w3, b1, b2, b3 = torch.split(params, _WEIGHTS + _BIASES, dim=-1)
    w1, w2 = w1.reshape(b, c, _HEAD_WIDTH, _HEAD_WIDTH), w2.reshape(b, c, _HEAD_WIDTH, _HEAD_WIDTH)
    w3 = w3.reshape(b, c, 1, _HEAD_WIDTH)
    if features.ndim == 3:
        x = torch.einsum("bcij,bjn->bcin", w1, features)
    else:
        x = torch.einsum("bcij,bcjn->bcin", w1, features)
    x = F.relu(x + b1[..., None])
    x = F.relu(torch.einsum("bcij,bcjn->bcin", w2, x) + b2[..., None])
    return (torch.einsum("bcij,bcjn->bcin", w3, x) + b3[..., None])[:, :, 0]


class TextGuidedRouter(nn.Module):
    """Per class and voxel, softmax weights over the experts from the class's text code and the experts' features
    (MoME's "text-guided router ... pixel-wise fusion across scales"; the form is this book's reconstruction).

    Explained in the book: Chapter 4, sections 2 "The architecture" and 5 "Where the router looks: weights per class
    over slices".

    ``w_{c,e}(x) = softmax_e(W_2 ReLU(W_v V(x) + W_t u_c + b_1) + b_2)``.

    Args:
        num_experts: E.
        expert_dim: width of each expert's feature (8).
        code_dim: width of the class text code ``u_c``.
        hidden: the MLP's hidden width.
    """

    def __init__(self, *, num_experts: int, expert_dim: int, code_dim: int, hidden: int) -> None:
        super().__init__()
        self.visual = nn.Conv1d(num_experts * expert_dim, hidden, 1)
        self.text = nn.Linear(code_dim, hidden, bias=False)
        self.out = nn.Conv1d(hidden, num_experts, 1)

    @torch.no_grad()
    def start_as_one_expert(self, index: int, weight: float) -> None:
        """Start the router at the constant weights ``weight`` for expert ``index`` and ``(1 - weight) / (E - 1)``
        for each other one, at every voxel and class: the output layer's weight is zeroed, its bias set to the
        log-weights (``router_init="universal"``; the text and visual layers keep their initialisation, so the
        router can leave this start as soon as the output layer moves)."""
        e = self.out.out_channels
        if not 0 <= index < e or not 0 < weight < 1:
            raise ValueError(f"need 0 <= index < {e} and 0 < weight < 1, got index {index}, weight {weight}")
        self.out.weight.zero_()
        self.out.bias.fill_(math.log((1 - weight) / (e - 1)))
        self.out.bias[index] = math.log(weight)

    def forward(self, experts: torch.Tensor, text_codes: torch.Tensor) -> torch.Tensor:
        """``experts`` ``(B, E, d, N)``, ``text_codes`` ``(C, code_dim)`` -> weights ``(B, C, E, N)``."""
        b, e, d, n = experts.shape
        v = self.visual(experts.reshape(b, e * d, n))  # (B, h, N)
        h = F.relu(v[:, None] + self.text(text_codes)[None, :, :, None])  # (B, C, h, N)
        logits = torch.einsum("eh,bchn->bcen", self.out.weight[:, :, 0], h) + self.out.bias[None, None, :, None]
        return logits.softmax(dim=2)


def _check_backbone(backbone: nn.Module, config: MoMEConfig) -> None:
    """An injected backbone must be a one-channel MONAI ``SwinUNETR`` with the configuration's feature size,
    depths, heads and window (the decoder widths and :data:`DECODER_LEVELS` follow from them)."""
    if not isinstance(backbone, SwinUNETR):
        raise ValueError(f"backbone must be a MONAI SwinUNETR (the Universal Model's network), got "
                         f"{type(backbone).__name__}")
    vit = backbone.swinViT
    found = {"feature_size": vit.patch_embed.proj.weight.shape[0],
             "in_channels": vit.patch_embed.proj.weight.shape[1],
             "depths": tuple(len(getattr(vit, f"layers{i + 1}")[0].blocks) for i in range(len(config.depths))),
             "num_heads": tuple(getattr(vit, f"layers{i + 1}")[0].blocks[0].attn.num_heads
                                for i in range(len(config.num_heads))),
             "window_size": tuple(vit.window_size)}
    wanted = {"feature_size": config.feature_size, "in_channels": 1, "depths": tuple(config.depths),
              "num_heads": tuple(config.num_heads), "window_size": (config.window_size,) * 3}
    wrong = {k: (found[k], wanted[k]) for k in wanted if found[k] != wanted[k]}
    if wrong:
        raise ValueError("backbone does not match the configuration: "
                         + ", ".join(f"{k} is {got}, the configuration has {want}" for k, (got, want) in wrong.items()))


class UniversalSeg(nn.Module):
    """The Universal Model, and MoME when ``config.router`` is set (see the module docstring).

    Explained in the book: Chapter 4, section 2 "The architecture" (trained in section 3 "Training: one
    backbone, two heads").

    ``forward(x)`` takes ``(B, 1, D, H, W)`` CT patches (HU windowed to [0, 1]) whose sides are multiples of 32 and
    returns :class:`MoMEOutput`. The class text embeddings are a buffer (``text_embeddings`` ``(C, text_dim)``,
    :meth:`set_text_embeddings`), as the Universal Model loads its ``txt_encoding.pth``.

    Args:
        config: the :class:`MoMEConfig`.
        backbone: a MONAI ``SwinUNETR`` to use instead of a freshly built one (e.g. with self-supervised Swin weights
            loaded by ``model.load_from(...)``, see :func:`load_self_supervised`); its feature size, stages and window
            must be the configuration's and its input one channel. Its output convolution is replaced by
            ``nn.Identity`` (the Universal Model's heads replace it), in place.

    Raises:
        ValueError: invalid experts, router, ``roi_size``, or a ``backbone`` that is not such a SwinUNETR.

    Example:
        >>> m = build_model("universal_test")
        >>> m(torch.rand(2, 1, 32, 32, 32)).logits.shape
        torch.Size([2, 3, 32, 32, 32])
    """

    def __init__(self, config: MoMEConfig, *, backbone: nn.Module | None = None) -> None:
        super().__init__()
        unknown = [e for e in config.experts if e not in DECODER_LEVELS or e == "dec4"]
        if unknown or not config.experts:
            raise ValueError(f"experts must be among {tuple(k for k in DECODER_LEVELS if k != 'dec4')}, "
                             f"got {config.experts}")
        if config.router and len(config.experts) < 2:
            raise ValueError("router=True needs at least two experts")
        if not config.router and len(config.experts) != 1:
            raise ValueError(f"without a router there is one expert (the Universal Model uses ('out',)), "
                             f"got {config.experts}")
        if config.roi_size % 32:
            raise ValueError(f"roi_size must be a multiple of 32 (SwinUNETR), got {config.roi_size}")
        if config.text_code not in ("text", "learned"):
            raise ValueError(f"text_code must be 'text' or 'learned', got {config.text_code!r}")
        if config.router_init not in ("default", "universal"):
            raise ValueError(f"router_init must be 'default' or 'universal', got {config.router_init!r}")
        if config.router and config.router_init == "universal" and "out" not in config.experts:
            raise ValueError(f"router_init='universal' starts the router on the expert 'out', which is not among "
                             f"{config.experts}")
        self.config = config
        fs = config.feature_size
        if backbone is None:
            backbone = build_swinunetr(config)
        else:
            _check_backbone(backbone, config)
        self.backbone = backbone
        self.backbone.out = nn.Identity()  # the Universal Model replaces SwinUNETR's output conv by its heads
        self.register_buffer("text_embeddings", torch.zeros(config.num_classes, config.text_dim))
        if config.text_code == "text":
            self.text_to_vision = nn.Linear(config.text_dim, config.code_dim)
        else:  # the Universal Model's rand_embedding: nn.Embedding, N(0, 1) init, used as the code directly
            self.class_embedding = nn.Embedding(config.num_classes, config.code_dim)
        self.image_code = nn.Sequential(*_norm_relu(16 * fs), nn.AdaptiveAvgPool3d(1),
                                        nn.Conv3d(16 * fs, config.code_dim, 1))
        self.controller = nn.Conv3d(2 * config.code_dim, NUM_DYNAMIC_PARAMS, 1)
        # One projection per expert to the head width (for "out" this is the Universal Model's precls_conv).
        self.experts = nn.ModuleDict({e: nn.Sequential(*_norm_relu(DECODER_LEVELS[e][0] * fs),
                                                       nn.Conv3d(DECODER_LEVELS[e][0] * fs, _HEAD_WIDTH, 1))
                                      for e in config.experts})
        self.router = (TextGuidedRouter(num_experts=len(config.experts), expert_dim=_HEAD_WIDTH,
                                        code_dim=config.code_dim, hidden=config.router_hidden)
                       if config.router else None)
        if self.router is not None and config.router_init == "universal":
            self.router.start_as_one_expert(config.experts.index("out"), config.router_init_weight)

    def set_text_embeddings(self, embeddings: torch.Tensor) -> None:
        """Store the class text embeddings ``(C, text_dim)`` (e.g. from
        :func:`medmoe.papers.mome.recipe.class_text_embeddings`)."""
        c, d = self.config.num_classes, self.config.text_dim
        if tuple(embeddings.shape) != (c, d):
            raise ValueError(f"text embeddings must be ({c}, {d}), got {tuple(embeddings.shape)}")
        self.text_embeddings.copy_(embeddings.to(self.text_embeddings))

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """SwinUNETR's encoder and decoder (MONAI's modules, in MONAI's order); returns every decoder output
        ``dec4 .. out`` (see :data:`DECODER_LEVELS`)."""
        check_rank(x, 5, "x")
        if x.shape[1] != 1 or any(s % 32 for s in x.shape[2:]):
            raise ValueError(f"x must be (B, 1, D, H, W) with sides divisible by 32, got {tuple(x.shape)}")
        net = self.backbone
        hidden = net.swinViT(x, net.normalize)
        enc0, enc1 = net.encoder1(x), net.encoder2(hidden[0])
        enc2, enc3 = net.encoder3(hidden[1]), net.encoder4(hidden[2])
        dec4 = net.encoder10(hidden[4])
        dec3 = net.decoder5(dec4, hidden[3])
        dec2 = net.decoder4(dec3, enc3)
        dec1 = net.decoder3(dec2, enc2)
        dec0 = net.decoder2(dec1, enc1)
        return {"dec4": dec4, "dec3": dec3, "dec2": dec2, "dec1": dec1, "dec0": dec0, "out": net.decoder1(dec0, enc0)}

    def text_codes(self) -> torch.Tensor:
        """``(C, code_dim)``: ReLU(text_to_vision(t_c)), or the learned class embedding (``text_code="learned"``)."""
        if self.config.text_code == "learned":
            return self.class_embedding.weight
        return F.relu(self.text_to_vision(self.text_embeddings))

    def forward_head(self, feats: dict[str, torch.Tensor]) -> MoMEOutput:
        """Dynamic class heads on the (fused) expert features."""
        out = feats["out"]
        b, size = out.shape[0], out.shape[2:]
        n = out.shape[2:].numel()
        codes = self.text_codes()  # (C, code)
        img = self.image_code(feats["dec4"]).flatten(1)  # (B, code)
        c = codes.shape[0]
        pairs = torch.cat([img[:, None].expand(b, c, -1), codes[None].expand(b, c, -1)], dim=-1)  # (B, C, 2 code)
        params = self.controller(pairs.reshape(b * c, -1, 1, 1, 1)).reshape(b, c, NUM_DYNAMIC_PARAMS)
        experts = []
        for name in self.config.experts:
            f = self.experts[name](feats[name])
            if f.shape[2:] != size:
                f = F.interpolate(f, size=size, mode="trilinear", align_corners=False)
            experts.append(f.reshape(b, _HEAD_WIDTH, n))
        if self.router is None:
            return MoMEOutput(dynamic_head(experts[0], params).reshape(b, c, *size), None)
        stacked = torch.stack(experts, dim=1)  # (B, E, 8, N)
        weights = self.router(stacked, codes)  # (B, C, E, N)
        fused = torch.einsum("bcen,bedn->bcdn", weights, stacked)  # (B, C, 8, N)
        logits = dynamic_head(fused, params).reshape(b, c, *size)
        return MoMEOutput(logits, weights.reshape(b, c, len(experts), *size))

    def forward(self, x: torch.Tensor) -> MoMEOutput:
        return self.forward_head(self.forward_features(x))


def build_swinunetr(config: MoMEConfig) -> SwinUNETR:
    """A fresh MONAI ``SwinUNETR`` (one input channel) with the configuration's feature size, stages, window and
    normalisation."""
    return SwinUNETR(in_channels=1, out_channels=config.num_classes, feature_size=config.feature_size,
                     depths=config.depths, num_heads=config.num_heads, norm_name=config.norm,
                     window_size=config.window_size, use_checkpoint=config.use_checkpoint)


def load_self_supervised(backbone: SwinUNETR, path: str | os.PathLike[str]) -> SwinUNETR:
    """Load self-supervised Swin UNETR weights into ``backbone``'s Swin transformer with MONAI's
    ``SwinUNETR.load_from`` (patch embedding, every block's attention and MLP, the patch-merging layers; the
    convolutional encoder and decoder stay as initialised). This is the book's choice of starting weights: the
    Universal Model also starts from self-supervised Swin UNETR weights, but its README names
    ``swin_unetr.base_5000ep_f48_lr2e-4_pretrained.pt``, and the book did not verify that this file and MONAI's
    ``model_swinvit.pt`` hold the same weights.

    ``path``: a checkpoint in the format of MONAI's ``model_swinvit.pt`` (Tang et al., CVPR 2022; the Swin UNETR
    BTCV tutorial): a dict whose ``"state_dict"`` holds ``module.patch_embed.proj.weight``,
    ``module.layers{1..4}.0.blocks.{i}.{norm1, attn.qkv, attn.proj, attn.relative_position_bias_table, mlp.fc1,
    ...}`` and ``module.layers{1..4}.0.downsample.{reduction, norm}``. The encoder's width, depths, heads and
    window must be the backbone's (feature size 48, window 7 for the released file).

    Raises:
        FileNotFoundError: no file at ``path`` (the message names the file and where to get it).
        ValueError: not such a checkpoint, a missing key, or a tensor whose shape differs from the backbone's.

    Example:
        >>> import tempfile
        >>> from medmoe.papers.mome.fixtures import write_swinvit_checkpoint
        >>> path = write_swinvit_checkpoint(Path(tempfile.mkdtemp()) / "model_swinvit.pt", "universal_test")
        >>> swin = load_self_supervised(build_swinunetr(CONFIGS["universal_test"]), path)
        >>> bool(swin.swinViT.patch_embed.proj.weight.abs().sum() > 0)
        True
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"self-supervised Swin UNETR weights not found: {path}; download model_swinvit.pt "
            "(https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/model_swinvit.pt) "
            "or pass pretrained='' to start from random weights")
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors of several types
        raise ValueError(f"cannot read {path} as a torch checkpoint: {err}") from err
    if not isinstance(weights, dict) or not isinstance(weights.get("state_dict"), dict):
        raise ValueError(f"{path} is not in the model_swinvit.pt format: expected a dict with a 'state_dict' entry "
                         f"(keys 'module.patch_embed.proj.weight', 'module.layers1.0.blocks.0...'), got "
                         f"{sorted(weights)[:5] if isinstance(weights, dict) else type(weights).__name__}")
    try:
        backbone.load_from(weights)
    except KeyError as err:
        raise ValueError(f"{path} lacks the Swin UNETR key {err} (is it model_swinvit.pt for this depth?)") from None
    except RuntimeError as err:  # copy_ with a shape that does not broadcast
        raise ValueError(f"{path} does not fit the backbone (feature size {backbone.swinViT.embed_dim}, window "
                         f"{tuple(backbone.swinViT.window_size)}): {err}") from None
    return backbone


def build_model(name: str | MoMEConfig = "mome_paper", *, backbone: nn.Module | None = None,
                pretrained: str | os.PathLike[str] | None = None, **overrides) -> UniversalSeg:
    """Build a configuration of :data:`CONFIGS` (or a :class:`MoMEConfig`), with field ``overrides``.

    ``backbone``: a MONAI ``SwinUNETR`` to use instead of a fresh one (see :class:`UniversalSeg`); ``None``
    builds one from the configuration. ``pretrained``: a ``model_swinvit.pt``-format file of self-supervised Swin
    weights loaded into that fresh backbone (:func:`load_self_supervised`, the book's choice); ``None``
    or ``""``: random weights.

    Raises:
        ValueError: an unknown name or field, an invalid value, a ``backbone`` that does not match, both
            ``backbone`` and ``pretrained``, or weights that do not fit.
        FileNotFoundError: ``pretrained`` names no file.

    Example:
        >>> build_model("mome_test", router_hidden=8).config.router_hidden
        8
    """
    config = resolve_config(name, CONFIGS, overrides, what="MoME")
    if pretrained:
        if backbone is not None:
            raise ValueError("pass either backbone or pretrained, not both (load the weights into your backbone "
                             "with load_self_supervised)")
        backbone = load_self_supervised(build_swinunetr(config), pretrained)
    return UniversalSeg(config, backbone=backbone)


def example_inputs(name: str | MoMEConfig = "mome_test", *, batch_size: int = 2
                   ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]]]:
    """A random batch for ``build_model(name)`` (one ``roi_size^3`` patch per item) and the output shapes it must
    give (the contract test, ``tests/test_contract.py``, runs every paper's ``_test`` configuration through this).

    Returns:
        ``(kwargs for forward, {output field: expected shape})``; the first field is the one to backpropagate
        (``router`` only for MoME: the Universal Model's is ``None``).

    Example:
        >>> kwargs, shapes = example_inputs("mome_test")
        >>> build_model("mome_test")(**kwargs).router.shape == shapes["router"]
        True
    """
    cfg = resolve_config(name, CONFIGS, {}, what="MoME")
    s, c = cfg.roi_size, cfg.num_classes
    shapes = {"logits": (batch_size, c, s, s, s)}
    if cfg.router:
        shapes["router"] = (batch_size, c, len(cfg.experts), s, s, s)
    return {"x": torch.rand(batch_size, 1, s, s, s)}, shapes
