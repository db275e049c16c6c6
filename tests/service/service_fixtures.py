"""Fixtures for the service tests: the same tests run on SQLite and on PostgreSQL.

PostgreSQL comes from $LOCKD_TEST_POSTGRES_URL, else from scripts/postgres (which installs and
starts one when run as root). When neither works the PostgreSQL cases fail, never skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lockd.server.app import create_app
from lockd.server.settings import Settings
from lockd.store.engine import make_engine
from lockd.store.migrate import upgrade
from lockd.store.repository import Store
from lockd.trust import keys

REPO = Path(__file__).resolve().parents[2]
_HERE = Path(__file__).resolve().parent
BACKENDS = ("sqlite", "postgresql")
TABLES = (
    "manifest_labels",
    "manifest_subjects",
    "manifests",
    "verifications",
    "tokens",
    "audit_log",
    "fleet_hosts",
    "fleet_agents",
    "fleet_containers",
    "fleet_events",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/service/ is marked ``service``."""
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.service)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get("LOCKD_TEST_POSTGRES_URL")
    if url:
        return url
    result = subprocess.run(
        [str(REPO / "scripts" / "postgres")], capture_output=True, text=True, check=False
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        pytest.fail(
            "no PostgreSQL for the service tests: scripts/postgres failed "
            f"({result.stderr.strip()[-500:]}); run it as root, or set LOCKD_TEST_POSTGRES_URL"
        )
    return lines[-1]


@pytest.fixture(scope="session")
def postgres_migrated(postgres_url: str) -> str:
    """The PostgreSQL test database, emptied and migrated once per session."""
    from sqlalchemy import text

    engine = make_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    upgrade(engine)
    engine.dispose()
    return postgres_url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (faster than migrating each time)."""
    path = tmp_path_factory.mktemp("template") / "lockd.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


def _empty_postgres(url: str) -> None:
    from sqlalchemy import text

    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY"))
        conn.execute(
            text("UPDATE audit_head SET seq = 0, hash = :genesis, frontier = ''"),
            {"genesis": "0" * 64},
        )
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated database: a fresh SQLite file, or the emptied PostgreSQL database."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "lockd.db"
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_migrated")
    _empty_postgres(url)
    return url


@dataclass(frozen=True)
class Signer:
    key: keys.PrivateKey
    public: Path
    keyid: str


def _signer(folder: Path, name: str) -> Signer:
    key = keys.generate_private_key()
    public = folder / f"{name}.pub"
    public.write_bytes(keys.public_pem(key))
    return Signer(key=key, public=public, keyid=keys.keyid(key.public_key()))


@pytest.fixture(scope="session")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    """The key the service trusts."""
    return _signer(tmp_path_factory.mktemp("keys"), "trusted")


@pytest.fixture(scope="session")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    """A key the service does not trust."""
    return _signer(tmp_path_factory.mktemp("keys"), "stranger")


@pytest.fixture(scope="module")
def local_envelope(
    keypair: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
    lockd: Callable[..., subprocess.CompletedProcess[str]],
) -> Path:
    """This host's environment recorded and signed with ``keypair`` (`lockd record local`)."""
    out = tmp_path_factory.mktemp("m") / "local.dsse.json"
    result = lockd("record", "local", "--key", keypair[0], "--output", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def settings(database_url: str, signer: Signer) -> Settings:
    return Settings(
        database_url=database_url,
        trusted_keys=(signer.public,),
        policies=(REPO / "lockd" / "policies",),
    )


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = Store.open(database_url)
    yield opened
    opened.close()


@dataclass(frozen=True)
class Tokens:
    reader: str
    recorder: str
    admin: str

    def header(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, role)}"}


@pytest.fixture
def tokens(store: Store) -> Tokens:
    return Tokens(
        reader=store.create_token("ci-reader", "reader", actor="test"),
        recorder=store.create_token("ci-recorder", "recorder", actor="test"),
        admin=store.create_token("ci-admin", "admin", actor="test"),
    )


@pytest.fixture
def make_client(settings: Settings) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**settings_changes)``: a TestClient on a new app over the test database."""
    clients: list[TestClient] = []

    def _make(**changes: object) -> TestClient:
        client = TestClient(create_app(settings.model_copy(update=changes)))
        client.__enter__()
        clients.append(client)
        return client

    yield _make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()
