"""A project preset from a checkpoint's configuration.

A diffusers SD v1 folder carries `unet/config.json`, `vae/config.json` and
`text_encoder/config.json`; `preset_from_diffusers_config` reads the widths, depths,
heads and constants of the SD v1 family from them and refuses any setting the family
does not have (SD 2.x linear heads per level, class embeddings, other block types, ...),
naming each. A CompVis single file carries no configuration: `infer_compvis_configs`
reads the same numbers from its weight shapes, and takes what the shapes cannot tell
(attention heads, norm groups, sample size, latent scale) from SD v1.5's own configuration.
"""

from __future__ import annotations

import re

from finetune.errors import ConfigError
from finetune.models.layers import ACTIVATIONS
from finetune.models.presets import CLIP_VOCAB_SIZE, SD_V1_LATENT_SCALE, Preset, TextEncoderSpec, UNetSpec, VAESpec

# diffusers config values every SD v1-family UNet has (key -> value; an absent key means the default).
UNET_FIXED = {
    "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "mid_block_type": "UNetMidBlock2DCrossAttn", "only_cross_attention": False, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "act_fn": "silu", "norm_eps": 1e-5, "transformer_layers_per_block": 1,
    "encoder_hid_dim": None, "dual_cross_attention": False, "class_embed_type": None,
    "addition_embed_type": None, "num_class_embeds": None, "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional",
    "time_embedding_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None,
    "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3, "attention_type": "default",
    "class_embeddings_concat": False, "cross_attention_norm": None, "reverse_transformer_layers_per_block": None,
}  # fmt: skip
VAE_FIXED = {
    "act_fn": "silu", "mid_block_add_attention": True, "use_quant_conv": True, "use_post_quant_conv": True,
    "shift_factor": None, "latents_mean": None, "latents_std": None,
}  # fmt: skip
UNET_BLOCKS = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
UNET_UP_BLOCKS = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}
# Constants of the CompVis/diffusers SD v1 layers that configs do not state.
TRANSFORMER_GROUPNORM_EPS = 1e-6  # diffusers Transformer2DModel / CompVis SpatialTransformer Normalize
VAE_NORM_EPS = 1e-6  # diffusers Encoder/Decoder (resnet_eps) / CompVis Normalize
# SD v1.5's three config.json files (the diffusers stable-diffusion-v1-5 folder; the same numbers
# as CompVis configs/stable-diffusion/v1-inference.yaml and OpenAI CLIP ViT-L/14's text tower).
# A CompVis file, which has no config, takes from here what its weight shapes cannot tell.
SD_V1_CONFIGS = {
    "unet": {
        "sample_size": 64, "in_channels": 4, "out_channels": 4, "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2, "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    },
    "vae": {
        "sample_size": 512, "in_channels": 3, "out_channels": 3, "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32, "scaling_factor": SD_V1_LATENT_SCALE,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    },
    "text_encoder": {
        "vocab_size": CLIP_VOCAB_SIZE, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    },
}  # fmt: skip
CLIP_HEAD_WIDTH = 64  # 768 / 12: the width of one CLIP ViT-L/14 text attention head


def _one(value):
    """A list/tuple of equal entries (one per level) as that entry; anything else unchanged."""
    if isinstance(value, (list, tuple)):
        return value[0] if len(set(value)) == 1 else tuple(value)
    return value


def _fixed_mismatches(config: dict, fixed: dict, component: str) -> list[str]:
    return [
        f"{component}.{key}={config[key]!r} (SD v1: {want!r})"
        for key, want in fixed.items()
        if key in config and _one(config[key]) != want
    ]


def _require(config: dict, keys: tuple[str, ...], component: str) -> None:
    missing = [k for k in keys if k not in config]
    if missing:
        raise ConfigError(f"{component} config has no {missing}; is it an SD v1 {component} config.json?")


def _unet_spec(c: dict, bad: list[str]) -> UNetSpec:
    _require(c, ("block_out_channels", "layers_per_block", "cross_attention_dim", "down_block_types"), "unet")
    down, up = list(c["down_block_types"]), list(c.get("up_block_types", ()))
    attention = tuple(UNET_BLOCKS.get(t) for t in down)
    if None in attention:
        bad.append(f"unet.down_block_types={down} (SD v1: {sorted(UNET_BLOCKS)})")
    if [UNET_UP_BLOCKS.get(t) for t in reversed(up)] != list(attention):
        bad.append(f"unet.up_block_types={up} do not mirror down_block_types={down}")
    # diffusers reads SD v1's head count from attention_head_dim when num_attention_heads is unset
    heads = _one(c.get("num_attention_heads") or c.get("attention_head_dim", SD_V1_CONFIGS["unet"]["attention_head_dim"]))
    if isinstance(heads, tuple):
        bad.append(f"unet attention heads {list(heads)} differ per level (SD v1: one count)")
        heads = heads[0]
    if c.get("in_channels", 4) != c.get("out_channels", 4):
        bad.append(f"unet.in_channels={c.get('in_channels')} != out_channels={c.get('out_channels')}")
    layers = _one(c["layers_per_block"])
    if not isinstance(layers, int):
        bad.append(f"unet.layers_per_block={layers!r} (SD v1: one count)")
    return UNetSpec(
        latent_channels=c.get("in_channels", 4),
        block_channels=tuple(c["block_out_channels"]),
        attention=attention,
        layers_per_block=layers,
        num_heads=heads,
        context_dim=c["cross_attention_dim"],
        norm_groups=c.get("norm_num_groups", 32),
        norm_epsilon=c.get("norm_eps", 1e-5),
        transformer_norm_epsilon=TRANSFORMER_GROUPNORM_EPS,
        gelu="erf",  # diffusers GEGLU / CompVis GEGLU use exact GELU
    )


def _vae_spec(c: dict, bad: list[str]) -> VAESpec:
    _require(c, ("block_out_channels", "latent_channels"), "vae")
    levels = len(c["block_out_channels"])
    for key, want in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        if list(c.get(key, [want] * levels)) != [want] * levels:
            bad.append(f"vae.{key}={list(c[key])} (SD v1: {levels} x {want})")
    if c.get("in_channels", 3) != c.get("out_channels", 3):
        bad.append(f"vae.in_channels={c.get('in_channels')} != out_channels={c.get('out_channels')}")
    return VAESpec(
        image_channels=c.get("in_channels", 3),
        block_channels=tuple(c["block_out_channels"]),
        layers_per_block=c.get("layers_per_block", 1),
        latent_channels=c["latent_channels"],
        norm_groups=c.get("norm_num_groups", 32),
        norm_epsilon=VAE_NORM_EPS,
        scaling_factor=float(c.get("scaling_factor", SD_V1_LATENT_SCALE)),
    )


def _text_spec(c: dict, bad: list[str]) -> TextEncoderSpec:
    _require(c, ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"), "text_encoder")
    width, inner = c["hidden_size"], c["intermediate_size"]
    if inner % width:
        bad.append(f"text_encoder.intermediate_size={inner} is not a multiple of hidden_size={width}")
    act = c.get("hidden_act", "quick_gelu")
    if act not in ACTIVATIONS:
        bad.append(f"text_encoder.hidden_act={act!r} (supported: {sorted(ACTIVATIONS)})")
    vocab = c.get("vocab_size", CLIP_VOCAB_SIZE)
    if vocab != CLIP_VOCAB_SIZE:
        bad.append(f"text_encoder.vocab_size={vocab} (the project's tokenizer is OpenAI CLIP's: {CLIP_VOCAB_SIZE} ids)")
    return TextEncoderSpec(
        vocab_size=vocab,
        max_length=c.get("max_position_embeddings", 77),
        width=width,
        num_layers=c["num_hidden_layers"],
        num_heads=c["num_attention_heads"],
        mlp_ratio=inner // width,
        activation=act,
        norm_epsilon=c.get("layer_norm_eps", 1e-5),
    )


def preset_from_diffusers_config(unet: dict, vae: dict, text_encoder: dict, name: str = "diffusers") -> Preset:
    """The project preset of a diffusers SD v1-family model, from its three config.json dicts.

    Raises ConfigError listing every setting outside the SD v1 family."""
    bad = _fixed_mismatches(unet, UNET_FIXED, "unet") + _fixed_mismatches(vae, VAE_FIXED, "vae")
    specs = _unet_spec(unet, bad), _vae_spec(vae, bad), _text_spec(text_encoder, bad)
    if bad:
        raise ConfigError(f"{name}: not an SD v1-family model: {'; '.join(bad)}")
    unet_spec, vae_spec, text_spec = specs
    factor = vae_spec.downsampling_factor  # unet.sample_size is the latent size
    return Preset(
        name=name,
        text_encoder=text_spec,
        unet=unet_spec,
        vae=vae_spec,
        resolution=(unet.get("sample_size") or SD_V1_CONFIGS["unet"]["sample_size"]) * factor,
    )


# --------------------------------------------------------------------------- CompVis: configs from shapes
def _count(shapes: dict, pattern: str) -> int:
    """How many distinct values the (\\d+) group of `pattern` takes over the keys."""
    regex = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := regex.match(k))})


