"""``python -m pqcall`` runs the CLI."""

import sys

from pqcall.cli import main

sys.exit(main())
