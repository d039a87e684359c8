"""Run one push in its own process (the kill test SIGKILLs it mid-apply).

Usage: python push_driver.py DB INSTANCE_URL CA_PATH COLLECTION_SIZE
"""

from __future__ import annotations

import sys
from pathlib import Path

import requests
from simple_salesforce import Salesforce

from churn.pipelines import warehouse
from churn.pipelines.push import push
from churn.settings import Settings


def main() -> None:
    db, instance_url, ca_path, size = sys.argv[1:5]
    settings = Settings().with_overrides(db=Path(db), push={"collection_size": int(size)})
    session = requests.Session()
    session.verify = ca_path
    session.trust_env = False  # else REQUESTS_CA_BUNDLE overrides verify
    sf = Salesforce(
        instance_url=instance_url, session_id="standin-session", session=session, version="62.0"
    )
    con = warehouse.connect(settings.db)
    result = push(settings, con, salesforce=sf)
    print(result.counts)


if __name__ == "__main__":
    main()
