import sys

from tlapp.cli import main

sys.exit(main())
