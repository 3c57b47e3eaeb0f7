"""The columns of a training batch: one int32 [B, 2] tensor per batch (finetune/data/pipeline.py)."""

VARIANT, CAPTION = 0, 1  # the image variant (a row of the cached latents) and the caption (a row of the tokens)
