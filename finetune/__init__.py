"""Textual inversion for Stable Diffusion v1 on Keras 3 + TensorFlow."""

__version__ = "0.1.0"
