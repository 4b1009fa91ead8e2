"""``python -m qaclip_harness``: the ``qaclip`` command."""

import sys

from qaclip_harness.cli import main

if __name__ == "__main__":
    sys.exit(main())
