"""The job config: YAML -> typed, validated `JobConfig` (unknown keys are errors).

`load_config(path, overrides)` reads a YAML file, applies `--set key.path=value` overrides (values
parsed as YAML: `--set output.frames=true`, `--set model.batch_seconds=30`; text that is not YAML,
such as a glob `*.jsonl`, as that text) and validates. Every problem is reported as `ConfigError`
naming the key path, e.g. `input.manifest: field required`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .redact import redact_data


class ConfigError(ValueError):
    pass


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _file_uri_as_path(value: str | None) -> str | None:
    """A `file:` URI (`file:///data/My%20Clips`) is read as the local path it names, so a folder's
    listing, the ids taken from it and the output's files are those of the path itself."""
    from .storage import local_path

    return value if value is None else local_path(value)


class InputConfig(_Section):
    manifest: str = Field(
        description="a manifest file, a glob or directory of manifests, a Kaldi data dir, a Hugging Face "
        "save_to_disk folder, or a folder/glob of audio files; local or a URL (s3://, gs://, az://, hf://, http(s)://)"
    )
    format: Literal[
        "auto", "jsonl", "json", "csv", "tsv", "parquet", "arrow", "scp", "lhotse", "kaldi", "audio", "rttm"
    ] = "auto"
    audio_root: str | None = Field(None, description="prefix (dir or s3:// URI) for relative audio paths")
    id_column: str | None = Field(None, description="default: the first of id, key, utt_id")
    path_column: str | None = Field(
        None, description="default: the first of path, audio_filepath, wav, source, audio"
    )
    path_template: str | None = Field(
        None,
        description="build each row's audio path from its columns instead of a path column, e.g. "
        "'dia{Dialogue_ID}_utt{Utterance_ID}.mp4' (MELD's CSV); without an id column the default id is "
        "that path",
    )
    speaker_column: str | None = Field(
        None, description="default: the first of speaker, Speaker; becomes the speaker column"
    )
    limit: int | None = Field(None, ge=1, description="process only the first N manifest rows")
    rows_per_unit: int = Field(
        1000, ge=1, description="manifest rows per unit of work (committed, resumed and redone as a whole)"
    )

    _local = field_validator("manifest", "audio_root")(_file_uri_as_path)


class ModelConfig(_Section):
    source: str = "emotion2vec_plus_base"
    revision: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    cache_dir: str | None = None
    offline: bool | None = Field(None, description="only use the local hub cache (default: HF_HUB_OFFLINE)")
    num_actors: int | None = Field(None, ge=1, description="model actors (default: one per GPU, or 1 on CPU)")
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float | None = Field(
        None,
        gt=0,
        le=1,
        description="GPU share of one model actor (0.25: four actors per GPU, each capping its allocator at "
        "that share of the GPU's memory); default: 1 / (1-4 actors per GPU, from the GPU's memory and the "
        "node's CPUs per GPU), or 1 when num_actors is set",
    )
    torch_threads: int | None = Field(None, ge=1, description="default: cpus_per_actor, rounded up")
    batch_seconds: float | None = Field(
        None,
        gt=0,
        description="padded audio per forward pass in seconds (batch size x longest clip); "
        "default 16 on CPU, where padding costs more than batching gains, 600 on GPU",
    )
    max_batch_size: int | None = Field(
        None,
        ge=1,
        description="clips per forward pass; default 32 on CPU, 256 on GPU (short clips fill a GPU's "
        "batch_seconds budget only in large batches)",
    )
    rows_per_call: int | None = Field(
        None,
        ge=1,
        description="at most this many rows per model call (a decoded block is handed over in slices); "
        "default: whole decoded blocks. A call never holds more than a block (audio.block_mb) of audio",
    )

    _local = field_validator("source")(_file_uri_as_path)


