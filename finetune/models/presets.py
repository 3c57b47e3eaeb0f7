"""Model presets: the whole Stable Diffusion v1 family written as data.

A preset names the widths, depths, heads and constants of the four components. The
model code in this package reads nothing else, so `sd_v1` (keras-cv's shapes, which are
the CompVis SD v1.x shapes) and `tiny` (the miniature model the project pretrains on its
toy world) share every line of code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from finetune.errors import ConfigError

# CLIP BPE vocabulary (OpenAI CLIP, bpe_simple_vocab_16e6): 49152 - 256 - 2 merges
# + 512 byte tokens + <|startoftext|> (49406) + <|endoftext|> (49407) = 49408 ids.
CLIP_VOCAB_SIZE = 49408
CLIP_START_OF_TEXT = 49406
CLIP_END_OF_TEXT = 49407
CLIP_MAX_LENGTH = 77
# SD v1 VAE latent scale (CompVis v1-inference.yaml: scale_factor).
SD_V1_LATENT_SCALE = 0.18215


@dataclass(frozen=True)
class TextEncoderSpec:
    vocab_size: int = CLIP_VOCAB_SIZE
    max_length: int = CLIP_MAX_LENGTH
    width: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_ratio: int = 4
    activation: str = "quick_gelu"  # CLIP ViT-L/14 text tower
    norm_epsilon: float = 1e-5


@dataclass(frozen=True)
class UNetSpec:
    latent_channels: int = 4
    block_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    attention: tuple[bool, ...] = (True, True, True, False)  # cross-attention per level
    layers_per_block: int = 2
    num_heads: int = 8
    context_dim: int = 768
    norm_groups: int = 32
    norm_epsilon: float = 1e-5
    # The GroupNorm in front of each transformer: keras-cv uses 1e-5, CompVis/diffusers 1e-6
    # (diffusers Transformer2DModel, CompVis ldm/modules/attention.py Normalize).
    transformer_norm_epsilon: float = 1e-5
    # keras-cv's GEGLU uses the tanh approximation of GELU; CompVis/diffusers use erf.
    gelu: str = "tanh"
    max_period: float = 10000.0  # sinusoidal timestep embedding

    @property
    def time_embedding_dim(self) -> int:
        return 4 * self.block_channels[0]


@dataclass(frozen=True)
class VAESpec:
    image_channels: int = 3
    block_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_groups: int = 32
    norm_epsilon: float = 1e-5
    scaling_factor: float = SD_V1_LATENT_SCALE

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.block_channels) - 1)


@dataclass(frozen=True)
class Preset:
    name: str
    text_encoder: TextEncoderSpec = field(default_factory=TextEncoderSpec)
    unet: UNetSpec = field(default_factory=UNetSpec)
    vae: VAESpec = field(default_factory=VAESpec)
    start_id: int = CLIP_START_OF_TEXT
    end_id: int = CLIP_END_OF_TEXT
    pad_id: int = CLIP_END_OF_TEXT  # SD v1 pads prompts with <|endoftext|>
    resolution: int = 512  # the resolution the preset was trained at

    def __post_init__(self):
        if self.unet.context_dim != self.text_encoder.width:
            raise ConfigError(
                f"preset {self.name}: unet.context_dim={self.unet.context_dim} != text_encoder.width={self.text_encoder.width}"
            )
        if len(self.unet.attention) != len(self.unet.block_channels):
            raise ConfigError(f"preset {self.name}: unet.attention needs one flag per entry of unet.block_channels")
        if self.unet.latent_channels != self.vae.latent_channels:
            raise ConfigError(f"preset {self.name}: unet and vae disagree on latent_channels")


SD_V1 = Preset(name="sd_v1")

# The project's own miniature SD v1, pretrained on the toy world (scripts/pretrain_tiny.py) at
# 64x64: the same code paths, a VAE with downsampling factor 8 and 4 latent channels (8x8x4
# latents), a 64-wide CLIP text tower (the real CLIP tokenizer, so the token table is
# 49408 x 64) and a 3-level UNet with cross-attention on its two low-resolution levels.
# The VAE's per-channel latent normalization is folded into its weights after training
# (finetune.pretraining.vae.fold_latent_normalization), so its latents are ~N(0, 1) per
# channel and need no extra scale. The VAE uses 2 norm groups: with as many groups as its
# 8 full-resolution channels, GroupNorm would erase every image's mean color there.
TINY = Preset(
    name="tiny",
    text_encoder=TextEncoderSpec(width=64, num_layers=3, num_heads=4),
    unet=UNetSpec(
        block_channels=(64, 128, 128),
        attention=(False, True, True),
        layers_per_block=1,
        num_heads=4,
        context_dim=64,
        norm_groups=32,
    ),
    vae=VAESpec(block_channels=(16, 32, 64, 64), layers_per_block=1, norm_groups=2, scaling_factor=1.0),
    resolution=64,
)

PRESETS: dict[str, Preset] = {p.name: p for p in (SD_V1, TINY)}


PRESET_FORMAT = "finetune-preset-v1"  # the "format" field of a preset.json


def preset_to_dict(preset: Preset) -> dict:
    """The preset as plain JSON data (what `python -m finetune.convert` writes to preset.json)."""
    return {"format": PRESET_FORMAT, **asdict(preset)}


def preset_from_dict(data: dict, source: str = "preset") -> Preset:
    """The inverse of `preset_to_dict`; unknown or missing fields are a ConfigError naming them."""
    data = dict(data)
    if data.pop("format", None) != PRESET_FORMAT:
        raise ConfigError(f"{source}: not a preset description (its \"format\" is not {PRESET_FORMAT!r})")

    def build(cls, values, where):
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {where} must be a mapping")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown {where} fields {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    parts = {"text_encoder": TextEncoderSpec, "unet": UNetSpec, "vae": VAESpec}
    specs = {key: build(cls, data.pop(key, {}), key) for key, cls in parts.items()}
    return build(Preset, {**data, **specs}, "preset")


def get_preset(name: str | Preset, **overrides) -> Preset:
    """The preset called `name` (or `name` itself when it is a Preset); `overrides` replace top-level
    fields (e.g. resolution). A checkpoint's preset is read by `finetune.assembly.resolve_model`."""
    if isinstance(name, Preset):
        preset = name
    elif name in PRESETS:
        preset = PRESETS[name]
    else:
        raise ConfigError(
            f"model.preset={name!r} is not a preset; choose one of {sorted(PRESETS)} "
            "or give the path of a preset.json, a converted folder or an SD v1 checkpoint"
        )
    return replace(preset, **overrides) if overrides else preset
