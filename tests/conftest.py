"""Shared pytest fixtures.

`hub`: a local stand-in for the Hugging Face Hub (tests/hub_server.py), with
`huggingface_hub` and `transformers` pointed at it and the real network refused::

    def test_round_trip(hub, tmp_path):
        model.push_to_hub("user/tiny")
        assert "model.safetensors" in hub.list_files("user/tiny")
        again = AutoModel.from_pretrained("user/tiny")

Why setting ``HF_ENDPOINT`` is not enough: `huggingface_hub.constants` reads it once, at
import, into ``ENDPOINT`` and ``HUGGINGFACE_CO_URL_TEMPLATE`` (and into ``HF_URL_HOSTS`` and
`huggingface_hub.utils._http._HUB_ORIGINS`); the module-level ``huggingface_hub.hf_api.api``
(behind ``huggingface_hub.create_repo``, ``upload_folder``, ...) copied ``ENDPOINT`` when it
was built; and `transformers.utils.hub.hf_api()` caches one `HfApi` made on first use. The
fixture patches all of these for the test's duration (`monkeypatch` undoes them), and also:

- sets ``HF_ENDPOINT`` in the environment, for subprocesses the test starts;
- sets a fake ``HF_TOKEN`` (the stand-in accepts any token);
- turns offline mode off (``constants.HF_HUB_OFFLINE`` and the ``HF_HUB_OFFLINE`` /
  ``TRANSFORMERS_OFFLINE`` variables) -- safe, because of the guard below;
- disables Xet and telemetry; points the download cache (``constants.HF_HUB_CACHE``,
  ``HF_HUB_CACHE``) at a fresh temporary folder, so nothing comes from or goes to
  ``~/.cache/huggingface/hub``;
- installs `hub_server.NetworkGuard`: any DNS look-up or connection to a non-loopback host
  raises `BlockedNetworkAccess`, and the test errors at teardown if one was attempted (even
  if the code under test swallowed the exception). It also errors if the stand-in received
  a request for a route it does not implement or failed on (``hub.unhandled``); set
  ``hub.allow_unhandled = True`` in a test that expects that.

Not redirected: ``HF_MODULES_CACHE`` (where `trust_remote_code` copies model code); it is
read by `transformers.dynamic_module_utils` at import and baked into `sys.path`. Run
remote-code loads in a subprocess (tests/helpers_subprocess.py) to isolate them.
"""

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:  # so `import hub_server` works under any --import-mode
    sys.path.insert(0, _TESTS)

from hub_server import HubServer, NetworkGuard  # noqa: E402

FAKE_TOKEN = "hf_hub_server_fake_token"


def point_huggingface_hub_at(endpoint: str, monkeypatch, cache_dir: str) -> None:
    """Redirect an already-imported huggingface_hub (and transformers) to `endpoint`."""
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _http

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {"127.0.0.1"})
    monkeypatch.setattr(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(endpoint)})
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache_dir)
    monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", cache_dir)

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_CACHE", cache_dir)

    import transformers.utils.hub as tf_hub

    monkeypatch.setattr(tf_hub, "_hf_api", None)  # rebuilt on first use, with the new endpoint


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running `HubServer` that huggingface_hub and transformers talk to (see module doc).

    Yields the server: ``hub.endpoint``, ``hub.root`` (repos on disk), ``hub.list_files(repo_id)``,
    ``hub.read_file(repo_id, path)``, ``hub.list_commits(repo_id)``, ``hub.requests``,
    ``hub.cache_dir`` (the download cache) and ``hub.guard.blocked``.
    """
    from huggingface_hub.utils import _http

    guard = NetworkGuard().install(monkeypatch)
    server = HubServer(root=tmp_path / "hub_repos").start()
    server.cache_dir, server.guard = tmp_path / "hf_cache", guard
    try:
        point_huggingface_hub_at(server.endpoint, monkeypatch, str(server.cache_dir))
        _http.close_session()  # fresh connection pool
        yield server
    finally:
        _http.close_session()
        server.stop()
    problems = []
    if guard.blocked:
        problems.append(f"the test tried to reach the network: {guard.blocked}")
    if server.unhandled and not server.allow_unhandled:
        problems.append(f"hub_server got requests it does not implement: {server.unhandled}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a module of tiny-tensor tests: on a shared 2-core machine
    two threads that wait on each other can be ~10x slower than one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Undo a test's change to torch's intra-op thread count (the CLI's `--threads`, called in-process,
    sets it for the process): a later test must not compute with what an earlier one left."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
