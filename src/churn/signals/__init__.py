"""Pure scoring: history tables and an explicit ``as_of`` in, rows of one schema out.

No network, no wall-clock reads, no writes (import boundaries checked by ``lint-imports``).
"""

from __future__ import annotations
