"""Where weights come from and how they are read and written: sources, downloads, weight files, Google's npz,
strict loading, the saved model folder, its card, pushing it, and the transformers code it carries.

May import: ``mixer_ft.model``, ``mixer_ft.errors``, ``mixer_ft.atomic``.
"""
