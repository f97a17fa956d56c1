"""A small Hugging Face Hub for tests: stdlib HTTP server + PyYAML, no other dependencies.

It speaks enough of the Hub's HTTP API for the *unmodified* ``huggingface_hub`` client (pointed at it
with ``HF_ENDPOINT`` and run with ``HF_HUB_DISABLE_XET=1``) to create repos, upload through the legacy
preupload -> LFS batch -> PUT -> NDJSON commit path, open and merge pull requests, and download with
HEAD / GET / Range. It follows the routes, headers and status codes huggingface_hub's client expects of the
Hub (resolver redirects with X-Repo-Commit, Range replies, the preupload/LFS/commit sequence, parent checks).

Layout:
  * data model: ``Repo`` / ``Commit`` / ``FileEntry`` / ``Discussion`` + a content-addressed blob store;
  * ``HubServer``: state, seeding helpers, fault knobs, observability and the route handlers;
  * ``_Handler``: HTTP plumbing only (drain the body, write the response, byte-level faults).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import html
import itertools
import json
import mmap
import re
import secrets
import socket
import struct
import threading
import traceback
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import yaml
from netshape import Link, LinkProfile

LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files of 10 MB and more in LFS
VALID_RELATIONS = ("adapter", "merge", "quantized", "finetune")
# Used when a repo has no .gitattributes (e.g. it was deleted): weights always go to LFS.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".gguf", ".onnx", ".msgpack", ".npy", ".npz")
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gguf", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
        "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle",
        "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite",
        "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
)
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}  # /api/{t}/... -> repo type
WEB_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}  # /{prefix}{id}/resolve/...
INVALID_TOKEN_MESSAGE = "Invalid credentials in Authorization header"
_LOGGED_HEADERS = ("Range", "Content-Type", "Content-Length", "Accept-Encoding", "User-Agent")  # never Authorization


# ----------------------------------------------------------------------------------------------
# Data model
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int
    lfs: bool


@dataclass
class Commit:
    id: str
    parent: str | None
    files: dict[str, FileEntry]
    title: str
    message: str
    date: str
    author: str


@dataclass
class Discussion:
    num: int
    title: str
    author: str
    created_at: str
    is_pr: bool
    status: str  # "draft" | "open" | "closed" | "merged"
    base_ref: str | None = None  # PRs: the branch they target, e.g. refs/heads/main
    base_sha: str | None = None  # PRs: the commit the PR started from
    merge_commit: str | None = None
    events: list[dict] = field(default_factory=list)


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    owner: str
    private: bool
    gated: bool | str  # False, "auto" or "manual"
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # full ref name -> commit id
    discussions: dict[int, Discussion] = field(default_factory=dict)
    allowed: set[str] = field(default_factory=set)  # users granted access to a gated repo


@dataclass(frozen=True)
class TokenInfo:
    user: str
    role: str  # "read" or "write"


@dataclass
class LoggedRequest:
    """One served request. Tokens are never stored: only whether one was sent and whether it was valid."""

    method: str
    path: str  # URL-decoded path, no query
    query: dict[str, list[str]]
    host: str
    headers: dict[str, str]  # a safe subset: Range, Content-Type, Content-Length, Accept-Encoding, ...
    auth: bool
    auth_valid: bool | None
    status: int = 0
    bytes_sent: int = 0  # response body bytes actually written
    file: tuple[str, str] | None = None  # (repo_id, path) when the body was file content

    @property
    def range(self) -> str | None:
        return self.headers.get("Range")


class HubError(Exception):
    """An HTTP error answer. ``code`` becomes X-Error-Code, which the client maps to its exceptions."""

    def __init__(self, status: int, message: str, *, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


@dataclass
class Request:
    method: str
    path: str  # raw (still percent-encoded) path: revisions and tree paths are quoted with safe=""
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    host: str
    user: TokenInfo | None = None
    auth: bool = False
    auth_valid: bool | None = None
    events: list[dict] = field(default_factory=list)  # on_commit events, fired after the state lock is released

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        return (self.arg(name) or "").lower() in ("1", "true", "yes")

    def expand(self) -> list[str]:
        return self.query.get("expand", []) + self.query.get("expand[]", [])

    def json(self):
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise HubError(400, f"Invalid JSON body: {exc}") from None


@dataclass
class Response:
    status: int = 200
    body: bytes | memoryview = b""
    headers: dict[str, str] = field(default_factory=dict)
    file: tuple[str, str] | None = None  # (repo_id, path) for the byte counters


@dataclass
class _Fault:
    kind: str  # "status" | "drop" | "ignore_range" | "stall"
    path: re.Pattern
    method: str | None
    remaining: int | None  # None: unlimited
    status: int = 0
    retry_after: int | None = None
    after_bytes: int = 0
    seconds: float = 0.0


# ----------------------------------------------------------------------------------------------
# Small pure helpers
# ----------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(entry: FileEntry) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{entry.sha256}\nsize {entry.size}\n".encode()


def _looks_binary(sample: bytes) -> bool:
    if b"\x00" in sample:
        return True
    try:  # the sample is cut at 512 bytes, possibly inside a multi-byte character
        sample[: max(0, len(sample) - 3)].decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def _json_default(value):
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return str(value)


def _dumps(obj) -> bytes:
    return json.dumps(obj, default=_json_default).encode()


def _parse_front_matter(text: str):
    """Return (metadata, error). metadata is None when there is no front matter."""
    match = re.match(r"^---[ \t]*\r?\n(.*?)(?:^|\r?\n)---[ \t]*(?:\r?\n|$)", text, re.DOTALL | re.MULTILINE)
    if not match:
        return None, None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        return None, f"Invalid YAML in README.md front matter: {exc}"
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        return None, f"README.md front matter must be a YAML mapping, got {type(data).__name__}"
    return data, None


def _validate_card_metadata(text: str) -> list[str]:
    data, error = _parse_front_matter(text)
    if error:
        return [error]
    errors = []
    data = data or {}
    base = data.get("base_model")
    if base is not None and not (
        isinstance(base, str) or (isinstance(base, list) and all(isinstance(b, str) for b in base))
    ):
        errors.append('"base_model" must be a string or a list of strings')
    relation = data.get("base_model_relation")
    if relation is not None and relation not in VALID_RELATIONS:
        errors.append(f'"base_model_relation" must be one of {", ".join(VALID_RELATIONS)}; got {relation!r}')
    tags = data.get("tags")
    if tags is not None and not isinstance(tags, (str, list)):
        errors.append('"tags" must be a string or a list of strings')
    return errors


def _apply(files: dict[str, FileEntry], changes: dict[str, FileEntry | None], folder_deletes=()) -> dict:
    """A new file map: `files` minus deleted folders, then `changes` applied (None deletes a path)."""
    out = {p: e for p, e in files.items() if not any(p.startswith(f.rstrip("/") + "/") for f in folder_deletes)}
    for path, entry in changes.items():
        if entry is None:
            out.pop(path, None)
        else:
            out[path] = entry
    return out


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, (str, int, float)) else list(value)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end) inclusive; None to ignore the header (malformed or multi-range, served as 200);
    raises HubError(416) when unsatisfiable."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    unsatisfiable = HubError(416, f"Requested range not satisfiable: {header}",
                             headers={"Content-Range": f"bytes */{size}"})
    if first == "":  # suffix range: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise unsatisfiable
    return start, min(end, size - 1)


def _safetensors_summary(data: bytes) -> dict | None:
    """Parameter counts per dtype from a safetensors header (what the Hub shows as `safetensors`)."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        counts: dict[str, int] = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            numel = 1
            for dim in info["shape"]:
                numel *= dim
            counts[info["dtype"]] = counts.get(info["dtype"], 0) + numel
        return counts
    except Exception:
        return None


# ----------------------------------------------------------------------------------------------
# The server
# ----------------------------------------------------------------------------------------------