def infer_compvis_configs(unet: dict, vae: dict, text: dict) -> tuple[dict, dict, dict]:
    """diffusers-style configs of a CompVis file's three models, from their weight shapes
    ({diffusers key: shape}, already renamed); what shapes cannot tell (heads, norm groups,
    sample size, latent scale) is SD v1's (`SD_V1_CONFIGS`)."""
    try:
        levels = _count(unet, r"down_blocks\.(\d+)\.")
        layers = _count(unet, r"down_blocks\.0\.resnets\.(\d+)\.")
        attention = [f"down_blocks.{i}.attentions.0.proj_in.weight" in unet for i in range(levels)]
        unet_config = {
            **SD_V1_CONFIGS["unet"],
            "in_channels": unet["conv_in.weight"][1],
            "out_channels": unet["conv_out.weight"][0],
            "block_out_channels": [unet[f"down_blocks.{i}.resnets.0.conv2.weight"][0] for i in range(levels)],
            "layers_per_block": layers,
            "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
            "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
            "cross_attention_dim": unet["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"][1],
            "use_linear_projection": len(unet["mid_block.attentions.0.proj_in.weight"]) == 2,
        }
        vae_levels = _count(vae, r"encoder\.down_blocks\.(\d+)\.")
        vae_config = {
            **SD_V1_CONFIGS["vae"],
            "in_channels": vae["encoder.conv_in.weight"][1],
            "out_channels": vae["decoder.conv_out.weight"][0],
            "block_out_channels": [vae[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"][0] for i in range(vae_levels)],
            "layers_per_block": _count(vae, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."),
            "latent_channels": vae["post_quant_conv.weight"][0],
            "down_block_types": ["DownEncoderBlock2D"] * vae_levels,
            "up_block_types": ["UpDecoderBlock2D"] * vae_levels,
        }
        vocab, width = text["embeddings.token_embedding.weight"]
        text_config = {
            **SD_V1_CONFIGS["text_encoder"],
            "vocab_size": vocab,
            "hidden_size": width,
            "max_position_embeddings": text["embeddings.position_embedding.weight"][0],
            "num_hidden_layers": _count(text, r"encoder\.layers\.(\d+)\."),
            "num_attention_heads": max(1, width // CLIP_HEAD_WIDTH),
            "intermediate_size": text["encoder.layers.0.mlp.fc1.weight"][0],
        }
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"not an SD v1 CompVis checkpoint: no weight {e} where SD v1 has one") from e
    return unet_config, vae_config, text_config
