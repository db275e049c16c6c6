"""The audit log's key on disk (lockd.trust.logkey), `lockd keygen --log-key`, and the service's
LOCKD_LOG_KEY: made as Go's sumdb/note keys, read strictly, bad files named."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lockd.errors import KeyFileError
from lockd.server.app import create_app
from lockd.server.settings import Settings
from lockd.trust.checkpoint import LogSigner, LogVerifier, NoteError
from lockd.trust.logkey import load_log_signer, load_log_verifier, log_signer_at, write_log_key

Lockd = Callable[..., subprocess.CompletedProcess[str]]


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_keygen_log_key_writes_the_signer_and_verifier_keys(lockd: Lockd, tmp_path: Path) -> None:
    made = lockd("keygen", "--log-key", "lockd.example.com/audit", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    key, vkey = tmp_path / "lockd-log.key", tmp_path / "lockd-log.vkey"
    assert key.stat().st_mode & 0o777 == 0o600
    assert vkey.stat().st_mode & 0o777 == 0o644
    signer = load_log_signer(key)
    assert signer.name == "lockd.example.com/audit"
    assert made.stdout == vkey.read_text() == f"{signer.verifier()}\n"
    assert one_line(made.stderr) == (
        "wrote lockd-log.key (the log's signing key: keep it secret, set "
        "LOCKD_LOG_KEY=lockd-log.key) and lockd-log.vkey (give it to verifiers: lockd audit "
        "verify --log-key lockd-log.vkey)"
    )
    again = lockd("keygen", "--log-key", "other", cwd=tmp_path)
    assert (again.returncode, one_line(again.stderr)) == (
        2,
        "lockd: error: lockd-log.key exists; pass --force to replace it",
    )
    assert load_log_signer(key) == signer  # untouched
    forced = lockd("keygen", "--log-key", "other", "--force", cwd=tmp_path)
    assert forced.returncode == 0
    assert load_log_signer(key).name == "other"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a b", "log key name 'a b': give a name without spaces or '+'"),
        ("a+b", "log key name 'a+b': give a name without spaces or '+'"),
        ("", "log key name '': give a name without spaces or '+'"),
    ],
)
def test_keygen_refuses_a_name_a_note_cannot_carry(
    lockd: Lockd, tmp_path: Path, name: str, message: str
) -> None:
    made = lockd("keygen", "--log-key", name, "--output-key-prefix", tmp_path / "k")
    assert made.returncode == 2
    assert one_line(made.stderr).startswith(f"lockd: error: {message}")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "{path}: no such log key file; check the path"),
        (b"\xff\xfe", "{path}: not a log key (it is not ASCII text)"),
        (b"x" * 5000, "{path}: larger than 4 KiB, too large to be a log key file"),
        (
            b"lockd.test/audit+7ba77a19+AWIuSsZJo2bvFQFPxevxDMP7kXxw51ayaPUxWGg6V+Q/\n",
            "{path}: log signer key: give PRIVATE+KEY+<name>+<8 hex digits>+<base64 key>, as "
            "`lockd keygen --log-key` writes",
        ),
    ],
)
def test_a_bad_log_key_file_is_named(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "log.key"
    if content is not None:
        path.write_bytes(content)
        path.chmod(0o600)
    with pytest.raises(KeyFileError) as raised:
        load_log_signer(path)
    assert str(raised.value) == message.format(path=path)


def test_the_service_refuses_to_start_on_a_bad_log_key(tmp_path: Path) -> None:
    (tmp_path / "log.key").write_text("PRIVATE+KEY+garbage\n")
    (tmp_path / "log.key").chmod(0o600)
    settings = Settings(database_url=f"sqlite:///{tmp_path}/lockd.db", log_key=tmp_path / "log.key")
    with pytest.raises(KeyFileError, match=r"log\.key: log signer key: give PRIVATE\+KEY"):
        create_app(settings)


def test_a_broken_log_key_stops_the_service_without_showing_its_seed(
    lockd: Lockd, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """F6: one character too many in the key file printed the whole seed in the service's log."""
    signer = LogSigner.generate("lockd.test/audit")
    key = tmp_path / "broken.key"
    key.write_text(f"{signer}x\n")
    key.chmod(0o600)
    env = {"LOCKD_LOG_KEY": str(key), "LOCKD_DATABASE_URL": f"sqlite:///{tmp_path}/lockd.db"}
    served = lockd("serve", "--port", "1", env=env)
    assert served.returncode == 2
    assert served.stderr.splitlines()[-1] == (
        f"lockd: error: {key}: log signer key: the key is not standard base64"
    )
    seed = str(signer).split("+", 4)[4]
    said = served.stdout + served.stderr + caplog.text
    assert not [seed[i : i + 8] for i in range(len(seed) - 7) if seed[i : i + 8] in said]


