"""
The scale-out test servers themselves start and answer (tests/scaleout.py).
"""

import psycopg
import pytest

pytestmark = pytest.mark.scaleout


def test_postgres_database_per_test_is_empty_and_usable(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname='public'").fetchone()[0] == 0
        conn.execute("CREATE TABLE t (x int)")


def test_s3_bucket_per_test_stores_objects(s3_bucket):
    server, bucket = s3_bucket
    client = server.client()
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    client.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"
