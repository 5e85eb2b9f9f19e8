"""Stand-in for modules/paths.py (models_path and data_path from paths_internal.py:32 and :30 in
A1111 v1.10.1); tests point both at a temporary folder."""

import os
import tempfile

data_path = os.path.join(tempfile.gettempdir(), "fake-webui")
models_path = os.path.join(data_path, "models")
