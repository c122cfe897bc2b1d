"""A local stand-in for the Hugging Face Hub's HTTP protocol, for tests.

It answers, on 127.0.0.1 and an ephemeral port, the requests that `huggingface_hub` 2.4
sends for `PreTrainedModel.push_to_hub`, tokenizer/processor `push_to_hub`,
`ModelCard.push_to_hub`, `HfApi.create_repo` / `upload_folder` / `create_commit`, and for
`hf_hub_download` / `snapshot_download` / `from_pretrained` / `pipeline(model="user/repo")`.
Repositories live in a temporary folder.

It stands in for the Hub's *protocol* only. It is not the Hub:

- no authentication: any token (or none) is accepted, every repo is public;
- no LFS and no Xet storage: `preupload` answers ``uploadMode: "regular"`` for every file,
  so `huggingface_hub` sends contents inline (base64 in the NDJSON commit body); a commit
  that carries an ``lfsFile`` line gets a 400;
- `validate-yaml` checks only that the card's front matter is a YAML mapping and that a
  `pipeline_tag`, when given, is one of the Hub's task ids (`HUB_PIPELINE_TAGS`); the real
  Hub checks more;
- no pagination (tree listings come in one page), no discussions, no spaces hardware,
  no gated/private repos, no rate limits.

Endpoints (``{type}`` is ``models``, ``datasets``, ``spaces`` or ``kernels``; ``{rev}`` is
URL-quoted, e.g. ``refs%2Fpr%2F1``):

    POST /api/repos/create                          create a repo (409 + url if it exists)
    POST /api/validate-yaml                         README front matter check
    POST /api/{type}/{repo}/preupload/{rev}         always "regular", plus the current oid
    POST /api/{type}/{repo}/commit/{rev}            NDJSON: header, file, deletedFile, deletedFolder
    POST /api/{type}/{repo}/branch/{branch}         create a branch
    GET  /api/{type}/{repo}[/revision/{rev}]        repo info (sha, siblings, cardData, ...)
    GET  /api/{type}/{repo}/tree/{rev}[/{path}]     list files and folders
    GET  /api/{type}/{repo}/refs                    branches
    GET  /api/whoami-v2                             the fake user
    HEAD/GET /[{type}/]{repo}/resolve/{rev}/{path}  downloads, with ETag, X-Repo-Commit, ...

Errors carry the headers `huggingface_hub.utils.hf_raise_for_status` reads
(``X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound`` and ``X-Error-Message``),
so callers see the usual `RepositoryNotFoundError`, `RevisionNotFoundError` and
`EntryNotFoundError`. A request for a route this stand-in does not know gets a 501 and is
recorded in `HubServer.unhandled`; so is a request the stand-in failed on (also a 501, as
`huggingface_hub` retries 5xx answers with backoff).

Pointing an already-imported `huggingface_hub` / `transformers` at the server needs more
than ``HF_ENDPOINT`` (read once, at import): see `tests/conftest.py::hub`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# Task ids the Hub accepts as `pipeline_tag`: the keys of PIPELINE_DATA in
# huggingface.js, packages/tasks/src/pipelines.ts (huggingface_hub does not ship the list).
HUB_PIPELINE_TAGS = frozenset(
    """
    biology text-classification token-classification table-question-answering question-answering
    zero-shot-classification translation summarization feature-extraction text-generation
    text2text-generation fill-mask sentence-similarity text-to-speech text-to-audio
    automatic-speech-recognition audio-to-audio audio-classification audio-text-to-text
    voice-activity-detection depth-estimation image-classification object-detection
    image-segmentation text-to-image image-to-text image-to-image image-to-video
    unconditional-image-generation video-classification reinforcement-learning robotics
    tabular-classification tabular-regression tabular-to-text table-to-text multiple-choice
    text-ranking text-retrieval time-series-forecasting text-to-video image-text-to-text
    visual-question-answering document-question-answering zero-shot-image-classification
    graph-ml mask-generation zero-shot-object-detection text-to-3d image-to-3d
    image-feature-extraction video-text-to-text keypoint-detection visual-document-retrieval
    any-to-any other
    """.split()
)

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}

# What the Hub puts in a new repo's first commit (abridged).
_INITIAL_GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
)


def git_blob_oid(data: bytes) -> str:
    """The git blob sha1, which the Hub uses as oid and ETag of a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _front_matter(text: str) -> str | None:
    """The YAML block between the leading ``---`` lines of a README, or None."""
    m = re.match(r"^\s*---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|$)", text, flags=re.S)
    return m.group(1) if m else None


