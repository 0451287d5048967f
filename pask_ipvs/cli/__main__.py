"""`python -m pask_ipvs.cli COMMAND ...`: the `pask` umbrella."""

import sys

from . import main

sys.exit(main())
