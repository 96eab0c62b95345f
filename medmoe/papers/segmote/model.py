"""SegMoTE (Lu et al., CVPR 2026): token-level experts inside a frozen SAM, and prompt-free tokenisation.

Explained in the book: *Chapter 3, SegMoTE* (``chapters/03_segmote``), sections 2 "The frozen foundation model" and
3 "Where the expert tokens enter, and what trains". The SAM parts are ``segment-anything``'s own modules
(:class:`~segment_anything.modeling.ImageEncoderViT`, :class:`~segment_anything.modeling.PromptEncoder`,
:class:`~segment_anything.modeling.MaskDecoder` with its :class:`~segment_anything.modeling.TwoWayTransformer`);
this file adds only what SegMoTE adds, and keeps every SAM weight frozen:

* **expert tokens** (Sec. 3.2): ``T`` learnable tokens appended after SAM's output tokens
  (``[iou, mask x 4, expert x T, prompt ...]``);
* **MoTE** in each two-way decoder layer (Sec. 3.3, :class:`MoTE`): after the token-to-image attention the expert
  tokens skip SAM's MLP and go through a noisy top-1 router over ``E`` experts (Eq. 1-2,
  :class:`medmoe.moe.NoisyTopKGate`, ``W_g`` and ``W_n`` zero-initialised as in the code; ``router_init_std`` is
  the book's deviation), each expert a ``D -> 64`` linear map
  followed by shared ``64 -> 64 -> 64 -> D`` projections (the released code's ``dte_token``, ``dteall_token``,
  ``proj_token``); the output, weighted by the router's confidence (Eq. 5-6), replaces the token. The token whose
  top logit is largest (Eq. 4) is the image's selected token; the mask comes from the selected token of the last
  layer. The balance loss is ``CV^2(importance) + CV^2(load)`` over batch and tokens (Eq. 7-9);
* **expert heads** as the released code (HQ-SAM's machinery renamed): one hypernetwork MLP per expert token, and,
  with ``hq_features``, an expert feature map built from the image embedding, an early ViT block's features and
  SAM's upscaled embedding;
* **PPT** (Sec. 3.4, :class:`PromptTokenizer`): ``Q`` learnable queries (``ppt_queries``; 2 in the paper, 4 and 8 in
  Table 4) attend over the layer-normed image
  tokens plus a linear encoding of their 2-D coordinates; the result replaces the sparse prompt tokens, so the
  model segments without a click or a box.

Confidence weighting. Eq. (5) writes ``G = softmax(c)`` of the single top-1 logit, which is exactly 1 and has zero
gradient -- one public version of the released code's ``segment_anything/modeling/transformer.py`` (commit
77668f0) does that and its router never learns. The book's choice (our proposal, neither the paper's nor the code's):
the expert output is multiplied by ``p``, the softmax over all ``E`` (noisy) logits taken at the
selected expert: the router learns from the segmentation loss through that product and from the balance loss.

Configurations (:data:`CONFIGS`): ``segmote_paper`` -- the paper's text (SAM ViT-B, 256-wide decoder; load
``sam_vit_b_01ec64.pth`` with :func:`load_sam_checkpoint`), ``segmote_paper_imis`` -- the released code's 768-wide
decoder (IMIS-Net's; random init, for the parameter count of Table 3), ``segmote_quick`` and ``segmote_test`` for
CPUs and tests. The older names ``sam_b`` and ``imis_like`` still work (:data:`ALIASES`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

from medmoe.backbones.sam import build_sam as _build_sam
from medmoe.backbones.sam import load_sam_checkpoint
from medmoe.moe import GateOutput, NoisyTopKGate, dispatch_combine, importance_load_loss
from medmoe.utils import check_rank, resolve_config

__all__ = ["SegMoTEConfig", "CONFIGS", "ALIASES", "build_sam", "load_sam_checkpoint", "MoTE", "MoTEOutput",
           "PromptTokenizer", "SegMoTE", "SegMoTEOutput", "build_model", "example_inputs"]


@dataclass(frozen=True)
class SegMoTEConfig:
    """A SegMoTE model as data (see :data:`CONFIGS`).

    Explained in the book: Chapter 3, section 3 "Where the expert tokens enter, and what trains".

    Attributes:
        encoder_dim, encoder_depth, encoder_heads, global_attn: the SAM ViT (ViT-B: 768, 12, 12, (2, 5, 8, 11)).
        window_size: windowed attention size of the ViT (14 in SAM).
        patch_size: ViT patch (16).
        image_size: input side (512 in SegMoTE: the position embeddings of a 1024-px SAM are resized).
        prompt_dim: D, the decoder width (256 in SAM; 768 in IMIS-Net, which the released code builds on).
        decoder_mlp_dim, decoder_heads: the two-way transformer's MLP width (2048) and heads (8).
        num_expert_tokens: T (4 in the code).
        num_experts: E, experts per MoTE (4 in the code).
        expert_dim: the experts' bottleneck width (64).
        hq_features: the code's HQ-style expert feature map (image embedding + early ViT features + SAM's
            upscaled embedding); without it the expert tokens read SAM's upscaled embedding directly.
        ppt_queries: Q, PPT's learnable queries (2).
        ppt_heads: PPT's attention heads (8).
        router_init_std: standard deviation of the initial router weights ``W_g`` of every MoTE. ``0`` (the
            default) is the released code's zero init (routing starts uniform, decided by the Eq. 2 noise alone);
            a positive value is the book's deviation (:data:`medmoe.papers.segmote.recipe.ROUTER_SETTINGS`), so
            routing starts input-dependent. ``W_n`` stays zero either way.
    """

    encoder_dim: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    global_attn: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    patch_size: int = 16
    image_size: int = 512
    prompt_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    num_expert_tokens: int = 4
    num_experts: int = 4
    expert_dim: int = 64
    hq_features: bool = True
    ppt_queries: int = 2
    ppt_heads: int = 8
    router_init_std: float = 0.0

    def __post_init__(self) -> None:
        if not self.router_init_std >= 0:
            raise ValueError(f"router_init_std must be >= 0, got {self.router_init_std!r}")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name != "router_init_std" and isinstance(v, int) and not isinstance(v, bool) and v < 1:
                raise ValueError(f"{f.name} must be a positive int, got {v!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")
        if any(not 0 <= i < self.encoder_depth for i in self.global_attn):
            raise ValueError(f"global_attn {self.global_attn} must index blocks of a depth-{self.encoder_depth} ViT")
        if self.prompt_dim % 8 or self.prompt_dim % self.decoder_heads or self.prompt_dim % self.ppt_heads:
            raise ValueError(f"prompt_dim={self.prompt_dim} must be divisible by 8 and by the numbers of heads")


CONFIGS: dict[str, SegMoTEConfig] = {
    # The paper's text: SAM ViT-B with its 256-wide decoder, at 512 px.
    "segmote_paper": SegMoTEConfig(),
    # The released code: IMIS-Net's 768-wide decoder (Table 3's parameter count).
    "segmote_paper_imis": SegMoTEConfig(prompt_dim=768),
    "segmote_quick": SegMoTEConfig(encoder_dim=96, encoder_depth=4, encoder_heads=4, global_attn=(1, 3), window_size=4,
                                   image_size=128, patch_size=8, prompt_dim=64, decoder_mlp_dim=256, decoder_heads=4,
                                   expert_dim=32, ppt_heads=4),
    "segmote_test": SegMoTEConfig(encoder_dim=32, encoder_depth=2, encoder_heads=2, global_attn=(1,), window_size=2,
                                  image_size=64, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2,
                                  num_expert_tokens=3, num_experts=3, expert_dim=8, ppt_heads=2),
}

ALIASES: dict[str, str] = {"sam_b": "segmote_paper", "imis_like": "segmote_paper_imis"}
"""The configurations' older names, still accepted by :func:`build_model`."""