@dataclass
class Commit:
    oid: str
    parents: list[str]
    title: str
    description: str
    date: str
    files: dict[str, str]  # path -> blob oid


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    folder: Path  # blobs/ lives here
    created_at: str
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)

    def blob(self, oid: str) -> bytes:
        return (self.folder / "blobs" / oid).read_bytes()

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        if re.fullmatch(r"[0-9a-f]{40}", revision or "") and revision in self.commits:
            return self.commits[revision]
        return None


class HubError(Exception):
    """An HTTP error answered the way the Hub answers it."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class HubServer:
    """The stand-in Hub: `start()` it, point `huggingface_hub` at `.endpoint`, `stop()` it.

    Attributes:
        endpoint: ``http://127.0.0.1:<port>``.
        root: the temporary folder holding the repos (``{type}s/{namespace}/{name}/blobs``).
        username: the namespace of repos created without one (what `whoami` returns).
        requests: ``(method, path)`` of every request served, in order.
        unhandled: ``(method, path)`` of requests for routes this stand-in does not know, or
            that raised inside it (both answered 501).
    """

    def __init__(self, root: str | Path | None = None, username: str = "user"):
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="hub_server_")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.username = username
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.allow_unhandled = False  # set by a test that expects 501s (the `hub` fixture checks it)
        self.cache_dir: Path | None = None  # the download cache, set by the `hub` fixture
        self.guard = None  # the NetworkGuard, set by the `hub` fixture
        self._repos: dict[tuple[str, str], Repo] = {}
        self._lock = threading.RLock()
        self._counter = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "HubServer":
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="hub_server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ helpers for tests
    def list_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        """Sorted paths of the files of `repo_id` at `revision` (raises KeyError if missing)."""
        return sorted(self._commit(repo_type, repo_id, revision).files)

    def read_file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        """The bytes of `path` in `repo_id` at `revision`."""
        repo = self._repo(repo_type, repo_id)
        return repo.blob(self._commit(repo_type, repo_id, revision).files[path])

    def list_commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        """Commit titles from newest to oldest (the first one is the repo's creation)."""
        repo = self._repo(repo_type, repo_id)
        commit, titles = self._commit(repo_type, repo_id, revision), []
        while True:
            titles.append(commit.title)
            if not commit.parents:
                return titles
            commit = repo.commits[commit.parents[0]]

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        return (repo_type, repo_id) in self._repos

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        try:
            return self._repos[(repo_type, repo_id)]
        except KeyError:
            raise KeyError(f"no {repo_type} repo {repo_id!r} on the stand-in hub") from None

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> Commit:
        commit = self._repo(repo_type, repo_id).resolve(revision)
        if commit is None:
            raise KeyError(f"no revision {revision!r} in {repo_id!r}")
        return commit

    # ------------------------------------------------------------------ storage
    def _new_oid(self, *parts: str) -> str:
        with self._lock:
            self._counter += 1
            return hashlib.sha1("\0".join((*parts, str(self._counter), str(time.time_ns()))).encode()).hexdigest()

    def _store_blob(self, repo: Repo, data: bytes) -> str:
        oid = git_blob_oid(data)
        path = repo.folder / "blobs" / oid
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return oid

    def _create_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = Repo(repo_type, repo_id, self.root / f"{repo_type}s" / repo_id, _now_iso())
        repo.folder.mkdir(parents=True, exist_ok=True)
        files = {".gitattributes": self._store_blob(repo, _INITIAL_GITATTRIBUTES)}
        first = Commit(self._new_oid(repo_id), [], "initial commit", "", _now_iso(), files)
        repo.commits[first.oid] = first
        repo.refs["main"] = first.oid
        self._repos[(repo_type, repo_id)] = repo
        return repo

    def _get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _get_commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def repo_url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"


# ---------------------------------------------------------------------------- HTTP
_API_REPO = re.compile(r"^/api/(models|datasets|spaces|kernels)/(.+)$")
_API_ACTIONS = ("preupload", "commit", "branch", "revision", "tree", "refs")


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer  # set on the per-server subclass
    protocol_version = "HTTP/1.1"
    server_version = "hub_server"

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    # -- plumbing
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _body(self) -> bytes:
        return self._raw

    def _json_body(self) -> dict:
        raw = self._body()
        try:
            return json.loads(raw or b"{}")
        except json.JSONDecodeError as e:
            raise HubError(400, f"Invalid JSON body: {e}") from None

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str | None = None):
        self.send_response(status)
        headers = dict(headers or {})
        if content_type:
            headers.setdefault("Content-Type", content_type)
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():  # header values must be latin-1
            self.send_header(k, str(v).encode("latin-1", "replace").decode("latin-1"))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, status: int, obj, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), headers, "application/json; charset=utf-8")

    def _send_error(self, err: HubError):
        headers = {"X-Error-Message": err.message, **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send_json(err.status, {"error": err.message}, headers)

    def _dispatch(self):
        self._raw = self._read_body()  # always drain it: the connection is kept alive
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        self.hub.requests.append((self.command, split.path))
        try:
            with self.hub._lock:
                handled = self._route(split.path)
            if not handled:
                self.hub.unhandled.append((self.command, split.path))
                raise HubError(501, f"hub_server does not implement {self.command} {split.path}")
        except HubError as err:
            self._send_error(err)
        except Exception as exc:  # a bug in the stand-in: answer at once (a 5xx would be retried with backoff)
            message = f"hub_server failed on {self.command} {split.path}: {type(exc).__name__}: {exc}"
            self.hub.unhandled.append((self.command, split.path))
            self._send_json(501, {"error": message}, {"X-Error-Message": message})

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # -- routing (raw path: segments are split before they are unquoted)
    def _route(self, path: str) -> bool:
        method = self.command
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo()
        if path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml()
        if path == "/api/whoami-v2" and method == "GET":
            self._send_json(200, {"type": "user", "name": self.hub.username, "orgs": [], "auth": {"type": "access_token"}})
            return True
        m = _API_REPO.match(path)
        if m:
            return self._api_repo(REPO_TYPES[m.group(1)], m.group(2).split("/"))
        parts = path.lstrip("/").split("/")
        if "resolve" in parts and method in ("GET", "HEAD"):
            i = parts.index("resolve")
            repo_type = "model"
            if parts[0] in REPO_TYPES and parts[0] != "models" and i > 1:
                repo_type, parts, i = REPO_TYPES[parts[0]], parts[1:], i - 1
            if 1 <= i <= 2 and len(parts) >= i + 3:
                repo_id = "/".join(unquote(p) for p in parts[:i])
                return self._resolve(repo_type, repo_id, unquote(parts[i + 1]), unquote("/".join(parts[i + 2 :])))
        return False

    def _api_repo(self, repo_type: str, segs: list[str]) -> bool:
        # repo ids are "name" or "namespace/name"; the action, if any, follows them.
        n = next((k for k in (1, 2) if len(segs) > k and segs[k] in _API_ACTIONS), len(segs))
        if n not in (1, 2):
            return False
        repo_id, rest = "/".join(unquote(s) for s in segs[:n]), segs[n:]
        method = self.command
        if not rest and method == "GET":
            return self._repo_info(repo_type, repo_id, "main")
        action, args = rest[0], rest[1:]
        if action == "revision" and method == "GET" and len(args) == 1:
            return self._repo_info(repo_type, repo_id, unquote(args[0]))
        if action == "preupload" and method == "POST" and len(args) == 1:
            return self._preupload(repo_type, repo_id, unquote(args[0]))
        if action == "commit" and method == "POST" and len(args) == 1:
            return self._commit(repo_type, repo_id, unquote(args[0]))
        if action == "tree" and method == "GET" and args:
            return self._tree(repo_type, repo_id, unquote(args[0]), unquote("/".join(args[1:])))
        if action == "branch" and method == "POST" and len(args) >= 1:
            return self._create_branch(repo_type, repo_id, unquote("/".join(args)))
        if action == "refs" and method == "GET" and not args:
            return self._refs(repo_type, repo_id)
        return False

    # -- endpoints
    def _create_repo(self) -> bool:
        body = self._json_body()
        name, org = body.get("name"), body.get("organization")
        if not name:
            raise HubError(400, "name is required")
        repo_type = body.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        repo_id = f"{org or self.hub.username}/{name}"
        existing = self.hub._repos.get((repo_type, repo_id))
        if existing is not None:
            self._send_json(409, {"error": f"You already created this {repo_type} repo", "url": self.hub.repo_url(existing)})
            return True
        repo = self.hub._create_repo(repo_type, repo_id)
        self._send_json(200, {"url": self.hub.repo_url(repo), "name": repo_id, "id": self.hub._new_oid("id")[:24]})
        return True

    def _validate_yaml(self) -> bool:
        body = self._json_body()
        content = body.get("content") or ""
        block = _front_matter(content)
        errors = []
        if block is None:
            self._send_json(200, {"warnings": [{"message": "Empty or missing yaml metadata in repo card"}]})
            return True
        try:
            meta = yaml.safe_load(block)
        except yaml.YAMLError as e:
            errors.append({"message": f"Invalid YAML: {e}"})
        else:
            if meta is not None and not isinstance(meta, dict):
                errors.append({"message": "Metadata must be a YAML mapping"})
            elif meta and "pipeline_tag" in meta and meta["pipeline_tag"] not in HUB_PIPELINE_TAGS:
                errors.append({"message": f'"pipeline_tag" must be one of the Hub\'s tasks, got {meta["pipeline_tag"]!r}'})
        if errors:
            self._send_json(400, {"errors": errors, "error": errors[0]["message"]})
        else:
            self._send_json(200, {"warnings": []})
        return True

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> bool:
        body = self._json_body()
        repo = self.hub._get_repo(repo_type, repo_id)
        commit = self._get_commit_for_write(repo, revision)
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": commit.files.get(f["path"])}
            for f in body.get("files", [])
        ]
        self._send_json(200, {"files": files, "commitOid": commit.oid})
        return True

    def _get_commit_for_write(self, repo: Repo, revision: str) -> Commit:
        if self.query.get("create_pr") in ("1", "true", "True"):
            return self.hub._get_commit(repo, revision)
        if revision not in repo.refs:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[repo.refs[revision]]

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> bool:
        raw = self._body()
        repo = self.hub._get_repo(repo_type, repo_id)
        parent = self._get_commit_for_write(repo, revision)
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first NDJSON line must be the commit header")
        header = lines[0]["value"]
        if header.get("parentCommit") and header["parentCommit"] != parent.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(parent.files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = value.get("path", "")
            if key == "file":
                if value.get("encoding") == "base64":
                    data = base64.b64decode(value["content"])
                else:
                    data = value["content"].encode()
                files[path] = self.hub._store_blob(repo, data)
            elif key == "deletedFile":
                if path not in files:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                files = {p: o for p, o in files.items() if not p.startswith(prefix)}
            elif key == "lfsFile":
                raise HubError(400, "hub_server stores no LFS objects: preupload answers 'regular' for every file")
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        commit = Commit(
            self.hub._new_oid(repo_id, parent.oid), [parent.oid], header.get("summary", ""),
            header.get("description", ""), _now_iso(), files,
        )
        repo.commits[commit.oid] = commit
        pr_url = None
        if self.query.get("create_pr") in ("1", "true", "True"):
            num = 1 + sum(ref.startswith("refs/pr/") for ref in repo.refs)
            repo.refs[f"refs/pr/{num}"] = commit.oid
            pr_url = f"{self.hub.repo_url(repo)}/discussions/{num}"
        else:
            repo.refs[revision] = commit.oid
        self._send_json(
            200,
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.hub.repo_url(repo)}/commit/{commit.oid}",
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            },
        )
        return True

    def _create_branch(self, repo_type: str, repo_id: str, branch: str) -> bool:
        body = self._json_body()
        repo = self.hub._get_repo(repo_type, repo_id)
        if branch in repo.refs:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = self.hub._get_commit(repo, body.get("startingPoint") or "main")
        repo.refs[branch] = start.oid
        self._send_json(200, {})
        return True

    def _refs(self, repo_type: str, repo_id: str) -> bool:
        repo = self.hub._get_repo(repo_type, repo_id)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
            for name, oid in repo.refs.items()
            if not name.startswith("refs/")
        ]
        self._send_json(200, {"branches": branches, "converts": [], "tags": []})
        return True

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> bool:
        repo = self.hub._get_repo(repo_type, repo_id)
        commit = self.hub._get_commit(repo, revision)
        meta = {}
        if "README.md" in commit.files:
            block = _front_matter(repo.blob(commit.files["README.md"]).decode("utf-8", "replace"))
            try:
                meta = yaml.safe_load(block) if block else {}
            except yaml.YAMLError:
                meta = {}
            meta = meta if isinstance(meta, dict) else {}
        blobs = self.query.get("blobs") in ("1", "true", "True")
        siblings = []
        for path, oid in sorted(commit.files.items()):
            sib = {"rfilename": path}
            if blobs:
                sib.update(size=len(repo.blob(oid)), blobId=oid)
            siblings.append(sib)
        config = {}
        if "config.json" in commit.files:
            try:
                full = json.loads(repo.blob(commit.files["config.json"]))
                config = {k: full[k] for k in ("architectures", "model_type", "auto_map", "custom_pipelines") if k in full}
            except (ValueError, TypeError):
                config = {}
        tags = list(meta.get("tags") or [])
        info = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0] if "/" in repo_id else None,
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": tags,
            "cardData": meta or None,
            "siblings": siblings,
        }
        if repo_type == "model":
            info.update(
                modelId=repo_id,
                library_name=meta.get("library_name"),
                pipeline_tag=meta.get("pipeline_tag"),
                config=config or None,
            )
        self._send_json(200, info)
        return True

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> bool:
        repo = self.hub._get_repo(repo_type, repo_id)
        commit = self.hub._get_commit(repo, revision)
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        base = path.strip("/")
        if base in commit.files:  # a file path lists that file alone
            oid = commit.files[base]
            self._send_json(200, [{"type": "file", "oid": oid, "size": len(repo.blob(oid)), "path": base}])
            return True
        prefix = base + "/" if base else ""
        under = {p: oid for p, oid in commit.files.items() if p.startswith(prefix)}
        if base and not under:
            raise HubError(404, f'{base} does not exist on "{revision}"', "EntryNotFound")
        entries, seen = [], set()
        for p, oid in sorted(under.items()):
            rel = p[len(prefix) :].split("/")
            for k in range(1, (len(rel) - 1 if recursive else min(1, len(rel) - 1)) + 1):
                folder = prefix + "/".join(rel[:k])
                if folder not in seen:
                    seen.add(folder)
                    entries.append({"type": "directory", "oid": git_blob_oid(folder.encode()), "size": 0, "path": folder})
            if recursive or len(rel) == 1:
                entries.append({"type": "file", "oid": oid, "size": len(repo.blob(oid)), "path": p})
        self._send_json(200, entries)
        return True

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> bool:
        repo = self.hub._get_repo(repo_type, repo_id)
        commit = self.hub._get_commit(repo, revision)
        oid = commit.files.get(path)
        if oid is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = repo.blob(oid)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{oid}"', "Accept-Ranges": "bytes"}
        status, start = 200, 0
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and self.command == "GET" and int(m.group(1)) < len(data):
            start, status = int(m.group(1)), 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        headers["Content-Length"] = str(len(data) - start)
        self._send(status, data[start:], headers, "application/octet-stream")
        return True


