"""Pretrained zoo entries: a manifest, download with an always-checked sha256, a cache, offline mode.

``from_pretrained(x)`` loads a pretrained folder given as:

- a zoo entry name (``imdb-bilstm``): from the copy shipped inside the package when it is there
  (checked against the manifest's sha256), else downloaded from the entry's URLs into the cache.
  A bare name that the manifest knows is always the entry, even if the working directory holds a
  folder of that name (write ``./imdb-bilstm`` for the folder);
- a local folder;
- an ``http(s)://`` or ``file://`` URL of a published folder (it holds ``entry.json``, written by
  ``rnnzoo zoo publish``, which lists its files with their sha256);
- ``hf://org/repo`` or ``hf://org/repo@revision``: a Hugging Face Hub repository (``HF_ENDPOINT``, the
  user's token) holding a published folder, fetched like a URL's folder.

Downloads go to ``RNNZOO_CACHE`` (default ``~/.cache/rnnzoo``), one folder per source (a URL's
folder is keyed by the whole URL), through a temporary file that is renamed into place only once its
size and sha256 match; a mismatch or a cut transfer deletes it and tries the next mirror. Reading
stops at the size the entry states, and ``entry.json`` itself at ``MAX_ENTRY_BYTES``. A file lock
makes concurrent processes fetch an entry once. ``RNNZOO_OFFLINE=1`` (or no network) serves from the
cache or fails saying so; for ``hf://``, ``HF_HUB_OFFLINE=1`` does too.
"""

import hashlib
import http.client
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

from filelock import FileLock

from zoo.common.formats import (
    ENTRY_FILE,
    EntryInfo,
    FileInfo,
    FormatError,
    Manifest,
    folder_file,
    is_plain_name,
    parse,
    write_json,
)
from zoo.storage.pretrained import Pretrained, load_pretrained

PACKAGE_DIR = Path(__file__).parents[1]  # zoo/
MANIFEST = PACKAGE_DIR / "pretrained_models" / "manifest.json"
MAX_ENTRY_BYTES = 1 << 20  # an entry.json lists a few files: anything larger is not one


class ZooError(RuntimeError):
    """A zoo entry cannot be found, fetched or verified."""


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rnnzoo"
    return Path(os.environ.get("RNNZOO_CACHE", default)).expanduser()


def offline() -> bool:
    return os.environ.get("RNNZOO_OFFLINE", "").lower() in ("1", "true", "yes")


def load_manifest() -> dict[str, EntryInfo]:
    """Zoo entries by name: task, metrics, files (size, sha256), urls, packaged folder...

    ``RNNZOO_MANIFEST`` replaces the packaged manifest (e.g. with one listing a mirror's entries).
    """
    path = Path(os.environ.get("RNNZOO_MANIFEST", MANIFEST))
    if not path.is_file():
        return {}
    try:
        return parse(Manifest, json.loads(path.read_text()), str(path)).entries
    except (UnicodeDecodeError, ValueError) as err:
        raise ZooError(f"{path} is not a valid manifest: {err}") from None


def entry_info(name: str) -> EntryInfo:
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
        entry = _read_entry(_fetch_bytes(f"{text.rstrip('/')}/{ENTRY_FILE}", MAX_ENTRY_BYTES), text)
        # A remote entry never points into this package, and is fetched from where it was found.
        entry = entry.model_copy(update={"local": None, "urls": [text]})
        name = entry.name or _name_from_url(text)
        cache_key = f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        return fetch_entry(name, entry, cache_key)
    if is_plain_name(text) and text in load_manifest():
        if Path(text).is_dir():
            warnings.warn(
                f"{text!r} is the zoo entry; the folder ./{text} in the working directory is not used "
                f"(write ./{text} to load it)",
                stacklevel=2,
            )
        return fetch_entry(text, entry_info(text))
    if Path(text).is_dir():
        return Path(text)
    if "/" in text or os.sep in text:
        raise ZooError(f"no pretrained folder at {text}")
    return fetch_entry(text, entry_info(text))


