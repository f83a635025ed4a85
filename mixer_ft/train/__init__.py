"""A fine-tune run: the recipe, optimizers, devices, the data feed, the loop, checkpoints, stops, progress and
the run record.

May import: ``mixer_ft.model``, ``mixer_ft.weights``, ``mixer_ft.data``, ``mixer_ft.errors``, ``mixer_ft.atomic``.
"""
