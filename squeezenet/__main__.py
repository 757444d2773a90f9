"""``python -m squeezenet`` is the ``squeezenet`` command."""

import sys

from .cli import main

sys.exit(main())