def build_sam(config: SegMoTEConfig) -> Sam:
    """A ``segment_anything`` ``Sam`` of this configuration (random weights), at ``config.image_size``; built by
    :func:`medmoe.backbones.sam.build_sam`."""
    return _build_sam(image_size=config.image_size, patch_size=config.patch_size, encoder_dim=config.encoder_dim,
                      encoder_depth=config.encoder_depth, encoder_heads=config.encoder_heads,
                      global_attn=config.global_attn, window_size=config.window_size, prompt_dim=config.prompt_dim,
                      decoder_mlp_dim=config.decoder_mlp_dim, decoder_heads=config.decoder_heads)


class MoTE(nn.Module):
    """Mixture of Token Experts for the ``T`` expert tokens of one decoder layer (SegMoTE Sec. 3.3, Eq. 1-9).

    Explained in the book: Chapter 3, section 3 "Where the expert tokens enter, and what trains".

    Args:
        dim: token width D.
        num_experts: E.
        expert_dim: bottleneck width of the experts (64).
        router_init_std: std of the initial ``W_g`` (0: the code's zero init; see :class:`SegMoTEConfig`).

    Shapes:
        x: ``(B, T, D)`` -> :class:`MoTEOutput` with ``tokens (B, T, D)``, ``selected (B,)``.

    Example:
        >>> mote = MoTE(dim=16, num_experts=3, expert_dim=4)
        >>> out = mote(torch.randn(2, 5, 16))
        >>> tuple(out.tokens.shape), tuple(out.selected.shape), out.gate.indices.shape[-1]
        ((2, 5, 16), (2,), 1)
    """

    def __init__(self, *, dim: int, num_experts: int, expert_dim: int = 64, router_init_std: float = 0.0) -> None:
        super().__init__()
        self.gate = NoisyTopKGate(in_features=dim, num_experts=num_experts, k=1, init_std=router_init_std)
        self.experts = nn.ModuleList(nn.Linear(dim, expert_dim) for _ in range(num_experts))
        self.dte = nn.Linear(expert_dim, expert_dim)
        self.dteall = nn.Linear(expert_dim, expert_dim)
        self.proj = nn.Linear(expert_dim, dim)

    def forward(self, x: torch.Tensor) -> MoTEOutput:
        check_rank(x, 3, "expert tokens")
        b, t, d = x.shape
        g = self.gate(x)  # Eq. (1)-(2); top-1 (Eq. 3)
        conf = g.logits.gather(-1, g.indices)[..., 0]  # c_{b,t}, Eq. (4)
        selected = conf.argmax(dim=1)  # the token with the most confident expert
        p = g.probs.gather(-1, g.indices)  # Eq. (5)-(6), the book's reading: softmax over all E logits at the choice
        weights = torch.zeros_like(g.probs).scatter(-1, g.indices, p)
        h, counts = dispatch_combine(x.reshape(b * t, d), self.experts, g.indices.reshape(b * t, 1),
                                     weights.reshape(b * t, -1))
        z = self.proj(self.dteall(self.dte(h))).reshape(b, t, d)
        balance = importance_load_loss(weights)  # Eq. (7)-(9), over batch and tokens
        return MoTEOutput(tokens=z, selected=selected, gate=g._replace(weights=weights), balance=balance.loss,
                          counts=counts)


