"""Benchmarks that train and then measure: the learning-quality table (`quality`)."""
