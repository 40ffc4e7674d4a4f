"""`python -m sdft` (and `accelerate launch -m sdft train ...`)."""

import sys

from sdft.cli import main

sys.exit(main())
