"""A Hugging Face hub on 127.0.0.1, served from this process: the endpoints huggingface_hub's model_info,
snapshot_download and hf_hub_download call (repo info with file metadata, the file tree, and HEAD and GET on
``/{repo}/resolve/{revision}/{path}``), over plain HTTP (it advertises no Xet storage, so the client never
asks for it). Every request is recorded, so a test can tell which files were fetched.

Weight files (``LFS_SUFFIXES``) are served as LFS files, as the real hub stores them (its default
.gitattributes): the listing gives their sha256, and the resolve headers their linked etag and size.
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
POINTER_SIZE = 134      # what an LFS pointer file weighs; the client only reads it back


class FakeHub:
    """``repos``: {repo id: folder whose files are the repo's}. Use as a context manager; ``url`` is the
    endpoint to set as HF_ENDPOINT, ``requests`` the (method, path) of each request so far."""

    def __init__(self, repos: dict[str, Path]):
        self.repos = {repo: _files(Path(folder)) for repo, folder in repos.items()}
        self.commits = {repo: hashlib.sha1(repo.encode()).hexdigest() for repo in repos}
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fetched(self) -> list[str]:
        """The repo files whose content was asked for (GET on resolve), in order."""
        return [path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path in self.requests
                if method == "GET" and "/resolve/" in path]

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- responses ----

    def info(self, repo: str) -> dict:
        return {"id": repo, "modelId": repo, "sha": self.commits[repo], "private": False,
                "siblings": [{"rfilename": path, "size": len(data), "blobId": _blob_id(data), **_lfs(path, data, "sha256")}
                             for path, data in self.repos[repo].items()]}

    def tree(self, repo: str) -> list[dict]:
        return [{"type": "file", "path": path, "size": len(data), "oid": _blob_id(data), **_lfs(path, data, "oid")}
                for path, data in self.repos[repo].items()]

    def resolve_headers(self, repo: str, data: bytes, path: str) -> dict:
        headers = {"X-Repo-Commit": self.commits[repo], "Content-Type": "application/octet-stream"}
        if _is_lfs(path):
            sha = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{_blob_id(data)}"'
        return headers


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _is_lfs(path: str) -> bool:
    return Path(path).suffix in LFS_SUFFIXES


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs(path: str, data: bytes, sha_key: str) -> dict:
    """The LFS entry of a listing (model info names the sha256 ``sha256``, the tree ``oid``)."""
    if not _is_lfs(path):
        return {}
    return {"lfs": {sha_key: hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": POINTER_SIZE}}


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"       # the client keeps connections open

        def log_message(self, *args):       # the test reads hub.requests, not stderr
            pass

        def do_HEAD(self):
            self._answer(body=False)

        def do_GET(self):
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"]:
                repo, rest = "/".join(parts[2:4]), parts[4:]
                if repo not in hub.repos:
                    return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, body)
                listing = hub.tree(repo) if rest[:1] == ["tree"] else hub.info(repo)
                return self._send(200, json.dumps(listing).encode(), {"Content-Type": "application/json"}, body)
            repo, rest = "/".join(parts[:2]), parts[2:]
            if repo not in hub.repos or rest[:1] != ["resolve"]:
                return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, body)
            name = "/".join(rest[2:])
            if name not in hub.repos[repo]:
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": hub.commits[repo]}, body)
            data = hub.repos[repo][name]
            self._send(200, data, hub.resolve_headers(repo, data, name), body)

        def _send(self, status: int, data: bytes, headers: dict, body: bool) -> None:
            self.send_response(status)
            for key, value in {**headers, "Content-Length": str(len(data))}.items():
                self.send_header(key, value)
            self.end_headers()
            if body:
                self.wfile.write(data)

    return Handler
