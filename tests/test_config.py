import pytest

from pipeline.config import ConfigError, load_config

MIN = "input:\n  manifest: m.jsonl\noutput:\n  path: out\n"


def write(tmp_path, text):
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(
        write(tmp_path, MIN),
        ["output.frames=true", "model.batch_seconds=12.5", "storage.endpoint_url=http://127.0.0.1:9"],
    )
    assert cfg.output.frames is True and cfg.model.batch_seconds == 12.5
    assert cfg.output.mode == "resume" and cfg.model.dtype == "auto" and cfg.input.format == "auto"
    assert cfg.storage.endpoint_url == "http://127.0.0.1:9"


def test_shipped_configs_validate():
    from pathlib import Path

    for p in sorted(Path(__file__).parent.parent.glob("configs/*.yaml")):
        load_config(p)


@pytest.mark.parametrize(
    "text,overrides,needle",
    [
        (MIN + "  framez: true\n", [], "output.framez: unknown key"),
        (MIN, ["model.sauce=x"], "model.sauce: unknown key"),
        ("output:\n  path: out\n", [], "input: required key is missing"),
        (MIN, ["output.mode=append"], "output.mode"),
        (MIN, ["model.batch_seconds=-1"], "model.batch_seconds"),
        (MIN, ["output.frames=maybe"], "output.frames"),
        (MIN + "bogus: 1\n", [], "bogus: unknown key"),
        (MIN, ["input=3"], "input"),
        (MIN, ["nokey"], "expected key.path=value"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), overrides)
    assert needle in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "input: [unclosed\n"))
