"""``python -m gan_dissect_callbacks.cli``: the ``gan-dissect`` command."""

import sys

from gan_dissect_callbacks.cli import main

if __name__ == "__main__":
    sys.exit(main())
