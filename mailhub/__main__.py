"""``python -m mailhub`` is the ``mailhub`` command."""
import sys

from mailhub.cli.main import main

sys.exit(main())
