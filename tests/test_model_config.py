import pytest
import torch

from pipeline.model.components import alibi_slopes, conv_output_lengths
from pipeline.model.config import ConfigError, Emotion2vecConfig, parse_conv_spec
from pipeline.testing.checkpoints import TEMPLATE_CONFIG


def test_conv_spec_string_from_published_config():
    spec = parse_conv_spec("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]")
    assert spec == ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


@pytest.mark.parametrize(
    "bad", ["__import__('os').system('true')", "[(512, 10, 5)] + open('x')", "[(1.5, 2, 3)]"]
)
def test_conv_spec_is_never_evaluated(bad):
    with pytest.raises(ConfigError, match="feature_encoder_spec"):
        parse_conv_spec(bad)


def test_published_large_config_reads_as_large():
    import yaml

    conf = yaml.safe_load(TEMPLATE_CONFIG.read_text())
    cfg = Emotion2vecConfig.from_model_conf(conf["model_conf"], num_classes=9)
    assert (cfg.embed_dim, cfg.num_heads, cfg.depth, cfg.prenet_depth, cfg.ffn_dim) == (1024, 16, 8, 4, 4096)
    assert cfg.conv_pos_kernel == 19 and cfg.num_extra_tokens == 10 and cfg.normalize
    assert (cfg.receptive_field, cfg.hop) == (400, 320)


@pytest.mark.parametrize(
    "key,value",
    [("layer_norm_first", True), ("conv_pos_pre_ln", True), ("learned_alibi_scale_per_layer", True)],
)
def test_unsupported_variants_name_their_key(key, value):
    import yaml

    conf = yaml.safe_load(TEMPLATE_CONFIG.read_text())["model_conf"]
    if key == "layer_norm_first":
        conf[key] = value
    else:
        conf["modalities"]["audio"][key] = value
    with pytest.raises(ConfigError, match=key):
        Emotion2vecConfig.from_model_conf(conf)


def test_frame_count_formula_matches_the_conv_stack():
    # model-spec §4.1: T = floor((N - 400) / 320) + 1, computed here independently layer by layer
    cfg = Emotion2vecConfig()
    n = torch.arange(400, 20_000, 7)
    expected = torch.div(n - 400, 320, rounding_mode="floor") + 1
    assert torch.equal(conv_output_lengths(n, cfg.feature_encoder_spec), expected)
    assert [cfg.num_frames(x) for x in (399, 400, 16_000, 160_000)] == [0, 1, 49, 499]


def test_alibi_slopes_for_12_and_16_heads():
    # model-spec §4.5: exponents for 12 heads are -1..-8 then -0.5, -1.5, -2.5, -3.5
    exps = [-1, -2, -3, -4, -5, -6, -7, -8, -0.5, -1.5, -2.5, -3.5]
    assert alibi_slopes(12) == pytest.approx([2.0**e for e in exps])
    assert alibi_slopes(16) == pytest.approx([2.0 ** (-0.5 * k) for k in range(1, 17)])
