"""The Mixer itself: variants and their config, the PyTorch model, weights at another input size.

Knows nothing of files, data or training. May import: ``mixer_ft.errors``.
"""
