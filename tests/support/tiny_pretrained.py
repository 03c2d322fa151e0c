"""Tiny random AudioLDM- and AnimateDiff-style components built from configs, and the hub's
folder layout they are saved in (``save_pretrained``, one subfolder per component)."""
from __future__ import annotations

import string

import torch

SR_CLIP, N_CLIP = 8000, 5120        # clips: 0.64 s at 8 kHz (resampled to the vocoder's 16 kHz)
FRAMES, SIZE = 8, 16                # clips: 8 frames of 16×16
AUDIO_LATENT = (8, 16, 16)          # 64 mel frames / 4, 64 mel bins / 4
VIDEO_LATENT = (FRAMES, 4, 8, 8)    # VAE factor 2 (tiny)
MAXLEN = 16                         # tokenizers' model_max_length
W_A, W_V = 2.5, 3.0                 # the bases' own CFG weights


# --------------------------------------------------------------------------- tiny components
def clip_tokenizer(max_length: int = MAXLEN):
    """A CLIP tokenizer over single characters: enough to tokenize test prompts offline."""
    from transformers import CLIPTokenizer
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def roberta_tokenizer():
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaTokenizer
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in sorted(ByteLevel.alphabet()):
        vocab.setdefault(ch, len(vocab))
    vocab["<mask>"] = len(vocab)
    return RobertaTokenizer(vocab=vocab, merges=[], model_max_length=MAXLEN)


def audioldm_components(seed: int = 0, text_dim: int = 32) -> dict:
    """``text_dim``: CLAP's projection (512 in AudioLDM, what the released module takes)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import (ClapTextConfig, ClapTextModelWithProjection, SpeechT5HifiGan,
                              SpeechT5HifiGanConfig)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=8, out_channels=8, block_out_channels=(32, 64),
        layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=(32, 64),
        class_embed_type="simple_projection", projection_class_embeddings_input_dim=text_dim,
        class_embeddings_concat=True)
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=8,
                        block_out_channels=(8, 16, 16), norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, scaling_factor=0.9)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=64, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[10, 16],
        upsample_kernel_sizes=[20, 32], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
        normalize_before=False))
    text = ClapTextModelWithProjection(ClapTextConfig(
        vocab_size=300, hidden_size=32, intermediate_size=37, num_attention_heads=2,
        num_hidden_layers=1, projection_dim=text_dim, pad_token_id=1, bos_token_id=0,
        eos_token_id=2))
    scheduler = DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return {"unet": unet, "vae": vae, "vocoder": vocoder, "text_encoder": text,
            "tokenizer": roberta_tokenizer(), "scheduler": scheduler}


def animatediff_components(seed: int = 0, text_dim: int = 32) -> dict:
    """``text_dim``: CLIP's hidden size (768 in Stable Diffusion 1.5)."""
    from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=1, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=text_dim)
    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1,
                            motion_norm_num_groups=8, motion_num_attention_heads=2,
                            motion_max_seq_length=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, scaling_factor=0.18215)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=100, hidden_size=text_dim, intermediate_size=37, num_attention_heads=2,
        num_hidden_layers=1, max_position_embeddings=MAXLEN, bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    # AnimateDiff's recommended schedule (linear betas), unlike AudioLDM's scaled_linear one
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              timestep_spacing="linspace")
    return {"unet": unet, "motion_adapter": adapter, "vae": vae, "text_encoder": text,
            "tokenizer": clip_tokenizer(), "scheduler": scheduler}


def save_components(components: dict, folder) -> None:
    """diffusers' folder layout: one subfolder per component."""
    for name, comp in components.items():
        if name != "motion_adapter":
            comp.save_pretrained(folder / name)
