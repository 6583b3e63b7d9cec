"""``python -m anypool``: the anypool command."""

import sys

from ._cli import main

sys.exit(main())
