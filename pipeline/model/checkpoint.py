"""Checkpoint formats -> one `ModelBundle` (model + the preprocessing contract that goes with it).

Formats (docs/model.md, "Checkpoint formats"):
  * a Hugging Face / ModelScope model directory: `configuration.json` naming `config.yaml`, the
    weights (`init_param`, e.g. `model.pt`) and `tokens.txt`; backbone keys may carry the
    `d2v_model.` prefix given by the config's `scope_map`;
  * a fairseq checkpoint (`emotion2vec_base.pt`): weights under `model`, architecture under
    `cfg.model`; read without fairseq;
  * a bare state dict (`.pt`) or `.safetensors` with a `config.yaml` (FunASR layout) or
    `config.json` (`Emotion2vecConfig.to_dict()`) beside it, and `tokens.txt` when it has a head.

Key conversion is declarative (the rules below) and ends in a strict load: known training-only
keys are dropped by name; anything else missing, unexpected or mis-shaped raises `CheckpointError`
naming the keys. Loading never runs code from the file: `torch.load(weights_only=True)` first, and
for legacy pickles that reference fairseq/omegaconf classes a restricted unpickler that admits
tensors, containers, plain value types and inert stand-ins only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import socket
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import ConfigError, Emotion2vecConfig
from .encoder import Emotion2vec
from .inputs import InputSpec

log = logging.getLogger(__name__)

# The 9 emotion2vec+ classes in head order (docs/model.md, "Labels"); English names are what we output.
DEFAULT_TOKENS = [
    "生气/angry", "厌恶/disgusted", "恐惧/fearful", "开心/happy", "中立/neutral",
    "其他/other", "难过/sad", "吃惊/surprised", "<unk>",
]  # fmt: skip

# --- key rules --------------------------------------------------------------------------------
STRIP_PREFIXES = ("module.", "d2v_model.")  # wrappers: DDP, the FunASR plus scope
TRAINING_ONLY_PREFIXES = (  # pre-training modules with no part in inference
    "modality_encoders.AUDIO.decoder.",
    "_ema",
    "ema.",
    "shared_decoder.",
    "recon_proj.",
)
STATE_WRAPPERS = ("state_dict", "model_state_dict", "model")  # checked in this order (FunASR's)
WEIGHT_FILES = ("model.pt", "emotion2vec_base.pt", "model.safetensors", "pytorch_model.bin")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message names the file and the offending keys."""


@dataclass
class ModelBundle:
    """The model and everything a caller needs to feed it and read its outputs."""

    model: Emotion2vec
    config: Emotion2vecConfig
    tokens: list[str]  # raw tokens.txt entries in head order ([] for head-less models)
    weights_sha256: str
    weights_path: str
    weights_file_id: str = ""  # file_id(weights_path) when it was hashed
    source: str = ""
    revision: str | None = None

    @property
    def input(self) -> InputSpec:
        """Sample rate, receptive field and hop of the loaded architecture."""
        return self.config.input

    @property
    def sample_rate(self) -> int:
        return self.input.sample_rate

    @property
    def normalize(self) -> bool:
        return self.config.normalize

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def labels(self) -> list[str]:
        """English class names in head order: angry, disgusted, ..., unknown."""
        return [label_name(t) for t in self.tokens]

    @property
    def masked_labels(self) -> list[int]:
        return [i for i, t in enumerate(self.tokens) if t.startswith("unuse")]

    def fingerprint(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "revision": self.revision,
            "weights_sha256": self.weights_sha256,
            "embed_dim": self.embed_dim,
            "labels": self.labels,
        }


def label_name(token: str) -> str:
    """`生气/angry` -> `angry`; `<unk>` -> `unknown`; `unuse_0` stays."""
    if token == "<unk>":
        return "unknown"
    return token.rsplit("/", 1)[-1].strip()


# --- files ------------------------------------------------------------------------------------


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_id(path: str | Path) -> str:
    """Which file this is on this machine, as of its last change: boot id, device, inode, size and
    modification time. Equal ids mean the same bytes, so a hash taken by another process on this
    machine (the driver's, for a model actor beside it) need not be taken again."""
    st = os.stat(path)
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = socket.gethostname()
    return f"{boot}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text ({e}); save it as UTF-8") from None