class MoTEOutput(NamedTuple):
    """One layer's MoTE: new expert ``tokens (B, T, D)``, the ``selected`` token per image ``(B,)``, the ``gate``
    (weights = confidence at the chosen expert), the ``balance`` loss and per-expert ``counts``.

    Explained in the book: Chapter 3, section 6 "Which token is selected, per modality (Fig. 6a) and per layer
    (Fig. 7)"."""

    tokens: torch.Tensor
    selected: torch.Tensor
    gate: GateOutput
    balance: torch.Tensor
    counts: torch.Tensor


class PromptTokenizer(nn.Module):
    """Progressive Prompt Tokenization (SegMoTE Sec. 3.4, Fig. 3): ``Q`` prompt tokens from the image alone.

    Explained in the book: Chapter 3, section 5 "Box, point or no prompt (Table 4)".

    Learnable queries attend (multi-head attention) over the layer-normed image tokens plus a linear encoding of
    their ``(x, y)`` coordinates in ``[-1, 1]``; an MLP with a residual and a final LayerNorm gives the tokens, which
    replace SAM's sparse prompt tokens. With D = 768 it has 7,091,712 parameters (the paper: 7M).

    Shapes: ``(B, D, h, w) -> (B, Q, D)``; ``return_attention`` also gives ``(B, Q, h, w)``.
    """

    def __init__(self, *, dim: int, num_queries: int = 2, num_heads: int = 8, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.norm_kv = nn.LayerNorm(dim)
        self.pos = nn.Linear(2, dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, image_embeddings: torch.Tensor, *, return_attention: bool = False):
        check_rank(image_embeddings, 4, "image_embeddings")
        b, d, h, w = image_embeddings.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=image_embeddings.device),
                                torch.linspace(-1, 1, w, device=image_embeddings.device), indexing="ij")
        coords = torch.stack([xs, ys], dim=-1).reshape(1, h * w, 2).to(image_embeddings.dtype)
        kv = self.norm_kv(image_embeddings.flatten(2).transpose(1, 2)) + self.pos(coords)
        tokens, attn = self.attn(self.queries.unsqueeze(0).expand(b, -1, -1), kv, kv, need_weights=return_attention)
        tokens = self.norm_out(tokens + self.mlp(tokens))
        return (tokens, attn.reshape(b, -1, h, w)) if return_attention else tokens


