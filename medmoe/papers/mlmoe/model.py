"""Text-guided segmentation: Ariadne's Thread (Zhong et al., MICCAI 2023) and MLMoE on top of it.

Explained in the book: *Chapter 1, MLMoE* (``chapters/01_mlmoe``), section 3 "The architecture, with shapes"
(the text-absent path in section 4 "Training: text present, then text absent"). One model class covers both, so
every ablation of MLMoE's Table II is a configuration switch:

* ``num_experts=0`` -- the base model, Ariadne's Thread: each guide-decoder layer projects the text with
  ``text_project`` (Conv1d over tokens, GELU, Linear, LeakyReLU) and fuses it by cross-attention
  (MLMoE Eq. (1): ``f_m = f'_v + LN(MCA(f_t, f'_v))``).
* ``num_experts=N >= 1`` -- MLMoE (the book's reading; the paper does not place the experts): ``text_project`` is
  replaced by N text experts ``f_t^i = ReLU(Conv(f_t W_t^i))`` (Eq. (2)) in each guide stage, mixed by a soft
  gate over pooled text and pooled visual features with a learnable temperature (Eq. (3),
  :class:`medmoe.moe.SoftGate`) into ``f'_t`` (Eq. (4)), which replaces ``f_t`` in the cross-attention (Eq. (5)).
  ``gate_temperature=False`` is "w/o tau", ``gate_visual=False`` is "w/o f_v".
* What the gate reads of the text (the paper says "the text features", not how they are pooled): the book's
  reading ``gate_text_pool="real_tokens"`` averages the text tokens over the report's real tokens only, with the
  tokenizer's attention mask (``text_mask``); ``"all_tokens"`` averages all ``T`` positions, padding included (the
  chapter's earlier reading, under which a short report's pooled feature is mostly padding). Without a
  ``text_mask`` (the virtual prompt, a unit test) both readings average all positions.
* The text-absent stage (Sec. II-C): a learnable virtual prompt with the text encoder's token shape
  replaces the encoded report, and a bottleneck adapter (no activation, zero-initialised up-projection)
  refines the fused feature of each stage; calling the model with ``text=None`` takes this path, so the
  text encoder is never run.

Shapes (paper configuration, 224 x 224 input): ConvNeXt-Tiny maps 96@56, 192@28, 384@14, 768@7; the guide
decoders work on 49 x 768, 196 x 384 and 784 x 192 visual tokens with 24, 12 and 9 projected text tokens;
the subpixel head returns ``(B, 1, 224, 224)`` mask logits.

The model takes encoded text ``(B, 24, D_text)`` rather than strings, so a frozen text encoder runs once per
report (:func:`medmoe.backbones.encode_cached`), not every epoch.

Configurations are data (:data:`CONFIGS`: ``mlmoe_paper``/``mlmoe_quick``/``mlmoe_paper_test``/``mlmoe_test`` and
the base model's ``ariadne_paper``/``ariadne_quick``); :func:`build_model` builds one, with a pretrained ConvNeXt
passed as ``backbone=``; :func:`example_inputs` is a batch for the contract test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.blocks import SubpixelUpsample, UnetOutBlock, UnetrUpBlock
from torch import nn

from medmoe.backbones import build_convnext
from medmoe.moe import GateOutput, SoftGate
from medmoe.utils import check_rank, resolve_config

__all__ = [
    "AriadneConfig",
    "CONFIGS",
    "build_model",
    "example_inputs",
    "sinusoidal_encoding",
    "TextExperts",
    "Adapter",
    "GuideDecoderLayer",
    "TextGuidedSegmenter",
    "SegOutput",
    "GATE_TEXT_POOLS",
    "pool_text",
]


@dataclass(frozen=True)
class AriadneConfig:
    """Everything that defines a model; configurations are data (see :data:`CONFIGS`).

    Explained in the book: Chapter 1, section 3 "The architecture, with shapes".

    Attributes:
        encoder: ConvNeXt configuration name for :func:`medmoe.backbones.build_convnext`.
        encoder_widths: channels of the four ConvNeXt stages.
        text_in_width: width of the text encoder's hidden states (768 for CXR-BERT, 384 for MiniLM).
        text_width: width the decoder reads text at (768 in the paper); a Linear maps
            ``text_in_width -> text_width`` when they differ.
        text_len: text tokens (24 in the paper).
        stage_text_lens: projected text tokens per guide stage (24, 12, 9).
        head_width: channels of the subpixel head (24).
        num_experts: 0 for Ariadne's Thread, N >= 1 for MLMoE.
        gate_temperature: MLMoE's learnable tau (False = "w/o tau").
        gate_visual: the gate sees pooled visual features too (False = "w/o f_v").
        adapter_dim: bottleneck width of the text-absent adapters.
        gate_text_pool: how the gate pools the text tokens: ``"real_tokens"`` (the book's reading: a mean over
            the tokens the attention mask marks as real) or ``"all_tokens"`` (padding included).
    """

    encoder: str = "convnext-tiny"
    encoder_widths: tuple[int, int, int, int] = (96, 192, 384, 768)
    text_in_width: int = 768
    text_width: int = 768
    text_len: int = 24
    stage_text_lens: tuple[int, int, int] = (24, 12, 9)
    head_width: int = 24
    num_experts: int = 4
    gate_temperature: bool = True
    gate_visual: bool = True
    adapter_dim: int = 8
    gate_text_pool: str = "real_tokens"


GATE_TEXT_POOLS = ("real_tokens", "all_tokens")
"""The gate's readings of the text (:attr:`AriadneConfig.gate_text_pool`)."""


