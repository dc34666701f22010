"""The suite's own throwaway PostgreSQL wants a password too: 127.0.0.1 is every local user's."""

from pathlib import Path

import asyncpg
import pytest

from shared.localpg import LocalPostgres, LocalPostgresError
from shared.private_files import UnsafeFile


async def test_throwaway_cluster_refuses_connections_without_its_password(
    pg_server: LocalPostgres,
) -> None:
    for dsn in (
        f"postgresql://postgres@127.0.0.1:{pg_server.port}/postgres",
        f"postgresql://postgres:guess@127.0.0.1:{pg_server.port}/postgres",
    ):
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
            await asyncpg.connect(dsn, timeout=5)
    conn = await asyncpg.connect(pg_server.dsn, timeout=5)
    await conn.close()


def test_a_password_file_others_can_read_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "postgres.password"
    secret.write_text("not-so-secret\n")
    secret.chmod(0o644)
    server = LocalPostgres(tmp_path / "postgres", 1, password_file=secret)
    with pytest.raises(UnsafeFile, match="readable by others"):
        _ = server.password


def test_a_lost_password_file_for_an_existing_cluster_is_explained(tmp_path: Path) -> None:
    server = LocalPostgres(tmp_path / "postgres", 1, password_file=tmp_path / "gone")
    server.datadir.mkdir(parents=True)
    (server.datadir / "PG_VERSION").write_text("15\n")
    (server.datadir / "pg_hba.conf").write_text("local all all scram-sha-256\n")
    with pytest.raises(LocalPostgresError, match="is missing, so nothing can log in"):
        server.prepare()