class VadConfig(_Section):
    """Silero VAD settings for `audio.segmentation: vad` (see `pipeline.vad.speech_segments`).

    Segments come out on the model's 20 ms frame grid and are at least 400 samples (25 ms) long;
    shorter ones are dropped.
    """

    threshold: float = Field(
        0.5, gt=0, lt=1, description="speech probability (per 32 ms window) at or above which speech starts"
    )
    min_speech_ms: int = Field(250, ge=0, description="speech shorter than this is dropped")
    min_silence_ms: int = Field(300, ge=0, description="a pause must last this long to end a segment")
    speech_pad_ms: int = Field(100, ge=0, description="added before and after each segment")
    max_segment_s: float = Field(
        30.0,
        ge=1.0,
        description="longer speech is split at the quietest 20 ms frame of the second half before the limit",
    )


class AudioConfig(_Section):
    max_chunk_s: float = Field(
        30.0, gt=0.025, description="longer clips are processed in windows of this length"
    )
    decode_batch_size: int = Field(
        256, ge=1, description="at most this many manifest rows per decode task call (also bounded by bytes)"
    )
    block_mb: float = Field(
        64.0, gt=0, description="decoded audio per block handed to the model stage (float32 samples)"
    )
    max_duration_s: float | None = Field(
        4 * 3600.0, gt=0, description="longer audio is an error row, refused from the header before decoding"
    )
    max_file_mb: float | None = Field(
        2048.0,
        gt=0,
        description="larger files are error rows, refused from their size before the download "
        "(null: no limit, and no HEAD request per GCS/Azure/HF file)",
    )
    decode_tasks: int | None = Field(
        None, ge=1, description="max concurrent decode tasks (default: Ray decides)"
    )
    resampler: Literal["soxr", "torchaudio"] = Field(
        "soxr",
        description="to 16 kHz: soxr (libsoxr HQ, fast and accurate) or torchaudio (FunASR's resampler: "
        "the reference's input bit for bit, slower, softer above ~6 kHz)",
    )
    segmentation: Literal["none", "vad"] = Field(
        "none", description="none: one row per clip; vad: one row per speech segment of each recording"
    )
    vad: VadConfig = VadConfig()

    @field_validator("vad", mode="before")
    @classmethod
    def _not_none(cls, v: Any) -> Any:
        return {} if v is None else v  # `vad:` with its keys commented out: the defaults


class OutputConfig(_Section):
    path: str
    frames: bool = False
    mode: Literal["resume", "overwrite", "error_if_exists"] = "resume"
    max_error_fraction: float = Field(0.1, ge=0, le=1)
    rows_per_file: int = Field(2000, ge=1, description="upper bound of rows in one Parquet file")
    max_file_mb: float = Field(256.0, gt=0, description="approximate upper bound of one Parquet file")
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    lease_ttl_s: float = Field(
        60.0,
        ge=5,
        description="the run's lease on output.path (one writer at a time) expires this long after its "
        "last renewal; a dead run's lease is taken over after that. Renewed every quarter of it; a run "
        "commits nothing once less than a quarter is left",
    )

    _local = field_validator("path")(_file_uri_as_path)


class StorageConfig(_Section):
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    region: str | None = None
    anonymous: bool = Field(False, description="unsigned requests (public buckets)")
    profile: str | None = Field(None, description="AWS profile name (credentials stay in the AWS chain)")
    connect_timeout_s: float = Field(10.0, gt=0)
    request_timeout_s: float = Field(60.0, gt=0)
    retries: int = Field(5, ge=0, description="retries of a transient storage error, after the first attempt")
    retry_backoff_s: float = Field(
        0.5, ge=0, description="first retry delay; doubles each retry, with jitter"
    )
    retry_backoff_max_s: float = Field(20.0, ge=0, description="upper bound of one retry delay")