def read_tokens(path: Path) -> list[str]:
    tokens = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
    if not tokens:
        raise CheckpointError(f"{path}: empty token list")
    return tokens


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as e:
        raise CheckpointError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a mapping at the top level")
    return data


@dataclass
class _Layout:
    weights: Path
    config_yaml: Path | None = None
    config_json: Path | None = None
    tokens: Path | None = None


def _find_layout(path: Path) -> _Layout:
    if path.is_file():
        d = path.parent
        return _Layout(
            weights=path,
            config_yaml=_exists(d / "config.yaml"),
            config_json=_exists(d / "config.json"),
            tokens=_exists(d / "tokens.txt"),
        )
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such file or directory")
    meta = path / "configuration.json"
    if meta.is_file():
        try:
            conf = json.loads(_read_text(meta))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{meta}: not valid JSON: {e}") from e
        if not isinstance(conf, dict):
            raise CheckpointError(f"{meta}: expected a JSON object at the top level")
        files = conf.get("file_path_metas", {}) or {}
        init = files.get("init_param")
        if not init:
            raise CheckpointError(f"{meta}: file_path_metas.init_param is missing")
        tok = (files.get("tokenizer_conf") or {}).get("token_list")
        return _Layout(
            weights=_must_exist(path / init, f"{meta}: file_path_metas.init_param"),
            config_yaml=_must_exist(
                path / files.get("config", "config.yaml"), f"{meta}: file_path_metas.config"
            ),
            tokens=_must_exist(path / tok, f"{meta}: file_path_metas.tokenizer_conf.token_list")
            if tok
            else None,
        )
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return _find_layout(path / name)
    found = sorted(p.name for p in path.iterdir())
    raise CheckpointError(
        f"{path}: no configuration.json and none of {', '.join(WEIGHT_FILES)} (found: {found})"
    )


def _exists(p: Path) -> Path | None:
    return p if p.is_file() else None


def _must_exist(p: Path, what: str) -> Path:
    if not p.is_file():
        raise CheckpointError(f"{what} names {p.name}, which does not exist in {p.parent}")
    return p


# --- safe unpickling --------------------------------------------------------------------------


class _Inert:
    """Stand-in for a class a legacy pickle names (fairseq/omegaconf configs, enums): it records
    its arguments and state and runs nothing."""

    _qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._kwargs = kwargs
        self._state: Any = None

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:  # for REDUCE on a stand-in instance
        return type(self)(*args, **kwargs)


_INERT_MODULE_PREFIXES = (
    "fairseq.",
    "fairseq2.",
    "omegaconf.",
    "enum",
    "argparse",
    "typing",
    "dataclasses",
    "funasr.",
)
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "object"),
    ("copyreg", "_reconstructor"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    # the value types typed omegaconf nodes (fairseq's structured configs) name in their metadata;
    # calling one only converts a value
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "bool"),
    ("builtins", "str"),
    ("builtins", "bytes"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "Size"),
    ("torch", "device"),
}


class _Refused(pickle.UnpicklingError):
    """A pickle that names a global the restricted unpickler does not admit (not a broken file)."""


def _restricted_pickle_module() -> Any:
    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            module = _PY2_MODULES.get(module, module)  # protocol-2 pickles name builtins `__builtin__`
            if module == "builtins":  # ... and str and int by their Python 2 names
                name = _PY2_NAMES.get(name, name)
            if (module, name) in _SAFE_GLOBALS:
                return super().find_class(module, name)
            if module == "torch" and name.endswith("Storage") or module == "torch" and name in _DTYPES:
                return super().find_class(module, name)
            if module.startswith(_INERT_MODULE_PREFIXES) or module in {
                "enum",
                "argparse",
                "fairseq",
                "omegaconf",
            }:
                return type(name, (_Inert,), {"_qualname": f"{module}.{name}"})
            raise _Refused(f"global {module}.{name} is not allowed (it could run code)")

    class Module:
        Unpickler = RestrictedUnpickler

        @staticmethod
        def load(f: Any, **kw: Any) -> Any:
            return RestrictedUnpickler(f, **kw).load()

    return Module


_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
_PY2_NAMES = {"unicode": "str", "long": "int"}
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"  # how every Git LFS pointer file starts
_DTYPES = {
    "float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool",
}  # fmt: skip


