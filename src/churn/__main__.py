from __future__ import annotations

from churn.cli import main

main()