class SegMoTEOutput(NamedTuple):
    """A SegMoTE forward pass.

    Explained in the book: Chapter 3, section 6 "Which token is selected, per modality (Fig. 6a) and per layer
    (Fig. 7)".

    Attributes:
        masks: ``(B, 1, 4h, 4w)`` low-resolution logits from each image's selected expert token (SAM's 256 x 256
            for a 1024-px input; upsample to the image with :meth:`SegMoTE.upscale`).
        expert_masks: ``(B, T, 4h, 4w)`` the mask of every expert token.
        selected: ``(B,)`` the selected token of the last layer.
        motes: one :class:`MoTEOutput` per decoder layer.
        balance_loss: the last layer's balance loss (as the code returns it).
    """

    masks: torch.Tensor
    expert_masks: torch.Tensor
    selected: torch.Tensor
    motes: list
    balance_loss: torch.Tensor


class SegMoTE(nn.Module):
    """SAM with expert tokens, MoTE in every decoder layer, expert mask heads and PPT; SAM stays frozen.

    Explained in the book: Chapter 3, sections 2 "The frozen foundation model" and 3 "Where the expert tokens
    enter, and what trains".

    ``encode`` runs the (frozen) image encoder once; ``forward`` decodes from cached embeddings with box or point
    prompts (SAM's prompt encoder) or prompt-free (``prompt_free=True``: PPT's tokens replace the sparse prompts).

    Example:
        >>> model = build_model("segmote_test")
        >>> emb, early = model.encode(torch.rand(2, 3, 64, 64))
        >>> out = model(emb, early, boxes=torch.tensor([[4.0, 4.0, 40.0, 40.0]] * 2))
        >>> tuple(out.masks.shape), tuple(out.expert_masks.shape), tuple(out.selected.shape)
        ((2, 1, 16, 16), (2, 3, 16, 16), (2,))
    """

    def __init__(self, *, config: SegMoTEConfig, backbone: Sam | None = None) -> None:
        super().__init__()
        self.config = config
        self.sam = backbone if backbone is not None else build_sam(config)
        d, t = config.prompt_dim, config.num_expert_tokens
        self.expert_tokens = nn.Embedding(t, d)
        self.motes = nn.ModuleList(MoTE(dim=d, num_experts=config.num_experts, expert_dim=config.expert_dim,
                                        router_init_std=config.router_init_std)
                                   for _ in self.sam.mask_decoder.transformer.layers)
        self.expert_hypernets = nn.ModuleList(MLP(d, d, d // 8, 3) for _ in range(t))
        if config.hq_features:
            e = config.encoder_dim
            self.expert_embedding_encoder = nn.Sequential(
                nn.ConvTranspose2d(d, d // 4, 2, 2), LayerNorm2d(d // 4), nn.GELU(),
                nn.ConvTranspose2d(d // 4, d // 8, 2, 2))
            self.compress_vit_feat = nn.Sequential(
                nn.ConvTranspose2d(e, d, 2, 2), LayerNorm2d(d), nn.GELU(), nn.ConvTranspose2d(d, d // 8, 2, 2))
            self.expert_feature_fusion = nn.Sequential(
                nn.Conv2d(d // 8, d // 4, 3, padding=1), LayerNorm2d(d // 4), nn.GELU(),
                nn.Conv2d(d // 4, d // 8, 3, padding=1))
        self.ppt = PromptTokenizer(dim=d, num_queries=config.ppt_queries, num_heads=config.ppt_heads)
        self.freeze_sam()

    # ------------------------------------------------------------------ SAM, frozen
    def freeze_sam(self) -> None:
        """No gradient into any SAM weight, and SAM in eval mode whatever the wrapper's mode."""
        for p in self.sam.parameters():
            p.requires_grad_(False)
        self.sam.eval()

    def train(self, mode: bool = True) -> SegMoTE:
        super().train(mode)
        self.sam.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen image encoder: ``(B, 3, S, S)`` in [0, 1] -> image embedding ``(B, D, S/16, S/16)`` and the first
        global-attention block's features ``(B, C_vit, S/16, S/16)`` (the code's ``interm_embeddings[0]``)."""
        check_rank(images, 4, "images")
        s = self.config.image_size
        if images.shape[1] != 3 or tuple(images.shape[-2:]) != (s, s):
            raise ValueError(f"images must be (B, 3, {s}, {s}) in [0, 1], got {tuple(images.shape)}")
        enc = self.sam.image_encoder
        x = (images * 255.0 - self.sam.pixel_mean) / self.sam.pixel_std
        x = enc.patch_embed(x)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        early = None
        for i, blk in enumerate(enc.blocks):
            x = blk(x)
            if i == self.config.global_attn[0]:
                early = x.permute(0, 3, 1, 2)
        return enc.neck(x.permute(0, 3, 1, 2)), early

    # ------------------------------------------------------------------ decoder with MoTE
    def _layer(self, layer, mote, queries, keys, query_pe, key_pe, first: int):
        """One ``TwoWayAttentionBlock`` in SAM's order, with the expert tokens ``[first, first + T)`` routed through
        MoTE instead of the block's MLP."""
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = layer.norm2(queries + layer.cross_attn_token_to_image(q=q, k=k, v=keys))
        t = self.config.num_expert_tokens
        experts = queries[:, first:first + t]
        mote_out = mote(experts)
        others = torch.cat([queries[:, :first], queries[:, first + t:]], dim=1)
        others = layer.norm3(others + layer.mlp(others))
        queries = torch.cat([others[:, :first], mote_out.tokens, others[:, first:]], dim=1)
        q = queries + query_pe
        keys = layer.norm4(keys + layer.cross_attn_image_to_token(q=k, k=q, v=queries))
        return queries, keys, mote_out

    def forward(self, image_embeddings: torch.Tensor, early_features: torch.Tensor | None = None, *,
                points: tuple[torch.Tensor, torch.Tensor] | None = None, boxes: torch.Tensor | None = None,
                mask_prior: torch.Tensor | None = None, prompt_free: bool = False) -> SegMoTEOutput:
        """Decode one prompt per image.

        Args:
            image_embeddings: ``(B, D, h, w)`` from :meth:`encode`.
            early_features: ``(B, C_vit, h, w)`` from :meth:`encode` (needed with ``hq_features``).
            points: ``(coords (B, P, 2), labels (B, P))`` in input pixels, SAM's convention (1 fg, 0 bg).
            boxes: ``(B, 4)`` boxes ``x0, y0, x1, y1`` in input pixels.
            mask_prior: ``(B, 1, 4h, 4w)`` a low-resolution mask logit map (SAM's dense prompt; PPT's mask prior).
            prompt_free: replace the sparse prompts by PPT's tokens (no point or box may be given).
        """
        check_rank(image_embeddings, 4, "image_embeddings")
        b = image_embeddings.shape[0]
        pe = self.sam.prompt_encoder
        if mask_prior is not None and mask_prior.shape[0] != b:
            raise ValueError(f"mask_prior has {mask_prior.shape[0]} rows for {b} images")
        if prompt_free:
            if points is not None or boxes is not None:
                raise ValueError("prompt_free=True replaces the point/box prompts by PPT tokens: pass neither")
            _, dense = pe(None, None, mask_prior)
            if mask_prior is None:
                dense = dense.expand(b, -1, -1, -1)
            sparse = self.ppt(image_embeddings)
        else:
            if points is None and boxes is None:
                raise ValueError("give points or boxes, or use prompt_free=True")
            sparse, dense = pe(points, boxes, mask_prior)
            if sparse.shape[0] != b:
                raise ValueError(f"{sparse.shape[0]} prompts for {b} images: one prompt (set) per image")
        return self.decode(image_embeddings, early_features, sparse=sparse, dense=dense)

    def prompt_tokens(self, image_embeddings: torch.Tensor, *, boxes: torch.Tensor | None = None,
                      points: tuple[torch.Tensor, torch.Tensor] | None = None,
                      prompt_free: bool = False) -> torch.Tensor:
        """The sparse prompt tokens of one kind: a box ``(B, 2, D)`` (2 corner tokens), one point ``(B, 2, D)`` (SAM
        pads it with a not-a-point token) or PPT's ``(B, Q, D)`` -- so batches can mix prompt kinds row by row
        (:func:`medmoe.papers.segmote.recipe.prompt_tokens_by_kind` pads the shorter ones)."""
        if prompt_free:
            return self.ppt(image_embeddings)
        return self.sam.prompt_encoder(points, boxes, None)[0]

    def decode(self, image_embeddings: torch.Tensor, early_features: torch.Tensor | None, *, sparse: torch.Tensor,
               dense: torch.Tensor | None = None) -> SegMoTEOutput:
        """The decoder from given sparse tokens ``(B, N, D)`` and dense prompt ``(B, D, h, w)`` (``None``: SAM's
        no-mask embedding)."""
        b = image_embeddings.shape[0]
        pe = self.sam.prompt_encoder
        if dense is None:
            dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, *image_embeddings.shape[-2:])
        dec = self.sam.mask_decoder
        first = 1 + dec.num_mask_tokens
        out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight, self.expert_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        src = image_embeddings + dense
        pos = pe.get_dense_pe().expand(b, -1, -1, -1)
        _, d, h, w = src.shape
        queries, keys = tokens, src.flatten(2).transpose(1, 2)
        key_pe = pos.flatten(2).transpose(1, 2)
        motes = []
        for layer, mote in zip(dec.transformer.layers, self.motes):
            queries, keys, m = self._layer(layer, mote, queries, keys, tokens, key_pe, first)
            motes.append(m)
        tr = dec.transformer
        q, k = queries + tokens, keys + key_pe
        queries = tr.norm_final_attn(queries + tr.final_attn_token_to_image(q=q, k=k, v=keys))
        upscaled = dec.output_upscaling(keys.transpose(1, 2).reshape(b, d, h, w))
        features = upscaled
        if self.config.hq_features:
            if early_features is None:
                raise ValueError("hq_features needs early_features (the second output of encode())")
            features = (self.expert_feature_fusion(upscaled) + self.expert_embedding_encoder(image_embeddings)
                        + self.compress_vit_feat(early_features))
        t = self.config.num_expert_tokens
        hyper = torch.stack([mlp(queries[:, first + i]) for i, mlp in enumerate(self.expert_hypernets)], dim=1)
        expert_masks = (hyper @ features.flatten(2)).reshape(b, t, *features.shape[-2:])
        selected = motes[-1].selected
        masks = expert_masks[torch.arange(b, device=selected.device), selected].unsqueeze(1)
        return SegMoTEOutput(masks=masks, expert_masks=expert_masks, selected=selected, motes=motes,
                             balance_loss=motes[-1].balance)

    def upscale(self, masks: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Low-resolution logits -> the input size (or ``size``, e.g. the original image), bilinear."""
        s = size or (self.config.image_size, self.config.image_size)
        return F.interpolate(masks, size=s, mode="bilinear", align_corners=False)


def build_model(name: str | SegMoTEConfig = "segmote_paper", *, backbone: Sam | None = None,
                **overrides) -> SegMoTE:
    """A :class:`SegMoTE` from a name of :data:`CONFIGS` (or an older name of :data:`ALIASES`, or a config), fields
    overridden by keyword, e.g. ``build_model("segmote_quick", num_experts=8)``.

    ``backbone`` passes an existing (e.g. pretrained, see :func:`load_sam_checkpoint`) ``segment_anything`` ``Sam``
    of the same configuration; ``None`` builds one with random weights (:func:`build_sam`). Either way it is frozen.

    Raises:
        ValueError: an unknown name or field, or an invalid value.

    Example:
        >>> build_model("segmote_test").config.num_expert_tokens
        3
        >>> ALIASES["imis_like"], CONFIGS["segmote_paper_imis"].prompt_dim
        ('segmote_paper_imis', 768)
    """
    return SegMoTE(config=resolve_config(name, CONFIGS, overrides, what="SegMoTE", aliases=ALIASES), backbone=backbone)


def example_inputs(name: str | SegMoTEConfig = "segmote_test", *, batch_size: int = 2
                   ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]]]:
    """A random batch for ``build_model(name)``'s forward (cached image embeddings, early ViT features and one box
    per image) and the output shapes it must give (the contract test, ``tests/test_contract.py``, runs every
    paper's ``_test`` configuration through this).

    Returns:
        ``(kwargs for forward, {output field: expected shape})``; the first field is the one to backpropagate.

    Example:
        >>> kwargs, shapes = example_inputs("segmote_test")
        >>> build_model("segmote_test")(**kwargs).masks.shape == shapes["masks"]
        True
    """
    cfg = resolve_config(name, CONFIGS, {}, what="SegMoTE", aliases=ALIASES)
    grid = cfg.image_size // cfg.patch_size
    side = cfg.image_size
    kwargs = {"image_embeddings": torch.randn(batch_size, cfg.prompt_dim, grid, grid),
              "early_features": torch.randn(batch_size, cfg.encoder_dim, grid, grid),
              "boxes": torch.tensor([[side / 16, side / 8, side * 5 / 8, side * 3 / 4]] * batch_size)}
    low = 4 * grid
    return kwargs, {"masks": (batch_size, 1, low, low), "expert_masks": (batch_size, cfg.num_expert_tokens, low, low),
                    "selected": (batch_size,)}
