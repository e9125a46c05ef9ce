"""A throwaway database on the local PostgreSQL for the tests that need one (the machine and CI run
a server; a user's fresh machine may not, and then those tests skip with the reason)."""

import os
from contextlib import contextmanager

import pytest

ADMIN_URL = os.environ.get("BPNET_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


@contextmanager
def fresh_database(prefix):
    """The URL of a new, empty database (dropped afterwards, its connections closed by force)."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    admin = sqlalchemy.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{os.getpid()}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except Exception as err:   # no server on this machine
        admin.dispose()
        pytest.skip(f"no PostgreSQL at {ADMIN_URL}: {type(err).__name__}")
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()