_REPO_API = r"/api/(?P<t>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+?)"
_REPO_WEB = r"/(?:(?P<t>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+?)"
_ROUTES = [
    # (methods, path regex, handler name, check the bearer token)
    (("GET",), r"/api/whoami-v2", "_h_whoami", True),
    (("POST",), r"/api/repos/create", "_h_repo_create", True),
    (("DELETE",), r"/api/repos/delete", "_h_repo_delete", True),
    (("POST",), r"/api/validate-yaml", "_h_validate_yaml", True),
    (("GET",), r"/api/(?P<t>models|datasets|spaces)", "_h_list_repos", True),
    (("GET",), _REPO_API + r"(?:/revision/(?P<rev>.+))?", "_h_repo_info", True),
    (("GET",), _REPO_API + r"/commits/(?P<rev>.+)", "_h_commits", True),
    (("GET",), _REPO_API + r"/refs", "_h_refs", True),
    (("GET",), _REPO_API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "_h_tree", True),
    (("POST",), _REPO_API + r"/paths-info/(?P<rev>.+)", "_h_paths_info", True),
    (("POST",), _REPO_API + r"/preupload/(?P<rev>.+)", "_h_preupload", True),
    (("POST",), _REPO_API + r"/commit/(?P<rev>.+)", "_h_commit", True),
    (("POST", "DELETE"), _REPO_API + r"/branch/(?P<name>.+)", "_h_branch", True),
    (("POST", "DELETE"), _REPO_API + r"/tag/(?P<name>.+)", "_h_tag", True),
    (("GET",), _REPO_API + r"/auth-check(?P<write>/write)?", "_h_auth_check", True),
    (("PUT",), _REPO_API + r"/settings", "_h_settings", True),
    (("GET", "POST"), _REPO_API + r"/discussions", "_h_discussions", True),
    (("GET",), _REPO_API + r"/discussions/(?P<num>\d+)", "_h_discussion", True),
    (("POST",), _REPO_API + r"/discussions/(?P<num>\d+)/(?P<action>merge|status|comment)", "_h_discussion_action",
     True),
    (("GET", "HEAD"), _REPO_WEB + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "_h_resolve", True),
    (("POST",), _REPO_WEB + r"\.git/info/lfs/objects/batch", "_h_lfs_batch", True),
    # Like presigned storage URLs: no Authorization is sent there, the secret in the query is the credential.
    (("PUT",), r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "_h_lfs_upload", False),
    (("POST",), r"/lfs-verify/(?P<oid>[0-9a-f]{64})", "_h_lfs_verify", True),
    (("GET", "HEAD"), r"/cdn/(?P<oid>[0-9a-f]{64})", "_h_cdn", False),
]
_COMPILED_ROUTES = [(methods, re.compile(rx), name, auth) for methods, rx, name, auth in _ROUTES]


