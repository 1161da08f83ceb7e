import pytest
import torch

from pipeline.model import INPUT, InputSpec
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
    assert cfg.input == INPUT == InputSpec(sample_rate=16_000, receptive_field=400, hop=320)
    assert INPUT.frame_rate == 50.0


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
    # the released CNN: T = floor((N - 400) / 320) + 1 (docs/model.md), against the per-layer recurrence
    cfg = Emotion2vecConfig()
    n = torch.arange(400, 20_000, 7)
    expected = torch.div(n - 400, 320, rounding_mode="floor") + 1
    assert torch.equal(conv_output_lengths(n, cfg.feature_encoder_spec), expected)
    assert [cfg.input.num_frames(x) for x in (399, 400, 16_000, 160_000)] == [0, 1, 49, 499]


def test_input_spec_of_a_non_standard_cnn_by_hand():
    # (channels, kernel, stride) per layer. One frame of the last layer (k=3) needs 3 frames of the
    # second, which (k=4, s=2) need (3 - 1) * 2 + 4 = 8 frames of the first, which (k=7, s=3) need
    # (8 - 1) * 3 + 7 = 28 samples; frames start every 3 * 2 * 3 = 18 samples.
    spec = ((8, 7, 3), (6, 4, 2), (4, 3, 3))
    cfg = Emotion2vecConfig(embed_dim=32, num_heads=4, feature_encoder_spec=spec)
    assert cfg.input == InputSpec(sample_rate=16_000, receptive_field=28, hop=18)
    assert cfg.input.frame_rate == pytest.approx(16_000 / 18)
    convs = [
        torch.nn.Conv1d(1, 8, 7, stride=3),
        torch.nn.Conv1d(8, 6, 4, stride=2),
        torch.nn.Conv1d(6, 4, 3, stride=3),
    ]
    for n in (28, 45, 46, 63, 64, 1000, 1001):
        x = torch.zeros(1, 1, n)
        with torch.no_grad():
            for conv in convs:
                x = conv(x)
        assert cfg.input.num_frames(n) == x.shape[-1], n
    assert cfg.input.num_frames(27) == 0  # too short for the last conv: torch would raise


def test_alibi_slopes_for_12_and_16_heads():
    # ALiBi (docs/model.md): exponents for 12 heads are -1..-8 then -0.5, -1.5, -2.5, -3.5
    exps = [-1, -2, -3, -4, -5, -6, -7, -8, -0.5, -1.5, -2.5, -3.5]
    assert alibi_slopes(12) == pytest.approx([2.0**e for e in exps])
    assert alibi_slopes(16) == pytest.approx([2.0 ** (-0.5 * k) for k in range(1, 17)])


def test_encoder_follows_a_non_standard_cnn():
    from pipeline.model import Emotion2vec, InputTooShortError

    spec = ((8, 7, 3), (6, 4, 2), (4, 3, 3))  # receptive field 28, hop 18 (by hand, above)
    model = Emotion2vec(
        Emotion2vecConfig(embed_dim=32, num_heads=4, depth=1, prenet_depth=1, feature_encoder_spec=spec)
    )
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 1000), torch.tensor([1000, 28]))
        assert out.frames.shape[1] == (1000 - 28) // 18 + 1 and out.frame_lengths.tolist() == [55, 1]
        with pytest.raises(InputTooShortError, match="has 27 samples; emotion2vec needs at least 28"):
            model(torch.randn(1, 27))
