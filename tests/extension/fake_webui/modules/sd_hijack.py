"""Stand-in for modules/sd_hijack.py (A1111 v1.10.1): `model_hijack.embedding_db`."""

from types import SimpleNamespace

from modules.textual_inversion.textual_inversion import EmbeddingDatabase

model_hijack = SimpleNamespace(embedding_db=EmbeddingDatabase())
