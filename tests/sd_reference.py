"""Small random Stable Diffusion v1-shaped models of the reference implementations (diffusers,
transformers), saved as a diffusers folder and as a CompVis single file, for the conversion tests.

The CompVis names are written from the project's own tables (`finetune.convert.keymaps`),
inverted; `test_convert.py` checks them against diffusers' own single-file converter.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

from finetune.convert import keymaps

SEED = 0
# SD v1's shapes, small: two UNet levels (cross-attention on the first, as SD v1's top levels),
# 2 layers per block, 4 heads, a 32-wide CLIP text tower with 4 heads and the real vocabulary.
UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
)  # fmt: skip
VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=2, latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    norm_num_groups=8, sample_size=16, scaling_factor=0.18215,
)  # fmt: skip
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=49408,
            max_position_embeddings=77, hidden_act="quick_gelu")


def perturb(module, seed: int):
    """Random weights everywhere, norms and biases included (not trivially 1 or 0)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            scale = 0.02 if p.ndim > 1 else 0.1
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return module.eval()


def build_models(seed: int = SEED):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    # One torch thread: on a busy 2-core machine torch's OpenMP workers spin against TensorFlow's
    # (measured: a small UNet call took 2.4 s with 2 threads, 0.03 s with one).
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    unet = perturb(UNet2DConditionModel(**UNET), seed + 1)
    vae = perturb(AutoencoderKL(**VAE), seed + 2)
    text = perturb(CLIPTextModel(CLIPTextConfig(**TEXT)), seed + 3)
    return unet, vae, text


def save_diffusers(models, folder: Path) -> Path:
    unet, vae, text = models
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text.save_pretrained(folder / "text_encoder")
    return folder


def to_compvis(key: str, blocks: dict) -> str:
    """The CompVis name of a diffusers key (the inverse of keymaps.rename over `blocks`)."""
    best = None
    for cv_block, (d_block, inner) in blocks.items():
        if key.startswith(d_block + ".") and (best is None or len(d_block) > len(blocks[best][0])):
            best = cv_block
    assert best is not None, key
    d_block, inner = blocks[best]
    rest = key[len(d_block) + 1:]
    if inner is not None:
        cv_inner, d_inner = max(((c, d) for c, d in inner.items() if rest.startswith(d + ".")), key=lambda cd: len(cd[1]))
        rest = cv_inner + rest[len(d_inner):]
    return f"{best}.{rest}"


def compvis_state_dict(state_dicts, to_array=lambda t: t.numpy()) -> dict:
    """The three models' weights (state dicts of unet, vae, text encoder) under CompVis single-file
    names, plus the buffers real SD v1 files carry (schedule constants, position ids, EMA bookkeeping)."""
    unet, vae, text = state_dicts
    unet_layout = {k for k in unet if k.startswith("down_blocks.")}
    levels = len({k.split(".")[1] for k in unet_layout})
    layers = len({k.split(".")[3] for k in unet_layout if k.startswith("down_blocks.0.resnets.")})
    attention = tuple(any(k.startswith(f"down_blocks.{i}.attentions.") for k in unet_layout) for i in range(levels))
    vae_levels = len({k.split(".")[2] for k in vae if k.startswith("encoder.down_blocks.")})
    vae_layers = len({k.split(".")[4] for k in vae if k.startswith("encoder.down_blocks.0.resnets.")})
    unet_blocks = keymaps.compvis_unet_blocks(levels, layers, attention)
    vae_blocks = keymaps.compvis_vae_blocks(vae_levels, vae_layers)
    out = {}
    for key, t in unet.items():
        out["model.diffusion_model." + to_compvis(key, unet_blocks)] = to_array(t)
    for key, t in vae.items():
        name = to_compvis(key, vae_blocks)
        value = to_array(t)
        if ".mid.attn_1." in name and name.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # CompVis VAE attention projections are 1x1 convolutions
        out["first_stage_model." + name] = value
    for key, t in text.items():
        out["cond_stage_model.transformer.text_model." + key] = to_array(t)
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
    out["betas"] = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float32) ** 2
    out["model_ema.num_updates"] = np.array(7, dtype=np.int32)
    return out


def save_compvis(models, path: Path) -> Path:
    from safetensors.numpy import save_file

    state = compvis_state_dict([m.state_dict() for m in models])
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    return path


def save_clip_tokenizer(reference, folder: Path) -> Path:
    """A transformers CLIPTokenizer folder (vocab.json, merges.txt) made from OpenAI CLIP's own
    vocabulary (`reference`: its SimpleTokenizer, see tests/clip_reference.py): no download from a hub."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(reference.encoder))
    merges = sorted(reference.bpe_ranks, key=reference.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return folder


class SmallCheckpoint:
    """The small reference models, saved both ways and converted with the project's code (once per session)."""

    def __init__(self, root: Path):
        from finetune.convert import convert_checkpoint

        self.root = root
        self.models = build_models()
        self.diffusers = save_diffusers(self.models, root / "diffusers")
        self.compvis = save_compvis(self.models, root / "sd-small.safetensors")
        self.converted = {
            "diffusers": convert_checkpoint(self.diffusers, root / "converted-diffusers"),
            # a CompVis file has no config: take the heads from the diffusers folder's configs
            "compvis": convert_checkpoint(self.compvis, root / "converted-compvis", config=str(self.diffusers)),
        }


@functools.lru_cache(maxsize=1)
def small_checkpoint() -> SmallCheckpoint:
    root = Path(tempfile.mkdtemp(prefix="finetune-sd-small-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return SmallCheckpoint(root)
