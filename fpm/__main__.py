"""``python -m fpm``: the same as the ``pyfpm`` command."""
import sys

from fpm.cli import main

sys.exit(main())
