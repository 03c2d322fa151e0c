"""Tiny random Auffusion-style components saved in Auffusion's hub folder layout:
``unet/``, ``scheduler/`` (PNDM, as the hub's), ``vae/``, ``vocoder/`` (``config.json`` +
``vocoder.pt`` = ``{"generator": state_dict}`` with weight norm's ``weight_g``/``weight_v``),
``condition_config.json`` naming ``text_encoder_0/`` (CLIP text model + its tokenizer) and
``condition_adapter_0/`` (``config.json`` + ``condition_adapter.pt``)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from mmdisco.bases.auffusion import ConditionAdapter
from mmdisco.encoders.auffusion import HifiGanGenerator
from support.tiny_pretrained import clip_tokenizer

SR_CLIP, N_CLIP = 8000, 5120     # clips: 0.64 s at 8 kHz -> 10240 samples at 16 kHz -> 64 frames
N_MELS = 32                      # mel bins (Auffusion: 256)
LATENT = (4, 32, 16)             # (C, T, M): 64 frames / 2, 32 bins / 2 (tiny VAE factor 2)
TEXT_LEN, TEXT_DIM = 16, 32      # condition_max_length, CLIP hidden size = cross_attention_dim
W = 3.0                          # the base's own CFG weight in the tests
VOCODER = {"resblock": "1", "num_mels": N_MELS, "upsample_initial_channel": 16,
           "upsample_rates": [10, 16], "upsample_kernel_sizes": [20, 33],
           "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3, 5]],
           "sampling_rate": 16000}


def weight_norm_state(model: torch.nn.Module, gen: torch.Generator) -> dict:
    """A state dict in weight-norm form (``w = g · v / ‖v‖``, norm over all axes but 0), as a
    HiFi-GAN checkpoint stores it; ``v`` is ``w`` times a random positive factor per row."""
    out = {}
    for key, w in model.state_dict().items():
        if key.endswith(".weight") and w.ndim == 3:
            g = w.flatten(1).norm(dim=1).reshape(-1, 1, 1)
            out[key + "_g"] = g.clone()
            out[key + "_v"] = w * (0.5 + torch.rand(w.shape[0], 1, 1, generator=gen))
        else:
            out[key] = w.clone()
    return out


def components(seed: int = 0) -> dict:
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=1, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, scaling_factor=0.18215)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=100, hidden_size=TEXT_DIM, intermediate_size=37, num_attention_heads=2,
        num_hidden_layers=1, max_position_embeddings=TEXT_LEN, bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    adapter = ConditionAdapter(TEXT_DIM, TEXT_DIM)
    with torch.no_grad():   # a non-trivial LayerNorm affine
        adapter.norm.weight.uniform_(0.5, 1.5)
        adapter.norm.bias.normal_(0, 0.1)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    vocoder = HifiGanGenerator(VOCODER)
    return {"unet": unet, "vae": vae, "text_encoder": text, "tokenizer": clip_tokenizer(TEXT_LEN),
            "adapter": adapter, "scheduler": scheduler, "vocoder": vocoder}


def save_hub_layout(comps: dict, folder: Path, seed: int = 0) -> Path:
    """Auffusion's hub layout (see the module docstring)."""
    folder = Path(folder)
    for name in ("unet", "vae", "scheduler"):
        comps[name].save_pretrained(folder / name)
    comps["text_encoder"].save_pretrained(folder / "text_encoder_0")
    comps["tokenizer"].save_pretrained(folder / "text_encoder_0")
    (folder / "condition_adapter_0").mkdir(parents=True)
    (folder / "condition_adapter_0" / "config.json").write_text(json.dumps(
        {"condition_dim": TEXT_DIM, "cross_attention_dim": TEXT_DIM,
         "condition_adapter_name": "condition_adapter_0"}))
    torch.save(comps["adapter"].state_dict(), folder / "condition_adapter_0" / "condition_adapter.pt")
    (folder / "condition_config.json").write_text(json.dumps([{
        "text_encoder_name": "text_encoder_0", "condition_adapter_name": "condition_adapter_0",
        "condition_type": "clip-vit-large-patch14_text", "condition_max_length": TEXT_LEN,
        "condition_dim": TEXT_DIM, "cross_attention_dim": TEXT_DIM}]))
    (folder / "vocoder").mkdir()
    (folder / "vocoder" / "config.json").write_text(json.dumps(VOCODER))
    state = weight_norm_state(comps["vocoder"], torch.Generator().manual_seed(seed))
    torch.save({"generator": state}, folder / "vocoder" / "vocoder.pt")
    return folder
