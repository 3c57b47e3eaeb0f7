"""Weight names, written as data: CompVis single-file names -> diffusers names -> project names.

Two renamings, both generated from the model's configuration (levels, layers per block,
which levels have attention), never from the order of weights in a file:

1. `compvis_to_diffusers(...)`: the CompVis / LDM names of an SD v1 single-file checkpoint
   (`model.diffusion_model.input_blocks.1.0.in_layers.0.weight`, `first_stage_model.encoder.down.0.block.0...`,
   `cond_stage_model.transformer.text_model...`) to diffusers names, one table per component.
   The correspondences are facts of the two layouts (the same ones diffusers'
   `loaders/single_file_utils.py` converts with); the tables below are this project's.
2. `project_to_diffusers(...)`: each Keras variable path of the project's models
   (`unet/down_1_attn_0/attn2/to_k/kernel`) to the diffusers key holding it
   (`down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight`).

Keys are component-relative on the diffusers side: `conv_in.weight` of the UNet,
`encoder.conv_in.weight` of the VAE, `encoder.layers.0.mlp.fc1.weight` of the text encoder
(transformers >= 5 drops the `text_model.` prefix older files carry; readers strip it).
A table maps a *block* (one name prefix) to a block and names the layers inside it; the
leaf names differ only in spelling (`kernel`/`gamma`/`embeddings`/`table` <-> `weight`).
"""

from __future__ import annotations

import re