class RayConfig(_Section):
    address: str | None = Field(
        None, description="cluster to join; default RAY_ADDRESS (set by `ray job submit`), else a local Ray"
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded local Ray (default: all)")
    progress_interval_s: float = Field(5.0, gt=0)
    max_restarts: int = Field(
        3,
        ge=0,
        description="failed attempts in a row without a unit committed in between after which the run ends "
        "(each restarts the pipeline on what is left after a worker, actor or node died); 0: no restarts",
    )
    gpu_wait_s: float = Field(
        300.0,
        ge=0,
        description="how long a GPU model pool waits for the cluster's first GPU (an autoscaler adding a GPU "
        "node) before the job ends with exit 2",
    )
    cpu_task_label_selector: dict[str, str] | None = Field(
        None,
        description="Ray label selector for the read, decode and write tasks, e.g. "
        "{ray.io/node-group: '!in(gpu-group)'}: keeps them off the GPU nodes so that those keep their CPUs "
        "for the model actors",
    )


class JobConfig(_Section):
    input: InputConfig
    model: ModelConfig = ModelConfig()
    audio: AudioConfig = AudioConfig()
    output: OutputConfig
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()

    # a section header whose keys are all commented out is YAML null: an empty section
    @field_validator("input", "model", "audio", "output", "storage", "ray", mode="before")
    @classmethod
    def _not_none(cls, v: Any) -> Any:
        return {} if v is None else v

    @model_validator(mode="after")
    def _paths_not_blank(self) -> JobConfig:
        if not self.input.manifest.strip():
            raise ValueError("input.manifest is empty")
        if not self.output.path.strip():
            raise ValueError("output.path is empty")
        return self

    def redacted(self) -> dict[str, Any]:
        """The config as plain data for `_run.json` and logs. Credentials never enter the config,
        but a URL may carry some (user info, signed query parameters): every URL is redacted."""
        return redact_data(self.model_dump(mode="json"))


def apply_override(data: dict[str, Any], override: str) -> None:
    """`a.b.c=value` -> data["a"]["b"]["c"] = yaml(value)."""
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {override!r}: expected key.path=value")
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {override!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = nxt
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        # text that is not YAML is meant as text: a glob `*.jsonl` (an alias to YAML), a template
        # `{id}.wav` (a broken flow mapping); validation still names the key if the type is wrong
        node[parts[-1]] = raw.strip()


def validate(model: type[BaseModel], data: dict[str, Any], where: str) -> Any:
    """Validate `data` against a pydantic model; errors become one `ConfigError` naming each key."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{where}: " + "; ".join(_describe(err) for err in e.errors())) from None


def parse_config(data: dict[str, Any], where: str = "config") -> JobConfig:
    return validate(JobConfig, data, where)


def _describe(err: Any) -> str:
    loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    if kind == "missing":
        return f"{loc}: required key is missing"
    return f"{loc}: {err['msg']}"


def read_yaml_mapping(path: str | Path, what: str = "sections (input, model, output, ...)") -> dict[str, Any]:
    """A YAML file whose top level is a mapping (empty file -> {}); problems raise `ConfigError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        twice = _key_given_twice(yaml.compose(text, Loader=yaml.SafeLoader))
        if twice:
            raise ConfigError(f"{p}: {twice}")
        loaded = yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a folder, not a config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
    except OSError as e:  # unreadable (permissions, I/O): a bad config as the user sees it, not a crash
        raise ConfigError(f"{p}: cannot read the config file: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{p}: expected a mapping of {what}")
    return dict(loaded or {})


def _key_given_twice(node: Any, path: tuple[str, ...] = (), seen_nodes: set[int] | None = None) -> str | None:
    """The first key a mapping of the YAML gives twice, as `section.key: given twice (lines a and b)`:
    YAML keeps the last one, and the keys of a section given twice would be dropped without a word."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:  # an alias of a node already checked
        return None
    seen_nodes.add(id(node))
    children: list[tuple[str, Any]] = []
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if name in lines:
                    where = f"lines {lines[name] + 1} and {key.start_mark.line + 1}"
                    return f"{'.'.join((*path, name))}: given twice ({where})"
                lines[name] = key.start_mark.line
            children.append((name, value))
    elif isinstance(node, yaml.SequenceNode):
        children = [(str(i), item) for i, item in enumerate(node.value)]
    for name, child in children:
        found = _key_given_twice(child, (*path, name), seen_nodes)
        if found:
            return found
    return None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    data = read_yaml_mapping(path) if path is not None else {}
    for o in overrides:
        apply_override(data, o)
    return parse_config(data, str(path) if path is not None else "config")
