"""Every folder rnnzoo writes, as one typed schema each: the pretrained folder, the exported folder
and the zoo entry (``entry.json`` and the manifest that collects them).

Like timm's ``PretrainedCfg``, one record holds every fact about a folder, and a reader gets that
record or a clear error, never a half-checked dict. The module is torch-free (pydantic, which the
service depends on anyway), so training, export, the hub, the runtime and the service all read
these definitions. Each format has its own version; one rule (``folder_file``) decides which file
names a folder may point at.
"""

import json
import os
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zoo.common import decoding, tasks

CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE = "config.json", "model.safetensors", "metrics.json"
ENTRY_FILE = "entry.json"  # a published folder's file list with sizes and sha256 (``zoo.storage.hub``)
# The largest file an entry may list (``RNNZOO_MAX_FILE_BYTES`` overrides it): the biggest shipped
# entry is 10 MB, so 4 GiB leaves room for large models and still refuses a crafted ``10**15``.
MAX_FILE_BYTES = int(os.environ.get("RNNZOO_MAX_FILE_BYTES", 4 * 2**30))
# The largest JSON file read (configs, metrics, entries, tokenizers): the largest shipped one is ~1 MB.
MAX_JSON_BYTES = 64 * 2**20


class FormatError(ValueError):
    """A folder's JSON file is missing fields, has fields of the wrong type, or another version."""


class Schema(BaseModel):
    """Fields unknown to this version are ignored (a newer writer may add some); every known one is checked."""

    model_config = ConfigDict(extra="ignore")

    def to_json(self) -> dict:
        return self.model_dump(exclude_none=True)


# -- the pretrained folder: config.json, model.safetensors, tokenizer JSON files, metrics.json -------------------


class PretrainedConfig(Schema):
    """``config.json`` of a pretrained folder (``zoo.storage.pretrained``): enough to rebuild the network
    (``architecture(**arguments)``) and its Lightning task (``task_arguments``)."""

    FORMAT_VERSION: ClassVar[int] = 2  # 2: ``task`` is a ``zoo.common.tasks`` name; 1 is read as 2
    READS: ClassVar[tuple[int, ...]] = (1, 2)
    # Version 1 arguments under their old names.
    RENAMED_ARGUMENTS: ClassVar[dict[str, str]] = {
        "max_decode_length": "max_new_tokens",
        "tie_embeddings": "tie_weights",
    }

    format_version: int = FORMAT_VERSION
    architecture: str  # the zoo class (``SequenceClassifier``) or its task's ensemble class
    arguments: dict  # the architecture's keyword arguments
    task: str  # a ``zoo.common.tasks`` name
    task_arguments: dict  # the LightningModule's hyperparameters
    tokenizers: dict[str, str] = {}  # tokenizer name -> file
    weights_dtype: str = "float32"  # how the weights are stored (``int8``: per-row int8 matrices)
    tied_weights: dict[str, str] = {}  # a tied tensor's name -> the name it is stored under
    int8_rows: list[str] = []  # matrices stored as int8 rows with a float16 scale each

    def files(self) -> set[str]:
        return {CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE, ENTRY_FILE, *self.tokenizers.values()}


# -- the exported folder: ONNX graphs, tokenizer JSON files, config.json ---------------------------------------


class TensorSpec(Schema):
    name: str
    dtype: str  # numpy's name: int64, float32
    shape: list[int | str]  # axis names where the size varies ("batch", "time")


class GraphSpec(Schema):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def input_names(self) -> list[str]:
        return [value.name for value in self.inputs]

    def output_names(self) -> list[str]:
        return [value.name for value in self.outputs]


class StateSpec(Schema):
    """The recurrent state carried from one graph call to the next; empty for stateless graphs."""

    inputs: list[str] = []  # graph input names
    outputs: list[str] = []  # the graph outputs that give the next value of each, same order
    shape: list[int | str] | None = None  # ``[layers, "batch", size]``, zeros at the start (language models)


class MemberSpec(Schema):
    """One translator of an ensemble: its graph files, state and the encoder outputs its decoder reads."""

    encoder: str
    decoder: str
    state: StateSpec
    memory: list[str]


class DecodingSpec(Schema):
    """A translator's decoding settings, the library's defaults where the model sets none."""

    beam_size: int = decoding.BEAM_SIZE
    length_penalty: float = decoding.LENGTH_PENALTY
    max_new_tokens: int | None = None  # None: from the source's length (``decoding.default_max_new_tokens``)

    @classmethod
    def of(cls, settings: dict) -> "DecodingSpec":
        """The settings among ``settings`` (a task's hyperparameters); a ``None`` one keeps the default."""
        return cls.model_validate({k: v for k, v in settings.items() if k in cls.model_fields and v is not None})


