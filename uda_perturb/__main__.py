"""``python -m uda_perturb`` is the ``uda-perturb`` command."""
import sys

from .cli import main

sys.exit(main())