def test_lockd_log_key_is_read_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env({"LOCKD_LOG_KEY": str(tmp_path / "k.key"), "HOME": str(tmp_path)})
    assert settings.log_key == tmp_path / "k.key"
    assert Settings.from_env({"HOME": str(tmp_path)}).log_key is None


def test_a_key_kept_beside_the_database_is_made_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "lockd-log.key"
    first = log_signer_at(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert log_signer_at(path) == first
    assert first.name.split("/")[1:2] == ["lockd-audit"]


def test_a_verifier_key_is_given_as_text_or_as_a_file(tmp_path: Path) -> None:
    signer = LogSigner.generate("lockd.test/audit")
    _, vkey = write_log_key(tmp_path / "log", signer)
    assert (
        load_log_verifier(str(vkey))
        == signer.verifier()
        == load_log_verifier(str(signer.verifier()))
    )
    with pytest.raises(NoteError, match="^verifier key: give <name>"):
        load_log_verifier("a+b")
    with pytest.raises(KeyFileError, match="no such log verifier key file"):
        load_log_verifier(str(tmp_path / "missing.vkey"))
    assert isinstance(load_log_verifier(str(vkey)), LogVerifier)


def test_no_key_is_kept_in_a_directory_others_may_write(tmp_path: Path) -> None:
    """Whoever can write there could have planted a key of theirs: the service signs nothing
    rather than use or make one there, and says why."""
    from fastapi.testclient import TestClient

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    settings = Settings(database_url=f"sqlite:///{shared}/lockd.db", allow_anonymous_read=True)
    with TestClient(create_app(settings)) as client:
        answer = client.get("/v1/audit/log-key")
    assert answer.status_code == 404
    assert answer.json()["detail"] == (
        "this service signs no audit checkpoints: it has no log key, and keeps none beside its "
        f"database: {shared} is writable by others (mode 0777). Set LOCKD_LOG_KEY to a key file "
        "made by `lockd keygen --log-key NAME`"
    )
    assert not (shared / "lockd-log.key").exists()


def test_the_shipped_deployment_signs_checkpoints_with_one_mounted_key() -> None:
    """Every replica reads LOCKD_LOG_KEY from the secret `lockd keygen --log-key` makes the file
    of (README: kubectl create secret generic lockd-log-key --from-file=lockd-log.key), readable
    by the service's user and no one else."""
    import yaml

    deploy = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"
    docs = {d["kind"]: d for d in yaml.safe_load_all((deploy / "lockd.yaml").read_text())}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    [volume] = [v for v in pod["volumes"] if v["name"] == "log-key"]
    assert env["LOCKD_LOG_KEY"] == f"{mounts['log-key']}/lockd-log.key"
    assert volume["secret"] == {"secretName": "lockd-log-key", "defaultMode": 0o440}
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    readme = (deploy / "README.md").read_text()
    assert "create secret generic lockd-log-key --from-file=lockd-log.key" in readme


# --- F5: the key file is read only when no other user may read or change it -------------------


def secret_volume(mount: Path, signer: LogSigner, mode: int = 0o440) -> Path:
    """The layout kubelet makes of a secret volume (atomic writer): the file in a timestamped
    directory, ``..data`` linked to it, and the file's name linked through ``..data``."""
    version = mount / "..2026_12_07_14_00_00.123456789"
    version.mkdir(parents=True)
    (version / "lockd-log.key").write_text(f"{signer}\n")
    (version / "lockd-log.key").chmod(mode)
    (mount / "..data").symlink_to(version.name)
    (mount / "lockd-log.key").symlink_to("..data/lockd-log.key")
    return mount / "lockd-log.key"


def test_a_key_mounted_as_the_shipped_deployment_mounts_it_is_read(tmp_path: Path) -> None:
    """The shipped defaultMode (0440, for the pod's fsGroup), through kubelet's own links."""
    import yaml

    deploy = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes" / "lockd.yaml"
    docs = {d["kind"]: d for d in yaml.safe_load_all(deploy.read_text())}
    [volume] = [
        v
        for v in docs["Deployment"]["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "log-key"
    ]
    signer = LogSigner.generate("lockd.test/audit")
    key = secret_volume(tmp_path / "log-key", signer, mode=volume["secret"]["defaultMode"])
    assert load_log_signer(key) == signer
    settings = Settings(database_url=f"sqlite:///{tmp_path}/lockd.db", log_key=key)
    assert create_app(settings).state.service.log_signer == signer


def plain(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "log.key"
    path.write_text(f"{LogSigner.generate('lockd.test/audit')}\n")
    path.chmod(mode)
    return path


def linked(tmp_path: Path) -> Path:
    target = plain(tmp_path, 0o600)
    (tmp_path / "link.key").symlink_to(target)
    return tmp_path / "link.key"


def volume_elsewhere(tmp_path: Path) -> Path:
    """The name's link leads out of the volume, to a file someone else chose."""
    key = secret_volume(tmp_path / "log-key", LogSigner.generate("lockd.test/audit"))
    key.unlink()
    key.symlink_to(plain(tmp_path, 0o600))
    return key


def volume_data_outside(tmp_path: Path) -> Path:
    (tmp_path / "..outside").mkdir()
    plain(tmp_path / "..outside", 0o600)
    (tmp_path / "..outside" / "log.key").rename(tmp_path / "..outside" / "lockd-log.key")
    mount = tmp_path / "log-key"
    mount.mkdir()
    (mount / "..data").symlink_to("../..outside")
    (mount / "lockd-log.key").symlink_to("..data/lockd-log.key")
    return mount / "lockd-log.key"


def volume_others_may_write(tmp_path: Path) -> Path:
    key = secret_volume(tmp_path / "log-key", LogSigner.generate("lockd.test/audit"))
    key.parent.chmod(0o777)
    return key


def fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "log.key", 0o600)
    return tmp_path / "log.key"


TOO_OPEN = (
    "{path}: the log key file's mode {mode} lets other users read or change it: chmod 600 "
    "{opened} (this user alone may read a log key)"
)
A_LINK = (
    "{path}: the log key file is a symbolic link, which lockd does not follow: give the file "
    "itself (only a Kubernetes secret volume's own links are followed)"
)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: plain(d, 0o644), TOO_OPEN.format(path="{path}", mode="0644", opened="{path}")),
        (lambda d: plain(d, 0o640), TOO_OPEN.format(path="{path}", mode="0640", opened="{path}")),
        (lambda d: plain(d, 0o440), TOO_OPEN.format(path="{path}", mode="0440", opened="{path}")),
        (lambda d: plain(d, 0o620), TOO_OPEN.format(path="{path}", mode="0620", opened="{path}")),
        (
            lambda d: secret_volume(d / "log-key", LogSigner.generate("x"), mode=0o444),
            TOO_OPEN.format(
                path="{path}",
                mode="0444",
                opened="{path.parent}/..2026_12_07_14_00_00.123456789/lockd-log.key",
            ),
        ),
        (linked, A_LINK),
        (volume_elsewhere, A_LINK),
        (volume_data_outside, A_LINK),
        (volume_others_may_write, A_LINK),
        (fifo, "{path}: the log key file is not a regular file"),
        (lambda d: d, "{path}: cannot read the log key file: Is a directory"),
    ],
    ids=[
        "0644",
        "0640",
        "0440-outside-a-volume",
        "0620",
        "volume-0444",
        "a-link",
        "volume-link-leads-out",
        "volume-data-leads-out",
        "volume-others-may-write",
        "fifo",
        "directory",
    ],
)
def test_a_log_key_others_may_read_or_change_is_refused(
    tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(KeyFileError) as raised:
        load_log_signer(path)
    assert str(raised.value) == message.format(path=path)


@pytest.mark.usefixtures("root_required")  # only root can give a file to another user
def test_a_log_key_of_another_user_is_refused(tmp_path: Path) -> None:
    path = plain(tmp_path, 0o600)
    os.chown(path, 4242, 4242)
    with pytest.raises(KeyFileError) as raised:
        load_log_signer(path)
    assert str(raised.value) == (
        f"{path}: the log key file is owned by uid 4242, not by this user (uid {os.geteuid()}) "
        "or root: whoever owns it may have put their own log key there"
    )


def test_the_service_does_not_start_on_a_key_others_may_read(lockd: Lockd, tmp_path: Path) -> None:
    key = plain(tmp_path, 0o644)
    env = {"LOCKD_LOG_KEY": str(key), "LOCKD_DATABASE_URL": f"sqlite:///{tmp_path}/lockd.db"}
    served = lockd("serve", "--port", "1", env=env)
    assert (served.returncode, one_line(served.stderr).split("lockd: error: ")[-1]) == (
        2,
        f"{key}: the log key file's mode 0644 lets other users read or change "
        f"it: chmod 600 {key} (this user alone may read a log key)",
    )