class ExportConfig(Schema):
    """``config.json`` of an exported folder (``deploy.export`` writes it, ``deploy.runtime`` reads it)."""

    FORMAT_VERSION: ClassVar[int] = 2
    READS: ClassVar[tuple[int, ...]] = (2,)

    format_version: int = FORMAT_VERSION
    task: str  # a ``zoo.common.tasks`` name
    architecture: str  # the zoo network it was exported from
    labels: list[str] | None = None  # classifier and tagger
    language_pair: str | None = None  # translator: ``de-en``
    columns: list[str] | None = None  # forecaster: the series' columns, in the order of each row
    tokenizers: dict[str, str]  # tokenizer name -> file
    special_tokens: dict[str, dict[str, int]]  # tokenizer name -> {token: id}
    graphs: dict[str, GraphSpec]  # graph file -> its inputs and outputs
    state: StateSpec
    memory: list[str]  # the encoder outputs the translator's decoder step reads
    # A translator ensemble: one pair of graphs per member (the top-level state and memory are then
    # empty, and the runtime averages the members' next-word probabilities).
    members: list[MemberSpec] | None = None
    decoding: DecodingSpec
    # What export measured and where the folder came from.
    opset: int | None = None
    quantization: Literal["int8"] | None = None
    rnnzoo_version: str | None = None
    source_sha256: str | None = None
    verification: dict = {}
    parity: dict | None = None

    def files(self) -> set[str]:
        return {CONFIG_FILE, *self.tokenizers.values(), *self.graphs}

    def translator_members(self) -> list[MemberSpec]:
        """Each network's graphs: an ensemble's ``members``, or the one network's encoder and decoder."""
        if self.members is not None:
            return self.members
        return [MemberSpec(encoder="encoder.onnx", decoder="decoder.onnx", state=self.state, memory=self.memory)]


# -- the zoo entry: entry.json in a published folder, and the manifest of entries ------------------------------


class FileInfo(Schema):
    size: int = Field(ge=0, le=MAX_FILE_BYTES)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class EntryInfo(Schema):
    """A zoo entry: what the folder holds (every file's size and sha256), what it reached and how."""

    FORMAT_VERSION: ClassVar[int] = 1
    READS: ClassVar[tuple[int, ...]] = (1,)

    format_version: int = FORMAT_VERSION
    name: str = ""  # a remote entry without one is named after its URL
    task: str | None = None
    architecture: str | None = None
    parameters: int | None = None  # counted over parameters, not buffers or int8 scales
    description: str = ""
    metrics: dict[str, float] = {}  # on the test split, as ``rnnzoo test`` printed them
    anchor: str = ""  # the published figure it is compared with
    command: str = ""  # the command that trained and evaluated it
    urls: list[str] = []  # mirrors of the folder
    files: dict[str, FileInfo]
    local: str | None = None  # manifest only: the folder shipped inside the package

    def size(self) -> int:
        return sum(file.size for file in self.files.values())

    def to_json(self) -> dict:
        # Version 1 is written without its number, as the first published entries were.
        exclude = {"format_version"} if self.format_version == 1 else set()
        return self.model_dump(exclude_none=True, exclude=exclude)


class Manifest(Schema):
    FORMAT_VERSION: ClassVar[int] = 1
    READS: ClassVar[tuple[int, ...]] = (1,)

    format_version: int = FORMAT_VERSION
    entries: dict[str, EntryInfo] = {}

    def to_json(self) -> dict:
        return {"entries": {name: entry.to_json() for name, entry in sorted(self.entries.items())}}


# -- reading and checking ---------------------------------------------------------------------------------------


def parse(schema: type[Schema], value, where: str):
    """``value`` (decoded JSON) checked against ``schema``; a ``FormatError`` naming each bad field."""
    if not isinstance(value, dict):
        raise FormatError(f"{where}: not a JSON object")
    version = value.get("format_version", schema.FORMAT_VERSION)
    if version not in schema.READS:
        raise FormatError(f"{where}: format_version {version!r}, this rnnzoo reads {schema.FORMAT_VERSION}")
    try:
        return schema.model_validate(value)
    except ValidationError as err:
        fields = sorted({str(error["loc"][0]) for error in err.errors() if error["loc"]})
        raise FormatError(f"{where}: missing or malformed {', '.join(fields)}") from None


def read_json(path: Path):
    size = Path(path).stat().st_size
    if size > MAX_JSON_BYTES:
        raise FormatError(f"{path}: {size:,} bytes; rnnzoo reads JSON files of at most {MAX_JSON_BYTES:,}")
    try:
        return json.loads(Path(path).read_text())
    except (UnicodeDecodeError, ValueError) as err:
        raise FormatError(f"{path}: not valid JSON ({err})") from None


