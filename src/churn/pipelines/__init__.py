"""Everything that moves data and talks to the outside world.

The only package that imports ``stripe`` or ``simple_salesforce``.
"""

from __future__ import annotations
