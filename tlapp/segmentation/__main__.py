"""``python -m tlapp.segmentation ARGS`` runs ``python -m tlapp segment ARGS``."""

import sys

from tlapp.cli import main

sys.exit(main(["segment", *sys.argv[1:]]))