# ---------------------------------------------------------------------------- network guard
class BlockedNetworkAccess(RuntimeError):
    """Raised when code under test tries to reach a host other than the loopback one."""


class NetworkGuard:
    """Refuse DNS look-ups and connections to anything but loopback, and record them.

    Patches `socket.getaddrinfo` and `socket.socket.connect`/`connect_ex` (what every HTTP
    client in the process, httpx2, requests and urllib alike, goes through) while active.
    Each refused attempt raises `BlockedNetworkAccess` and is appended to `.blocked`, so a
    test that swallowed the error still fails when the fixture checks `.blocked`.
    """

    _LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}

    def __init__(self):
        self.blocked: list[str] = []

    @classmethod
    def _is_local(cls, host) -> bool:
        import ipaddress

        if host is None:
            return True
        if isinstance(host, bytes):
            host = host.decode()
        host = str(host).strip("[]").split("%")[0]
        if host.lower() in cls._LOCAL_NAMES:
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def _refuse(self, what: str):
        self.blocked.append(what)
        raise BlockedNetworkAccess(
            f"tests may not use the network: refused {what}. Point huggingface_hub at the `hub` fixture "
            "(tests/hub_server.py) or load from a local folder."
        )

    def install(self, monkeypatch) -> "NetworkGuard":
        import socket

        real_getaddrinfo = socket.getaddrinfo
        real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
        guard = self

        def getaddrinfo(host, *args, **kwargs):
            if not guard._is_local(host):
                guard._refuse(f"DNS lookup of {host!r}")
            return real_getaddrinfo(host, *args, **kwargs)

        def _check(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not guard._is_local(address[0]):
                guard._refuse(f"connection to {address!r}")

        def connect(sock, address):
            _check(sock, address)
            return real_connect(sock, address)

        def connect_ex(sock, address):
            _check(sock, address)
            return real_connect_ex(sock, address)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
        return self
