"""Using a trained model: predict and ``Classifier``, evaluation, few-shot linear probes.

May import: everything but ``mixer_ft.report`` and ``mixer_ft.cli``.
"""
