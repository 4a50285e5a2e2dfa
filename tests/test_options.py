"""The command-line options generated from dataclasses (gpt2_scratch/options.py): every script's parser is
its config's fields, one to one (finetune.py TrainConfig, evaluate.py EvalConfig, app.py AppConfig,
publish.py PublishConfig, make_preferences.py PreferencesConfig), with their defaults, help, groups and
choices; every script refuses abbreviations and suggests the closest option for an unknown one."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import app
import evaluate
import finetune
import make_preferences
import publish
from gpt2_scratch.demo.config import AppConfig
from gpt2_scratch.eval.config import EvalConfig
from gpt2_scratch.eval.evaluation import EvalSettings
from gpt2_scratch.eval.judge import JudgeConfig
from gpt2_scratch.generate.config import PreferencesConfig
from gpt2_scratch.generate.sampling import SamplingSettings
from gpt2_scratch.options import ArgumentParser, HelpFormatter, add_dataclass_options, option_name
from gpt2_scratch.publish.config import PublishConfig
from gpt2_scratch.runs import RunInfo, RunPaths
from gpt2_scratch.train import config as train_config
from gpt2_scratch.train.config import RESUME_OVERRIDES, TrainConfig, resume_config

GROUPS = ["model and data", "output", "optimization", "evaluation during training", "hardware"]
CONFIGS = [(TrainConfig, finetune.build_parser), (EvalConfig, evaluate.build_parser)]
PARSERS = {
    "finetune.py": lambda argv: finetune.build_parser().parse_args(argv),
    "evaluate.py": lambda argv: evaluate.build_parser().parse_args(argv),
    "app.py": app.parse_args,
    "publish.py": publish.parse_args,
}


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.dest != "help"]


def help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help line of ``action`` as --help prints it (before wrapping)."""
    return parser._get_formatter()._expand_help(action)


