"""Architecture of the emotion2vec family, read from the published configs.

`Emotion2vecConfig` holds architecture only. Each field names the key it mirrors in the FunASR
`config.yaml` (`model_conf.<key>`) or the fairseq checkpoint (`cfg.model.<key>`); `from_model_conf`
reads either. Presets exist for documentation and for building random-init models; real
checkpoints always bring their own config.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .inputs import InputSpec

ConvSpec = tuple[tuple[int, int, int], ...]  # (channels, kernel, stride) per CNN layer

DEFAULT_FEATURE_ENCODER_SPEC: ConvSpec = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
# The input contract of every released model, for code that needs it before a checkpoint is loaded.
INPUT = InputSpec.from_conv_spec(DEFAULT_FEATURE_ENCODER_SPEC)


class ConfigError(ValueError):
    """A model config that is malformed or describes an architecture we do not implement."""


@dataclass(frozen=True)
class Emotion2vecConfig:
    embed_dim: int = 768  # embed_dim: D, width of the transformer
    num_heads: int = 12  # num_heads: H, attention heads (head dim = D / H)
    depth: int = 8  # depth: main transformer blocks (`blocks.N`)
    prenet_depth: int = 4  # modalities.audio.prenet_depth: blocks in `context_encoder`
    mlp_ratio: float = 4.0  # mlp_ratio: FFN width = D * mlp_ratio
    norm_eps: float = 1e-5  # norm_eps: eps of every transformer LayerNorm
    feature_encoder_spec: ConvSpec = DEFAULT_FEATURE_ENCODER_SPEC  # modalities.audio.feature_encoder_spec
    conv_pos_width: int = 95  # modalities.audio.conv_pos_width: total width of the positional convs
    conv_pos_depth: int = 5  # modalities.audio.conv_pos_depth: number of positional conv layers
    conv_pos_groups: int = 16  # modalities.audio.conv_pos_groups: groups of each positional conv
    num_extra_tokens: int = 10  # modalities.audio.num_extra_tokens: learned tokens prepended
    alibi_scale_per_head: bool = True  # modalities.audio.learned_alibi_scale_per_head: one scale per head
    normalize: bool = True  # normalize: per-utterance waveform layer norm before the CNN
    num_classes: int = 0  # len(tokens.txt): width of the `proj` head, 0 for head-less models
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # unread keys

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.embed_dim % self.conv_pos_groups:
            raise ConfigError(
                f"embed_dim={self.embed_dim} is not divisible by "
                f"modalities.audio.conv_pos_groups={self.conv_pos_groups}"
            )
        if not self.feature_encoder_spec:
            raise ConfigError("modalities.audio.feature_encoder_spec is empty")

    @property
    def conv_pos_kernel(self) -> int:
        return max(3, self.conv_pos_width // self.conv_pos_depth)

    @property
    def ffn_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def input(self) -> InputSpec:
        """Sample rate, receptive field and hop of this architecture (from `feature_encoder_spec`)."""
        return InputSpec.from_conv_spec(self.feature_encoder_spec)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("extra")
        d["feature_encoder_spec"] = [list(x) for x in self.feature_encoder_spec]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Emotion2vecConfig:
        """Inverse of `to_dict` (our own JSON sidecar format)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown model config keys: {', '.join(unknown)}")
        kw = dict(d)
        if "feature_encoder_spec" in kw:
            kw["feature_encoder_spec"] = parse_conv_spec(kw["feature_encoder_spec"])
        return cls(**kw)

    @classmethod
    def from_model_conf(cls, conf: Mapping[str, Any], num_classes: int = 0) -> Emotion2vecConfig:
        """Read a FunASR `model_conf` / fairseq `cfg.model` mapping.

        Raises `ConfigError` naming the key when the config asks for a variant this encoder does not
        implement (pre-LN blocks, per-layer ALiBi scales, ...), rather than silently mis-computing.
        """
        audio = _get(conf, "modalities", {}) or {}
        audio = _get(audio, "audio", {}) or {}

        def top(key: str, default: Any) -> Any:
            v = _get(conf, key, None)
            return default if v is None else v

        def aud(key: str, default: Any) -> Any:
            v = _get(audio, key, None)
            return default if v is None else v

        unsupported = {
            "layer_norm_first": (top("layer_norm_first", False), False),
            "norm_affine": (top("norm_affine", True), True),
            "modalities.audio.conv_pos_pre_ln": (aud("conv_pos_pre_ln", False), False),
            "modalities.audio.learned_alibi_scale_per_layer": (
                aud("learned_alibi_scale_per_layer", False),
                False,
            ),
            "modalities.audio.learned_alibi": (aud("learned_alibi", False), False),
            "modalities.audio.use_alibi_encoder": (aud("use_alibi_encoder", True), True),
            "modalities.audio.extractor_mode": (str(aud("extractor_mode", "layer_norm")), "layer_norm"),
        }
        for key, (value, wanted) in unsupported.items():
            if _enum_str(value) != _enum_str(wanted):
                raise ConfigError(f"{key}={value!r} is not supported (only {wanted!r} is implemented)")
        num_heads = int(top("num_heads", 12))
        alibi_heads = int(aud("num_alibi_heads", num_heads))
        if alibi_heads != num_heads:
            raise ConfigError(
                f"modalities.audio.num_alibi_heads={alibi_heads} differs from num_heads={num_heads}"
            )
        return cls(
            embed_dim=int(top("embed_dim", 768)),
            num_heads=num_heads,
            depth=int(top("depth", 8)),
            prenet_depth=int(aud("prenet_depth", 4)),
            mlp_ratio=float(top("mlp_ratio", 4.0)),
            norm_eps=float(top("norm_eps", 1e-5)),
            feature_encoder_spec=parse_conv_spec(aud("feature_encoder_spec", DEFAULT_FEATURE_ENCODER_SPEC)),
            conv_pos_width=int(aud("conv_pos_width", 95)),
            conv_pos_depth=int(aud("conv_pos_depth", 5)),
            conv_pos_groups=int(aud("conv_pos_groups", 16)),
            num_extra_tokens=int(aud("num_extra_tokens", 10)),
            alibi_scale_per_head=bool(aud("learned_alibi_scale_per_head", True)),
            normalize=bool(top("normalize", True)),
            num_classes=num_classes,
            extra=dict(conf),
        )


