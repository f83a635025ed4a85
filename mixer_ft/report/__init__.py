"""Results beside the published numbers: the results table, the speed benchmark, learning-rate sweeps.

May import: everything but ``mixer_ft.cli``.
"""
