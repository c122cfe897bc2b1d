"""Run Python code in a fresh process that cannot import `qgfd_hf`.

For issue 5's "a saved folder also loads where qgfd_hf is not installed" tests::

    from helpers_subprocess import run_without_qgfd_hf

    out = run_without_qgfd_hf(f'''
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)
        print(type(model).__module__)
    ''')
    assert out.strip().startswith("transformers_modules.")

How `qgfd_hf` is kept out, whether or not it is pip-installed (editable or not):

- the snippet runs after ``sys.modules["qgfd_hf"] = None``, so every ``import qgfd_hf`` /
  ``from qgfd_hf... import`` raises ``ModuleNotFoundError`` before any finder is asked;
- the repository's root (and the current folder) is taken off ``sys.path``;
- the process starts in a fresh temporary folder, with ``PYTHONPATH`` removed from its
  environment.

The process computes with the same number of torch threads as the calling process (when that one
has imported torch): results are then bitwise comparable, since a reduction's order depends on the
thread count. ``env`` can still set ``OMP_NUM_THREADS``.

The process also gets its own ``HF_HOME`` and ``HF_MODULES_CACHE`` (where
`trust_remote_code` copies model code) in a temporary folder, and cannot use the network:
``HF_HUB_OFFLINE=1`` and a socket guard refuses anything but loopback. To let it download
from the `hub` fixture's server instead, pass ``offline=False`` (the fixture's
``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_CACHE`` are inherited from the environment).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

_PRELUDE = """\
import sys as _sys, socket as _socket, ipaddress as _ipaddress
_sys.modules["qgfd_hf"] = None  # `import qgfd_hf` now raises ModuleNotFoundError
_repo = {repo!r}
_sys.path[:] = [p for p in _sys.path if p not in ("", ".", _repo, _repo + "/")]

def _local(host):
    host = host.decode() if isinstance(host, bytes) else str(host)
    host = host.strip("[]").split("%")[0]
    if host.lower() in ("localhost", "ip6-localhost"):
        return True
    try:
        return _ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

_getaddrinfo, _connect = _socket.getaddrinfo, _socket.socket.connect
def _guarded_getaddrinfo(host, *a, **k):
    if host is not None and not _local(host):
        raise RuntimeError(f"helpers_subprocess: network refused (DNS lookup of {{host!r}})")
    return _getaddrinfo(host, *a, **k)
def _guarded_connect(self, address):
    if self.family in (_socket.AF_INET, _socket.AF_INET6) and not _local(address[0]):
        raise RuntimeError(f"helpers_subprocess: network refused (connection to {{address!r}})")
    return _connect(self, address)
_socket.getaddrinfo, _socket.socket.connect = _guarded_getaddrinfo, _guarded_connect
# ---- the test's snippet ----
"""


def run_without_qgfd_hf(
    code: str,
    *,
    offline: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> str:
    """Run `code` (dedented) in a fresh Python process that cannot import qgfd_hf; return its stdout.

    Args:
        code: the Python source to run. Print what the test should check.
        offline: set ``HF_HUB_OFFLINE=1`` (default). With ``False`` the process may talk to
            a loopback Hub stand-in (see the module docstring); other hosts are still refused.
        env: extra environment variables (they win over the defaults above).
        timeout: seconds before the process is killed (and `subprocess.TimeoutExpired` raised).

    Raises:
        AssertionError: the process exited with a non-zero status; the message holds its
            stderr, so a test failure shows the child's traceback.
    """
    with tempfile.TemporaryDirectory(prefix="no_qgfd_hf_") as tmp:
        script = Path(tmp) / "snippet.py"
        script.write_text(_PRELUDE.format(repo=str(REPO_ROOT)) + textwrap.dedent(code), encoding="utf-8")
        child_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        torch = sys.modules.get("torch")
        if torch is not None:
            # The child computes with this process's intra-op thread count: a matmul's reduction
            # order depends on it, so a bitwise comparison between the two needs the same count.
            child_env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
        child_env.update(
            HF_HOME=str(Path(tmp) / "hf_home"),
            HF_MODULES_CACHE=str(Path(tmp) / "hf_modules"),
            HF_HUB_DISABLE_TELEMETRY="1",
            PYTHONDONTWRITEBYTECODE="1",
        )
        if offline:
            child_env["HF_HUB_OFFLINE"] = "1"
        else:
            child_env.pop("HF_HUB_OFFLINE", None)
            child_env.pop("TRANSFORMERS_OFFLINE", None)
        child_env.update(env or {})
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if proc.returncode != 0:
        raise AssertionError(
            f"subprocess without qgfd_hf exited with status {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-8000:]}"
        )
    return proc.stdout