class HubServer:
    """A Hub-compatible HTTP server on a background thread.

    >>> with HubServer(token="hf_x") as hub:
    ...     hub.create_repo("org/a"); sha = hub.commit_files("org/a", {"config.json": b"{}"})
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str | None = None, *, user: str = "tester",
                 page_size: int = 1000, blob_dir: str | None = None):
        self.host, self._port, self.user = host, port, user
        self.page_size = page_size  # items per page on paginated lists (commits, tree, list_models)
        self._lock = threading.RLock()  # guards repos, blobs, tokens
        self._fault_lock = threading.Lock()
        self._tokens: dict[str, TokenInfo] = {}
        if token:
            self._tokens[token] = TokenInfo(user, "write")
        self._repos: dict[tuple[str, str], Repo] = {}
        # sha256 -> content; with blob_dir, large blobs live in files there (benchmarks serve gigabytes)
        self._blobs: dict[str, bytes] = _DiskBlobs(blob_dir) if blob_dir else {}
        self._git_sha1_cache: dict[str, str] = {}
        self._counter = itertools.count(1)
        self._secret = secrets.token_hex(16)  # credential embedded in LFS upload and CDN URLs
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        # Observability
        self._log: list[LoggedRequest] = []
        self._bytes: dict[tuple[str, str], int] = {}
        self._answering = 0  # responses being written right now, and the most at once since clear_log()
        self.peak_answering = 0
        self.internal_errors: list[str] = []  # tracebacks of 500s caused by bugs in this server
        self.reset_faults()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> "HubServer":
        httpd = _HTTPServer((self.host, self._port), _Handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False
        httpd.hub = self  # type: ignore[attr-defined]
        self._httpd, self._port = httpd, httpd.server_address[1]
        self._stopping.clear()
        self._thread = threading.Thread(target=httpd.serve_forever, name="hubserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()  # wakes stalled handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:  # keep-alive connections would otherwise idle until their timeout
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    # -- tokens and access -------------------------------------------------------------------------

    def add_token(self, token: str, *, user: str = "other", role: str = "read") -> None:
        """Register another token; role "read" fails writes and auth-check/write with 403."""
        assert role in ("read", "write")
        with self._lock:
            self._tokens[token] = TokenInfo(user, role)

    def grant_access(self, repo_id: str, user: str, *, repo_type: str = "model") -> None:
        """Accept `user`'s access request to a gated repo."""
        with self._lock:
            self._get(repo_type, repo_id).allowed.add(user)

    def set_repo_settings(self, repo_id: str, *, private: bool | None = None, gated: bool | str | None = None,
                          repo_type: str = "model") -> None:
        with self._lock:
            repo = self._get(repo_type, repo_id)
            if private is not None:
                repo.private = private
            if gated is not None:
                repo.gated = "manual" if gated is True else gated

    # -- fault knobs (all thread-safe, cleared by reset_faults) ------------------------------------

    def reset_faults(self) -> None:
        """Disarm every fault, the CDN redirect, network shaping and the on_commit hook."""
        with self._fault_lock:
            self._faults: list[_Fault] = []
        self.redirect_mode: str | None = None  # None | "lfs" | "all": answer /resolve with a 302 to another origin
        self.redirect_host = "localhost"  # same server, different origin than 127.0.0.1
        self.on_commit: Callable[[dict], None] | None = None
        self.link: Link | None = None  # plain loopback (see shape())

    def _add_fault(self, kind: str, path: str, method: str | None, times: int | None, **params) -> None:
        fault = _Fault(kind, re.compile(path), method.upper() if method else None, times, **params)
        with self._fault_lock:
            self._faults.append(fault)

    def fail_requests(self, status: int, *, times: int | None = 1, path: str = ".*", method: str | None = None,
                      retry_after: int | None = None) -> None:
        """Answer the next `times` matching requests with `status` (429 or 5xx, typically).
        A 429 carries Retry-After and `RateLimit: "api";r=0;t=<retry_after>` (retry_after defaults to 1)."""
        if status == 429 and retry_after is None:
            retry_after = 1
        self._add_fault("status", path, method, times, status=status, retry_after=retry_after)

    def drop_connection(self, *, after_bytes: int, times: int | None = 1, path: str = ".*",
                        method: str | None = "GET") -> None:
        """Send the headers (full Content-Length) and `after_bytes` of the body, then close the socket."""
        self._add_fault("drop", path, method, times, after_bytes=after_bytes)

    def ignore_range(self, *, path: str = ".*", times: int | None = None) -> None:
        """Answer ranged GETs with 200 and the whole body, like a server that doesn't support Range."""
        self._add_fault("ignore_range", path, None, times)

    def stall(self, seconds: float, *, times: int | None = 1, path: str = ".*", method: str | None = None) -> None:
        """Wait `seconds` before answering matching requests (to exercise client timeouts)."""
        self._add_fault("stall", path, method, times, seconds=seconds)

    def enable_cdn_redirect(self, mode: str = "lfs", host: str = "localhost") -> None:
        """/resolve answers 302 to http://<host>:<port>/cdn/<sha256> for LFS files ("lfs") or every file ("all")."""
        assert mode in ("lfs", "all")
        self.redirect_mode, self.redirect_host = mode, host

    def shape(self, profile: LinkProfile | None) -> None:
        """Answer like a network of that shape (latency, per-connection and aggregate caps; see netshape);
        ``None`` goes back to plain loopback. Connections opened before keep their old pacing."""
        self.link = Link(profile, wait=self._stopping.wait) if profile is not None else None

    def _take_fault(self, kind: str, method: str, path: str) -> _Fault | None:
        with self._fault_lock:
            for fault in self._faults:
                if (fault.kind == kind and fault.remaining != 0 and fault.method in (None, method)
                        and fault.path.search(path)):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault
        return None

    # -- observability -----------------------------------------------------------------------------

    @property
    def log(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._log)

    def requests(self, path: str | None = None, method: str | None = None) -> list[LoggedRequest]:
        """Logged requests whose decoded path matches the regex `path` (search) and `method`."""
        return [r for r in self.log if (path is None or re.search(path, r.path))
                and (method is None or r.method == method.upper())]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()
            self._bytes.clear()
            self.peak_answering = self._answering

    @property
    def bytes_served(self) -> dict[tuple[str, str], int]:
        """File-content body bytes written per (repo_id, path), through /resolve and the CDN origin."""
        with self._lock:
            return dict(self._bytes)

    @property
    def total_bytes_served(self) -> int:
        """Every response body byte written (file content, JSON, errors) since clear_log()."""
        return sum(entry.bytes_sent for entry in self.log)

    def bytes_for(self, repo_id: str, path: str | None = None) -> int:
        return sum(n for (r, p), n in self.bytes_served.items() if r == repo_id and path in (None, p))

    # -- seeding and inspection helpers (no HTTP involved) -----------------------------------------

    def create_repo(self, repo_id: str, *, repo_type: str = "model", private: bool = False,
                    gated: bool | str = False, owner: str | None = None, exist_ok: bool = False) -> str:
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                if exist_ok:
                    return self._repo_url(self._repos[(repo_type, repo_id)])
                raise ValueError(f"{repo_type} {repo_id} already exists")
            repo = Repo(repo_type, repo_id, owner or self.user, private, "manual" if gated is True else gated, _now())
            self._repos[(repo_type, repo_id)] = repo
            # Like the Hub: every repo starts with one commit holding .gitattributes.
            repo.refs["refs/heads/main"] = ""
            self._commit(repo, "refs/heads/main", {".gitattributes": self._store(DEFAULT_GITATTRIBUTES.encode())},
                         "initial commit", "", repo.owner, events=[])
            return self._repo_url(repo)

    def delete_repo(self, repo_id: str, *, repo_type: str = "model") -> None:
        with self._lock:
            self._repos.pop((repo_type, repo_id), None)

    def commit_files(self, repo_id: str, files: dict[str, bytes | str | None], *, message: str = "Update files",
                     description: str = "", branch: str = "main", repo_type: str = "model",
                     author: str | None = None, create: bool = True) -> str:
        """Commit directly (no HTTP, no card validation): `None` deletes a path. Returns the new commit sha.
        Used to seed upstream repos and to move a branch between two client calls."""
        events: list[dict] = []
        with self._lock:
            if create and (repo_type, repo_id) not in self._repos:
                self.create_repo(repo_id, repo_type=repo_type)
            repo = self._get(repo_type, repo_id)
            ref = branch if branch.startswith("refs/") else f"refs/heads/{branch}"
            if ref not in repo.refs:
                raise KeyError(f"no ref {ref} in {repo_id}")
            head = repo.commits[repo.refs[ref]]
            changes: dict[str, FileEntry | None] = {}
            for path, content in files.items():
                if content is None:
                    changes[path] = None
                    continue
                data = content.encode() if isinstance(content, str) else bytes(content)
                lfs = self._wants_lfs(head, path, len(data), data[:512])
                changes[path] = self._store(data, lfs=lfs)
            commit = self._commit(repo, ref, changes, message, description, author or repo.owner, events=events)
        self._fire(events)
        return commit.id

    def create_branch(self, repo_id: str, branch: str, *, from_rev: str = "main", repo_type: str = "model") -> str:
        with self._lock:
            repo = self._get(repo_type, repo_id)
            sha = self._resolve(repo, from_rev)
            repo.refs[f"refs/heads/{branch}"] = sha
            return sha

    def create_tag(self, repo_id: str, tag: str, *, rev: str = "main", repo_type: str = "model") -> str:
        with self._lock:
            repo = self._get(repo_type, repo_id)
            sha = self._resolve(repo, rev)
            repo.refs[f"refs/tags/{tag}"] = sha
            return sha

    def head(self, repo_id: str, branch: str = "main", *, repo_type: str = "model") -> str:
        with self._lock:
            repo = self._get(repo_type, repo_id)
            return repo.refs[branch if branch.startswith("refs/") else f"refs/heads/{branch}"]

    def refs(self, repo_id: str, *, repo_type: str = "model") -> dict[str, str]:
        with self._lock:
            return dict(self._get(repo_type, repo_id).refs)

    def list_commits(self, repo_id: str, branch: str = "main", *, repo_type: str = "model") -> list[dict]:
        """Newest first: {id, parent, title, message, date, author, files (sorted paths)}."""
        with self._lock:
            repo = self._get(repo_type, repo_id)
            return [{"id": c.id, "parent": c.parent, "title": c.title, "message": c.message, "date": c.date,
                     "author": c.author, "files": sorted(c.files)}
                    for c in self._history(repo, self._resolve(repo, branch))]

    def files_at(self, repo_id: str, rev: str = "main", *, repo_type: str = "model") -> dict[str, bytes]:
        with self._lock:
            repo = self._get(repo_type, repo_id)
            commit = repo.commits[self._resolve(repo, rev)]
            return {path: self._blobs[e.sha256] for path, e in commit.files.items()}

    def read_file(self, repo_id: str, path: str, rev: str = "main", *, repo_type: str = "model") -> bytes:
        return self.files_at(repo_id, rev, repo_type=repo_type)[path]

    def is_lfs(self, repo_id: str, path: str, rev: str = "main", *, repo_type: str = "model") -> bool:
        with self._lock:
            repo = self._get(repo_type, repo_id)
            return repo.commits[self._resolve(repo, rev)].files[path].lfs

    def discussions(self, repo_id: str, *, repo_type: str = "model") -> list[Discussion]:
        with self._lock:
            return list(self._get(repo_type, repo_id).discussions.values())

    def reset_state(self) -> None:
        """Forget every repo and blob (tokens and knobs are kept)."""
        with self._lock:
            self._repos.clear()
            self._blobs.clear()
            self._git_sha1_cache.clear()

    # -- core state operations (call with self._lock held) -----------------------------------------

    def _get(self, repo_type: str, repo_id: str) -> Repo:
        try:
            return self._repos[(repo_type, repo_id)]
        except KeyError:
            raise KeyError(f"no {repo_type} repo {repo_id}") from None

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.url}/{WEB_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _store(self, data: bytes, *, lfs: bool = False) -> FileEntry:
        sha = hashlib.sha256(data).hexdigest()
        self._blobs.setdefault(sha, data)
        return FileEntry(sha, len(data), lfs)

    def _blob_git_sha1(self, entry: FileEntry) -> str:
        """The git blob id the Hub reports: of the content, or of the LFS pointer for LFS files."""
        key = ("lfs:" if entry.lfs else "") + entry.sha256
        if key not in self._git_sha1_cache:
            self._git_sha1_cache[key] = _git_sha1(_lfs_pointer(entry) if entry.lfs else self._blobs[entry.sha256])
        return self._git_sha1_cache[key]

    def _resolve(self, repo: Repo, rev: str) -> str:
        """Branch, tag, full ref (refs/pr/1), full sha or a unique sha prefix -> commit id."""
        for ref in (f"refs/heads/{rev}", f"refs/tags/{rev}", rev):
            if ref in repo.refs:
                return repo.refs[ref]
        if re.fullmatch(r"[0-9a-f]{7,40}", rev):
            matches = [c for c in repo.commits if c.startswith(rev)]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {rev}", code="RevisionNotFound")

    def _history(self, repo: Repo, sha: str | None):
        while sha:
            commit = repo.commits[sha]
            yield commit
            sha = commit.parent

    def _commit(self, repo: Repo, ref: str, changes: dict[str, FileEntry | None], title: str, message: str,
                author: str, *, events: list, folder_deletes: tuple = ()) -> Commit:
        """Apply `changes` (None deletes) on top of `ref`'s head, make one commit and move `ref` to it."""
        parent = repo.refs.get(ref) or None
        files = _apply(repo.commits[parent].files if parent else {}, changes, folder_deletes)
        date = _now()
        tree = "\n".join(f"{p} {e.sha256} {int(e.lfs)}" for p, e in sorted(files.items()))
        digest = hashlib.sha1(f"{parent}\n{tree}\n{title}\n{message}\n{date}\n{next(self._counter)}".encode())
        commit = Commit(digest.hexdigest(), parent, files, title, message, date, author)
        repo.commits[commit.id] = commit
        repo.refs[ref] = commit.id
        events.append({"repo_id": repo.repo_id, "repo_type": repo.repo_type, "ref": ref, "old_sha": parent,
                       "new_sha": commit.id, "title": title})
        return commit

    def _check_card(self, files: dict[str, FileEntry], changes: dict, folder_deletes: tuple = ()) -> None:
        """The Hub rejects a commit whose README.md has invalid metadata (checked before anything changes)."""
        readme = _apply(files, changes, folder_deletes).get("README.md")
        if "README.md" in changes and readme is not None:
            errors = _validate_card_metadata(self._blobs[readme.sha256].decode("utf-8", "replace"))
            if errors:
                raise HubError(400, "Invalid metadata in README.md.\n" + "\n".join(f"- {e}" for e in errors))

    def _fire(self, events: list[dict]) -> None:
        """Call on_commit for each ref update. Hook errors are recorded in internal_errors (so the `hub`
        fixture fails the test) instead of turning the client's request into an error."""
        hook = self.on_commit
        for event in events if hook else ():
            try:
                hook(event)
            except Exception:
                self.internal_errors.append("on_commit hook failed:\n" + traceback.format_exc())

    def _wants_lfs(self, commit: Commit | None, path: str, size: int, sample: bytes) -> bool:
        """Roughly the Hub's rule: .gitattributes match, >= 10 MB, weight suffixes, or a binary sample."""
        if size >= LFS_THRESHOLD or path.endswith(LFS_SUFFIXES) or _looks_binary(sample):
            return True
        attributes = commit.files.get(".gitattributes") if commit else None
        if attributes is not None:
            for line in self._blobs[attributes.sha256].decode("utf-8", "replace").splitlines():
                parts = line.split()
                if len(parts) >= 2 and "filter=lfs" in parts[1:]:
                    target = path if "/" in parts[0] else path.rsplit("/", 1)[-1]
                    if fnmatch.fnmatchcase(target, parts[0]):
                        return True
        return False

    # -- access control ----------------------------------------------------------------------------

    def _visible(self, user: TokenInfo | None, repo: Repo) -> bool:
        return not repo.private or (user is not None and user.user == repo.owner)

    def _repo_for(self, req: Request, t: str, repo_id: str, *, write: bool = False, content: bool = False) -> Repo:
        repo_type = API_TYPES.get(t, t) if t else "model"
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or not self._visible(req.user, repo):
            # Like the Hub: anonymous callers get 401, others 404, both flagged RepoNotFound.
            raise HubError(401 if req.user is None else 404, "Repository not found", code="RepoNotFound")
        if write:
            self._require_write(req, repo)
        if content and repo.gated and req.user is None:
            raise HubError(401, f"Access to model {repo_id} is restricted. You must be authenticated to access it.",
                           code="GatedRepo")
        if content and repo.gated and req.user.user != repo.owner and req.user.user not in repo.allowed:
            raise HubError(403, f"Access to model {repo_id} is restricted and you are not in the authorized list.",
                           code="GatedRepo")
        return repo

    def _require_write(self, req: Request, repo: Repo | None = None) -> None:
        if req.user is None:
            raise HubError(401, "You must be authenticated to do this", headers={"X-Error-Message": "Unauthorized"})
        if req.user.role != "write" or (repo is not None and req.user.user != repo.owner):
            message = "You don't have the rights to write to this repo (read-only token or not the owner)"
            raise HubError(403, message, headers={"X-Error-Message": message})

    # -- HTTP entry point (called by _Handler) ---------------------------------------------------

    def _serve(self, handler: "_Handler") -> None:
        body = handler.read_body()  # always drain, or keep-alive bytes corrupt the next response
        split = urlsplit(handler.path)
        req = Request(handler.command, split.path, parse_qs(split.query, keep_blank_values=True),
                      {k.lower(): v for k, v in handler.headers.items()}, body, handler.headers.get("Host", ""))
        decoded_path = unquote(split.path)
        entry = LoggedRequest(req.method, decoded_path, req.query, req.host,
                              {k: handler.headers[k] for k in _LOGGED_HEADERS if k in handler.headers},
                              auth=False, auth_valid=None)
        self._authenticate(req, handler.headers.get("Authorization"))
        entry.auth, entry.auth_valid = req.auth, req.auth_valid

        stall = self._take_fault("stall", req.method, decoded_path)
        if stall:
            self._stopping.wait(stall.seconds)
        injected = self._take_fault("status", req.method, decoded_path)
        if injected:
            response = self._injected_response(injected)
        else:
            response = self._dispatch(req)
        entry.status, entry.file = response.status, response.file
        self._fire(req.events)  # before answering: a hook sees a commit before the client does
        drop = self._take_fault("drop", req.method, decoded_path) if len(response.body) > 0 else None
        if drop and drop.after_bytes >= len(response.body):
            drop = None  # nothing left to cut: don't consume the fault
        # Log *before* writing, so a client that has its answer always finds its request in the log.
        entry.bytes_sent = 0 if req.method == "HEAD" else drop.after_bytes if drop else len(response.body)
        with self._lock:
            self._log.append(entry)
            self._count_file_bytes(entry.file, entry.bytes_sent)
        if handler.pacer is not None:
            handler.pacer.link.round_trip()  # the request's round trip, before the first byte of the answer
        with self._lock:
            self._answering += 1
            self.peak_answering = max(self.peak_answering, self._answering)
        try:
            handler.write_response(response, head=req.method == "HEAD", drop_after=drop.after_bytes if drop else None)
        except OSError:  # the client went away (e.g. it timed out during a stall): nothing counts as served
            with self._lock:
                self._count_file_bytes(entry.file, -entry.bytes_sent)
                entry.bytes_sent = 0
            raise
        finally:
            with self._lock:
                self._answering -= 1

    def _count_file_bytes(self, file: tuple[str, str] | None, nbytes: int) -> None:
        if file is not None and nbytes:
            self._bytes[file] = self._bytes.get(file, 0) + nbytes

    def _authenticate(self, req: Request, header: str | None) -> None:
        if not header:
            return
        req.auth = True
        token = header[7:].strip() if header.lower().startswith("bearer ") else header.strip()
        with self._lock:
            req.user = self._tokens.get(token)
        req.auth_valid = req.user is not None

    def _injected_response(self, fault: _Fault) -> Response:
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        if fault.status == 429:
            headers["RateLimit"] = f'"api";r=0;t={fault.retry_after}'
            headers["RateLimit-Policy"] = '"fixed window";"api";q=1000;w=300'
        return self._error_response(HubError(fault.status, f"injected {fault.status}", headers=headers))

    def _dispatch(self, req: Request) -> Response:
        path_matched = False
        for methods, regex, name, check_auth in _COMPILED_ROUTES:
            match = regex.fullmatch(req.path)
            if not match:
                continue
            path_matched = True
            if req.method not in methods:
                continue
            try:
                if check_auth and req.auth and not req.auth_valid:
                    raise HubError(401, INVALID_TOKEN_MESSAGE, headers={"X-Error-Message": INVALID_TOKEN_MESSAGE})
                params = {k: v for k, v in match.groupdict().items()}
                with self._lock:
                    return getattr(self, name)(req, **params)
            except HubError as exc:
                return self._error_response(exc)
            except Exception:
                self.internal_errors.append(traceback.format_exc())
                return self._error_response(HubError(500, "internal test-server error"))
        if path_matched:
            return self._error_response(HubError(405, f"{req.method} not allowed"))
        # Unknown routes (xet-read-token, xet-write-token, agent-harnesses, ...) are plain 404s.
        return self._error_response(HubError(404, f"Not found: {req.path}"))

    @staticmethod
    def _error_response(exc: HubError) -> Response:
        headers = {"Content-Type": "application/json", **exc.headers}
        if exc.code:
            headers["X-Error-Code"] = exc.code
            headers.setdefault("X-Error-Message", exc.message.splitlines()[0])
        return Response(exc.status, _dumps({"error": exc.message, **exc.extra}), headers)

    @staticmethod
    def _json(obj, status: int = 200, headers: dict | None = None) -> Response:
        return Response(status, _dumps(obj), {"Content-Type": "application/json", **(headers or {})})

    def _paginated(self, req: Request, items: list, limit: int | None = None) -> Response:
        """One page of `items` and a `Link: <...>; rel="next"` header when more remain (GitHub-style)."""
        size = min(self.page_size, limit) if limit else self.page_size
        page = int(req.arg("p", "0") or 0)
        chunk = items[page * size : (page + 1) * size]
        headers = {}
        if (page + 1) * size < len(items) and not (limit and (page + 1) * size >= limit):
            query = {k: v for k, v in req.query.items() if k != "p"}
            query["p"] = [str(page + 1)]
            headers["Link"] = f'<http://{req.host}{req.path}?{urlencode(query, doseq=True)}>; rel="next"'
        return self._json(chunk, headers=headers)

    # -- routes: account, repos, validation ------------------------------------------------------

    def _h_whoami(self, req: Request) -> Response:
        if req.user is None:
            raise HubError(401, "Invalid username or password.")
        return self._json({
            "type": "user", "id": hashlib.sha1(req.user.user.encode()).hexdigest()[:24], "name": req.user.user,
            "fullname": req.user.user.title(), "email": f"{req.user.user}@example.invalid", "emailVerified": True,
            "isPro": False, "orgs": [],
            "auth": {"type": "access_token",
                     "accessToken": {"displayName": "test-token", "role": req.user.role, "createdAt": _now()}},
        })

    def _h_repo_create(self, req: Request) -> Response:
        self._require_write(req)
        payload = req.json() or {}
        repo_type = payload.get("type") or "model"
        if repo_type not in WEB_PREFIX:
            raise HubError(400, f"Invalid repo type {repo_type}")
        repo_id = f"{payload.get('organization') or req.user.user}/{payload['name']}"
        if (repo_type, repo_id) in self._repos:
            # The client reads "url" from the 409 body too when exist_ok=True.
            raise HubError(409, f"You already created this {repo_type} repo",
                           extra={"url": self._repo_url(self._repos[(repo_type, repo_id)])})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        url = self.create_repo(repo_id, repo_type=repo_type, private=private, owner=req.user.user)
        return self._json({"url": url, "name": repo_id, "id": repo_id})

    def _h_repo_delete(self, req: Request) -> Response:
        payload = req.json() or {}
        repo_id = f"{payload.get('organization') or (req.user.user if req.user else '')}/{payload.get('name')}"
        repo = self._repo_for(req, payload.get("type") or "model", repo_id, write=True)
        del self._repos[(repo.repo_type, repo.repo_id)]
        return self._json({})

    def _h_validate_yaml(self, req: Request) -> Response:
        payload = req.json() or {}
        errors = _validate_card_metadata(payload.get("content") or "")
        # The client reads the JSON body before looking at the status, so errors always carry one.
        return self._json({"errors": [{"message": e} for e in errors], "warnings": []}, 400 if errors else 200)

    def _h_settings(self, req: Request, t: str, repo: str) -> Response:
        repo_obj = self._repo_for(req, t, repo, write=True)
        payload = req.json() or {}
        if "private" in payload:
            repo_obj.private = bool(payload["private"])
        if "visibility" in payload:
            repo_obj.private = payload["visibility"] == "private"
        if "gated" in payload:
            repo_obj.gated = payload["gated"]
        return self._json({})

    # -- routes: repo metadata ---------------------------------------------------------------------

    def _card(self, commit: Commit) -> dict | None:
        entry = commit.files.get("README.md")
        if entry is None:
            return None
        data, _ = _parse_front_matter(self._blobs[entry.sha256].decode("utf-8", "replace"))
        return data

    @staticmethod
    def _base_models(card: dict | None, commit: Commit) -> tuple[list[str], str | None]:
        models = [m for m in _as_list((card or {}).get("base_model")) if isinstance(m, str)]
        if not models:
            return [], None
        relation = (card or {}).get("base_model_relation")
        if relation not in VALID_RELATIONS:  # inferred like the Hub does, roughly
            if len(models) > 1:
                relation = "merge"
            elif "adapter_config.json" in commit.files:
                relation = "adapter"
            elif any(p.endswith(".gguf") for p in commit.files):
                relation = "quantized"
            else:
                relation = "finetune"
        return models, relation

    def _tags(self, repo: Repo, commit: Commit, card: dict | None) -> list[str]:
        card = card or {}
        tags: list[str] = []
        candidates = [str(t) for t in _as_list(card.get("tags"))]
        candidates += [card.get("library_name"), card.get("pipeline_tag")]
        if any(p.endswith(".safetensors") for p in commit.files):
            candidates.append("safetensors")
        candidates += [f"license:{x}" for x in _as_list(card.get("license"))]
        candidates += [f"dataset:{x}" for x in _as_list(card.get("datasets"))]
        models, relation = self._base_models(card, commit)
        for model in models:
            candidates += [f"base_model:{model}", f"base_model:{relation}:{model}"]
        for tag in candidates:
            if tag and isinstance(tag, str) and tag not in tags:
                tags.append(tag)
        return tags

    def _info(self, repo: Repo, sha: str, *, user: TokenInfo | None, blobs: bool = False,
              expand: list[str] | None = None, listing: bool = False) -> dict:
        """The repo_info / list_models dict at commit `sha`. `expand` restricts the properties like the Hub;
        `listing` drops the heavy ones (cardData, siblings, ...) as list_models does without full=true."""
        commit = repo.commits[sha]
        card = self._card(commit)
        models, relation = self._base_models(card, commit)
        info = {
            "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
            "id": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": sha, "lastModified": commit.date,
            "createdAt": repo.created_at, "private": repo.private, "gated": repo.gated, "disabled": False,
            "downloads": 0, "likes": 0, "tags": self._tags(repo, commit, card), "cardData": card,
            "siblings": [self._sibling(path, e, blobs) for path, e in sorted(commit.files.items())],
            "usedStorage": sum(e.size for e in commit.files.values()),
        }
        if repo.repo_type == "model":
            info.update(modelId=repo.repo_id, library_name=(card or {}).get("library_name"),
                        pipeline_tag=(card or {}).get("pipeline_tag"))
            info.update(self._weights_info(commit))
            if models:
                info["baseModels"] = {"relation": relation, "models": [{"id": m} for m in models]}
            if expand and "childrenModelCount" in expand:
                info["childrenModelCount"] = self._children_count(repo.repo_id, user)
        if repo.repo_type == "space":
            info["sdk"] = (card or {}).get("sdk", "gradio")
        if expand:
            return {k: v for k, v in info.items() if k in set(expand) | {"_id", "id"}}
        if listing:
            for key in ("cardData", "siblings", "usedStorage", "safetensors", "config"):
                info.pop(key, None)
        return info

    def _sibling(self, path: str, entry: FileEntry, blobs: bool) -> dict:
        sibling = {"rfilename": path}
        if blobs:
            sibling.update(size=entry.size, blobId=self._blob_git_sha1(entry))
            if entry.lfs:
                sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size,
                                  "pointerSize": len(_lfs_pointer(entry))}
        return sibling

    def _weights_info(self, commit: Commit) -> dict:
        info: dict = {}
        counts: dict[str, int] = {}
        for path, entry in commit.files.items():
            if path.endswith(".safetensors"):
                for dtype, n in (_safetensors_summary(self._blobs[entry.sha256]) or {}).items():
                    counts[dtype] = counts.get(dtype, 0) + n
        if counts:
            info["safetensors"] = {"parameters": counts, "total": sum(counts.values())}
        config = commit.files.get("config.json")
        if config is not None and not config.lfs:
            try:
                data = json.loads(self._blobs[config.sha256])
                info["config"] = {k: data[k] for k in ("architectures", "model_type") if k in data}
            except (ValueError, TypeError):
                pass
        return info

    def _children_count(self, repo_id: str, user: TokenInfo | None) -> int:
        count = 0
        for repo in self._repos.values():
            if repo.repo_type == "model" and self._visible(user, repo) and "refs/heads/main" in repo.refs:
                commit = repo.commits[repo.refs["refs/heads/main"]]
                count += repo_id in self._base_models(self._card(commit), commit)[0]
        return count

    def _h_repo_info(self, req: Request, t: str, repo: str, rev: str | None = None) -> Response:
        repo_obj = self._repo_for(req, t, repo)
        sha = self._resolve(repo_obj, unquote(rev) if rev else "main")
        return self._json(self._info(repo_obj, sha, user=req.user, blobs=req.flag("blobs"), expand=req.expand()))

    def _h_list_repos(self, req: Request, t: str) -> Response:
        """list_models / list_datasets / list_spaces: `filter` values must all be tags of the repo (derived
        tags such as base_model:merge:<id> included), plus author / search / gated / sort / limit."""
        repo_type = API_TYPES[t]
        filters = req.query.get("filter", [])
        author, search = req.arg("author"), (req.arg("search") or "").lower()
        full = req.flag("full") or req.flag("cardData")
        items = []
        for repo in self._repos.values():
            if repo.repo_type != repo_type or not self._visible(req.user, repo) or "refs/heads/main" not in repo.refs:
                continue
            if author and repo.repo_id.split("/")[0] != author:
                continue
            if search and search not in repo.repo_id.lower():
                continue
            if req.arg("gated") is not None and bool(repo.gated) != req.flag("gated"):
                continue
            sha = repo.refs["refs/heads/main"]
            tags = set(self._info(repo, sha, user=req.user, expand=["tags"])["tags"])
            if not all(f in tags for f in filters):
                continue
            items.append(self._info(repo, sha, user=req.user, expand=req.expand(), listing=not full))
        sort = req.arg("sort")
        if sort in ("lastModified", "createdAt", "id"):
            items.sort(key=lambda i: i.get(sort) or "", reverse=sort != "id" and req.arg("direction") != "1")
        else:
            items.sort(key=lambda i: i["id"])
        limit = int(req.arg("limit")) if req.arg("limit") else None
        return self._paginated(req, items, limit)

    def _h_commits(self, req: Request, t: str, repo: str, rev: str) -> Response:
        repo_obj = self._repo_for(req, t, repo)
        sha = self._resolve(repo_obj, unquote(rev))
        formatted = "formatted" in req.expand()
        items = []
        for commit in self._history(repo_obj, sha):
            item = {"id": commit.id, "title": commit.title, "message": commit.message, "date": commit.date,
                    "authors": [{"user": commit.author, "avatar": f"{self.url}/avatars/{commit.author}.svg"}]}
            if formatted:
                item["formatted"] = {"title": html.escape(commit.title), "message": html.escape(commit.message)}
            items.append(item)
        return self._paginated(req, items)

    def _h_refs(self, req: Request, t: str, repo: str) -> Response:
        repo_obj = self._repo_for(req, t, repo)
        out: dict[str, list] = {"branches": [], "tags": [], "converts": []}
        if req.flag("include_prs"):
            out["pullRequests"] = []
        kinds = {"refs/heads/": "branches", "refs/tags/": "tags", "refs/pr/": "pullRequests"}
        for ref, sha in sorted(repo_obj.refs.items()):
            for prefix, key in kinds.items():
                if ref.startswith(prefix) and key in out:
                    out[key].append({"name": ref[len(prefix):], "ref": ref, "targetCommit": sha})
        return self._json(out)

    # -- routes: tree and paths-info ---------------------------------------------------------------

    def _last_commit(self, repo: Repo, sha: str, path: str, is_dir: bool) -> dict | None:
        def snapshot(commit: Commit | None):
            if commit is None:
                return None
            if is_dir:
                return tuple(sorted((p, e) for p, e in commit.files.items() if p.startswith(path + "/")))
            return commit.files.get(path)

        for commit in self._history(repo, sha):
            parent = repo.commits.get(commit.parent) if commit.parent else None
            if snapshot(commit) != snapshot(parent):
                return {"id": commit.id, "title": commit.title, "date": commit.date}
        return None

    def _file_json(self, repo: Repo, sha: str, path: str, entry: FileEntry, expand: bool) -> dict:
        item = {"type": "file", "oid": self._blob_git_sha1(entry), "size": entry.size, "path": path}
        if entry.lfs:
            item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": len(_lfs_pointer(entry))}
        if expand:
            item["lastCommit"] = self._last_commit(repo, sha, path, False)
            item["securityFileStatus"] = {"status": "safe", "avScan": {"virusFound": False, "virusNames": None},
                                          "pickleImportScan": None}
        return item

    def _dir_json(self, repo: Repo, sha: str, path: str, files: dict[str, FileEntry], expand: bool) -> dict:
        inside = "\n".join(f"{p} {e.sha256}" for p, e in sorted(files.items()) if p.startswith(path + "/"))
        item = {"type": "directory", "oid": hashlib.sha1(inside.encode()).hexdigest(), "size": 0, "path": path}
        if expand:
            item["lastCommit"] = self._last_commit(repo, sha, path, True)
        return item

    @staticmethod
    def _dirs(files: dict[str, FileEntry]) -> set[str]:
        return {p.rsplit("/", i)[0] for p in files for i in range(1, p.count("/") + 1)}

    def _h_tree(self, req: Request, t: str, repo: str, rev: str, path: str | None = None) -> Response:
        repo_obj = self._repo_for(req, t, repo)
        sha = self._resolve(repo_obj, unquote(rev))
        files = repo_obj.commits[sha].files
        prefix = unquote(path or "").strip("/")
        dirs = self._dirs(files)
        if prefix and prefix not in dirs:
            raise HubError(404, f"Entry not found: {prefix}", code="EntryNotFound")
        recursive, expand = req.flag("recursive"), req.flag("expand")
        base = prefix + "/" if prefix else ""

        def wanted(p: str) -> bool:
            return p.startswith(base) and (recursive or "/" not in p[len(base):])

        items = [self._dir_json(repo_obj, sha, d, files, expand) for d in sorted(dirs) if wanted(d)]
        items += [self._file_json(repo_obj, sha, p, e, expand) for p, e in sorted(files.items()) if wanted(p)]
        return self._paginated(req, items)

    def _h_paths_info(self, req: Request, t: str, repo: str, rev: str) -> Response:
        repo_obj = self._repo_for(req, t, repo)
        sha = self._resolve(repo_obj, unquote(rev))
        files = repo_obj.commits[sha].files
        form = parse_qs(req.body.decode("utf-8", "replace"), keep_blank_values=True)
        if not form and req.headers.get("content-type", "").startswith("application/json"):
            form = {k: _as_list(v) for k, v in (req.json() or {}).items()}
        expand = str((form.get("expand") or ["false"])[0]).lower() in ("1", "true")
        dirs = self._dirs(files)
        out = []
        for path in dict.fromkeys(p.strip("/") for p in form.get("paths", [])):
            if path in files:
                out.append(self._file_json(repo_obj, sha, path, files[path], expand))
            elif path in dirs:
                out.append(self._dir_json(repo_obj, sha, path, files, expand))
        return self._json(out)

    # -- routes: upload (preupload, LFS batch, PUT, verify, commit) ---------------------------------

    def _h_preupload(self, req: Request, t: str, repo: str, rev: str) -> Response:
        repo_obj = self._repo_for(req, t, repo, write=True)
        commit = repo_obj.commits[self._resolve(repo_obj, unquote(rev))]
        out = []
        for item in (req.json() or {}).get("files", []):
            path, size = item["path"], int(item.get("size", 0))
            sample = base64.b64decode(item.get("sample") or "")
            lfs = self._wants_lfs(commit, path, size, sample)
            existing = commit.files.get(path)
            # The remote oid lets the client drop unchanged files: sha256 for LFS, git blob sha1 otherwise.
            oid = None
            if existing is not None:
                oid = existing.sha256 if lfs else _git_sha1(self._blobs[existing.sha256])
            out.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return self._json({"files": out, "commitOid": commit.id})

    def _h_lfs_batch(self, req: Request, repo: str, t: str | None = None) -> Response:
        self._repo_for(req, t or "model", repo, write=True)
        payload = req.json() or {}
        if payload.get("operation") != "upload":
            raise HubError(400, "only the upload operation is supported")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            if oid in self._blobs:  # already stored: no actions, so the client skips the PUT
                objects.append({"oid": oid, "size": size})
                continue
            objects.append({"oid": oid, "size": size, "actions": {
                "upload": {"href": f"{self.url}/lfs-upload/{oid}?{urlencode({'size': size, 'sig': self._secret})}"},
                "verify": {"href": f"{self.url}/lfs-verify/{oid}"},
            }})
        return Response(200, _dumps({"transfer": "basic", "objects": objects}),
                        {"Content-Type": "application/vnd.git-lfs+json"})

    def _h_lfs_upload(self, req: Request, oid: str) -> Response:
        if req.arg("sig") != self._secret:
            raise HubError(403, "bad upload signature")
        if hashlib.sha256(req.body).hexdigest() != oid:
            raise HubError(400, "sha256 of the uploaded content doesn't match the oid")
        if req.arg("size") is not None and int(req.arg("size")) != len(req.body):
            raise HubError(400, "uploaded size doesn't match")
        self._blobs.setdefault(oid, req.body)
        return Response(200, b"", {"ETag": f'"{oid}"'})

    def _h_lfs_verify(self, req: Request, oid: str) -> Response:
        payload = req.json() or {}
        if oid not in self._blobs or len(self._blobs[oid]) != int(payload.get("size", len(self._blobs[oid]))):
            raise HubError(404, f"LFS object {oid} not found")
        return self._json({"success": True})

    def _target_ref(self, repo: Repo, rev: str) -> str:
        if re.fullmatch(r"[0-9a-f]{40}", rev) and rev in repo.commits:
            raise HubError(400, f"Invalid rev id: cannot commit to a commit sha ({rev}), use a branch")
        ref = rev if rev.startswith(("refs/heads/", "refs/pr/")) else f"refs/heads/{rev}"
        if ref not in repo.refs:
            raise HubError(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
        return ref

    def _parse_ops(self, body: bytes) -> tuple[dict, list[dict]]:
        try:
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        except ValueError as exc:
            raise HubError(400, f"Invalid NDJSON commit payload: {exc}") from None
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the first NDJSON line must be the commit header")
        return lines[0]["value"], lines[1:]

    def _ops_to_changes(self, files: dict[str, FileEntry], ops: list[dict]) -> tuple[dict, tuple]:
        """NDJSON operations -> (path changes, deleted folders), checked against the current files."""
        changes: dict[str, FileEntry | None] = {}
        folders: list[str] = []
        present = set(files)
        for op in ops:
            key, value = op.get("key"), op.get("value") or {}
            path = value.get("path", "").strip("/")
            if key == "file":
                raw = value.get("content", "")
                data = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
                if len(data) >= LFS_THRESHOLD:
                    raise HubError(400, f"Your push was rejected because {path} is larger than 10 MiB; use LFS")
                changes[path] = self._store(data)
                present.add(path)
            elif key == "lfsFile":
                oid = value.get("oid")
                if oid not in self._blobs:
                    raise HubError(422, f"LFS object {oid} for {path} was never uploaded")
                if "size" in value and int(value["size"]) != len(self._blobs[oid]):
                    raise HubError(422, f"LFS object {oid}: size mismatch")
                changes[path] = FileEntry(oid, len(self._blobs[oid]), True)
                present.add(path)
            elif key == "deletedFile":
                if path not in present:
                    raise HubError(404, f"Entry not found: {path}", code="EntryNotFound")
                changes[path] = None
                present.discard(path)
            elif key == "deletedFolder":
                inside = [p for p in present if p.startswith(path + "/")]
                if not inside:
                    raise HubError(404, f"Entry not found: {path}", code="EntryNotFound")
                for p in inside:
                    changes.pop(p, None)
                    present.discard(p)
                folders.append(path)
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        # A folder deletion followed by re-adding a file inside it keeps that file (it is in `changes`).
        return changes, tuple(folders)

    def _h_commit(self, req: Request, t: str, repo: str, rev: str) -> Response:
        repo_obj = self._repo_for(req, t, repo, write=True)
        header, ops = self._parse_ops(req.body)
        rev, parent = unquote(rev), header.get("parentCommit")
        title, description = header.get("summary") or "Update", header.get("description") or ""
        create_pr = req.flag("create_pr")
        if create_pr:  # the PR starts from parentCommit when given (it must be on the branch), else the head
            head = repo_obj.refs[self._target_ref(repo_obj, rev)]
            if parent and parent not in {c.id for c in self._history(repo_obj, head)}:
                raise HubError(412, f"parent commit {parent} is not on {rev}")
            start = parent or head
        else:
            ref = self._target_ref(repo_obj, rev)
            start = repo_obj.refs[ref]
            if parent and parent != start:  # optimistic concurrency: the branch moved since parentCommit
                message = "A commit has happened since. Please refresh and try again."
                raise HubError(412, message, headers={"X-Error-Message": message})
        changes, folders = self._ops_to_changes(repo_obj.commits[start].files, ops)
        self._check_card(repo_obj.commits[start].files, changes, folders)  # before a PR ref is created
        discussion = None
        if create_pr:
            ref, discussion = self._open_pr(repo_obj, rev, start, title, description, req.user.user, status="open")
        commit = self._commit(repo_obj, ref, changes, title, description, req.user.user, events=req.events,
                              folder_deletes=folders)
        prefix = f"{self.url}/{WEB_PREFIX[repo_obj.repo_type]}{repo_obj.repo_id}"
        out = {"success": True, "commitOid": commit.id, "commitUrl": f"{prefix}/commit/{commit.id}", "hookOutput": ""}
        if discussion is not None:
            discussion.events.append(self._event("commit", req.user.user, subject=commit.title, oid=commit.id))
            out["pullRequestUrl"] = f"{prefix}/discussions/{discussion.num}"
        return self._json(out)

    # -- routes: branches, tags, auth-check ----------------------------------------------------------

    def _h_branch(self, req: Request, t: str, repo: str, name: str) -> Response:
        repo_obj = self._repo_for(req, t, repo, write=True)
        name = unquote(name)
        ref = f"refs/heads/{name}"
        if req.method == "DELETE":
            if ref not in repo_obj.refs:
                raise HubError(404, f"Branch {name} not found", code="RevisionNotFound")
            if name == "main":
                raise HubError(403, "Cannot delete the default branch")
            del repo_obj.refs[ref]
            return self._json({})
        if name.startswith("refs/") or not name:
            raise HubError(400, f"Invalid branch name {name!r}")
        if ref in repo_obj.refs:
            raise HubError(409, f"Branch {name} already exists")
        payload = req.json() or {}
        if payload.get("emptyBranch"):
            raise HubError(400, "empty branches are not supported by the test hub")
        repo_obj.refs[ref] = self._resolve(repo_obj, payload.get("startingPoint") or "main")
        return self._json({})

    def _h_tag(self, req: Request, t: str, repo: str, name: str) -> Response:
        repo_obj = self._repo_for(req, t, repo, write=True)
        name = unquote(name)
        if req.method == "DELETE":  # DELETE /tag/{tag}
            if f"refs/tags/{name}" not in repo_obj.refs:
                raise HubError(404, f"Tag {name} not found", code="RevisionNotFound")
            del repo_obj.refs[f"refs/tags/{name}"]
            return self._json({})
        tag = (req.json() or {}).get("tag")  # POST /tag/{revision} {"tag": ...}
        if not tag:
            raise HubError(400, "missing tag name")
        if f"refs/tags/{tag}" in repo_obj.refs:
            raise HubError(409, f"Tag {tag} already exists")
        repo_obj.refs[f"refs/tags/{tag}"] = self._resolve(repo_obj, name)
        return self._json({})

    def _h_auth_check(self, req: Request, t: str, repo: str, write: str | None = None) -> Response:
        self._repo_for(req, t, repo, write=bool(write), content=True)
        return self._json({})

    # -- routes: discussions and pull requests -----------------------------------------------------

    @staticmethod
    def _event(kind: str, author: str, **data) -> dict:
        if kind == "comment":
            data = {"edited": False, "hidden": False, "latest": {"raw": data["raw"]}}
        return {"id": secrets.token_hex(12), "type": kind, "createdAt": _now(), "author": {"name": author},
                "data": data}

    def _open_pr(self, repo: Repo, branch: str, start: str | None, title: str, description: str, author: str,
                 *, status: str) -> tuple[str, Discussion]:
        """Create discussion N and refs/pr/N at `start` (default: the head of `branch`)."""
        base_ref = self._target_ref(repo, branch)
        start = start or repo.refs[base_ref]
        num = max(repo.discussions, default=0) + 1
        discussion = Discussion(num, title, author, _now(), True, status, base_ref, start)
        discussion.events.append(self._event("comment", author, raw=description))
        repo.discussions[num] = discussion
        repo.refs[f"refs/pr/{num}"] = start
        return f"refs/pr/{num}", discussion

    def _discussion_json(self, repo: Repo, d: Discussion, details: bool) -> dict:
        out = {"num": d.num, "title": d.title, "status": d.status, "isPullRequest": d.is_pr, "createdAt": d.created_at,
               "author": {"name": d.author}, "repo": {"name": repo.repo_id, "type": repo.repo_type}, "pinned": False,
               "numComments": sum(e["type"] == "comment" for e in d.events)}
        if details:
            out["events"] = d.events
            out["diff"] = ""
            if d.is_pr:
                out["changes"] = {"base": d.base_ref, "mergeCommitId": d.merge_commit}
                out["filesWithConflicts"] = []
        return out

    def _discussion(self, repo: Repo, num: str) -> Discussion:
        discussion = repo.discussions.get(int(num))
        if discussion is None:
            raise HubError(404, f"Discussion #{num} not found")
        return discussion

    def _h_discussions(self, req: Request, t: str, repo: str) -> Response:
        if req.method == "GET":
            repo_obj = self._repo_for(req, t, repo)
            items = [self._discussion_json(repo_obj, d, False) for d in sorted(repo_obj.discussions.values(),
                                                                             key=lambda d: -d.num)]
            if req.arg("type") in ("pull_request", "discussion"):
                items = [i for i in items if i["isPullRequest"] == (req.arg("type") == "pull_request")]
            if req.arg("status") in ("open", "closed"):
                items = [i for i in items if (i["status"] in ("open", "draft")) == (req.arg("status") == "open")]
            return self._json({"discussions": items, "count": len(items), "start": 0,
                               "numClosedDiscussions": sum(i["status"] in ("closed", "merged") for i in items)})
        repo_obj = self._repo_for(req, t, repo)
        if req.user is None:
            raise HubError(401, "You must be authenticated to open a discussion")
        payload = req.json() or {}
        title, description = payload.get("title") or "", payload.get("description") or ""
        if payload.get("pullRequest"):
            self._require_write(req)  # opening a PR needs a write token (any owner)
            _, discussion = self._open_pr(repo_obj, "main", None, title, description, req.user.user, status="draft")
        else:
            num = max(repo_obj.discussions, default=0) + 1
            discussion = Discussion(num, title, req.user.user, _now(), False, "open")
            discussion.events.append(self._event("comment", req.user.user, raw=description))
            repo_obj.discussions[num] = discussion
        return self._json({"num": discussion.num, "url": f"{self._repo_url(repo_obj)}/discussions/{discussion.num}",
                           "pullRequest": discussion.is_pr})

    def _h_discussion(self, req: Request, t: str, repo: str, num: str) -> Response:
        repo_obj = self._repo_for(req, t, repo)
        return self._json(self._discussion_json(repo_obj, self._discussion(repo_obj, num), True))

    def _h_discussion_action(self, req: Request, t: str, repo: str, num: str, action: str) -> Response:
        payload = req.json() or {}
        if action == "comment":
            repo_obj = self._repo_for(req, t, repo)
            if req.user is None:
                raise HubError(401, "You must be authenticated to comment")
            event = self._event("comment", req.user.user, raw=payload.get("comment") or "")
            self._discussion(repo_obj, num).events.append(event)
            return self._json({"newMessage": event})
        repo_obj = self._repo_for(req, t, repo, write=True)
        discussion = self._discussion(repo_obj, num)
        if action == "status":
            if payload.get("status") not in ("open", "closed") or discussion.status == "merged":
                raise HubError(400, "Invalid status change")
            discussion.status = payload["status"]
            event = self._event("status-change", req.user.user, status=discussion.status)
            discussion.events.append(event)
            return self._json({"newStatus": event})
        self._merge_pr(repo_obj, discussion, req.user.user, req.events)
        return self._json({"status": "merged", "mergeCommitId": discussion.merge_commit})

    def _merge_pr(self, repo: Repo, pr: Discussion, author: str, events: list) -> None:
        """Fast-forward when the PR is a single commit on top of its base; otherwise apply the PR's changes
        onto the base branch as one new commit. Either way the base gains exactly one commit."""
        if not pr.is_pr:
            raise HubError(400, "This discussion is not a pull request")
        if pr.status not in ("open", "draft"):
            raise HubError(400, f"Pull request #{pr.num} is {pr.status}")
        base_head, pr_head = repo.refs[pr.base_ref], repo.refs[f"refs/pr/{pr.num}"]
        if pr_head == pr.base_sha:
            raise HubError(400, "This pull request has no changes")
        if repo.commits[pr_head].parent == base_head:
            repo.refs[pr.base_ref] = pr_head
            events.append({"repo_id": repo.repo_id, "repo_type": repo.repo_type, "ref": pr.base_ref,
                           "old_sha": base_head, "new_sha": pr_head, "title": repo.commits[pr_head].title})
        else:
            start, pr_files = repo.commits[pr.base_sha].files, repo.commits[pr_head].files
            base_files = repo.commits[base_head].files
            changes = {p: pr_files.get(p) for p in set(start) | set(pr_files) if start.get(p) != pr_files.get(p)}
            conflicts = sorted(p for p, e in changes.items() if base_files.get(p) not in (start.get(p), e))
            if conflicts:
                raise HubError(409, f"Merge conflict in: {', '.join(conflicts)}",
                               extra={"filesWithConflicts": conflicts})
            self._check_card(base_files, changes)
            self._commit(repo, pr.base_ref, changes, f"{pr.title} (#{pr.num})", "", author, events=events)
        pr.status, pr.merge_commit = "merged", repo.refs[pr.base_ref]
        pr.events.append(self._event("status-change", author, status="merged"))

    # -- routes: file content ----------------------------------------------------------------------

    def _h_resolve(self, req: Request, repo: str, rev: str, path: str, t: str | None = None) -> Response:
        repo_obj = self._repo_for(req, t or "model", repo, content=True)
        sha = self._resolve(repo_obj, unquote(rev))
        path = unquote(path)
        entry = repo_obj.commits[sha].files.get(path)
        if entry is None:  # X-Repo-Commit lets the client cache the miss (.no_exist)
            raise HubError(404, f"Entry not found: {path}", code="EntryNotFound", headers={"X-Repo-Commit": sha})
        headers = {"X-Repo-Commit": sha, "ETag": f'"{self._blob_git_sha1(entry)}"'}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        redirect = self.redirect_mode == "all" or (self.redirect_mode == "lfs" and entry.lfs)
        if redirect and req.host.split(":")[0] != self.redirect_host:
            # Like the Hub's CDN redirect: another origin, so the client must not forward its token there.
            query = urlencode({"repo": repo_obj.repo_id, "path": path, "sig": self._secret})
            headers["Location"] = f"http://{self.redirect_host}:{self._port}/cdn/{entry.sha256}?{query}"
            return Response(302, b"", headers)
        return self._file_response(req, self._blobs[entry.sha256], headers, (repo_obj.repo_id, path))

    def _h_cdn(self, req: Request, oid: str) -> Response:
        if req.arg("sig") != self._secret or oid not in self._blobs:
            raise HubError(403, "Invalid signature")
        return self._file_response(req, self._blobs[oid], {"ETag": f'"{oid}"'},
                                   (req.arg("repo") or "?", req.arg("path") or oid))

    def _file_response(self, req: Request, data: bytes, headers: dict, file: tuple[str, str]) -> Response:
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        range_header = req.headers.get("range")
        if range_header and not self._take_fault("ignore_range", req.method, unquote(req.path)):
            span = _parse_range(range_header, len(data))
            if span is not None:
                start, end = span
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return Response(206, memoryview(data)[start : end + 1], headers, file)
        return Response(200, data, headers, file)


# ----------------------------------------------------------------------------------------------
# HTTP plumbing
# ----------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub; requires Content-Length on every answer
    server_version = "hubserver/1.0"
    timeout = 60  # idle keep-alive connections must not pin a thread forever

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; with Nagle's algorithm the body then waits for the
        # client's delayed ACK (~40 ms a response). Real front ends set TCP_NODELAY too.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hub: HubServer = self.server.hub  # type: ignore[attr-defined]
        with hub._lock:
            hub._connections.add(self.connection)
        link = hub.link
        self.pacer = link.connection() if link is not None else None
        if link is not None:
            link.round_trip()  # a new connection costs one more round trip (the TCP handshake)

    def finish(self) -> None:
        hub: HubServer = self.server.hub  # type: ignore[attr-defined]
        with hub._lock:
            hub._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format, *args) -> None:  # noqa: A002 - quiet: tests read server.log instead
        pass

    def _handle(self) -> None:
        try:
            self.server.hub._serve(self)  # type: ignore[attr-defined]
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length and self.pacer is not None:
            return self.pacer.read(self.rfile.read, length)
        return self.rfile.read(length) if length else b""

    def write_response(self, response: Response, *, head: bool, drop_after: int | None) -> None:
        """Write status, headers and (except for HEAD) the body. With drop_after, write only that many
        body bytes under a Content-Length announcing the full body, then kill the connection."""
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection or drop_after is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if head:
            return
        body = memoryview(response.body)
        body = body if drop_after is None else body[:drop_after]
        if self.pacer is not None:
            self.pacer.write(self.wfile.write, body)
        else:
            self.wfile.write(body)
        if drop_after is not None:
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _HTTPServer(ThreadingHTTPServer):
    # Many clients open a dozen connections at once; the default backlog of 5 makes the rest wait for
    # a SYN retry (a second or more), which a shaped benchmark would mistake for the network.
    request_queue_size = 128


class _DiskBlobs(dict):
    """The blob store kept in files: blobs of 1 MB and more are written to ``folder`` and served from a
    read-only mapping, so a benchmark's gigabytes of models do not sit in the server's memory."""

    THRESHOLD = 1 << 20

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def setdefault(self, key: str, value: bytes):  # type: ignore[override]
        if key in self:
            return self[key]
        if len(value) >= self.THRESHOLD:
            path = f"{self.folder}/{key}"
            with open(path, "wb") as f:
                f.write(value)
            with open(path, "rb") as f:
                value = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return super().setdefault(key, value)