def _plain(obj: Any) -> Any:
    """Turn inert stand-ins (omegaconf DictConfig/ListConfig/ValueNode, enums, Namespace) into
    plain dicts, lists and values."""
    if isinstance(obj, _Inert):
        st = obj._state
        if isinstance(st, dict):
            if "_content" in st:  # omegaconf container / node
                return _plain(st["_content"])
            if "_val" in st:
                return _plain(st["_val"])
            return {k: _plain(v) for k, v in st.items()}
        if obj._args:  # enum member: Enum(value); Namespace(**kw) comes through kwargs/state
            return _plain(obj._args[0]) if len(obj._args) == 1 else [_plain(a) for a in obj._args]
        if obj._kwargs:
            return {k: _plain(v) for k, v in obj._kwargs.items()}
        return None
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def read_checkpoint(path: Path) -> Any:
    """Deserialise a weights file without running code from it. A zip-format file (what torch.save
    writes since 1.6) is memory-mapped rather than copied: its tensors are read from the page cache
    where they are used (~0.25 s less per model load at base size, on the path to a job's first
    batch); older files are read whole."""
    with open(path, "rb") as f:
        head = f.read(len(_LFS_POINTER))
    if head == _LFS_POINTER:  # a repo cloned without git-lfs: the weights were never fetched
        raise CheckpointError(
            f"{path}: a Git LFS pointer file, not the weights: fetch them (`git lfs pull` in the clone, or "
            f"`hf download` / `modelscope download` the repo)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - a truncated or corrupt file, in the reader's own words
            raise CheckpointError(f"{path}: not a readable safetensors file: {type(e).__name__}: {e}") from e
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as first:
        log.info("%s: weights-only load refused (%s); trying the restricted unpickler", path, first)
        try:
            obj = torch.load(
                path,
                map_location="cpu",
                weights_only=False,
                pickle_module=_restricted_pickle_module(),
                mmap=mmap,
            )
        except _Refused as e:
            raise CheckpointError(f"{path}: refused to load: {e}") from None
        except Exception as e:  # noqa: BLE001 - corrupt files fail in many ways
            raise CheckpointError(
                f"{path}: not a readable PyTorch checkpoint: {type(e).__name__}: {e}"
            ) from e
        return _plain(obj)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {type(e).__name__}: {e}") from e


# --- state dict conversion --------------------------------------------------------------------


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """-> (flat state dict, fairseq `cfg.model` if the file carries one, with `normalize` from
    `cfg.task` where the model's config has none: fairseq's audio tasks own that switch)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict at the top level, found {type(obj).__name__}")
    cfg = None
    raw_cfg = obj.get("cfg")
    if isinstance(raw_cfg, Mapping) and isinstance(raw_cfg.get("model"), Mapping):
        cfg = dict(raw_cfg["model"])
        task = raw_cfg.get("task")
        if cfg.get("normalize") is None and isinstance(task, Mapping) and task.get("normalize") is not None:
            cfg["normalize"] = task["normalize"]
    state: Any = obj
    for key in STATE_WRAPPERS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    return dict(state), cfg


def convert_state_dict(
    state: Mapping[str, Any], scope_map: list[Any] | None = None
) -> dict[str, torch.Tensor]:
    """Apply the key rules: scope_map renames, wrapper prefixes stripped, training-only keys
    dropped by name, 4-D `alibi_scale` upgraded to 5-D."""
    pairs = _scope_pairs(scope_map)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key
        for src, dst in pairs:
            if src and k.startswith(src):
                k = dst + k[len(src) :]
                break
        changed = True
        while changed:
            changed = False
            for p in STRIP_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        if k.startswith(TRAINING_ONLY_PREFIXES):
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"unexpected non-tensor entry {key!r} ({type(value).__name__})")
        if k.endswith("alibi_scale") and value.dim() == 4:
            value = value.unsqueeze(0)
        if k in out:
            raise CheckpointError(f"two checkpoint keys map to {k!r} (one of them is {key!r})")
        out[k] = value
    return out


def _scope_pairs(scope_map: list[Any] | None) -> list[tuple[str, str]]:
    if not scope_map:
        return []
    if isinstance(scope_map, str):
        scope_map = scope_map.split(",")
    items = ["" if v is None or str(v).lower() == "none" else str(v) for v in scope_map]
    if len(items) % 2:
        raise CheckpointError(f"scope_map must have an even number of entries, got {scope_map!r}")
    return list(zip(items[0::2], items[1::2], strict=True))


def strict_load(model: Emotion2vec, state: dict[str, torch.Tensor], where: str) -> None:
    expected = model.state_dict()
    # a tensor with no elements holds nothing to load (the extra tokens of a model with none, which
    # FunASR's module does not create, so its checkpoints lack the key)
    empty = {k: torch.zeros(v.shape) for k, v in expected.items() if v.numel() == 0 and k not in state}
    state = {**state, **empty}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_few(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_few(mismatched)}")
    if problems:
        raise CheckpointError(f"{where}: checkpoint does not match the model config; " + "; ".join(problems))
    # assign: the model is built on the meta device (no memory, no initial weights); contiguous, as
    # a copy into allocated parameters would have made them
    model.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=True, assign=True)


def _few(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


# --- the loader -------------------------------------------------------------------------------


def load_bundle(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    source: str | None = None,
    revision: str | None = None,
    known_sha256: Mapping[str, str] | None = None,
) -> ModelBundle:
    """Load any supported checkpoint layout from a local path into an eval-mode model.
    `known_sha256`: file_id -> sha256 of weights files already hashed; the weights are hashed only
    when their file_id is not there (hashing reads the whole file: ~0.3 s per 400 MB)."""
    path = Path(path)
    layout = _find_layout(path)
    obj = read_checkpoint(layout.weights)
    raw_state, fairseq_cfg = _unwrap(obj, layout.weights)

    scope_map = None
    if layout.config_yaml is not None and fairseq_cfg is None:
        conf = _read_yaml(layout.config_yaml)
        model_conf = conf.get("model_conf")
        if not isinstance(model_conf, Mapping):
            raise CheckpointError(f"{layout.config_yaml}: model_conf is missing")
        scope_map = conf.get("scope_map")
        where_cfg = str(layout.config_yaml)
    elif fairseq_cfg is not None:
        model_conf, where_cfg = fairseq_cfg, f"{layout.weights} (cfg.model)"
    elif layout.config_json is not None:
        model_conf, where_cfg = None, str(layout.config_json)
    else:
        raise CheckpointError(
            f"{layout.weights}: no model config: put the published config.yaml (or a config.json) beside it"
        )

    state = convert_state_dict(raw_state, scope_map)
    head = state.get("proj.weight")
    num_classes = int(head.shape[0]) if head is not None else 0
    tokens: list[str] = []
    if num_classes:
        if layout.tokens is not None:
            tokens = read_tokens(layout.tokens)
        elif num_classes == len(DEFAULT_TOKENS):
            log.warning(
                "%s: no tokens.txt beside the weights; using the emotion2vec+ 9-label list", layout.weights
            )
            tokens = list(DEFAULT_TOKENS)
        else:
            raise CheckpointError(
                f"{layout.weights}: the head has {num_classes} classes but there is no tokens.txt"
            )
        if len(tokens) != num_classes:
            raise CheckpointError(
                f"{layout.tokens}: {len(tokens)} labels, but proj.weight in {layout.weights.name} has {num_classes} rows"
            )

    try:
        if model_conf is not None:
            cfg = Emotion2vecConfig.from_model_conf(model_conf, num_classes=num_classes)
        else:
            cfg = Emotion2vecConfig.from_dict(
                {**json.loads(layout.config_json.read_text(encoding="utf-8")), "num_classes": num_classes}
            )
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where_cfg}: {e}") from e

    # built without drawing random initial weights (half a second for the base size, on the path to
    # a model actor's first batch): strict_load fills every parameter and buffer from the checkpoint
    with torch.device("meta"):
        model = Emotion2vec(cfg)
    strict_load(model, state, str(layout.weights))
    # the one buffer a checkpoint does not hold
    model.label_mask = torch.tensor([t.startswith("unuse") for t in tokens], dtype=torch.bool)
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    weights_id = file_id(layout.weights)
    return ModelBundle(
        model=model,
        config=cfg,
        tokens=tokens,
        weights_sha256=(known_sha256 or {}).get(weights_id) or sha256_file(layout.weights),
        weights_path=str(layout.weights),
        weights_file_id=weights_id,
        source=source or str(path),
        revision=revision,
    )
