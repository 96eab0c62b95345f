"""SAM (Kirillov et al., 2023) from ``segment-anything``'s own modules, at any input size, and its checkpoint loader.

Used in the book by *Chapter 3, SegMoTE*, which keeps every SAM weight frozen and adds expert tokens
(:mod:`medmoe.papers.segmote`). SAM's ViT-B is ``build_sam(image_size=1024)`` with the defaults below; SegMoTE
runs it at 512 px, so :func:`load_sam_checkpoint` resizes the position tables of a 1024-px checkpoint.

Shapes (ViT-B at 512 px)::

    image (B, 3, 512, 512) -> image_encoder -> (B, 256, 32, 32)
"""

from __future__ import annotations

import os
from functools import partial

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from medmoe.backbones.encoders import LoadReport

__all__ = ["build_sam", "load_sam_checkpoint", "SAM_PIXEL_MEAN", "SAM_PIXEL_STD"]

SAM_PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
"""SAM's per-channel input mean (RGB, on the 0..255 scale)."""
SAM_PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
"""SAM's per-channel input standard deviation (RGB, on the 0..255 scale)."""


def build_sam(*, image_size: int = 1024, patch_size: int = 16, encoder_dim: int = 768, encoder_depth: int = 12,
              encoder_heads: int = 12, global_attn: tuple[int, ...] = (2, 5, 8, 11), window_size: int = 14,
              prompt_dim: int = 256, decoder_mlp_dim: int = 2048, decoder_heads: int = 8) -> Sam:
    """A ``segment_anything`` ``Sam`` with random weights; the defaults are SAM ViT-B at 1024 px.

    Args:
        image_size: input side; the image embedding is ``image_size // patch_size`` on a side.
        patch_size: ViT patch side.
        encoder_dim, encoder_depth, encoder_heads: the ViT's width, blocks and heads.
        global_attn: indices of the ViT blocks with global (not windowed) attention.
        window_size: windowed attention size of the other blocks.
        prompt_dim: the prompt encoder's and mask decoder's width.
        decoder_mlp_dim, decoder_heads: the two-way transformer's MLP width and heads.

    Raises:
        ValueError: ``image_size`` not a multiple of ``patch_size``.

    Example:
        >>> sam = build_sam(image_size=64, encoder_dim=32, encoder_depth=2, encoder_heads=2, global_attn=(1,),
        ...                 window_size=2, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2)
        >>> sam.image_encoder(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 32, 4, 4])
    """
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
    grid = image_size // patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=encoder_depth, embed_dim=encoder_dim, img_size=image_size, mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=encoder_heads, patch_size=patch_size,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=tuple(global_attn), window_size=window_size,
            out_chans=prompt_dim),
        prompt_encoder=PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(image_size, image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=decoder_mlp_dim,
                                          num_heads=decoder_heads),
            transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=list(SAM_PIXEL_MEAN), pixel_std=list(SAM_PIXEL_STD),
    )


def load_sam_checkpoint(sam: Sam, checkpoint: str | os.PathLike) -> LoadReport:
    """Load a SAM checkpoint (e.g. ``sam_vit_b_01ec64.pth``, trained at 1024 px) into a SAM built at another size.

    The absolute position embedding ``(1, 64, 64, C)`` is resized bicubically to the model's grid and the relative
    position tables of the global-attention blocks are resized linearly (SegMoTE runs SAM at 512 px). Every other
    tensor must match exactly.

    Returns:
        A :class:`~medmoe.backbones.encoders.LoadReport`: every key ``loaded``, none ``missing`` or
        ``unexpected``, and the names of the ``resized`` tensors.

    Raises:
        FileNotFoundError: no file at ``checkpoint``.
        ValueError: a missing or unexpected key, or a shape that resizing cannot explain (another SAM size).
    """
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"SAM checkpoint {str(checkpoint)!r} does not exist; see "
                                "`python data_scripts/fetch.py --show sam_vit_b`")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    own = sam.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint}: not a checkpoint of this SAM: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    resized = []
    for key, value in state.items():
        want = own[key].shape
        if value.shape == want:
            continue
        if key.endswith("pos_embed") and value.ndim == 4:  # (1, H, W, C): resize the (H, W) grid
            value = F.interpolate(value.permute(0, 3, 1, 2), size=want[1:3], mode="bicubic", align_corners=False)
            state[key] = value.permute(0, 2, 3, 1)
        elif (key.endswith("rel_pos_h") or key.endswith("rel_pos_w")) and value.shape[1:] == want[1:]:
            state[key] = F.interpolate(value.T[None], size=want[0], mode="linear")[0].T  # (2S - 1, C) tables
        else:
            raise ValueError(f"{checkpoint}: {key} has shape {tuple(value.shape)}, the model {tuple(want)} "
                             "(a different SAM size?)")
        resized.append(key)
    sam.load_state_dict(state)
    return LoadReport(loaded=sorted(state), missing=[], unexpected=[], ignored=[], resized=resized)
