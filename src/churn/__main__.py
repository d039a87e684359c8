from __future__ import annotations

from churn.pipelines.cli import main

main()
