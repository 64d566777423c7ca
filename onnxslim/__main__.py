"""``python -m onnxslim ...``: the same as the ``onnxslim`` command."""

import sys

from .cli import console

sys.exit(console())
