"""`sfttrain train`: settings from TrainConfig's defaults, then a YAML file (--config), then flags.

Every TrainConfig field is a flag (`lora_r` -> `--lora-r`), generated from the dataclass so defaults and
help live in one place. A flag that is not given does not override the YAML file.
"""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from sfttrain.config import CHOICES, TrainConfig


def _add_setting(parser: argparse.ArgumentParser, f) -> None:
    hint = typing.get_type_hints(TrainConfig)[f.name]
    default = f.default if f.default is not MISSING else f.default_factory()
    flag = "--" + f.name.replace("_", "-")
    shown = "required" if default == "" else f"default: {f.metadata['shown'] or default}"
    help_text = f"{f.metadata['help']} ({shown})".replace("%", "%%")  # argparse formats help with %
    kw = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
    if hint is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
    elif typing.get_origin(hint) is list:
        parser.add_argument(flag, nargs="+", type=typing.get_args(hint)[0], metavar="NAME", **kw)
    else:
        kind = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        parser.add_argument(flag, type=kind, choices=CHOICES.get(f.name), **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfttrain", description="Fine-tune a causal LM on sftdata shards.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train", help="train on an sftdata build",
        description="Train a local Hugging Face causal LM on an sftdata build, alone or under torchrun.",
    )
    train.add_argument("--config", type=Path, help="YAML file of settings (flags given here override it)")
    for f in fields(TrainConfig):
        _add_setting(train, f)
    return parser


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    import yaml

    settings = {}
    if args.config is not None:
        settings = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
        if not isinstance(settings, dict):
            raise ValueError(f"{args.config} must hold a mapping of settings, not {type(settings).__name__}")
    settings.update({k: v for k, v in vars(args).items() if k not in ("command", "config")})
    return TrainConfig.from_dict(settings)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
    except (ValueError, OSError) as err:
        print(f"sfttrain: {err}", file=sys.stderr)
        return 2
    from sfttrain.train import train

    try:
        train(cfg)
    except (ValueError, OSError) as err:  # a refusal (wrong tokenizer, no build, an existing run): its message
        print(f"sfttrain: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # checkpoints already written stay; --resume continues from the latest
        print("sfttrain: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