# --------------------------------------------------------------------------- layers inside a block
# project layer path inside a block -> diffusers module path inside the block ("" = the block itself)
SINGLE = {"": ""}
RESNET = {
    "norm1": "norm1", "conv1": "conv1", "time_proj": "time_emb_proj",
    "norm2": "norm2", "conv2": "conv2", "skip": "conv_shortcut",
}  # fmt: skip
TRANSFORMER = {
    "norm": "norm", "proj_in": "proj_in", "proj_out": "proj_out",
    **{f"norm{i}": f"transformer_blocks.0.norm{i}" for i in (1, 2, 3)},
    **{f"{attn}/{proj}": f"transformer_blocks.0.{attn}.{proj}" for attn in ("attn1", "attn2") for proj in ("to_q", "to_k", "to_v")},
    **{f"{attn}/to_out": f"transformer_blocks.0.{attn}.to_out.0" for attn in ("attn1", "attn2")},
    "ff/proj_in": "transformer_blocks.0.ff.net.0.proj", "ff/proj_out": "transformer_blocks.0.ff.net.2",
}  # fmt: skip
VAE_ATTENTION = {"norm": "group_norm", "to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
CONV = {"conv": "conv"}
CLIP_LAYER = {
    "norm1": "layer_norm1", "norm2": "layer_norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2",
    "attn/to_q": "self_attn.q_proj", "attn/to_k": "self_attn.k_proj", "attn/to_v": "self_attn.v_proj",
    "attn/to_out": "self_attn.out_proj",
}  # fmt: skip
# Keras variable name -> torch parameter name
LEAVES = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias", "embeddings": "weight", "table": "weight"}

# Older diffusers VAE files name the attention projections like this (diffusers renames them on load).
DEPRECATED_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

# Which diffusers component and which of its key prefixes each project component reads.
SOURCES = {
    "text_encoder": ("text_encoder", ("",)),
    "unet": ("unet", ("",)),
    "vae_encoder": ("vae", ("encoder.", "quant_conv.")),
    "vae_decoder": ("vae", ("decoder.", "post_quant_conv.")),
}


# --------------------------------------------------------------------------- project -> diffusers
def _mid(prefix: str, attention: dict) -> dict:
    return {
        "mid_res_0": (f"{prefix}mid_block.resnets.0", RESNET),
        "mid_attn": (f"{prefix}mid_block.attentions.0", attention),
        "mid_res_1": (f"{prefix}mid_block.resnets.1", RESNET),
    }


def unet_blocks(levels: int, layers: int, attention: tuple[bool, ...]) -> dict[str, tuple[str, dict]]:
    """project block name -> (diffusers block prefix, layer table) for the UNet."""
    blocks = {
        "time_dense1": ("time_embedding.linear_1", SINGLE), "time_dense2": ("time_embedding.linear_2", SINGLE),
        "conv_in": ("conv_in", SINGLE), "norm_out": ("conv_norm_out", SINGLE), "conv_out": ("conv_out", SINGLE),
        **_mid("", TRANSFORMER),
    }  # fmt: skip
    for i in range(levels):
        up = levels - 1 - i  # diffusers numbers the up path from the bottom
        for j in range(layers + 1):
            if j < layers:
                blocks[f"down_{i}_res_{j}"] = (f"down_blocks.{i}.resnets.{j}", RESNET)
            blocks[f"up_{i}_res_{j}"] = (f"up_blocks.{up}.resnets.{j}", RESNET)
            if attention[i]:
                if j < layers:
                    blocks[f"down_{i}_attn_{j}"] = (f"down_blocks.{i}.attentions.{j}", TRANSFORMER)
                blocks[f"up_{i}_attn_{j}"] = (f"up_blocks.{up}.attentions.{j}", TRANSFORMER)
        blocks[f"down_{i}_downsample"] = (f"down_blocks.{i}.downsamplers.0", CONV)
        blocks[f"up_{i}_upsample"] = (f"up_blocks.{up}.upsamplers.0", CONV)
    return blocks


def vae_encoder_blocks(levels: int, layers: int) -> dict[str, tuple[str, dict]]:
    blocks = {
        "conv_in": ("encoder.conv_in", SINGLE), "norm_out": ("encoder.conv_norm_out", SINGLE),
        "conv_out": ("encoder.conv_out", SINGLE), "quant_conv": ("quant_conv", SINGLE),
        **_mid("encoder.", VAE_ATTENTION),
    }  # fmt: skip
    for i in range(levels):
        blocks.update({f"down_{i}_res_{j}": (f"encoder.down_blocks.{i}.resnets.{j}", RESNET) for j in range(layers)})
        blocks[f"down_{i}_downsample"] = (f"encoder.down_blocks.{i}.downsamplers.0", CONV)
    return blocks


def vae_decoder_blocks(levels: int, layers: int) -> dict[str, tuple[str, dict]]:
    blocks = {
        "post_quant_conv": ("post_quant_conv", SINGLE), "conv_in": ("decoder.conv_in", SINGLE),
        "norm_out": ("decoder.conv_norm_out", SINGLE), "conv_out": ("decoder.conv_out", SINGLE),
        **_mid("decoder.", VAE_ATTENTION),
    }  # fmt: skip
    for i in range(levels):  # the project and diffusers both number the decoder from the bottom
        blocks.update({f"up_{i}_res_{j}": (f"decoder.up_blocks.{i}.resnets.{j}", RESNET) for j in range(layers + 1)})
        blocks[f"up_{i}_upsample"] = (f"decoder.up_blocks.{i}.upsamplers.0", CONV)
    return blocks


def text_encoder_blocks(num_layers: int) -> dict[str, tuple[str, dict]]:
    blocks = {
        "token_embedding": ("embeddings.token_embedding", SINGLE),
        "position_embedding": ("embeddings.position_embedding", SINGLE),
        "final_norm": ("final_layer_norm", SINGLE),
    }
    blocks.update({f"layer_{i}": (f"encoder.layers.{i}", CLIP_LAYER) for i in range(num_layers)})
    return blocks


def component_blocks(component: str, spec) -> dict[str, tuple[str, dict]]:
    """The block table of a project component, from its spec (`model.spec`: a UNetSpec, VAESpec or TextEncoderSpec)."""
    if component == "unet":
        return unet_blocks(len(spec.block_channels), spec.layers_per_block, spec.attention)
    if component == "vae_encoder":
        return vae_encoder_blocks(len(spec.block_channels), spec.layers_per_block)
    if component == "vae_decoder":
        return vae_decoder_blocks(len(spec.block_channels), spec.layers_per_block)
    if component == "text_encoder":
        return text_encoder_blocks(spec.num_layers)
    raise ValueError(f"unknown component {component!r}")


def project_to_diffusers(variable_path: str, blocks: dict[str, tuple[str, dict]]) -> str | None:
    """The diffusers key of a Keras variable path (`<model>/<block>/<layer...>/<leaf>`), or None."""
    _, block, *layer, leaf = variable_path.split("/")
    if block not in blocks or leaf not in LEAVES:
        return None
    prefix, layers = blocks[block]
    inner = layers.get("/".join(layer))
    if inner is None:
        return None
    return ".".join(part for part in (prefix, inner, LEAVES[leaf]) if part)


# --------------------------------------------------------------------------- CompVis -> diffusers
# CompVis single files hold the three models under these prefixes.
COMPVIS_PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.transformer.",
}
# Entries of a CompVis file that are not weights of the three models: the DDPM schedule
# buffers of LatentDiffusion, EMA copies (`model_ema.*`, unused here: the `model.*` weights
# are converted, which are the EMA weights in "-emaonly" files), training-only losses,
# and position-id buffers.
COMPVIS_IGNORED_PREFIXES = ("model_ema.", "first_stage_model.loss.", "lvlb_weights")
COMPVIS_IGNORED = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar",
})  # fmt: skip
# Buffers (not weights) that some files carry inside a model: dropped wherever they appear.
BUFFER_SUFFIXES = ("position_ids",)

