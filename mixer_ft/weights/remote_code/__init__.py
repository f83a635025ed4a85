"""Files copied into a model folder of a custom size, so that transformers can load it with
``trust_remote_code=True`` (timm's Mixer functions fix patch, depth and width; these files do not).

They import torch and transformers only, never mixer_ft: whoever downloads the folder needs neither
this toolkit nor its version. ``tests/test_clients.py`` checks them against ``mixer-ft predict``.
"""

from pathlib import Path

FILES = ("configuration_mixer_ft.py", "modeling_mixer_ft.py")
HERE = Path(__file__).parent
