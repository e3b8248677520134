"""Test helpers that start real processes: Shipyard, the fake upstream, a private PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_sigint() -> None:
    """`Popen(preexec_fn=...)` for a child a test stops with Ctrl-C: the default SIGINT, even when the test run
    itself was started as a background job (a non-interactive shell's background job ignores SIGINT, children
    inherit that, and Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until(predicate: Any, timeout: float, interval: float = 0.1, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class ShipyardProcess:
    """`shipyard up` as a real child process on a free loopback port."""

    def __init__(
        self,
        data_dir: Path,
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        port: int | None = None,
        flags: bool = True,
        session: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.session = session  # True: a process group of its own (a terminal's Ctrl-C reaches the whole group)
        self.port = port or free_port()
        self.config = config
        self.env = env or {}
        self.extra_args = extra_args or []
        self.flags = flags  # False: no --port/--data-dir, so the environment or file must supply them
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [PYTHON, "-m", "shipyard.cli.main", "up"]
        if self.flags:
            args += ["--port", str(self.port), "--data-dir", str(self.data_dir)]
        if self.config is not None:
            config_path = self.data_dir / "shipyard.yaml"
            config_path.write_text(yaml.safe_dump(self.config))
            args += ["--config", str(config_path)]
        args += self.extra_args
        # Auth is on by default in Shipyard; tests that check it pass env={"SHIPYARD_AUTH": "on"} (issue 6).
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "SHIPYARD_AUTH": "off", **self.env}
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=self.session
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait for /readyz to answer 200 (every deployment has a healthy target)."""

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"shipyard exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(ready, timeout, 0.2, "shipyard to become ready")
        except TimeoutError:
            raise TimeoutError(f"shipyard not ready in {timeout}s:\n{self.log()[-4000:]}") from None

    def wait_listening(self, timeout: float = 60) -> None:
        def up() -> bool:
            try:
                return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout, 0.1, "shipyard to listen")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class FakeUpstreamProcess:
    """The fake provider (shipyard.testing.fake_upstream) in its own process."""

    def __init__(self, port: int, process: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.process = process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def script(self, *behaviours: dict[str, Any]) -> None:
        httpx.post(self.url + "/_fake/script", json=list(behaviours), timeout=5).raise_for_status()

    def set_health(self, ok: bool) -> None:
        httpx.post(self.url + "/_fake/health", json={"ok": ok}, timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(self.url + "/_fake/stats", timeout=5).json()

    def reset(self) -> None:
        httpx.post(self.url + "/_fake/reset", timeout=5).raise_for_status()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_fake_upstream(*args: str, port: int | None = None) -> FakeUpstreamProcess:
    port = port or free_port()
    process = subprocess.Popen([PYTHON, "-m", "shipyard.testing.fake_upstream", "--port", str(port), *args])
    fake = FakeUpstreamProcess(port, process)

    def up() -> bool:
        try:
            return httpx.get(fake.url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 20, 0.05, "the fake upstream")
    return fake


@contextlib.contextmanager
def fake_fleet(
    data_dir: Path, config: Callable[[FakeUpstreamProcess], dict[str, Any]], env: dict[str, str] | None = None
) -> Iterator[tuple[ShipyardProcess, FakeUpstreamProcess]]:
    """A fake upstream (a hosted provider's stand-in) and a ready `shipyard up` whose config `config(fake)` builds."""
    fake = start_fake_upstream()
    server = ShipyardProcess(data_dir, config=config(fake), env=env)
    try:
        server.start()
        server.wait_ready(60)
        yield server, fake
    finally:
        server.stop()
        fake.stop()


class PostgresServer:
    """A throw-away PostgreSQL cluster in a temporary folder, run as the `postgres` user when root."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # Not under pytest's tmp dirs: those are private to root, and the server runs as `postgres`.
        self.base = Path(tempfile.mkdtemp(prefix="shipyard-pg-"))
        self.datadir = self.base / "data"
        self.port = free_port()
        self.user = "shipyard"
        self.password = "shipyard"

    @classmethod
    def find(cls) -> PostgresServer | None:
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
        for bindir in candidates:
            if (bindir / "initdb").exists():
                return cls(bindir)
        initdb = shutil.which("initdb")
        return cls(Path(initdb).parent) if initdb else None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(a) for a in args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(self.base, pg.pw_uid, pg.pw_gid)
            os.chmod(self.base, 0o700)
        pwfile = self.base / "pw"
        pwfile.write_text(self.password)
        if os.geteuid() == 0:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        self._run(
            self.bindir / "initdb",
            "-D",
            self.datadir,
            "-U",
            self.user,
            "--pwfile",
            pwfile,
            "-A",
            "scram-sha-256",
            "--no-sync",
        )
        self.pg_ctl("start", "-w", "-o", f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off")

    def pg_ctl(self, action: str, *args: str) -> None:
        self._run(self.bindir / "pg_ctl", "-D", self.datadir, "-l", self.base / "log", action, *args)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    @staticmethod
    def fresh_database(url: str) -> str:
        """Create an empty database on the server behind `url` and return its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        plain = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return url.rsplit("/", 1)[0] + "/" + name