COMPVIS_RESNET = {
    "in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut",
}  # fmt: skip
COMPVIS_VAE_RESNET = {name: name for name in ("norm1", "conv1", "norm2", "conv2")} | {"nin_shortcut": "conv_shortcut"}
COMPVIS_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
SAME = None  # the block's inner names are the same in both layouts


def compvis_unet_blocks(levels: int, layers: int, attention: tuple[bool, ...]) -> dict[str, tuple[str, dict | None]]:
    """CompVis block prefix -> (diffusers block prefix, inner renames) for the UNet.

    CompVis numbers `input_blocks` flat: 0 is conv_in, then per level `layers` (resnet,
    transformer) pairs and a downsampler; `output_blocks` likewise from the bottom with
    `layers + 1` entries per level, the upsampler inside the last one.
    """
    blocks = {
        "time_embed.0": ("time_embedding.linear_1", SAME), "time_embed.2": ("time_embedding.linear_2", SAME),
        "input_blocks.0.0": ("conv_in", SAME), "out.0": ("conv_norm_out", SAME), "out.2": ("conv_out", SAME),
        "middle_block.0": ("mid_block.resnets.0", COMPVIS_RESNET), "middle_block.1": ("mid_block.attentions.0", SAME),
        "middle_block.2": ("mid_block.resnets.1", COMPVIS_RESNET),
    }  # fmt: skip
    for i in range(levels):
        for j in range(layers):
            n = 1 + i * (layers + 1) + j
            blocks[f"input_blocks.{n}.0"] = (f"down_blocks.{i}.resnets.{j}", COMPVIS_RESNET)
            if attention[i]:
                blocks[f"input_blocks.{n}.1"] = (f"down_blocks.{i}.attentions.{j}", SAME)
        if i < levels - 1:
            blocks[f"input_blocks.{(i + 1) * (layers + 1)}.0.op"] = (f"down_blocks.{i}.downsamplers.0.conv", SAME)
        up = levels - 1 - i  # output_blocks run from the bottom level up
        for j in range(layers + 1):
            n = up * (layers + 1) + j
            blocks[f"output_blocks.{n}.0"] = (f"up_blocks.{up}.resnets.{j}", COMPVIS_RESNET)
            if attention[i]:
                blocks[f"output_blocks.{n}.1"] = (f"up_blocks.{up}.attentions.{j}", SAME)
        if i > 0:
            last = up * (layers + 1) + layers
            blocks[f"output_blocks.{last}.{2 if attention[i] else 1}.conv"] = (f"up_blocks.{up}.upsamplers.0.conv", SAME)
    return blocks


