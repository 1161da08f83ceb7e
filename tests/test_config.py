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


@pytest.mark.parametrize("kind", ["directory", "not-utf8"])
def test_an_unreadable_config_file_is_a_config_error_and_exit_2(tmp_path, kind, capsys):
    """docs/architecture.md: a bad config exits 2 with one `error:` line naming the file. A config path
    that is a folder, or a file that is not UTF-8 text (saved as Latin-1), was an IsADirectoryError /
    UnicodeDecodeError that e2v-extract reported as a failure under Ray (exit 1)."""
    from pipeline.cli.extract import main

    if kind == "directory":
        path = tmp_path / "configs"
        path.mkdir()
    else:
        path = tmp_path / "job.yaml"
        path.write_bytes("input:\n  manifest: caf\u00e9.jsonl\noutput:\n  path: out\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(path) in err[0], err


def test_a_section_whose_keys_are_all_commented_out_takes_the_defaults(tmp_path):
    """A section header with every key under it commented out is YAML null. `input:` and `output:`
    took that as an empty section (then naming their missing keys), and `--set` fills a null section,
    but the other sections were refused ("storage: Input should be a valid dictionary")."""
    text = (
        MIN
        + "model:\n  # source: emotion2vec_plus_large\n"
        + "audio:\n  vad:\n    # threshold: 0.6\n"
        + "storage:\n  # endpoint_url: http://127.0.0.1:9000\n"
        + "ray:\n"
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.model.source == "emotion2vec_plus_base" and cfg.audio.vad.threshold == 0.5
    assert cfg.storage.endpoint_url is None and cfg.ray.max_restarts == 3
    assert load_config(write(tmp_path, MIN + "audio:\n")).audio.max_chunk_s == 30.0


def test_set_takes_a_glob_or_template_that_is_not_yaml_as_text(tmp_path):
    """`--set input.manifest='*.jsonl'` (a glob of shards, README) and `--set input.path_template=
    '{id}.wav'` reach the program without the shell's quotes; as YAML they are an alias and a broken
    flow mapping, and --set refused them ("value is not valid YAML: found undefined alias")."""
    cfg = load_config(
        write(tmp_path, MIN),
        ["input.manifest=*.jsonl", "input.path_template={id}.wav", "output.path=**/out"],
    )
    assert (cfg.input.manifest, cfg.input.path_template, cfg.output.path) == ("*.jsonl", "{id}.wav", "**/out")
    # values that are YAML still are (README: `--set output.frames=true`)
    assert load_config(write(tmp_path, MIN), ["output.frames=true"]).output.frames is True


@pytest.mark.parametrize(
    "text,key",
    [
        # a section given twice (a block pasted at the end): YAML kept the last, the first one's keys
        # were dropped without a word (here model.source: the job would run the default model)
        (MIN + "model:\n  source: emotion2vec_plus_large\nmodel:\n  device: cpu\n", "model"),
        (MIN + "  frames: true\n  frames: false\n", "output.frames"),
    ],
)
def test_a_key_given_twice_is_a_config_error_naming_it(tmp_path, text, key):
    with pytest.raises(ConfigError, match=rf"{key}: given twice \(lines \d+ and \d+\)"):
        load_config(write(tmp_path, text))
