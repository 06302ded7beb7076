"""``python -m jaxalign.cli``: the same as the ``jaxalign`` command."""

import sys

from jaxalign.cli import main

sys.exit(main())