def error_of(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no usage block
    return err.strip()


@pytest.mark.parametrize("cls, build", CONFIGS)
def test_each_option_is_one_field_and_back(cls, build):
    names = [f.name for f in dataclasses.fields(cls)]
    acts = options(build())
    assert [a.dest for a in acts] == names
    for a in acts:
        assert a.option_strings[0] == option_name(a.dest)
    # The defaults are the dataclass's fields' (None where __post_init__ fills in a --method's default).
    assert vars(build().parse_args([])) == {f.name: f.default for f in dataclasses.fields(cls)}


def test_train_options_have_help_and_the_groups_of_the_help():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"].strip() and f.metadata["group"].strip(), f.name
    groups = [g.title for g in finetune.build_parser()._action_groups if g._group_actions][1:]  # after "options"
    assert groups[: len(GROUPS)] == GROUPS
    # Each field sits under its own group, and each group's options are in field order.
    parser = finetune.build_parser()
    for g in parser._action_groups[2:]:
        assert all(TrainConfig.__dataclass_fields__[a.dest].metadata["group"] == g.title for a in g._group_actions)


@pytest.mark.parametrize("cls, build", CONFIGS)
def test_every_option_states_its_default_the_same_way(cls, build):
    parser = build()
    for a in options(parser):
        text = help_text(parser, a)
        assert text.count("(default: ") == 1 and text.endswith(")"), text
    if cls is TrainConfig:
        lr = next(a for a in options(parser) if a.dest == "lr")  # a default per --method: its default_text
        assert help_text(parser, lr) == "peak learning rate (AdamW) (default: 5e-5 (sft), 5e-6 (dpo))"
        decay = next(a for a in options(parser) if a.dest == "weight_decay")
        assert help_text(parser, decay).endswith(" (default: 0.1)")


def test_limit_says_what_it_counts():
    train = {a.dest: a for a in options(finetune.build_parser())}["limit"]
    ev = {a.dest: a for a in options(evaluate.build_parser())}
    assert "records of the dataset, before the split" in train.help and "(default: all)" in help_text(
        finetune.build_parser(), train
    )
    assert "test records" in ev["limit"].help
    assert help_text(evaluate.build_parser(), ev["top_k"]).endswith("(default: off)")
    assert help_text(evaluate.build_parser(), ev["top_p"]).endswith("(default: off)")


@pytest.mark.parametrize("cls, build", CONFIGS)
def test_booleans_have_no_forms(cls, build):
    parser = build()
    flags = [f.name for f in dataclasses.fields(cls) if f.type in (bool, "bool")]
    assert flags  # mask_prompt, compile, ...; refill, progress, ...
    for name in flags:
        assert getattr(parser.parse_args([option_name(name)]), name) is True
        assert getattr(parser.parse_args(["--no-" + option_name(name)[2:]]), name) is False


def test_evaluate_keeps_its_old_flags():
    parser = evaluate.build_parser()
    args = parser.parse_args(["--refill", "--restart", "--no-progress"])
    assert (args.refill, args.restart, args.progress) == (True, True, False)
    assert parser.parse_args([]).progress is True


@pytest.mark.parametrize("cls, build", CONFIGS)
def test_choices_are_enforced(cls, build, capsys):
    parser = build()
    with_choices = [(a, cls.__dataclass_fields__[a.dest].metadata["choices"]) for a in options(parser) if a.choices]
    assert {a.dest for a, _ in with_choices} == {f.name for f in dataclasses.fields(cls) if "choices" in f.metadata}
    assert len(with_choices) >= 2  # prompt_style, schedule, precision / models, dtype
    for a, choices in with_choices:
        assert tuple(a.choices) == tuple(choices)
        expected = [choices[-1]] if a.nargs == "+" else choices[-1]  # a list option (--lora-targets) gives a list
        assert getattr(parser.parse_args([a.option_strings[0], choices[-1]]), a.dest) == expected
        err = error_of(parser.parse_args, [a.option_strings[0], "nonsense"], capsys)
        assert err.startswith(f"error: argument {a.option_strings[0]}: invalid choice: 'nonsense'"), err


def test_config_rejects_a_choice_naming_the_option():
    with pytest.raises(ValueError, match=r"^--schedule must be one of constant, cosine, got 'linear'$"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match=r"^--precision must be one of auto, fp32, bf16, got 'fp16'$"):
        TrainConfig(precision="fp16")


@pytest.mark.parametrize(
    "script, argv, closest",
    [
        ("finetune.py", ["--max-step", "3"], "--max-steps"),
        ("evaluate.py", ["--max-new", "3"], "--max-new-tokens"),
        ("app.py", ["--max-bat", "3"], "--max-batch"),
        ("publish.py", ["--run", "r", "--repo", "u/m", "--dry"], "--dry-run"),
    ],
)
def test_abbreviations_are_refused(script, argv, closest, capsys):
    unknown = next(a for a in argv if a.startswith("--") and a not in ("--run", "--repo"))
    err = error_of(PARSERS[script], argv, capsys)
    assert err == f"error: unrecognized argument {unknown}; did you mean {closest}? (see --help)"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--maxsteps", "3"], "error: unrecognized argument --maxsteps; did you mean --max-steps? (see --help)"),
        (["--lr=1e-3", "--bach-size=4"], "error: unrecognized argument --bach-size; did you mean --batch-size?"),
        (["--no-compil"], "error: unrecognized argument --no-compil; did you mean --no-compile? (see --help)"),
        (["--xyzzy", "--plugh"], "error: unrecognized arguments --xyzzy --plugh (see --help)"),
        (["stray"], "error: unrecognized argument stray (see --help)"),
    ],
)
def test_an_unknown_option_suggests_the_closest(argv, message, capsys):
    err = error_of(finetune.build_parser().parse_args, argv, capsys)
    assert err.startswith(message), err


def test_resume_overrides_are_one_list(tmp_path, capsys):
    assert RESUME_OVERRIDES == ("resume", "device", "precision", "compile", "save_every_minutes")
    assert finetune.RESUME_OVERRIDES is train_config.RESUME_OVERRIDES  # resume_config, beside it, applies it
    resume = next(a for a in options(finetune.build_parser()) if a.dest == "resume")
    assert "only --device, --precision, --compile and --save-every-minutes may be given with it" in resume.help
    # The loop keeps exactly these from the command line, and the run's own values of the rest.
    stored = TrainConfig(epochs=7, lr=1e-3, device="cpu", compile=False)
    RunPaths(tmp_path).write_info(
        RunInfo(name="r", base_model="gpt2", prompt_style="alpaca", training=stored.to_dict())
    )
    given = TrainConfig(resume=str(tmp_path), epochs=1, device="cuda:3", precision="fp32", compile=True)
    config, _ = resume_config(given)
    assert config == dataclasses.replace(stored, resume=str(tmp_path), device="cuda:3", precision="fp32", compile=True)


def test_the_script_refuses_other_options_with_resume(tmp_path, capsys):
    err = error_of(finetune.main, ["--resume", str(tmp_path), "--epochs", "1", "--device", "cpu", "--lr", "1"], capsys)
    assert err == "error: --resume continues a run with the settings in its run.json; drop --epochs, --lr"