def fetch_entry(
    name: str, entry: EntryInfo | dict, cache_key: str | None = None, headers: dict[str, str] | None = None
) -> Path:
    """The verified folder of ``entry`` (checked against ``EntryInfo`` when given as JSON): the
    packaged copy, the cache (``cache_key``, default the name), or a download into the cache (sending
    ``headers``)."""
    entry = entry if isinstance(entry, EntryInfo) else _checked_entry(entry, f"zoo entry {name!r}")
    files = entry.files
    if not files:
        raise ZooError(f"zoo entry {name!r} lists no files")
    for file_name in [name, cache_key or name, *files]:
        _check_plain_name(file_name)
    local = PACKAGE_DIR / entry.local if entry.local else None
    if local is not None and local.is_dir() and _verified(local, files, raise_on_mismatch=True):
        return local
    folder = cache_dir() / (cache_key or name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if _verified(folder, files):
            return folder
        if offline():
            raise ZooError(f"zoo entry {name!r} is not in the cache ({folder}) and RNNZOO_OFFLINE is set")
        urls = entry.urls
        if not urls:
            raise ZooError(f"zoo entry {name!r} is not packaged here and has no download URL")
        new = not folder.exists()
        folder.mkdir(exist_ok=True)
        try:
            for file_name, expected in files.items():
                if not _matches(folder / file_name, expected):
                    _download(urls, file_name, folder, expected, headers)
        except BaseException:
            if new:  # a failed first download leaves no trace
                shutil.rmtree(folder, ignore_errors=True)
            raise
    return folder


def _read_entry(data: bytes, source: str) -> EntryInfo:
    try:
        entry = json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise ZooError(f"{source}/{ENTRY_FILE} is not valid JSON ({err})") from None
    if not isinstance(entry, dict):
        raise ZooError(f"{source}/{ENTRY_FILE} is not an rnnzoo entry")
    return _checked_entry(entry, f"{source}/{ENTRY_FILE}")


def _checked_entry(entry: dict, where: str) -> EntryInfo:
    """``entry`` typed: every size an integer under ``zoo.common.formats.MAX_FILE_BYTES``, every sha256 64
    hex digits."""
    try:
        return parse(EntryInfo, entry, where)
    except FormatError as err:
        raise ZooError(str(err)) from None


def _check_plain_name(file_name: str) -> None:
    """Refuse names that would escape the cache folder (``../x``, ``/etc/x``, ``a/b``)."""
    if not is_plain_name(file_name):
        raise ZooError(f"refusing zoo file name {file_name!r}: it must be a plain file name")


def _matches(path: Path, expected: FileInfo) -> bool:
    return path.is_file() and path.stat().st_size == expected.size and sha256_of(path) == expected.sha256


def _verified(folder: Path, files: dict[str, FileInfo], raise_on_mismatch: bool = False) -> bool:
    for file_name, expected in files.items():
        if not _matches(folder / file_name, expected):
            if raise_on_mismatch and (folder / file_name).exists():
                raise ZooError(f"{folder / file_name} does not match its sha256 in the manifest (corrupted?)")
            return False
    return True


def _download(
    urls: list[str], file_name: str, folder: Path, expected: FileInfo, headers: dict[str, str] | None = None
) -> None:
    """Fetch ``file_name`` from the first URL whose bytes match its size and sha256 (a mismatch or a
    cut transfer tries the next mirror); renamed into place only once it matches."""
    errors = []
    for base in urls:
        url = f"{base.rstrip('/')}/{file_name}"
        handle, temporary = tempfile.mkstemp(prefix=f".{file_name}.", dir=folder)
        try:
            with os.fdopen(handle, "wb") as out, _open(url, headers) as response, _progress(file_name, expected) as bar:
                digest, size = _copy_at_most(response, out, expected.size, url, bar.update)
            if size < expected.size:
                raise ZooError(f"{url}: the transfer was cut after {size} of {expected.size} bytes")
            if digest != expected.sha256:
                raise ZooError(f"{url}: sha256 {digest} does not match the expected {expected.sha256}")
            os.replace(temporary, folder / file_name)
            return
        except (ZooError, urllib.error.URLError, http.client.HTTPException, OSError) as err:
            errors.append(str(err) if isinstance(err, ZooError) else f"{url}: {_describe_error(err)}")
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
    raise ZooError(f"could not download {file_name}: {'; '.join(errors)} (set RNNZOO_OFFLINE=1 to use the cache only)")


def _copy_at_most(response, out, limit: int, url: str, on_chunk=lambda n: None) -> tuple[str, int]:
    """Copy ``response`` into ``out``, refusing more than ``limit`` bytes; returns (sha256, size)."""
    digest, size = hashlib.sha256(), 0
    while chunk := response.read(min(1 << 16, limit + 1 - size)):
        size += len(chunk)
        if size > limit:
            raise ZooError(f"{url}: the server sent more than the {limit} bytes the entry states")
        out.write(chunk)
        digest.update(chunk)
        on_chunk(len(chunk))
    return digest.hexdigest(), size


def _describe_error(err: Exception) -> str:
    if isinstance(err, http.client.IncompleteRead):
        return f"the transfer was cut after {len(err.partial)} bytes"  # raised by some read paths
    return str(err) or type(err).__name__


class _TokenStaysOnItsHost(urllib.request.HTTPRedirectHandler):
    """Follows redirects, dropping ``Authorization`` when one leaves the host it was sent to: the Hub
    redirects file downloads to storage hosts (signed URLs) that must never see the user's token."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl)[:2] != urllib.parse.urlsplit(req.full_url)[:2]:
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_TokenStaysOnItsHost)


def _open(url: str, headers: dict[str, str] | None = None):
    return _OPENER.open(urllib.request.Request(url, headers=headers or {}), timeout=60)


def _fetch_bytes(url: str, limit: int) -> bytes:
    if offline():
        raise ZooError(f"RNNZOO_OFFLINE is set: cannot fetch {url}")
    try:
        return _read_at_most(url, limit)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise ZooError(f"could not fetch {url}: {_describe_error(err)}") from err


def _read_at_most(url: str, limit: int, headers: dict[str, str] | None = None) -> bytes:
    """The body of ``url``, refused once it passes ``limit`` bytes (the rest is never read)."""
    with _open(url, headers) as response:
        data = response.read(limit + 1)
    if len(data) > limit:
        raise ZooError(f"{url} is larger than {limit} bytes: not an rnnzoo {ENTRY_FILE}")
    return data


def _progress(file_name: str, expected: FileInfo):
    from tqdm.auto import tqdm

    return tqdm(total=expected.size, unit="B", unit_scale=True, desc=file_name, leave=False)


def _name_from_url(url: str) -> str:
    return urllib.parse.urlparse(url).path.rstrip("/").rsplit("/", 1)[-1]


def _from_hub(spec: str) -> Path:
    """``org/repo[@revision]``: its ``entry.json`` first, checked, and then only the files it lists,
    each streamed from the Hub's download URL through the same capped, sha256-checked copy as a URL's
    folder (whatever size the Hub announces, reading stops at the entry's), into this cache."""
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import HFValidationError, build_hf_headers, validate_repo_id

    repo_id, _, revision = spec.partition("@")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ZooError(f"hf://{spec}: {err}") from None
    url = hf_hub_url(repo_id, ENTRY_FILE, revision=revision or None)  # on HF_ENDPOINT
    base = url.removesuffix(f"/{ENTRY_FILE}")
    folder = cache_dir() / f"{repo_id.replace('/', '--')}-{hashlib.sha256(base.encode()).hexdigest()[:16]}"
    if offline() or constants.HF_HUB_OFFLINE:
        return _hub_cache(spec, folder, "offline mode is set (RNNZOO_OFFLINE or HF_HUB_OFFLINE)")
    headers = build_hf_headers()
    try:
        data = _read_at_most(url, MAX_ENTRY_BYTES, headers)
    except urllib.error.HTTPError as err:
        raise ZooError(_hub_error(spec, err)) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        return _hub_cache(spec, folder, f"the Hub cannot be reached ({_describe_error(err)})")
    entry = _read_entry(data, f"hf://{spec}").model_copy(update={"local": None, "urls": [base]})
    fetch_entry(entry.name or repo_id.rsplit("/", 1)[-1], entry, folder.name, headers)
    # Kept with the files it lists, for an offline load to check them against.
    handle, temporary = tempfile.mkstemp(prefix=f".{ENTRY_FILE}.", dir=folder)
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    os.replace(temporary, folder / ENTRY_FILE)
    return folder


def _hub_cache(spec: str, folder: Path, why: str) -> Path:
    """``folder`` when it holds a verified copy of ``hf://spec`` (by the ``entry.json`` kept with it)."""
    entry_path = folder_file(folder, ENTRY_FILE, max_bytes=MAX_ENTRY_BYTES)
    if not entry_path.is_file():
        raise ZooError(f"hf://{spec} is not in the cache ({folder}) and {why}")
    files = _read_entry(entry_path.read_bytes(), str(folder)).files
    for file_name in files:
        _check_plain_name(file_name)
    if not _verified(folder, files):
        raise ZooError(f"hf://{spec}: its copy in the cache ({folder}) is incomplete and {why}")
    return folder


def _hub_error(spec: str, err: urllib.error.HTTPError) -> str:
    code = err.headers.get("X-Error-Code")  # how the Hub tells a missing file from a missing repository
    if code == "EntryNotFound" or (err.code == 404 and code is None):
        return f"hf://{spec} holds no {ENTRY_FILE}: publish the folder with `rnnzoo zoo publish`"
    login = " (a private or gated repository needs `hf auth login` or HF_TOKEN)" if err.code in (401, 403) else ""
    return f"hf://{spec}: the Hub answered {err.code} {err.headers.get('X-Error-Message') or err.reason}{login}"


def write_entry(folder: Path, name: str, **fields) -> EntryInfo:
    """Write ``entry.json`` (name, files with size and sha256, and ``fields``) into a published folder."""
    entry = EntryInfo(name=name, **fields, files=describe_folder(folder))
    write_json(folder / ENTRY_FILE, entry)
    return entry
