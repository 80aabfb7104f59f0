"""``python -m service`` is the same as the ``ai-service`` command."""

import sys

from service.cli import main

sys.exit(main())