def test_eval_defaults_are_those_of_the_settings_they_fill():
    c, s, j = EvalConfig(), SamplingSettings(), JudgeConfig(url="http://x", model="m")
    assert (c.max_new_tokens, c.temperature, c.top_k, c.top_p, c.seed) == (
        s.max_new_tokens,
        s.temperature,
        s.top_k,
        s.top_p,
        s.seed,
    )
    assert (c.judge_seed, c.judge_timeout, c.judge_retries) == (j.seed, j.timeout, j.retries)
    e = EvalSettings()
    assert (c.batch_size, c.limit, c.dtype, c.refill, c.restart, c.progress) == (
        e.batch_size,
        e.limit,
        e.dtype,
        e.refill,
        e.restart,
        e.progress,
    )


# --- the generator on the field types the LoRA and DPO options will need -------------------------


@dataclass
class _Future:
    method: str = field(default="sft", metadata={"help": "objective", "group": "g", "choices": ("sft", "dpo")})
    beta: float = field(default=0.1, metadata={"help": "DPO beta", "group": "g"})
    lora_rank: int | None = field(default=None, metadata={"help": "rank", "group": "lora", "default_text": "no LoRA"})
    lora_targets: list[str] = field(
        default_factory=lambda: ["c_attn"],
        metadata={"help": "layers", "group": "lora", "choices": ("c_attn", "c_proj", "c_fc")},
    )


def _future_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="x")
    add_dataclass_options(parser, _Future)
    return parser


def test_generator_handles_list_choice_and_optional_fields(capsys):
    parser = _future_parser()
    assert vars(parser.parse_args([])) == dataclasses.asdict(_Future())
    args = parser.parse_args(
        ["--method", "dpo", "--beta", "0.5", "--lora-rank", "8", "--lora-targets", "c_attn", "c_fc"]
    )
    assert vars(args) == {"method": "dpo", "beta": 0.5, "lora_rank": 8, "lora_targets": ["c_attn", "c_fc"]}
    err = error_of(parser.parse_args, ["--lora-targets", "c_attn", "wte"], capsys)
    assert err.startswith("error: argument --lora-targets: invalid choice: 'wte'"), err
    err = error_of(parser.parse_args, ["--method", "ppo"], capsys)
    assert err.startswith("error: argument --method: invalid choice: 'ppo'"), err
    err = error_of(parser.parse_args, ["--lora-rank", "big"], capsys)
    assert err.startswith("error: argument --lora-rank: invalid int value: 'big'"), err
    helps = {a.dest: help_text(parser, a) for a in options(parser)}
    assert helps["lora_targets"] == "layers (default: c_attn)"
    assert helps["lora_rank"] == "rank (default: no LoRA)"
    assert helps["method"] == "objective (default: sft)"


def test_a_field_without_help_or_group_is_refused():
    @dataclass
    class Bad:
        x: int = field(default=1, metadata={"group": "g"})

    with pytest.raises(TypeError, match=r"Bad\.x needs 'help' and 'group'"):
        add_dataclass_options(ArgumentParser(), Bad)


def test_percent_signs_in_help_are_literal():
    schedule = next(a for a in options(finetune.build_parser()) if a.dest == "schedule")
    assert "cosine decay to 10% of --lr (default: constant)" in help_text(finetune.build_parser(), schedule)
    assert finetune.build_parser().formatter_class is HelpFormatter


# --- every script: its parser is its config's fields ------------------------------------------


SCRIPTS = {  # each script's config, parser, and the values of its required options
    "finetune.py": (TrainConfig, finetune.build_parser, {}),
    "evaluate.py": (EvalConfig, evaluate.build_parser, {}),
    "app.py": (AppConfig, app.build_parser, {}),
    "publish.py": (PublishConfig, publish.build_parser, {"run": Path("runs/r"), "repo": "me/m"}),
    "make_preferences.py": (
        PreferencesConfig,
        make_preferences.build_parser,
        {"model": "m", "out": Path("p.json")},
    ),
}


