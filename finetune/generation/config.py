"""The typed config of `python -m finetune.generate` (configs/generate.yaml, configs/generate/<mode>.yaml).

The defaults live here; each configs/generate/<mode>.yaml sets only what its mode changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from finetune.config import ModelConfig, register_schemas

MODES = ("txt2img", "img2img", "inpaint", "outpaint", "mix", "walk", "variations")


@dataclass
class OutpaintConfig:
    left: int = 0  # pixels added on each side of the (model-resolution) input
    right: int = 0
    top: int = 0
    bottom: int = 0
    fill: str = "edge"  # what the new area starts from: edge | reflect | white | black | gray | noise


@dataclass
class GenerateModeConfig:
    mode: str = "txt2img"  # txt2img | img2img | inpaint | outpaint | mix | walk | variations
    # Prompts; {} = the first embedding's token, any learned token may be written by name.
    # AUTOMATIC1111 weights: (word:1.3), (word) = x1.1, [word] = /1.1.
    prompts: list[str] = field(default_factory=lambda: ["a photo of {}"])
    negative_prompt: str = ""  # may hold learned tokens (negative embeddings) and weights
    num_images: int = 4  # per prompt: seeds seed, seed + 1, ... (walk: frames use seed -> end_seed)
    num_steps: int = 25
    guidance_scale: float = 5.0
    eta: float = 0.0
    seed: int = 0
    image: Optional[str] = None  # img2img / inpaint / outpaint / variations: the input (any size)
    strength: float = 0.6  # img2img / variations: 0 = the input's VAE round trip, 1 = ignore the input
    mask: Optional[str] = None  # inpaint: a PNG of the input's size, white = repaint
    box: Optional[str] = None  # inpaint: "x0,y0,x1,y1" in the input's pixels (instead of a mask)
    mask_feather: int = 1  # latent pixels of the latent mask's ramp
    seam: int = 3  # pixels of the blended seam when the known pixels are pasted back
    outpaint: OutpaintConfig = field(default_factory=OutpaintConfig)
    weights: list[float] = field(default_factory=list)  # mix: one per prompt (normalized to sum 1)
    mix_guidance: bool = False  # mix: guide toward each prompt with its weight instead of blending encodings
    frames: int = 8  # walk
    end_seed: Optional[int] = None  # walk: the last frame's noise seed (null: every frame uses `seed`)
    fps: int = 4  # walk: GIF / MP4 frame rate


@dataclass
class GenerateConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    generate: GenerateModeConfig = field(default_factory=GenerateModeConfig)
    embeddings: list[str] = field(default_factory=list)  # embedding files of any supported format
    allow_pickle: bool = False  # read .pt/.bin embeddings (only with torch.load(weights_only=True))
    resolution: int = 64
    name: str = "generate"
    verbose: bool = False


def register_generate_schema() -> None:
    register_schemas()
    ConfigStore.instance().store(name="generate_schema", node=GenerateConfig)
