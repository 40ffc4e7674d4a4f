"""`python -m sdft` (and `accelerate launch -m sdft train ...`)."""

import sys

from .cli import main

sys.exit(main())