def compvis_vae_blocks(levels: int, layers: int) -> dict[str, tuple[str, dict | None]]:
    blocks = {}
    for half in ("encoder", "decoder"):
        blocks.update({
            f"{half}.conv_in": (f"{half}.conv_in", SAME), f"{half}.conv_out": (f"{half}.conv_out", SAME),
            f"{half}.norm_out": (f"{half}.conv_norm_out", SAME),
            f"{half}.mid.block_1": (f"{half}.mid_block.resnets.0", COMPVIS_VAE_RESNET),
            f"{half}.mid.attn_1": (f"{half}.mid_block.attentions.0", COMPVIS_VAE_ATTENTION),
            f"{half}.mid.block_2": (f"{half}.mid_block.resnets.1", COMPVIS_VAE_RESNET),
        })  # fmt: skip
    blocks.update({"quant_conv": ("quant_conv", SAME), "post_quant_conv": ("post_quant_conv", SAME)})
    for i in range(levels):
        up = levels - 1 - i  # CompVis numbers the decoder from the top (full resolution), diffusers from the bottom
        for j in range(layers):
            blocks[f"encoder.down.{i}.block.{j}"] = (f"encoder.down_blocks.{i}.resnets.{j}", COMPVIS_VAE_RESNET)
        for j in range(layers + 1):
            blocks[f"decoder.up.{up}.block.{j}"] = (f"decoder.up_blocks.{i}.resnets.{j}", COMPVIS_VAE_RESNET)
        if i < levels - 1:
            blocks[f"encoder.down.{i}.downsample"] = (f"encoder.down_blocks.{i}.downsamplers.0", SAME)
            blocks[f"decoder.up.{up}.upsample"] = (f"decoder.up_blocks.{i}.upsamplers.0", SAME)
    return blocks


def rename(key: str, blocks: dict[str, tuple[str, dict | None]]) -> str | None:
    """`key` with its longest block prefix (and the inner name after it) renamed, or None."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        block = ".".join(parts[:cut])
        if block in blocks:
            new_block, inner = blocks[block]
            rest = parts[cut:]
            if inner is not None:
                for size in range(len(rest) - 1, 0, -1):
                    name = ".".join(rest[:size])
                    if name in inner:
                        rest = inner[name].split(".") + rest[size:]
                        break
                else:
                    return None
            return ".".join([new_block, *rest])
    return None


def strip_text_model(key: str) -> str:
    """transformers < 5 names CLIP weights `text_model.<name>`; >= 5 and this project use `<name>`."""
    return key[len("text_model."):] if key.startswith("text_model.") else key


def _indices(keys, pattern: str) -> set[int]:
    regex = re.compile(pattern)
    return {int(m.group(1)) for k in keys if (m := regex.match(k))}


def compvis_structure(unet_keys, vae_keys) -> dict:
    """Levels, layers per block and attention levels of a CompVis file, counted from its names
    (unprefixed), to build the renaming tables: {"unet": (levels, layers, attention), "vae": (levels, layers)}."""
    levels = len(_indices(unet_keys, r"input_blocks\.(\d+)\.0\.op\.")) + 1
    inputs = len(_indices(unet_keys, r"input_blocks\.(\d+)\."))  # conv_in + levels * layers + (levels - 1)
    layers = max((inputs - levels) // levels, 0)
    attention = tuple(f"input_blocks.{1 + i * (layers + 1)}.1.proj_in.weight" in unet_keys for i in range(levels))
    vae = (len(_indices(vae_keys, r"encoder\.down\.(\d+)\.")), len(_indices(vae_keys, r"encoder\.down\.0\.block\.(\d+)\.")))
    return {"unet": (levels, layers, attention), "vae": vae}
