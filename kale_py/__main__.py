"""``python -m kale_py`` is the ``nb2pipe`` command."""

import sys

from .cli import main

sys.exit(main())
