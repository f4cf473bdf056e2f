"""Start a local inference server (SGLang or vLLM) as a subprocess and wait until it is healthy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import httpx


def sglang_command(model_path: str, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sglang.launch_server", "--model-path", model_path,
            "--host", "127.0.0.1", "--port", str(port), *extra]


def vllm_command(model: str, port: int, *extra: str) -> list[str]:
    """``vllm serve`` with prefix caching and cached-token reporting switched on."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--host", "127.0.0.1", "--port", str(port), "--enable-prefix-caching",
            "--enable-prompt-tokens-details", *extra]


class ServerProcess:
    """A server subprocess that is stopped on ``close()`` or when its ``with`` block ends."""

    def __init__(
        self,
        command: Sequence[str],
        base_url: str,
        *,
        health_path: str = "/health",
        timeout_s: float = 600.0,
        log_path: str | Path | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._log: IO[bytes] | None = open(log_path, "wb") if log_path else None
        # its own process group: servers spawn workers (vLLM's EngineCore) that must stop with it
        self.process = subprocess.Popen(
            list(command), stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_healthy(health_path, timeout_s)
        except BaseException:
            self.close()
            raise

    def _wait_healthy(self, health_path: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with code {self.process.returncode} before becoming healthy"
                )
            try:
                if httpx.get(self.base_url + health_path, timeout=5.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1.0)
        raise TimeoutError(f"{self.base_url}{health_path} not healthy after {timeout_s:.0f} s")

    def kill(self) -> None:
        """SIGKILL the server and its workers at once (a crash, for fault tests)."""
        self._signal_group(signal.SIGKILL)
        self.process.wait()

    def close(self) -> None:
        """Stop the server and its workers: SIGTERM, then SIGKILL after 30 s."""
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self._signal_group(signal.SIGKILL)  # workers that outlived the main process
        if self._log is not None:
            self._log.close()

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def launch_sglang(model_path: str, port: int, *extra: str, timeout_s: float = 600.0) -> ServerProcess:
    return ServerProcess(sglang_command(model_path, port, *extra), f"http://127.0.0.1:{port}",
                         health_path="/health", timeout_s=timeout_s)


def launch_vllm(model: str, port: int, *extra: str, timeout_s: float = 600.0) -> ServerProcess:
    return ServerProcess(vllm_command(model, port, *extra), f"http://127.0.0.1:{port}",
                         health_path="/health", timeout_s=timeout_s)
