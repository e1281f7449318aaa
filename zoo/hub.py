"""Pretrained zoo entries: a manifest, download with an always-checked sha256, a cache, offline mode.

``from_pretrained(x)`` loads a pretrained folder given as:

- a zoo entry name (``imdb-bilstm``): from the copy shipped inside the package when it is there
  (checked against the manifest's sha256), else downloaded from the entry's URLs into the cache;
- a local folder;
- an ``http(s)://`` or ``file://`` URL of a published folder (it holds ``entry.json``, written by
  ``rnnzoo zoo publish``, which lists its files with their sha256);
- ``hf://org/repo`` or ``hf://org/repo@revision``: a Hugging Face Hub repository.

Downloads go to ``RNNZOO_CACHE`` (default ``~/.cache/rnnzoo``) through a temporary file that is
renamed into place only once its sha256 matches (a mismatch deletes it and raises), under a file
lock so that concurrent processes fetch an entry once. ``RNNZOO_OFFLINE=1`` (or no network) serves
from the cache or fails saying so.
"""

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from filelock import FileLock

from zoo.pretrained import Pretrained, load_pretrained

PACKAGE_DIR = Path(__file__).parent
MANIFEST = PACKAGE_DIR / "pretrained_models" / "manifest.json"
ENTRY_FILE = "entry.json"


class ZooError(RuntimeError):
    """A zoo entry cannot be found, fetched or verified."""


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rnnzoo"
    return Path(os.environ.get("RNNZOO_CACHE", default)).expanduser()


def offline() -> bool:
    return os.environ.get("RNNZOO_OFFLINE", "").lower() in ("1", "true", "yes")


def load_manifest() -> dict[str, dict]:
    """Zoo entries by name: task, metrics, files (size, sha256), urls, packaged folder...

    ``RNNZOO_MANIFEST`` replaces the packaged manifest (e.g. with one listing a mirror's entries).
    """
    path = Path(os.environ.get("RNNZOO_MANIFEST", MANIFEST))
    return json.loads(path.read_text())["entries"] if path.is_file() else {}


def entry_info(name: str) -> dict:
    entries = load_manifest()
    if name not in entries:
        raise ZooError(f"unknown zoo entry {name!r}; available: {', '.join(sorted(entries)) or 'none'}")
    return entries[name]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_folder(folder: Path) -> dict[str, dict]:
    """``{file: {"size", "sha256"}}`` of a pretrained folder's files (what an entry lists)."""
    return {
        path.name: {"size": path.stat().st_size, "sha256": sha256_of(path)}
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != ENTRY_FILE
    }


def from_pretrained(source: str | os.PathLike) -> Pretrained:
    """Load a pretrained network with its tokenizers and metrics (see the module docstring)."""
    return load_pretrained(resolve(source))


def resolve(source: str | os.PathLike) -> Path:
    """A local folder holding the pretrained files of ``source``, downloading them if needed."""
    text = str(source)
    if text.startswith("hf://"):
        return _from_hub(text.removeprefix("hf://"))
    if urllib.parse.urlparse(text).scheme in ("http", "https", "file"):
        entry = json.loads(_fetch_bytes(f"{text.rstrip('/')}/{ENTRY_FILE}"))
        return fetch_entry(entry.get("name") or _name_from_url(text), {**entry, "urls": [text]})
    if Path(text).is_dir():
        return Path(text)
    if "/" in text or os.sep in text:
        raise ZooError(f"no pretrained folder at {text}")
    return fetch_entry(text, entry_info(text))