def write_json(path: Path, value) -> None:
    Path(path).write_text(json.dumps(value.to_json() if isinstance(value, Schema) else value, indent=2) + "\n")


def read_pretrained_config(folder: Path, listed: set[str] | None = None) -> PretrainedConfig:
    """The checked ``config.json`` of a pretrained folder, version 1 read as version 2; ``listed``:
    its ``listed_files`` when the caller has read them."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a pretrained folder: it has no {CONFIG_FILE}")
    folder_file(Path(folder), CONFIG_FILE, listed_files(folder) if listed is None else listed)
    value = read_json(path)
    if isinstance(value, dict) and value.get("format_version") == 1:
        for arguments in (value.get("task_arguments"), value.get("arguments")):
            for old, new in PretrainedConfig.RENAMED_ARGUMENTS.items():
                if isinstance(arguments, dict) and old in arguments:
                    arguments[new] = arguments.pop(old)
    config = parse(PretrainedConfig, value, str(path))
    config.task = tasks.get(config.task, str(path)).name  # version 1 named the LightningModule's class
    config.format_version = PretrainedConfig.FORMAT_VERSION
    return config


def read_export_config(folder: Path) -> ExportConfig:
    """The checked ``config.json`` of an exported folder."""
    path = folder_file(Path(folder), CONFIG_FILE, max_bytes=MAX_JSON_BYTES)
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an exported model folder: it has no {CONFIG_FILE}")
    value = read_json(path)
    if not isinstance(value, dict) or "graphs" not in value:
        raise FormatError(
            f"{folder} is not an exported model folder; `rnnzoo export --ckpt {folder} --out DIR` writes one"
        )
    version = value.get("format_version")
    if version not in ExportConfig.READS:
        raise FormatError(
            f"{path}: export format {version!r}, this rnnzoo reads format {ExportConfig.FORMAT_VERSION}: export the "
            "model again with `rnnzoo export --ckpt SOURCE --out DIR`"
        )
    try:
        return parse(ExportConfig, value, str(path))
    except FormatError as err:
        raise FormatError(f"{err}; export the model again") from None


def read_written_config(folder: Path) -> PretrainedConfig | ExportConfig | None:
    """The config of a folder rnnzoo wrote (pretrained or exported), ``None`` for any other folder."""
    try:
        value = read_json(folder_file(Path(folder), CONFIG_FILE, max_bytes=MAX_JSON_BYTES))
        schema = ExportConfig if isinstance(value, dict) and "graphs" in value else PretrainedConfig
        return parse(schema, value, str(folder))
    except (OSError, FormatError):
        return None


def is_plain_name(file_name) -> bool:
    """A file name with no folder part (not ``../x``, ``/etc/x``, ``a/b``, ``a\\b``): it stays inside its folder."""
    return (
        isinstance(file_name, str)
        and file_name not in ("", ".", "..")
        and Path(file_name).name == file_name
        and "\\" not in file_name
    )


def listed_files(folder: Path) -> set[str] | None:
    """The files ``entry.json`` lists with their sha256, or ``None`` for a folder without one."""
    path = folder_file(Path(folder), ENTRY_FILE, max_bytes=MAX_JSON_BYTES)
    if not path.is_file():
        return None
    try:
        return set(parse(EntryInfo, read_json(path), str(path)).files)
    except FormatError as err:
        raise FormatError(f"not a valid entry ({err})") from None


def folder_file(folder: Path, file_name, listed: set[str] | None = None, max_bytes: int = MAX_FILE_BYTES) -> Path:
    """The path of a file a folder's config names, refused unless it is a plain name inside the
    folder, one of ``listed`` (its ``entry.json``'s files; ``None`` without one), not a symbolic
    link nor another kind of non-regular file, and at most ``max_bytes``: an absolute or ``../`` path
    or a link would read files the folder does not hold, unlisted files are never read, and a FIFO or
    an oversized file would hang or exhaust the reader."""
    if not is_plain_name(file_name):
        raise FormatError(f"{Path(folder) / CONFIG_FILE}: {file_name!r} is not a plain file name inside the folder")
    if listed is not None and file_name not in listed:
        raise FormatError(f"{folder}: {file_name} is not listed in {ENTRY_FILE}, so it is not read")
    path = Path(folder) / file_name
    if path.is_symlink():  # it could name any file (/dev/zero, another user's): folders hold their own files
        raise FormatError(f"{path} is a symbolic link; copy the file itself into the folder")
    if path.exists() and not path.is_file():
        raise FormatError(f"{path} is not a regular file")
    if path.is_file() and path.stat().st_size > max_bytes:
        raise FormatError(f"{path}: {path.stat().st_size:,} bytes; rnnzoo reads at most {max_bytes:,} for it")
    return path