def required_argv(script: str) -> list[str]:
    return [s for name, value in SCRIPTS[script][2].items() for s in (option_name(name), str(value))]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_scripts_parser_is_generated_from_its_config(script):
    cls, build, required = SCRIPTS[script]
    parser = build()
    fields = dataclasses.fields(cls)
    acts = options(parser)
    assert [(a.dest, a.option_strings[0]) for a in acts] == [(f.name, option_name(f.name)) for f in fields]
    assert parser.formatter_class is HelpFormatter and not parser.allow_abbrev
    # The required options are the fields without a default; what is not given is the field's default.
    assert {a.dest for a in acts if a.required} == required_names(cls) == set(required)
    given = vars(parser.parse_args(required_argv(script)))
    assert given == {f.name: required[f.name] if f.name in required else default(f) for f in fields}
    # The config takes what the parser gives (None: a default its __post_init__ fills in, e.g. --lr).
    config = cls(**given)
    assert {k: getattr(config, k) for k, v in given.items() if v is not None} == {
        k: v for k, v in given.items() if v is not None
    }


def required_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if default(f) is dataclasses.MISSING}


def default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_states_defaults_the_same_way(script):
    cls, build, _ = SCRIPTS[script]
    parser = build()
    for f, a in zip(dataclasses.fields(cls), options(parser)):
        assert "(default" not in f.metadata["help"], f"{script} {a.option_strings[0]}: a hand-typed default"
        text = help_text(parser, a)
        if a.required:
            assert "(default" not in text, text
        else:
            assert text.count("(default: ") == 1 and text.endswith(")"), text


@pytest.mark.parametrize(
    "script, mistyped, closest",
    [
        ("app.py", "--queue-sise", "--queue-size"),
        ("app.py", "--no-batchin", "--no-batching"),
        ("publish.py", "--weights-dtyp", "--weights-dtype"),
        ("publish.py", "--ggfu", "--gguf"),
        ("make_preferences.py", "--max-new-token", "--max-new-tokens"),
        ("make_preferences.py", "--restrat", "--restart"),
    ],
)
def test_a_mistyped_option_gets_did_you_mean_in_every_script(script, mistyped, closest, capsys):
    err = error_of(SCRIPTS[script][1]().parse_args, [*required_argv(script), mistyped, "1"], capsys)
    assert err == f"error: unrecognized argument {mistyped}; did you mean {closest}? (see --help)"


def test_required_options_and_choices_are_refused_in_one_line(capsys):
    err = error_of(make_preferences.build_parser().parse_args, ["--model", "m"], capsys)
    assert err == "error: the following arguments are required: --out"
    err = error_of(publish.build_parser().parse_args, ["--run", "r", "--repo", "u/m", "--gguf", "q3"], capsys)
    assert err.startswith("error: argument --gguf: invalid choice: 'q3' (choose from ")


def test_repeatable_option_collects_each_value():
    parser = publish.build_parser()
    required = required_argv("publish.py")
    assert parser.parse_args([*required, "--gguf", "q8_0", "--gguf", "f16"]).gguf == ["q8_0", "f16"]
    assert parser.parse_args(required).gguf == []  # each parse appends to a copy of the default: nothing leaks
    gguf = next(a for a in options(parser) if a.dest == "gguf")
    assert help_text(parser, gguf).endswith("(default: none)") and gguf.metavar == "TYPE"


def test_switches_keep_their_old_spelling():
    assert app.build_parser().parse_args(["--no-batching"]).batching is False
    assert app.build_parser().parse_args([]).batching is True
    p = publish.build_parser().parse_args(["--run", "r", "--repo", "u/m", "--private", "--dry-run"])
    assert (p.private, p.dry_run) == (True, True)
    m = make_preferences.build_parser().parse_args(["--model", "m", "--out", "p.json", "--no-progress", "--restart"])
    assert (m.progress, m.restart, m.replace) == (False, True, False)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: AppConfig(concurrency=0), "--concurrency must be at least 1, got 0"),
        (lambda: AppConfig(max_waiting=-2), "--max-waiting must be at least 1, got -2"),
        (lambda: AppConfig(port=70000), "--port must be from 1 to 65535, got 70000"),
        (
            lambda: PreferencesConfig(model="m", out=Path("p.json"), limit=0),
            "--limit must be a positive integer, got 0",
        ),
        (
            lambda: PreferencesConfig(model="m", out=Path("p.json"), batch_size=0),
            "--batch-size must be a positive integer, got 0",
        ),
    ],
)
def test_range_errors_name_the_option_in_one_wording(make, message):
    with pytest.raises(ValueError) as e:
        make()
    assert str(e.value) == message


def test_app_help_needs_no_gradio():
    """app.py builds its parser from demo/config.py alone: --help answers without importing Gradio."""
    code = "import sys, app; app.build_parser().format_help(); print(sorted({'gradio', 'torch'} & set(sys.modules)))"
    root = Path(app.__file__).parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['torch']"
