"""``python -m ditf_track.cli``: the ``ditf-track`` command."""

import sys

from . import main

sys.exit(main())
