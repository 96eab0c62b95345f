"""MedMoE (Chopra et al., 2025): modality-specialised multi-scale experts in a GLoRIA-style vision-language model.

Explained in the book: *Chapter 2, MedMoE* (``chapters/02_medmoe``), sections 2 "The text branch: a frozen BERT
read GLoRIA's way" and 3 "The architecture, with shapes"; section 9 "Where this chapter deviates from the paper, and
why" lists the switches below. The layout follows the released code (``src/models/components/med_moe.py``, ``swin.py``
and ``vision_encoder.py`` in shivangchopra11/MedMoE); each place where the paper's text says something else is a
configuration switch, so both readings run:

Image branch (:class:`MedMoE`)
    A Swin-T (:func:`medmoe.backbones.build_swin`, or a pretrained one passed as ``build_model(...,
    backbone=...)``) gives four post-merging maps ``F^(1..4)`` at H/4 ... H/32 (Sec. 4.2). A hard top-1 router
    (:class:`medmoe.moe.HardRouter`, ``768 -> 128 -> K``) on the mean of the Swin's ``last_hidden_state`` picks
    one of ``K`` experts per image (Sec. 4.3, ``alpha = softmax(W_2 ReLU(W_1 v))``, ``k* = argmax alpha``).
    Expert ``k`` (:class:`MultiScaleExpert`) projects each scale to the common width ``D`` (1x1 Conv1d + ReLU),
    aligns every scale to the H/4 token count, predicts per-location scale weights ``beta_k^(l)`` (an MLP
    ``D -> D/2 -> 1``, softmax over the 4 scales) and fuses ``V_k = sum_l beta_k^(l) F_k^(l)`` (the equation of
    Sec. 4.3). Only the selected expert runs for each image (:func:`medmoe.moe.dispatch_combine`);
    ``V_local = V_{k*}`` (B, D, H/4, W/4) and ``v_g = mean(V_local)`` (B, D).

    * ``router_input="image"`` (default: Fig. 2 and the code) or ``"text"`` (the text of Sec. 4.3: route on the
      report embedding ``t_g``; then the model needs ``t_g`` to encode an image, so zero-shot and linear
      probing are impossible -- that is why the default follows the code).
    * ``align="linear1d"`` (the code: 1-D linear interpolation along the flattened token order) or
      ``"bilinear2d"`` (the paper's "aligns their spatial resolutions via interpolation").
    * ``aux_on="logits"`` (default, the quick profile) or ``"probs"`` (the paper profile): the auxiliary modality
      cross-entropy (Sec. 4.5) is applied to the router's logits, or -- bit-for-bit like the released code -- to
      its softmax output (a double softmax).
    * ``compute_all_experts=True`` reproduces the released code's cost: every expert runs on every image and
      the selected output is indexed (same outputs and gradients; for the benchmark of Table 3).

Text branch (:func:`encode_reports`)
    A frozen BERT-family encoder read as the sum of its last four layers; word pieces are summed into words
    and the words zero-padded back to the token length, as GLoRIA's ``aggregate_tokens``; ``t_g`` is the mean
    of those word embeddings over all positions (padding included), ``T`` the word embeddings, and
    ``cap_len`` the number of words plus one. Bio_ClinicalBERT in the paper profile, the packaged MiniLM
    offline.

Shapes (paper configuration, 224 x 224): Swin-T maps 96@56, 192@28, 384@14, 768@7; every expert returns
3136 x 768 tokens; ``v_g`` (B, 768), ``V_local`` (B, 768, 56, 56); text ``T`` (B, 25, 768), ``t_g`` (B, 768).
Parameters: Swin-T 27,519,354 + router 99,206 + 6 experts x 1,404,673 = 36,046,598.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from medmoe.backbones import SWIN_CONFIGS, build_swin, feature_channels, swin_features, swin_min_input_size
from medmoe.backbones.encoders import _check_texts
from medmoe.moe import GateOutput, HardRouter, dispatch_combine
from medmoe.utils import check_rank, resolve_config

__all__ = [
    "MedMoEConfig",
    "CONFIGS",
    "build_model",
    "example_inputs",
    "MultiScaleExpert",
    "MedMoE",
    "ImageEmbeddings",
    "ReportEmbeddings",
    "aggregate_word_pieces",
    "encode_reports",
]

_ALIGN = ("linear1d", "bilinear2d")
_ROUTER_INPUT = ("image", "text")
_AUX_ON = ("logits", "probs")
#: ImageNet mean / std: the normalisation of HF's Swin image processor, which MedMoE runs inside forward.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class MedMoEConfig:
    """Everything that defines a MedMoE image branch; configurations are data (see :data:`CONFIGS`).

    Explained in the book: Chapter 2, section 3 "The architecture, with shapes" (and section 9 for the switches).

    Attributes:
        swin: the Swin's configuration name in :data:`medmoe.backbones.SWIN_CONFIGS` (the random Swin that
            :class:`MedMoE` builds when no ``backbone`` module is injected).
        image_size: images are resized (bicubic) to this side before the Swin, as the HF processor does.
        num_experts: K (6 in the code: one per UniMed modality label; expert ``k`` is trained towards label ``k``,
            so with data of fewer modalities the others are never chosen -- the chapter says which).
        width: D, the experts' output width; equals the text width (768 for Bio_ClinicalBERT), since the
            code has no projection head.
        router_hidden: the router MLP's hidden width (128).
        attn_hidden: hidden width of each expert's scale attention (``width // 2`` when ``None``: 384).
        align: ``"linear1d"`` (code) or ``"bilinear2d"`` (paper text).
        router_input: ``"image"`` (code, Fig. 2) or ``"text"`` (Sec. 4.3's text).
        aux_on: ``"logits"`` or ``"probs"`` (the code's double softmax; the paper profile).
        text_projection: a trainable ``D x D`` linear map (no bias, initialised to the identity) applied to the
            frozen encoder's word features ``T`` and report embedding ``t_g`` before every loss and score
            (:meth:`MedMoE.project_text`). ``False`` is the released code (no text-side parameters); the quick
            profile turns it on, as GLoRIA and UniMed-CLIP train their text side, so that reports differing in a
            few words can be pulled apart (Chapter 2, section 7).
    """

    swin: str = "swin-tiny"
    image_size: int = 224
    num_experts: int = 6
    width: int = 768
    router_hidden: int = 128
    attn_hidden: int | None = None
    align: str = "linear1d"
    router_input: str = "image"
    aux_on: str = "logits"
    text_projection: bool = False

    def __post_init__(self) -> None:
        if self.swin not in SWIN_CONFIGS:
            raise ValueError(f"unknown swin {self.swin!r}: use one of {sorted(SWIN_CONFIGS)}")
        for name in ("image_size", "num_experts", "width", "router_hidden"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.attn_hidden is not None and (not isinstance(self.attn_hidden, int) or self.attn_hidden < 1):
            raise ValueError(f"attn_hidden must be None or a positive int, got {self.attn_hidden!r}")
        for name, allowed in (("align", _ALIGN), ("router_input", _ROUTER_INPUT), ("aux_on", _AUX_ON)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


CONFIGS: dict[str, MedMoEConfig] = {
    # The paper / released code: Swin-T at 224, 6 experts, Bio_ClinicalBERT's 768-d.
    "medmoe_paper": MedMoEConfig(),
    # The quick profile: a small Swin at 64 px, one expert per phantom modality, the packaged MiniLM's 384-d.
    "medmoe_quick": MedMoEConfig(swin="swin-quick", image_size=64, num_experts=5, width=384, router_hidden=64),
    # Unit tests and the contract test (tests/test_contract.py).
    "medmoe_test": MedMoEConfig(swin="swin-test", image_size=64, num_experts=3, width=32, router_hidden=16),
}


class MultiScaleExpert(nn.Module):
    """One MedMoE expert: per-scale projection, alignment and cross-scale attention (Sec. 4.3, eq. for V_k).

    Explained in the book: Chapter 2, section 3 "The architecture, with shapes".

    For each scale ``l``: a 1x1 ``Conv1d(C_l -> D)`` + ReLU on the token sequence gives ``F_k^(l)``, which is
    aligned to the finest scale's ``P_0`` tokens; the scale attention ``Linear(D -> D/2), ReLU,
    Linear(D/2 -> 1)`` scores every (location, scale) pair and a softmax over scales gives ``beta_k^(l)``;
    ``V_k = sum_l beta_k^(l) F_k^(l)``. There is no BatchNorm (the paper's text says "3-layer convolutional
    modules with BatchNorm"; the released code, whose parameter count matches Table 3, has none).

    Args:
        in_widths: channels of the scales, finest first (Swin-T: 96, 192, 384, 768).
        width: D.
        attn_hidden: hidden width of the scale attention.
        align: ``"linear1d"`` -- ``F.interpolate(mode="linear")`` along the flattened (row-major) token
            index, as the code; ``"bilinear2d"`` -- 2-D bilinear upsampling of each map, as the text.

    Shapes:
        maps: ``L`` tensors ``(B, C_l, H_l, W_l)`` (finest first); output ``(V (B, P_0, D), beta (B, P_0, L))``
        with ``P_0 = H_0 W_0``.

    Example:
        >>> e = MultiScaleExpert(in_widths=(8, 16), width=12, attn_hidden=6)
        >>> v, beta = e(torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2))
        >>> tuple(v.shape), tuple(beta.shape), torch.allclose(beta.sum(-1), torch.ones(2, 16))
        ((2, 16, 12), (2, 16, 2), True)
    """

    def __init__(self, *, in_widths: tuple[int, ...], width: int, attn_hidden: int, align: str = "linear1d") -> None:
        super().__init__()
        if align not in _ALIGN:
            raise ValueError(f"align must be one of {_ALIGN}, got {align!r}")
        self.align = align
        self.in_widths = tuple(int(c) for c in in_widths)
        self.proj = nn.ModuleList(nn.Conv1d(c, width, kernel_size=1) for c in self.in_widths)
        self.scale_attention = nn.Sequential(nn.Linear(width, attn_hidden), nn.ReLU(), nn.Linear(attn_hidden, 1))

    def forward(self, *maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(maps) != len(self.proj):
            raise ValueError(f"MultiScaleExpert expects {len(self.proj)} maps, got {len(maps)}")
        h0, w0 = maps[0].shape[-2:]
        aligned = []
        for i, (m, proj) in enumerate(zip(maps, self.proj)):
            check_rank(m, 4, f"map {i}")
            if m.shape[1] != self.in_widths[i]:
                raise ValueError(f"map {i} must have {self.in_widths[i]} channels, got shape {tuple(m.shape)}")
            f = F.relu(proj(m.flatten(2)))  # (B, D, P_l)
            if f.shape[-1] != h0 * w0:
                if self.align == "linear1d":
                    f = F.interpolate(f, size=h0 * w0, mode="linear")
                else:
                    f = F.interpolate(f.unflatten(2, tuple(m.shape[-2:])), size=(h0, w0), mode="bilinear",
                                      align_corners=False).flatten(2)
            aligned.append(f.transpose(1, 2))  # (B, P_0, D)
        stack = torch.stack(aligned, dim=2)  # (B, P_0, L, D)
        beta = self.scale_attention(stack).squeeze(-1).softmax(dim=-1)  # (B, P_0, L)
        v = (beta.unsqueeze(-1) * stack).sum(dim=2)
        return v, beta


class ImageEmbeddings(NamedTuple):
    """What :class:`MedMoE` computes for a batch of images.

    Explained in the book: Chapter 2, section 3 "The architecture, with shapes".

    Attributes:
        global_: ``v_g`` ``(B, D)``, the mean of the selected expert's tokens.
        local: ``V_local`` ``(B, D, H/4, W/4)``.
        gate: the router's :class:`medmoe.moe.GateOutput` (``indices (B, 1)`` = chosen experts).
        scale_weights: ``beta`` ``(B, P_0, 4)`` of the chosen expert.
        counts: ``(K,)`` images per expert.
    """

    global_: torch.Tensor
    local: torch.Tensor
    gate: GateOutput
    scale_weights: torch.Tensor
    counts: torch.Tensor


class MedMoE(nn.Module):
    """MedMoE's image branch: Swin-T, hard-routed multi-scale experts, global and local embeddings.

    Explained in the book: Chapter 2, section 3 "The architecture, with shapes" (the router's specialisation:
    section 5 "Does the router follow the modality?").

    ``forward_features`` runs the Swin (maps + pooled routing feature), ``route`` the router,
    ``forward_head`` the selected experts; ``forward`` chains them. Images are ``(B, 3, H, W)`` (or 1
    channel, repeated) in [0, 1]; they are resized to ``config.image_size`` and normalised with the
    ImageNet statistics inside the model, as the released code runs its image processor inside ``forward``.

    Args:
        config: a :class:`MedMoEConfig`.
        backbone: an existing ``SwinModel`` (e.g. pretrained, or loaded with
            :func:`medmoe.backbones.load_medclip_swin`); by default a random one of ``config.swin``.

    Example:
        >>> m = build_model("medmoe_test")
        >>> out = m(torch.rand(2, 3, 64, 64))
        >>> tuple(out.global_.shape), tuple(out.local.shape), tuple(out.gate.indices.shape)
        ((2, 32), (2, 32, 16, 16), (2, 1))
    """

    def __init__(self, *, config: MedMoEConfig, backbone: nn.Module | None = None) -> None:
        super().__init__()
        if backbone is not None and not isinstance(backbone, nn.Module):
            raise ValueError(f"backbone must be a SwinModel module (e.g. from medmoe.backbones.build_swin), got "
                             f"{type(backbone).__name__}; name a random Swin's configuration with swin=...")
        self.config = config
        self.backbone = backbone if backbone is not None else build_swin(config.swin)
        self.in_widths = tuple(feature_channels(self.backbone))
        if config.image_size < swin_min_input_size(self.backbone):
            raise ValueError(f"image_size={config.image_size} is too small for this Swin (at least "
                             f"{swin_min_input_size(self.backbone)})")
        router_width = self.in_widths[-1] if config.router_input == "image" else config.width
        self.router = HardRouter(in_features=router_width, num_experts=config.num_experts,
                                 hidden=config.router_hidden)
        attn_hidden = config.attn_hidden or config.width // 2
        self.experts = nn.ModuleList(
            MultiScaleExpert(in_widths=self.in_widths, width=config.width, attn_hidden=attn_hidden,
                             align=config.align)
            for _ in range(config.num_experts))
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        #: the trainable text projection (``config.text_projection``), identity at initialisation; ``None`` without
        self.text_proj = None
        if config.text_projection:
            self.text_proj = nn.Linear(config.width, config.width, bias=False)
            with torch.no_grad():
                self.text_proj.weight.copy_(torch.eye(config.width))
        #: run every expert and index the chosen one, as the released code does (same result, K times the cost)
        self.compute_all_experts = False

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        """The text side's trainable projection (``config.text_projection``) of word features ``(..., D)`` or report
        embeddings ``(B, D)``; the identity without it. Linear and bias-free, so the zero padding of ``T`` stays zero
        and projecting ``t_g`` (the mean of ``T``) equals averaging the projected words."""
        if self.text_proj is None:
            return features
        return self.text_proj(features.to(self.text_proj.weight.dtype))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1 or 3, H, W)`` in [0, 1] -> resized to ``image_size`` and ImageNet-normalised."""
        check_rank(images, 4, "images")
        if images.shape[1] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got shape {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        s = self.config.image_size
        if tuple(images.shape[-2:]) != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bicubic", align_corners=False,
                                   antialias=True).clamp(0, 1)
        return (images - self.pixel_mean) / self.pixel_std

    def forward_features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The four Swin maps (finest first) and the pooled routing feature ``mean(last_hidden_state)``."""
        maps, last = swin_features(self.backbone, self.preprocess(images), return_last=True)
        return maps, last.mean(dim=1)

    def route(self, pooled: torch.Tensor, text_global: torch.Tensor | None = None) -> GateOutput:
        """The hard top-1 routing decision, on the pooled image feature or (``router_input="text"``) ``t_g``."""
        if self.config.router_input == "text":
            if text_global is None:
                raise ValueError("router_input='text' routes on the report embedding t_g: pass text_global "
                                 "(B, D); an image alone cannot be encoded in this configuration")
            return self.router(text_global)
        return self.router(pooled)

    def forward_head(self, maps: list[torch.Tensor], gate: GateOutput) -> ImageEmbeddings:
        """Run the selected expert of each image and pool: ``V_local``, ``v_g`` (Sec. 4.3)."""
        b = maps[0].shape[0]
        h0, w0 = maps[0].shape[-2:]
        k = self.config.num_experts
        chosen = gate.indices[:, 0]
        if self.compute_all_experts:  # the released code: all K experts on every image, then index
            outs = [e(*maps) for e in self.experts]
            v = torch.stack([o[0] for o in outs], dim=1)[torch.arange(b), chosen]
            beta = torch.stack([o[1] for o in outs], dim=1)[torch.arange(b), chosen]
            counts = torch.bincount(chosen, minlength=k)
        else:
            (v, beta), counts = dispatch_combine(maps, self.experts, gate.indices)
        # The combine weight of hard routing is 1 (no gradient to the router from the task losses); with the
        # router's straight-through option it is 1 + p - sg(p).
        w = gate.weights.gather(-1, gate.indices)[:, 0].to(v.dtype)
        v = v * w[:, None, None]
        local = v.transpose(1, 2).reshape(b, v.shape[-1], h0, w0)
        return ImageEmbeddings(global_=v.mean(dim=1), local=local, gate=gate, scale_weights=beta, counts=counts)

    def forward(self, images: torch.Tensor, *, text_global: torch.Tensor | None = None) -> ImageEmbeddings:
        maps, pooled = self.forward_features(images)
        return self.forward_head(maps, self.route(pooled, text_global))

    def aux_loss(self, gate: GateOutput, labels: torch.Tensor) -> torch.Tensor:
        """``L_aux`` (Sec. 4.5, the equation ``L_aux = CrossEntropy(W_c t_g, y)``): the router's cross-entropy
        against the modality labels ``(B,)`` -- on the router itself, as the released code, not on a head over ``t_g``.

        ``aux_on="probs"`` is the released code (``F.cross_entropy(router_probs, label)``: the softmax output taken
        as logits, a double softmax; the paper profile); ``aux_on="logits"`` is the usual cross-entropy on the
        logits (:meth:`medmoe.moe.HardRouter.aux_loss`; the quick profile).

        Raises:
            ValueError: a label outside ``0 .. K-1`` (expert ``k`` learns modality label ``k``).
        """
        if self.config.aux_on == "logits":
            return HardRouter.aux_loss(gate, labels)
        return HardRouter.aux_loss(gate._replace(logits=gate.probs), labels)  # Sec. 4.5 L_aux as the code: CE(probs)

    def extra_repr(self) -> str:
        c = self.config
        return (f"swin={c.swin!r}, image_size={c.image_size}, num_experts={c.num_experts}, width={c.width}, "
                f"align={c.align!r}, router_input={c.router_input!r}, compute_all_experts={self.compute_all_experts}")


def build_model(name: str | MedMoEConfig = "medmoe_paper", *, backbone: nn.Module | None = None,
                **overrides) -> MedMoE:
    """A :class:`MedMoE` from a name of :data:`CONFIGS` (or a config), with fields overridden by keyword.

    ``backbone`` injects an existing ``SwinModel`` (e.g. pretrained, with MedCLIP weights:
    :func:`medmoe.papers.medmoe.recipe.build` loads them); by default a random one of the configuration's ``swin``.

    Raises:
        ValueError: an unknown name or field, an invalid value, or a ``backbone`` that is not a Swin.

    Example:
        >>> m = build_model("medmoe_test", align="bilinear2d")
        >>> m.config.num_experts, m.config.align
        (3, 'bilinear2d')
    """
    return MedMoE(config=resolve_config(name, CONFIGS, overrides, what="MedMoE"), backbone=backbone)


def example_inputs(name: str | MedMoEConfig = "medmoe_test", *, batch_size: int = 2
                   ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]]]:
    """A random batch for ``build_model(name)`` and the output shapes it must give (the contract test,
    ``tests/test_contract.py``, runs every paper's ``_test`` configuration through this).

    Returns:
        ``(kwargs for forward, {output field: expected shape})``; the first field (``global_``, ``v_g``) is the one
        to backpropagate. With ``router_input="text"`` the kwargs carry a report embedding ``text_global`` too.

    Example:
        >>> kwargs, shapes = example_inputs("medmoe_test")
        >>> build_model("medmoe_test")(**kwargs).local.shape == shapes["local"]
        True
    """
    cfg = resolve_config(name, CONFIGS, {}, what="MedMoE")
    b, side = batch_size, cfg.image_size // 4
    kwargs = {"images": torch.rand(b, 3, cfg.image_size, cfg.image_size)}
    if cfg.router_input == "text":
        kwargs["text_global"] = torch.randn(b, cfg.width)
    return kwargs, {"global_": (b, cfg.width), "local": (b, cfg.width, side, side),
                    "scale_weights": (b, side * side, 4), "counts": (cfg.num_experts,)}


# ----------------------------------------------------------------------------------------------------------
# Text branch
# ----------------------------------------------------------------------------------------------------------


class ReportEmbeddings(NamedTuple):
    """GLoRIA-style report features.

    Explained in the book: Chapter 2, section 2 "The text branch: a frozen BERT read GLoRIA's way".

    Attributes:
        words: ``T`` ``(B, L, D)``: ``[CLS]``, one vector per word (its pieces summed), ``[SEP]``, then zeros.
        sentence: ``t_g`` ``(B, D)``: the mean of ``words`` over all ``L`` positions.
        cap_lens: ``(B,)`` long: number of words + 1 -- the local loss reads positions ``1 .. cap_len``
            (the words and ``[SEP]``), as GLoRIA's ``words_emb[i, :, 1:cap_len + 1]``.
        words_text: the word strings per report, ``[CLS]`` ... ``[SEP]`` (padding not listed).
    """

    words: torch.Tensor
    sentence: torch.Tensor
    cap_lens: torch.Tensor
    words_text: list[list[str]]


def aggregate_word_pieces(hidden: torch.Tensor, tokens: list[list[str]], *,
                          specials: frozenset[str] = frozenset({"[CLS]", "[SEP]", "[PAD]"})
                          ) -> tuple[torch.Tensor, list[list[str]]]:
    """Sum word pieces into words (GLoRIA's ``aggregate_tokens``) and zero-pad back to ``L`` positions.

    A token starting with ``##`` continues the previous word; ``[CLS]`` is a word of its own; reading stops
    at ``[SEP]``, which is kept; every later position is zero.

    Args:
        hidden: ``(B, L, D)`` token features (e.g. the sum of the last four layers).
        tokens: the ``L`` tokens of each report.

    Returns:
        ``(words (B, L, D), words_text)``.

    Example:
        >>> h = torch.arange(5.0)[None, :, None]
        >>> w, t = aggregate_word_pieces(h, [["[CLS]", "card", "##io", "[SEP]", "[PAD]"]])
        >>> w[0, :, 0].tolist(), t
        ([0.0, 3.0, 3.0, 0.0, 0.0], [['[CLS]', 'cardio', '[SEP]']])
    """
    check_rank(hidden, 3, "hidden")
    b, length, _ = hidden.shape
    if len(tokens) != b or any(len(t) != length for t in tokens):
        raise ValueError(f"tokens must be {b} lists of {length} tokens (one per position of hidden)")
    out = hidden.new_zeros(hidden.shape)
    words_text: list[list[str]] = []
    for i, toks in enumerate(tokens):
        groups: list[list[int]] = []
        names: list[str] = []
        for j, tok in enumerate(toks):
            if tok == "[SEP]":
                groups.append([j])
                names.append(tok)
                break
            if tok.startswith("##") and groups and names[-1] not in specials:
                groups[-1].append(j)
                names[-1] += tok[2:]
            else:
                groups.append([j])
                names.append(tok)
        index = torch.tensor([g for g, pos in enumerate(groups) for _ in pos], device=hidden.device)
        positions = torch.tensor([p for pos in groups for p in pos], device=hidden.device)
        out[i] = out[i].index_add(0, index, hidden[i, positions])
        words_text.append(names)
    return out, words_text


def encode_reports(encoder, texts, *, batch_size: int = 64) -> ReportEmbeddings:
    """Encode reports as MedMoE's text branch: frozen encoder, sum of the last 4 layers, words, ``t_g``.

    ``encoder`` is a :class:`medmoe.backbones.TextEncoder` built with ``layers="sum_last4"`` (e.g.
    ``build_text_encoder("minilm", max_length=25, layers="sum_last4")``). Texts are encoded in chunks of
    ``batch_size`` without gradients (the encoder is frozen) and padded to ``max_length``: the code pads to the
    longest report of its batch instead, which changes ``t_g`` only by a positive factor, and every use of
    ``t_g`` is a cosine similarity.

    Example:
        >>> from medmoe.backbones import build_text_encoder
        >>> enc = build_text_encoder("random-bert-tiny", max_length=10, layers="sum_last4")
        >>> r = encode_reports(enc, ["Upper left lung opacity.", "No finding."])
        >>> tuple(r.words.shape), tuple(r.sentence.shape), r.cap_lens.tolist()
        ((2, 10, 32), (2, 32), [6, 4])
    """
    texts = _check_texts(texts)
    if getattr(encoder, "layers", None) != "sum_last4":
        raise ValueError("MedMoE reads the sum of the last four layers: build the encoder with layers='sum_last4'")
    words, names = [], []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            feats = encoder(chunk, padding="max_length")
            tokens = [encoder.tokenizer.convert_ids_to_tokens(row.tolist()) for row in feats.input_ids.cpu()]
            w, n = aggregate_word_pieces(feats.hidden, tokens)
            words.append(w)
            names.extend(n)
    words_t = torch.cat(words)
    cap_lens = torch.tensor([sum(not w.startswith("[") for w in n) + 1 for n in names])
    return ReportEmbeddings(words=words_t, sentence=words_t.mean(dim=1), cap_lens=cap_lens, words_text=names)
