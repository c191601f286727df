"""``python -m agentledger``: the ``agentledger`` command."""

import sys

from ._cli import main

sys.exit(main())
