"""A PostgreSQL server of the fault suite's own: initdb in a temporary directory, pg_ctl on a free port,
so a test can stop and restart it without touching the shared one at 127.0.0.1:5432.

PostgreSQL refuses to run as root: as root its programs run as the `postgres` user (runuser). Without
the programs the tests skip, saying so; under CI=true they fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.integration.serverprocess import free_port


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    for d in reversed(dirs):
        if (Path(d) / "pg_ctl").exists() and (Path(d) / "initdb").exists():
            return Path(d)
    return None


def _as_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return ["unavailable"]
    runuser = shutil.which("runuser") or shutil.which("setpriv")
    if runuser is None:
        return ["unavailable"]
    if runuser.endswith("runuser"):
        return [runuser, "-u", "postgres", "--"]
    return [runuser, "--reuid=postgres", "--regid=postgres", "--init-groups"]


def unavailable_reason() -> str | None:
    if _bin_dir() is None:
        return "PostgreSQL's initdb and pg_ctl are not installed (/usr/lib/postgresql/*/bin)"
    if _as_user() == ["unavailable"]:
        return "running as root, and there is no postgres user or runuser/setpriv to run it as"
    return None


class OwnPostgres:
    """`start()`, `stop()`, `start()` again: the data directory stays, so does what was committed."""

    def __init__(self) -> None:
        reason = unavailable_reason()
        if reason is not None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{reason}, and CI must run the fault suite")
            pytest.skip(reason)
        bin_dir = _bin_dir()
        assert bin_dir is not None
        self.bin = bin_dir
        self.prefix = _as_user()
        self.dir = Path(tempfile.mkdtemp(prefix="legato-faults-pg-"))
        if self.prefix:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def _run(self, program: str, *args: str) -> None:
        command = [*self.prefix, str(self.bin / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=50"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    @property
    def log(self) -> Path:
        return self.dir / "postgres.log"

    def remove(self) -> None:
        subprocess.run(
            [
                *self.prefix,
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(self.dir, ignore_errors=True)