def base(num_classes: int = 0) -> Emotion2vecConfig:
    """emotion2vec_base / base_finetuned / plus_seed / plus_base: D=768, 12 heads, 4+8 blocks."""
    return Emotion2vecConfig(num_classes=num_classes)


def plus_large(num_classes: int = 9) -> Emotion2vecConfig:
    """emotion2vec_plus_large: D=1024, 16 heads, 4+8 blocks (docs/model.md, "Models")."""
    return dataclasses.replace(base(num_classes), embed_dim=1024, num_heads=16)


def _get(m: Any, key: str, default: Any) -> Any:
    if isinstance(m, Mapping):
        return m.get(key, default)
    return getattr(m, key, default)


def _enum_str(v: Any) -> Any:
    # fairseq configs may store enums as strings ("layer_norm") or as their names.
    if isinstance(v, str):
        return v.lower().split(".")[-1]
    return v


_ALLOWED_SPEC_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.Add,
    ast.Mult,
    ast.List,
    ast.Tuple,
    ast.Constant,
    ast.Load,
)


def parse_conv_spec(spec: Any) -> ConvSpec:
    """Parse `feature_encoder_spec`: a list of triples, or the string form the configs use,
    e.g. `'[(512, 10, 5)] + [(512, 3, 2)] * 4'`. The string is evaluated as a literal expression
    (lists, tuples, ints, `+` and `*` only); anything else is rejected, never `eval`-ed."""
    if isinstance(spec, str):
        try:
            tree = ast.parse(spec, mode="eval")
        except SyntaxError as e:
            raise ConfigError(f"modalities.audio.feature_encoder_spec: cannot parse {spec!r}") from e
        for node in ast.walk(tree):
            if not isinstance(node, _ALLOWED_SPEC_NODES):
                raise ConfigError(
                    f"modalities.audio.feature_encoder_spec: {type(node).__name__} is not allowed in {spec!r}"
                )
        spec = _eval_spec(tree.body)
    try:
        out = tuple((int(c), int(k), int(s)) for c, k, s in spec)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"modalities.audio.feature_encoder_spec: expected (dim, kernel, stride) triples, got {spec!r}"
        ) from e
    return out


def _eval_spec(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        if not isinstance(node.value, int):
            raise ConfigError(f"modalities.audio.feature_encoder_spec: unexpected constant {node.value!r}")
        return node.value
    if isinstance(node, ast.List):
        return [_eval_spec(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_eval_spec(e) for e in node.elts)
    if isinstance(node, ast.BinOp):
        left, right = _eval_spec(node.left), _eval_spec(node.right)
        if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
            return left + right
        if isinstance(node.op, ast.Mult) and isinstance(left, list) and isinstance(right, int):
            return left * right
        if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, list):
            return right * left
    raise ConfigError("modalities.audio.feature_encoder_spec: unsupported expression")
