"""``python -m ftkit.cli``: how a worker per GPU and the tests start the command line."""

import sys

from . import main

if __name__ == "__main__":  # pkgutil.walk_packages imports this module too
    sys.exit(main())
