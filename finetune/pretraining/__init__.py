"""Pretraining the project's miniature SD v1 (`tiny` preset) on the toy world: VAE, CLIP, UNet.

Entry point: scripts/pretrain_tiny.py (finetune/pretraining/configs/tiny.yaml); `pipeline.pretrain`
runs the stages, each a plain function in its own module (`vae`, `clip`, `unet`).
"""
