"""``python -m tlapp.segmentation ARGS`` runs ``python -m tlapp segment ARGS``."""

import os
import sys

# OpenMP threads that wait by sleeping instead of spinning: on a CPU shared with other processes,
# spinning threads take the cores the working threads need (training ran 4 times faster so on a
# busy 2-core machine). OpenMP reads the variable when torch loads it, so it is set before
# tlapp.cli imports torch; a value already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tlapp.cli import main  # noqa: E402

sys.exit(main(["segment", *sys.argv[1:]]))
