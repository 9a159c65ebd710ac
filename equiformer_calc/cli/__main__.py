"""``python -m equiformer_calc.cli`` (torchrun starts DDP training this way)."""

import sys

from . import main

sys.exit(main())
