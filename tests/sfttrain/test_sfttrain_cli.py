"""Settings: defaults in one dataclass, a YAML file, flags over it; unknown keys and bad values refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sfttrain.cli import build_parser, main, resolve_config
from sfttrain.config import TrainConfig

REQUIRED = ["--data", "d", "--model", "m", "--out", "o"]


def _resolve(argv):
    return resolve_config(build_parser().parse_args(["train", *argv]))


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": "shards", "model": "m", "out": "o", "lora_r": 8, "lr": 1e-4,
                                    "lora_target_modules": ["q_proj", "v_proj"], "gradient_checkpointing": True}))
    cfg = _resolve(["--config", str(path), "--lora-r", "32", "--no-gradient-checkpointing", "--max-steps", "5"])
    assert (cfg.lora_r, cfg.lr, cfg.gradient_checkpointing, cfg.max_steps) == (32, 1e-4, False, 5)
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]
    assert cfg.batch_size == TrainConfig.__dataclass_fields__["batch_size"].default


def test_unknown_yaml_key_names_the_closest_setting(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: d\nmodel: m\nout: o\nlora_rank: 8\n")
    with pytest.raises(ValueError, match="unknown setting 'lora_rank' \\(did you mean 'lora_r'\\?\\)"):
        _resolve(["--config", str(path)])


def test_wrong_types_and_values_are_refused():
    with pytest.raises(ValueError, match="lora_r = 'big' is not of type int"):
        TrainConfig.from_dict({"data": "d", "model": "m", "out": "o", "lora_r": "big"})
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        TrainConfig(data="d", model="m", out="o", batch_size=0)
    with pytest.raises(ValueError, match="model is required"):
        TrainConfig.from_dict({"data": "d", "out": "o"})
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", *REQUIRED, "--finetune", "half"])


def test_main_reports_bad_settings_without_a_traceback(capsys):
    assert main(["train", "--data", "d", "--out", "o"]) == 2
    assert "model is required" in capsys.readouterr().err


def test_every_setting_is_a_flag():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for name in TrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in text


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "configs").glob("sfttrain-*.yaml")))
def test_example_configs_are_valid(path):
    cfg = _resolve(["--config", str(path), *REQUIRED])
    assert cfg.data == "d"
