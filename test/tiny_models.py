"""Tiny random-init OWLv2, SAM 2 and DINOv2 checkpoints, saved with save_pretrained.

The code under test loads them through the same from_pretrained path users take (no hub access
needed).

OWLv2 gets a tiny CLIP BPE tokenizer (letters only, end-of-text the highest id, as in CLIP, because
OWLv2 pools the text at the highest token id) and a preprocessor_config.json.

SAM 2 random weights give unpredictable masks; ``primed=True`` sets the mask decoder's last layers
so every mask logit is positive and SAM 2 reports an object in every box. The segmenter then
returns each box (plus its margin) as the mask, which lets the instance tests reason about masks.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

TINY_OWL_IMAGE = 96  # 6 x 6 patches of 16 px
TINY_SAM_IMAGE = 256  # smallest size the default Hiera windows tile cleanly


def save_tiny_dinov2(folder: Path, seed: int = 0, hidden_size: int = 32) -> Path:
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config(
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        patch_size=14,
        image_size=56,
    )
    Dinov2Model(cfg).eval().save_pretrained(folder)
    return Path(folder)


def tiny_clip_vocab() -> dict[str, int]:
    letters = string.ascii_lowercase
    tokens = ["!"] + list(letters) + [c + "</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def save_tiny_owlv2(folder: Path, seed: int = 0, with_tokenizer: bool = True) -> Path:
    import torch
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection

    folder = Path(folder)
    vocab = tiny_clip_vocab()
    torch.manual_seed(seed)
    cfg = Owlv2Config(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            pad_token_id=0,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=TINY_OWL_IMAGE,
            patch_size=16,
        ),
        projection_dim=32,
    )
    model = Owlv2ForObjectDetection(cfg).eval()
    with torch.no_grad():
        # Random heads saturate the sigmoids (every box degenerate, every score 0 or 1). Small output
        # layers give patch-sized boxes around each patch (OWLv2's box bias) and spread-out scores.
        model.box_head.dense2.weight.mul_(0.01)
        model.box_head.dense2.bias.zero_()
        model.objectness_head.dense2.weight.mul_(0.05)
        model.objectness_head.dense2.bias.zero_()
    model.save_pretrained(folder)
    if with_tokenizer:
        CLIPTokenizer(vocab=vocab, merges=[], pad_token="!").save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "Owlv2ImageProcessor",
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "size": {"height": TINY_OWL_IMAGE, "width": TINY_OWL_IMAGE},
                "do_pad": True,
            }
        )
    )
    return folder


def tiny_sam2_config(image_size: int = TINY_SAM_IMAGE, video: bool = False):
    from transformers import Sam2Config
    from transformers.models.sam2_video import Sam2VideoConfig

    s = image_size
    parts = dict(
        vision_config=dict(
            model_type="sam2_vision_model",
            backbone_config=dict(
                model_type="sam2_hiera_det_model",
                hidden_size=8,
                image_size=[s, s],
                # A global-attention block may not open a stage (its query pooling needs a window).
                blocks_per_stage=[1, 1, 2, 1],
                embed_dim_per_stage=[8, 16, 32, 64],
                num_attention_heads_per_stage=[1, 1, 2, 2],
                window_size_per_stage=[8, 4, 4, 4],
                global_attention_blocks=[3],
                window_positional_embedding_background_size=[4, 4],
            ),
            backbone_channel_list=[64, 32, 16, 8],
            backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
            fpn_hidden_size=32,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=s, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    if video:
        return Sam2VideoConfig(**parts, image_size=s, memory_attention_hidden_size=32,
                               memory_encoder_hidden_size=32, mask_downsampler_embed_dim=32,
                               memory_fuser_embed_dim=32)
    return Sam2Config(**parts)


def save_tiny_sam2(folder: Path, seed: int = 0, primed: bool = True, video: bool = False) -> Path:
    import torch
    from transformers import Sam2Model

    torch.manual_seed(seed)
    cfg = tiny_sam2_config(video=video)
    if video:
        from transformers.models.sam2_video import Sam2VideoModel

        model = Sam2VideoModel(cfg).eval()
        decoder = model.mask_decoder
    else:
        model = Sam2Model(cfg).eval()
        decoder = model.mask_decoder
    if primed:
        with torch.no_grad():
            # Constant positive upscaled embedding and hypernetwork output -> every logit > 0.
            for conv in (decoder.upscale_conv2, decoder.conv_s0):
                conv.weight.zero_()
                conv.bias.fill_(1.0 if conv is decoder.upscale_conv2 else 0.0)
            for mlp in decoder.output_hypernetworks_mlps:
                mlp.proj_out.weight.zero_()
                mlp.proj_out.bias.fill_(1.0)
            decoder.pred_obj_score_head.proj_out.weight.zero_()
            decoder.pred_obj_score_head.proj_out.bias.fill_(5.0)  # "there is an object in the box"
    model.save_pretrained(folder)
    return Path(folder)
