"""A throwaway PostgreSQL cluster on loopback, started by the tests themselves."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def _bin_dir() -> Path:
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if candidates:
        return Path(candidates[-1])
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError("PostgreSQL server binaries not found (install the Debian package 'postgresql' or set PG_BIN)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    root: Path
    port: int
    bin: Path
    as_postgres: bool

    @property
    def url(self) -> str:
        return f"postgres://world:world@127.0.0.1:{self.port}/world"

    def _run(self, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_postgres else []
        return subprocess.run([*prefix, *argv], check=True, capture_output=True, text=True, **kwargs)

    def psql(self, *args: str, db: str = "world", user: str = "world") -> str:
        env = {**os.environ, "PGPASSWORD": "world"}
        out = subprocess.run(
            [
                str(self.bin / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                user,
                "-d",
                db,
                *args,
            ],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        return out.stdout

    def create_database(self, name: str) -> str:
        self.psql("-c", f'create database "{name}" owner world', db="postgres")
        return f"postgres://world:world@127.0.0.1:{self.port}/{name}"

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", mode, "-w", "stop")

    def start(self) -> None:
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.root / "data"),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )


def start_pg() -> PgServer:
    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="wft-pg-"))
    as_postgres = os.geteuid() == 0
    if as_postgres:
        shutil.chown(root, "postgres")
    server = PgServer(root=root, port=free_port(), bin=bin_dir, as_postgres=as_postgres)
    server._run(
        str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
    )
    conf = (
        f"listen_addresses = '127.0.0.1'\nport = {server.port}\nunix_socket_directories = ''\n"
        "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
    )
    server._run("sh", "-c", f"cat >> '{root / 'data' / 'postgresql.conf'}'", input=conf)
    server.start()
    server.psql(
        "-c",
        "create role world login password 'world' superuser",
        "-c",
        "create database world owner world",
        db="postgres",
        user="postgres",
    )
    return server


def destroy(server: PgServer) -> None:
    try:
        server.stop("immediate")
    except subprocess.CalledProcessError:
        pass
    shutil.rmtree(server.root, ignore_errors=True)
