"""`python -m selfsup_lab ...` is the `selfsup-lab` command, for a source tree that is not pip-installed
(`PYTHONPATH=. python -m selfsup_lab train ...`)."""
import sys

from .cli import main

sys.exit(main())
