"""Images in: data sources and their readers, decoding, the decoded cache, and the upstream preprocessing.

May import: ``mixer_ft.model`` (its input facts), ``mixer_ft.weights`` (the cache folder, the Hub probe),
``mixer_ft.errors``, ``mixer_ft.atomic``.
"""