def fetch_entry(name: str, entry: dict) -> Path:
    """The verified folder of ``entry``: the packaged copy, the cache, or a download into the cache."""
    files = entry.get("files") or {}
    if not files:
        raise ZooError(f"zoo entry {name!r} lists no files")
    for file_name in [name, *files]:
        _check_plain_name(file_name)
    local = PACKAGE_DIR / entry["local"] if entry.get("local") else None
    if local is not None and local.is_dir() and _verified(local, files, raise_on_mismatch=True):
        return local
    folder = cache_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if _verified(folder, files):
            return folder
        if offline():
            raise ZooError(f"zoo entry {name!r} is not in the cache ({folder}) and RNNZOO_OFFLINE is set")
        urls = entry.get("urls") or []
        if not urls:
            raise ZooError(f"zoo entry {name!r} is not packaged here and has no download URL")
        for file_name, expected in files.items():
            if not _matches(folder / file_name, expected):
                _download(urls, file_name, folder, expected)
    return folder


def _check_plain_name(file_name: str) -> None:
    """Refuse names that would escape the cache folder (``../x``, ``/etc/x``, ``a/b``)."""
    if not file_name or file_name in (".", "..") or Path(file_name).name != file_name or "\\" in file_name:
        raise ZooError(f"refusing zoo file name {file_name!r}: it must be a plain file name")


def _matches(path: Path, expected: dict) -> bool:
    return path.is_file() and path.stat().st_size == expected["size"] and sha256_of(path) == expected["sha256"]


def _verified(folder: Path, files: dict, raise_on_mismatch: bool = False) -> bool:
    for file_name, expected in files.items():
        if not _matches(folder / file_name, expected):
            if raise_on_mismatch and (folder / file_name).exists():
                raise ZooError(f"{folder / file_name} does not match its sha256 in the manifest (corrupted?)")
            return False
    return True


def _download(urls: list[str], file_name: str, folder: Path, expected: dict) -> None:
    """Fetch ``file_name`` from the first URL that answers; rename into place only if its sha256 matches."""
    errors = []
    for base in urls:
        url = f"{base.rstrip('/')}/{file_name}"
        handle, temporary = tempfile.mkstemp(prefix=f".{file_name}.", dir=folder)
        try:
            digest = hashlib.sha256()
            with os.fdopen(handle, "wb") as out, _open(url) as response, _progress(file_name, expected) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if digest.hexdigest() != expected["sha256"]:
                raise ZooError(
                    f"{url}: sha256 {digest.hexdigest()} does not match the expected {expected['sha256']}; "
                    "the download was deleted"
                )
            os.replace(temporary, folder / file_name)
            return
        except (urllib.error.URLError, OSError) as err:
            errors.append(f"{url}: {err}")
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
    raise ZooError(f"could not download {file_name}: {'; '.join(errors)} (set RNNZOO_OFFLINE=1 to use the cache only)")


def _open(url: str):
    return urllib.request.urlopen(url, timeout=60)


def _fetch_bytes(url: str) -> bytes:
    if offline():
        raise ZooError(f"RNNZOO_OFFLINE is set: cannot fetch {url}")
    try:
        with _open(url) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as err:
        raise ZooError(f"could not fetch {url}: {err}") from err


def _progress(file_name: str, expected: dict):
    from tqdm.auto import tqdm

    return tqdm(total=expected["size"], unit="B", unit_scale=True, desc=file_name, leave=False)


def _name_from_url(url: str) -> str:
    return urllib.parse.urlparse(url).path.rstrip("/").rsplit("/", 1)[-1]


def _from_hub(spec: str) -> Path:
    """``org/repo[@revision]`` through ``huggingface_hub`` (its own cache, hashes and locks)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, _, revision = spec.partition("@")
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, local_files_only=offline()))
    except LocalEntryNotFoundError as err:
        raise ZooError(f"hf://{spec} is not in the Hugging Face cache and the Hub cannot be reached: {err}") from err
    except HfHubHTTPError as err:
        raise ZooError(f"hf://{spec}: {err}") from err


def write_entry(folder: Path, name: str, **fields) -> dict:
    """Write ``entry.json`` (name, files with size and sha256, and ``fields``) into a published folder."""
    entry = {"name": name, **fields, "files": describe_folder(folder)}
    (folder / ENTRY_FILE).write_text(json.dumps(entry, indent=2) + "\n")
    return entry
