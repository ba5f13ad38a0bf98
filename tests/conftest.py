"""Shared pytest configuration.

The repository root is put on sys.path so the tests run against the checkout
(the packages tagdsl/, runtime/ and the module cli.py).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