def pool_text(txt: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the text tokens ``(B, T, D) -> (B, D)``, over the real tokens only when ``text_mask (B, T)`` (1 =
    real token, 0 = padding) is given; a row with no real token falls back to the mean over all positions.

    Example:
        >>> t = torch.tensor([[[1.0], [3.0], [0.0]]])
        >>> pool_text(t).item(), pool_text(t, torch.tensor([[1, 1, 0]])).item()
        (1.3333333730697632, 2.0)
    """
    if text_mask is None:
        return txt.mean(1)
    m = text_mask.to(txt.dtype)[..., None]
    n = m.sum(1)
    return torch.where(n > 0, (txt * m).sum(1) / n.clamp(min=1), txt.mean(1))


CONFIGS: dict[str, AriadneConfig] = {
    # The paper: ConvNeXt-Tiny, CXR-BERT (768-d), 4 experts.
    "mlmoe_paper": AriadneConfig(),
    "ariadne_paper": AriadneConfig(num_experts=0),
    # The quick profile: a small ConvNeXt (a quarter of the widths), the packaged MiniLM (384-d) read at 384, and a
    # narrower subpixel head (8 channels from 24, as the paper's 24 from 96).
    "mlmoe_quick": AriadneConfig(encoder="convnext-quick", encoder_widths=(24, 48, 96, 192), text_in_width=384,
                                 text_width=384, head_width=8),
    "ariadne_quick": AriadneConfig(encoder="convnext-quick", encoder_widths=(24, 48, 96, 192), text_in_width=384,
                                   text_width=384, head_width=8, num_experts=0),
    # The rehearsal profile: the paper's token counts (24 text tokens; 24, 12, 9 per stage) and 4 experts on the
    # convnext-test encoder and a 32-wide text model, so the paper path runs end to end in seconds.
    "mlmoe_paper_test": AriadneConfig(encoder="convnext-test", encoder_widths=(8, 16, 32, 64), text_in_width=32,
                                      text_width=32, head_width=8),
    # Unit tests.
    "mlmoe_test": AriadneConfig(encoder="convnext-test", encoder_widths=(8, 16, 32, 64), text_in_width=32,
                                text_width=32, text_len=8, stage_text_lens=(8, 4, 3), head_width=8, num_experts=3),
}


def sinusoidal_encoding(length: int, dim: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Fixed 1-D sinusoidal position encoding ``(length, dim)`` (Vaswani et al.), added to flattened tokens."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe.to(dtype)


class TextExperts(nn.Module):
    """N text experts of one decoder stage, MLMoE Eq. (2): ``f_t^i = ReLU(Conv(f_t W_t^i))``.

    Expert i maps every token with ``W_t^i`` (``D -> C``, with bias), then a 1x1 convolution over the token
    axis maps ``T -> L`` tokens (the same "Conv1d over tokens" Ariadne's ``text_project`` uses), then ReLU.
    All experts are computed at once with batched einsums (the soft gate weights every expert).

    Explained in the book: Chapter 1, sections 3 "The architecture, with shapes" and 6 "What the experts look at"
    (:meth:`word_attribution`).

    Shapes: ``f_t (B, T, D) -> (B, N, L, C)``.
    """

    def __init__(self, *, num_experts: int, in_tokens: int, out_tokens: int, in_width: int, out_width: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.empty(num_experts, in_width, out_width))
        self.b = nn.Parameter(torch.zeros(num_experts, out_width))
        self.conv_w = nn.Parameter(torch.empty(num_experts, out_tokens, in_tokens))
        self.conv_b = nn.Parameter(torch.zeros(num_experts, out_tokens))
        for i in range(num_experts):  # the default initialisation of nn.Linear / nn.Conv1d, per expert
            nn.init.kaiming_uniform_(self.w[i].T, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.conv_w[i], a=math.sqrt(5))
        nn.init.uniform_(self.b, -1 / math.sqrt(in_width), 1 / math.sqrt(in_width))
        nn.init.uniform_(self.conv_b, -1 / math.sqrt(in_tokens), 1 / math.sqrt(in_tokens))

    def forward(self, f_t: torch.Tensor) -> torch.Tensor:
        h = torch.einsum("btd,ndc->bntc", f_t, self.w) + self.b[None, :, None, :]
        h = torch.einsum("nlt,bntc->bnlc", self.conv_w, h) + self.conv_b[None, :, :, None]
        return F.relu(h)

    @torch.no_grad()
    def word_attribution(self, f_t: torch.Tensor) -> torch.Tensor:
        """How much each input token feeds each expert: ``(B, N, T)``.

        Before the ReLU, expert i's output is linear in the tokens; token t contributes the outer product of
        ``conv_w[i, :, t]`` and ``f_t[t] W^i``, whose Frobenius norm is
        ``||conv_w[i, :, t]|| * ||f_t[t] W^i||``. This is the book's reading of MLMoE's Fig. 3 ("text
        activation maps" per expert), which the paper does not define.
        """
        proj = torch.einsum("btd,ndc->bntc", f_t, self.w).norm(dim=-1)  # (B, N, T)
        return proj * self.conv_w.norm(dim=1)[None]  # conv_w: (N, L, T) -> (N, T)


class Adapter(nn.Module):
    """Bottleneck adapter of the text-absent stage: ``f <- f + Phi_u(Phi_d(f))``, linear maps, no activation
    (MLMoE Sec. II-C, after RepAdapter). The up-projection starts at zero, so the adapter starts as identity.

    Explained in the book: Chapter 1, section 4 "Training: text present, then text absent".
    """

    def __init__(self, *, width: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, hidden)
        self.up = nn.Linear(hidden, width)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f + self.up(self.down(f))


class GuideDecoderLayer(nn.Module):
    """One guide layer: self-attention over visual tokens, then cross-attention to (mixed) text tokens.

    MLMoE Eq. (1)/(5): ``f'_v = f_v + LN(MSA(f_v))``, ``f_m = f'_v + scale * LN(MCA(f'_t, f'_v))`` with a pre-LN
    on each branch input and a learnable ``scale`` initialised to 1.421 (both as in Ariadne's code).

    Shapes: ``vis (B, N, C)``, ``txt (B, T, D)`` -> ``(B, N, C)`` plus the gate decision (MLMoE) or ``None``.

    Explained in the book: Chapter 1, section 3 "The architecture, with shapes".
    """

    def __init__(self, *, width: int, text_in_len: int, text_out_len: int, text_width: int, num_experts: int,
                 gate_temperature: bool = True, gate_visual: bool = True, adapter_dim: int = 8,
                 gate_text_pool: str = "real_tokens") -> None:
        super().__init__()
        if gate_text_pool not in GATE_TEXT_POOLS:
            raise ValueError(f"gate_text_pool must be one of {GATE_TEXT_POOLS}, got {gate_text_pool!r}")
        self.gate_text_pool = gate_text_pool
        if width % 4:
            raise ValueError(f"width must be divisible by the 4 cross-attention heads, got {width}")
        self.num_experts, self.gate_visual = num_experts, gate_visual
        if num_experts == 0:
            self.text_project = nn.Sequential(
                nn.Conv1d(text_in_len, text_out_len, kernel_size=1), nn.GELU(), nn.Linear(text_width, width),
                nn.LeakyReLU(),
            )
        else:
            self.experts = TextExperts(num_experts=num_experts, in_tokens=text_in_len, out_tokens=text_out_len,
                                       in_width=text_width, out_width=width)
            self.gate = SoftGate(in_features=(text_width, width) if gate_visual else text_width,
                                 num_experts=num_experts, learn_temperature=gate_temperature)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, num_heads=1, batch_first=True)
        self.self_attn_norm = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, num_heads=4, batch_first=True)
        self.cross_attn_norm = nn.LayerNorm(width)
        self.scale = nn.Parameter(torch.tensor(1.421))
        self.adapter = Adapter(width=width, hidden=adapter_dim)

    def project_text(self, vis: torch.Tensor, txt: torch.Tensor, text_mask: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, GateOutput | None]:
        """``f'_t``: Ariadne's projection, or the gate-weighted mixture of the text experts (Eq. (2)-(4)); the gate
        pools the text as :attr:`AriadneConfig.gate_text_pool` says (``text_mask``: ``(B, T)``, 1 = real token)."""
        if self.num_experts == 0:
            return self.text_project(txt), None
        pooled = pool_text(txt, text_mask if self.gate_text_pool == "real_tokens" else None)
        gate_in = (pooled, vis.mean(1)) if self.gate_visual else (pooled,)
        g = self.gate(*gate_in)
        return torch.einsum("bn,bnlc->blc", g.weights, self.experts(txt)), g

    def forward(self, vis: torch.Tensor, txt: torch.Tensor, *, adapter: bool = False,
                text_mask: torch.Tensor | None = None):
        pe_v = sinusoidal_encoding(vis.shape[1], vis.shape[2], device=vis.device, dtype=vis.dtype)
        v2 = self.norm1(vis)
        vis = vis + self.self_attn_norm(self.self_attn(v2 + pe_v, v2 + pe_v, v2, need_weights=False)[0])
        t, g = self.project_text(vis, txt, text_mask)
        pe_t = sinusoidal_encoding(t.shape[1], t.shape[2], device=t.device, dtype=t.dtype)
        v2 = self.norm2(vis)
        fused = vis + self.scale * self.cross_attn_norm(self.cross_attn(v2 + pe_v, t + pe_t, t, need_weights=False)[0])
        if adapter:
            fused = self.adapter(fused)
        return fused, g


class SegOutput(NamedTuple):
    """``logits (B, 1, H, W)``; ``gates``: one :class:`GateOutput` per stage (empty for Ariadne);
    ``fused``: the fused feature ``f_m`` of each stage ``(B, N_s, C_s)`` (the distillation targets).

    Explained in the book: Chapter 1, section 3 "The architecture, with shapes" (the table of shapes).
    """

    logits: torch.Tensor
    gates: list
    fused: list


class TextGuidedSegmenter(nn.Module):
    """Ariadne's Thread / MLMoE: ConvNeXt encoder, three guide decoders, subpixel head.

    Explained in the book: Chapter 1, section 3 "The architecture, with shapes"; the text-absent path
    (virtual prompt, adapters, :meth:`start_distillation`) in section 4 "Training: text present, then text absent".

    Args:
        config: an :class:`AriadneConfig`.
        backbone: the image encoder, returning four maps (a ``transformers`` ``ConvNextModel``, e.g. pretrained
            with :func:`medmoe.backbones.build_convnext`); built from ``config.encoder`` with random weights when
            omitted. It is kept as the ``encoder`` submodule.

    Example:
        >>> m = build_model("mlmoe_test")
        >>> out = m(torch.randn(2, 1, 64, 64), torch.randn(2, 8, 32))
        >>> out.logits.shape, len(out.gates), out.gates[0].weights.shape
        (torch.Size([2, 1, 64, 64]), 3, torch.Size([2, 3]))
    """

    def __init__(self, config: AriadneConfig, *, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_convnext(config.encoder) if backbone is None else backbone
        c1, c2, c3, c4 = config.encoder_widths
        same_width = config.text_in_width == config.text_width
        self.text_proj = nn.Identity() if same_width else nn.Linear(config.text_in_width, config.text_width)
        layer = dict(text_in_len=config.text_len, text_width=config.text_width, num_experts=config.num_experts,
                     gate_temperature=config.gate_temperature, gate_visual=config.gate_visual,
                     adapter_dim=config.adapter_dim, gate_text_pool=config.gate_text_pool)
        self.guides = nn.ModuleList(
            GuideDecoderLayer(width=w, text_out_len=n, **layer) for w, n in zip((c4, c3, c2), config.stage_text_lens)
        )
        up = dict(spatial_dims=2, kernel_size=3, upsample_kernel_size=2, norm_name="BATCH")
        self.ups = nn.ModuleList([UnetrUpBlock(in_channels=c4, out_channels=c3, **up),
                                  UnetrUpBlock(in_channels=c3, out_channels=c2, **up),
                                  UnetrUpBlock(in_channels=c2, out_channels=c1, **up)])
        self.head = nn.Sequential(SubpixelUpsample(2, c1, config.head_width, scale_factor=4),
                                  UnetOutBlock(2, config.head_width, 1))
        # The text-absent stage's parameters exist from the start but only train in start_distillation().
        self.virtual_prompt = nn.Parameter(torch.randn(config.text_len, config.text_in_width) * 0.02,
                                           requires_grad=False)
        for p in self.adapter_parameters():
            p.requires_grad_(False)
        self._distilling = False

    # ------------------------------------------------------------------ timm-style split
    def forward_features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The four encoder maps ``(B, C_i, H / 2^(i+2), W / 2^(i+2))``; grey images are repeated to RGB."""
        check_rank(image, 4, "image")
        if image.shape[1] not in (1, 3):
            raise ValueError(f"image must have 1 or 3 channels, got shape {tuple(image.shape)}")
        if image.shape[-1] % 32 or image.shape[-2] % 32:
            raise ValueError(f"image height and width must be multiples of 32, got shape {tuple(image.shape)}")
        if image.shape[1] == 1:
            image = image.repeat(1, 3, 1, 1)
        out = self.encoder(pixel_values=image, output_hidden_states=True)
        return list(out.hidden_states[1:])

    def forward_head(self, feats: list[torch.Tensor], text: torch.Tensor | None, *,
                     adapter: bool | None = None, text_mask: torch.Tensor | None = None) -> SegOutput:
        """The decoder on the encoder maps ``feats`` and ``text (B, T, D_text)`` (``None``: the virtual prompt).

        ``text_mask``: ``(B, T)``, 1 for the report's real tokens and 0 for padding (the tokenizer's attention mask);
        the gates pool the text over the real tokens with it (:attr:`AriadneConfig.gate_text_pool`). Ignored with
        the virtual prompt, whose every token is learned.

        ``adapter``: run the text-absent adapters; ``None`` runs them exactly when ``text is None``. ``True`` with a
        ``text`` is the fixed-prompt protocol of Table IV as the book reads it (a fixed prompt's features as the
        student's input, adapters distilled for it: :func:`medmoe.papers.mlmoe.recipe.train` ``distill_prompt=``).
        """
        b = feats[0].shape[0]
        adapter = text is None if adapter is None else bool(adapter)
        if text is None:  # text-absent: the virtual prompt stands in for the encoded report
            text, text_mask = self.virtual_prompt.expand(b, -1, -1), None
        else:
            check_rank(text, 3, "text features")
            want = (b, self.config.text_len, self.config.text_in_width)
            if tuple(text.shape) != want:
                raise ValueError(f"text features must have shape {want} (batch, tokens, width), "
                                 f"got {tuple(text.shape)}")
            if text_mask is not None and tuple(text_mask.shape) != want[:2]:
                raise ValueError(f"text_mask must have shape {want[:2]} (batch, tokens), got {tuple(text_mask.shape)}")
        txt = self.text_proj(text)
        x, gates, fused = feats[3], [], []
        for guide, up, skip in zip(self.guides, self.ups, (feats[2], feats[1], feats[0])):
            h, w = x.shape[-2:]
            tokens, g = guide(x.flatten(2).transpose(1, 2), txt, adapter=adapter, text_mask=text_mask)
            fused.append(tokens)
            if g is not None:
                gates.append(g)
            x = up(tokens.transpose(1, 2).reshape(b, -1, h, w), skip)
        return SegOutput(self.head(x), gates, fused)

    def forward(self, image: torch.Tensor, text: torch.Tensor | None = None, *,
                adapter: bool | None = None, text_mask: torch.Tensor | None = None) -> SegOutput:
        """``image (B, 1|3, H, W)``, ``text (B, T, D_text)`` encoded report, or ``None`` for the text-absent path;
        ``adapter`` and ``text_mask`` (``(B, T)``, 1 = real token) as in :meth:`forward_head`."""
        return self.forward_head(self.forward_features(image), text, adapter=adapter, text_mask=text_mask)

    # ------------------------------------------------------------------ the text-absent stage
    def adapter_parameters(self) -> list[nn.Parameter]:
        """The parameters of the three stages' adapters (trained in the text-absent stage only)."""
        return [p for g in self.guides for p in g.adapter.parameters()]

    def start_distillation(self, *, adapters: bool = True, prompt: bool = True) -> list[nn.Parameter]:
        """Freeze everything but the virtual prompt and the adapters (MLMoE Sec. II-C); return those.

        ``adapters=False`` trains the prompt alone (Table II, "w/o adapter"): the adapters stay at their
        identity initialisation.

        While distilling, :meth:`train` keeps the frozen network in eval mode, so its batch-norm statistics
        do not move.

        ``prompt=False`` keeps the virtual prompt frozen: the fixed-prompt protocol, where a fixed prompt's features
        replace it as the student's input and only the adapters learn.
        """
        if not adapters and not prompt:
            raise ValueError("start_distillation(adapters=False, prompt=False) would train nothing; keep one of them")
        for p in self.parameters():
            p.requires_grad_(False)
        trainable = [*([self.virtual_prompt] if prompt else []), *(self.adapter_parameters() if adapters else [])]
        for p in trainable:
            p.requires_grad_(True)
        self._distilling = True
        self.train(self.training)
        return trainable

    def train(self, mode: bool = True):
        super().train(mode)
        if self._distilling:
            for m in self.modules():
                if not isinstance(m, Adapter):
                    m.training = False
        return self


def build_model(name: str | AriadneConfig = "mlmoe_quick", *, backbone: nn.Module | None = None,
                **overrides) -> TextGuidedSegmenter:
    """A :class:`TextGuidedSegmenter` from a configuration name in :data:`CONFIGS` (or an :class:`AriadneConfig`)
    with fields overridden, e.g. ``build_model("mlmoe_quick", num_experts=8, gate_visual=False)``.

    Args:
        backbone: a pretrained image encoder (``build_convnext(cfg.encoder, pretrained=...)``); ``None`` builds
            ``config.encoder`` with random weights.

    Raises:
        ValueError: an unknown name or field, or ``num_experts < 0``.

    Example:
        >>> build_model("mlmoe_test", num_experts=2).guides[0].num_experts
        2
    """
    cfg = resolve_config(name, CONFIGS, overrides, what="model")
    if cfg.num_experts < 0:
        raise ValueError(f"num_experts must be >= 0, got {cfg.num_experts}")
    return TextGuidedSegmenter(cfg, backbone=backbone)


def example_inputs(name: str | AriadneConfig = "mlmoe_test", *, batch_size: int = 2
                   ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]]]:
    """A random batch for ``build_model(name)`` and the output shapes it must give (the contract test,
    ``tests/test_contract.py``, runs every paper's ``_test`` configuration through this).

    Returns:
        ``(kwargs for forward, {output field: expected shape})``: a grey ``image (B, 1, 64, 64)`` and encoded
        ``text (B, text_len, text_in_width)``; the first field (``logits``) is the one to backpropagate.

    Example:
        >>> kwargs, shapes = example_inputs("mlmoe_test")
        >>> build_model("mlmoe_test")(**kwargs).logits.shape == shapes["logits"]
        True
    """
    cfg = resolve_config(name, CONFIGS, {}, what="model")
    size = 64
    kwargs = {"image": torch.randn(batch_size, 1, size, size),
              "text": torch.randn(batch_size, cfg.text_len, cfg.text_in_width)}
    return kwargs, {"logits": (batch_size, 1, size, size)}
