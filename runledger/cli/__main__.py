"""``python -m runledger.cli``: the ``runledger`` console script."""

import sys

from runledger.cli import main

sys.exit(main())
