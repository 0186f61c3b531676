"""Start a real ``tritonserver`` on 127.0.0.1 from PyPI's nvidia-pytriton wheel (tests and benchmarks).

The wheel bundles the server binary, its Python backend and one Python-backend stub per Python
version. The server runs from an environment of its own (``make triton-env`` → ``.venv-triton``):
the stub embeds that environment's Python and needs numpy < 2 there. Its ``bin`` goes first on
PATH so the stub's interpreter finds the environment's packages, the wheel's bundled libraries go
on LD_LIBRARY_PATH, and the matching stub is copied next to the Python backend in a scratch folder.
The wheel has no ONNX Runtime or TensorRT backend: serve ``clo-export triton --platform python``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from clo_export.errors import CloExportError

DEFAULT_ENV = Path(".venv-triton")


@dataclass(frozen=True)
class ServerEnv:
    """A Python environment holding nvidia-pytriton: its interpreter version and the wheel's server folder."""

    root: Path
    python: str  # "3.11"
    dist: Path  # .../site-packages/pytriton/tritonserver

    @classmethod
    def find(cls, root: str | os.PathLike = DEFAULT_ENV) -> ServerEnv:
        """The environment at ``root``, checked."""
        root = Path(root).resolve()
        hits = sorted(root.glob("lib/python3.*/site-packages/pytriton/tritonserver/bin/tritonserver"))
        if not hits:
            raise CloExportError(
                f"no tritonserver in '{root}'; make it with `make triton-env` (nvidia-pytriton, numpy<2)"
            )
        dist = hits[0].parent.parent
        python = dist.parent.parent.parent.name.replace("python", "")
        return cls(root, python, dist)

    @property
    def libs(self) -> Path:
        return self.dist.parent.parent / "nvidia_pytriton.libs"

    def backends(self, scratch: Path) -> Path:
        """A backend folder with the Python backend and the stub for this environment's Python."""
        dest = scratch / "backends"
        if not (dest / "python" / "triton_python_backend_stub").is_file():
            shutil.copytree(self.dist / "backends", dest, dirs_exist_ok=True)
            stub = self.dist / "python_backend_stubs" / self.python / "triton_python_backend_stub"
            if not stub.is_file():
                raise CloExportError(
                    f"nvidia-pytriton has no Python backend stub for Python {self.python}; "
                    "make the server environment with Python 3.8 … 3.13"
                )
            shutil.copy2(stub, dest / "python" / "triton_python_backend_stub")
        return dest


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """``tritonserver`` on 127.0.0.1 on free ports; a context manager that stops it cleanly."""

    def __init__(
        self,
        repository: str | os.PathLike,
        scratch: str | os.PathLike,
        env: ServerEnv | None = None,
        models: list[str] | None = None,
    ):
        self.repository = Path(repository)
        self.scratch = Path(scratch).resolve()
        self.env = env or ServerEnv.find()
        self.models = models
        self.grpc_port = self.http_port = 0
        self.log_path = self.scratch / "tritonserver.log"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.grpc_port, self.http_port = free_port(), free_port()
        cmd = [
            str(self.env.dist / "bin" / "tritonserver"),
            f"--model-repository={self.repository.resolve()}",
            f"--backend-directory={self.env.backends(self.scratch)}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--exit-on-error=true",
            "--log-verbose=0",
        ]
        if self.models:
            cmd += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models)]
        return cmd

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.env.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (env.get("LD_LIBRARY_PATH"), str(self.env.libs)) if p)
        for var in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV"):
            env.pop(var, None)
        return env

    def start(self, timeout: float = 90.0) -> LocalServer:
        """Start the server and wait until it is ready; one that dies or never gets ready raises with its log tail."""
        cmd = self.command()
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self.scratch,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                raise CloExportError(
                    f"tritonserver exited with {self.proc.returncode} before it was ready:\n{self.log_tail()}"
                )
            if self.ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise CloExportError(f"tritonserver was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        """Whether the server answers ready on its HTTP endpoint (plain HTTP, no client library needed)."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=1)
        try:
            conn.request("GET", "/v2/health/ready")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (Triton unloads models and exits), SIGKILL after ``timeout``; the exit code."""
        if self.proc is None:
            return self.returncode or 0
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.returncode = self.proc.returncode
        self.proc = None
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the server and its Python-backend stubs (its whole process group): a server that dies."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """``python -m clo_export.triton.localserver REPO``: serve REPO on 127.0.0.1 until Ctrl-C (CPU machines, trials)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("repository", type=Path)
    ap.add_argument("--env", type=Path, default=DEFAULT_ENV, help="environment made by make triton-env")
    ap.add_argument(
        "--scratch", type=Path, default=Path(".triton-scratch"), help="folder for backends and the server log"
    )
    args = ap.parse_args()
    try:
        server = LocalServer(args.repository, args.scratch, ServerEnv.find(args.env)).start()
    except CloExportError as e:
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(1) from None
    sys.stdout.write(
        f"Triton serving {args.repository} on grpc {server.grpc_url}, http {server.http_url} "
        f"(log: {server.log_path}); Ctrl-C stops it\n"
    )
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops the server as Ctrl-C does
    try:
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
