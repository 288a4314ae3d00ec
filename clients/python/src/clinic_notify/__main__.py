"""``python -m clinic_notify``: the same as the ``clinic-notify`` command."""

import sys

from clinic_notify.cli import main

sys.exit(main())
