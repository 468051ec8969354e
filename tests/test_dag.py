"""The one table of stages (`phaseflip.dag.STAGES`) against every other place that lists them: the workflow's
rules, the command line, the stage modules, which rule wrote a file, the report's cost table, the README and
the SLURM profile."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml

from phaseflip import cli
from phaseflip.dag import COMMANDS, RULES, STAGES, rule_of_job, writers
from phaseflip.io import writer_of

ROOT = Path(__file__).resolve().parents[1]
RULE_FILES = sorted((ROOT / "workflow" / "rules").glob("*.smk"))


def rule_bodies() -> dict[str, str]:
    """rule name -> its text, from every rule file (`rule x:` or `checkpoint x:` up to the next one)."""
    bodies: dict[str, str] = {}
    for path in RULE_FILES:
        text = path.read_text(encoding="utf-8")
        pattern = r"^(?:rule|checkpoint) (\w+):\n(.*?)(?=^(?:rule|checkpoint) |\Z)"
        for m in re.finditer(pattern, text, flags=re.M | re.S):
            bodies[m.group(1)] = m.group(2)
    return bodies


def test_the_workflow_has_exactly_the_tables_rules() -> None:
    assert sorted(rule_bodies()) == sorted(RULES)
    assert len(set(RULES)) == len(RULES)


def test_each_rule_runs_its_stages_command() -> None:
    for rule, body in rule_bodies().items():
        commands = re.findall(r"python -m phaseflip\.cli (\w+)", body)
        assert commands == [next(s for s in STAGES if s.rule == rule).command], rule


def test_each_rule_passes_only_the_arguments_its_stage_takes() -> None:
    for rule, body in rule_bodies().items():
        stage = next(s for s in STAGES if s.rule == rule)
        allowed = {"params", "threads", "out", *stage.files, *stage.lists, *(f for f, _ in stage.options)}
        shell = body[body.index("shell:"):]
        passed = {a.replace("-", "_") for a in re.findall(r"--([a-z][a-z-]*)", shell)}
        assert passed <= allowed, (rule, passed - allowed)
        assert set(stage.files) <= passed, (rule, set(stage.files) - passed)  # every required file


def test_every_command_is_a_stage_module_whose_run_takes_the_tables_arguments() -> None:
    for command, stage in COMMANDS.items():
        run = importlib.import_module(stage.module).run
        params = list(inspect.signature(run).parameters)
        assert params[0] == "params", command
        expected = {"out", *stage.files, *stage.lists, *(f for f, _ in stage.options)}
        assert set(params[1:]) - {"threads"} == expected, command
    stage_modules = {p.stem for p in (ROOT / "src" / "phaseflip" / "stages").glob("*.py")} - {"__init__", "inputs"}
    assert stage_modules == set(COMMANDS)


def test_the_cli_offers_every_command_and_only_those() -> None:
    sub = next(a for a in cli.parser()._actions if a.dest == "stage")
    assert sorted(sub.choices) == sorted(COMMANDS)  # type: ignore[arg-type]
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["not_a_stage", "--params", "{}", "--out", "x"])


@pytest.mark.parametrize(("path", "rule"), [
    ("results/base_model/model.safetensors", "base_model"),
    ("results/steering/vector_real_and_dreams.safetensors", "steering_vectors"),
    ("results/steering/steering_screen.csv", "steering"),
    ("results/runs/lr1e-03_nall_k0_s0/metrics.csv", "evaluate"),
    ("results/runs/lr1e-03_nall_k0_s0/train_log.csv", "train"),
    ("results/forecast/bench/bench_summary.csv", "forecast_bench"),
    ("results/forecast/forecasts.csv", "forecast"),
    ("results/base_eval/metrics.csv", "evaluate_base"),
    ("elsewhere/notes.csv", None),
])
def test_writer_of_names_the_rule_from_the_table(path: str, rule: str | None) -> None:
    assert writer_of(path) == rule


def test_every_rules_writes_are_reachable() -> None:
    """No pattern is shadowed by a more general one listed first."""
    for pattern, rule in writers():
        example = pattern.replace("*", "x") + ("file.csv" if pattern.endswith("/") else "")
        assert writer_of(f"results/{example}") == rule, pattern


def test_rule_of_job_strips_the_grid_point() -> None:
    assert rule_of_job("train_lr1e-03_nall_k0_s0") == "train"
    assert rule_of_job("evaluate_control-irrelevant_lr1e-03_nall_k0_s0") == "evaluate"
    assert rule_of_job("evaluate_base") == "evaluate_base"
    assert rule_of_job("steering_vectors") == "steering_vectors"
    assert rule_of_job("steering") == "steering"
    assert rule_of_job("forecast_bench") == "forecast_bench"
    assert rule_of_job("something_else") == "something_else"


def test_the_readme_stage_table_lists_the_rules_in_order_with_files_that_exist() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    header = readme.index("| rule | stage | library | writes |")
    rows = [line for line in readme[header:].split("\n\n")[0].splitlines()[2:]]
    assert [r.split("|")[1].strip() for r in rows] == list(RULES)
    for row in rows:
        for module in re.findall(r"`([\w/]+\.py)`", "|".join(row.split("|")[2:4])):
            assert (ROOT / "src" / "phaseflip" / module).is_file(), module


def test_the_slurm_profile_names_only_rules_of_the_table() -> None:
    profile = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text(encoding="utf-8"))
    named = set(profile.get("set-threads", {})) | set(profile.get("set-resources", {}))
    assert named and named <= set(RULES), named - set(RULES)


def test_every_design_reference_points_at_a_section_of_the_repositorys_design_document() -> None:
    """`§N` in code, config, rules, tests and the README names docs/design.md on the same line, and §N is one
    of its sections: no reference to a document a clone does not contain."""
    sections = set(re.findall(r"^## §(\d+) ", (ROOT / "docs" / "design.md").read_text(encoding="utf-8"), flags=re.M))
    assert sections == {str(n) for n in range(1, 11)}
    places = [ROOT / "Snakefile", ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml", ROOT / "dvc.yaml"]
    for folder, pattern in (("src", "*.py"), ("conf", "*.yaml"), ("workflow", "*"), ("tests", "*.py")):
        places += [p for p in (ROOT / folder).rglob(pattern) if p.is_file()]
    bad = []
    for path in places:
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            numbers = re.findall(r"§(\d+)", line)
            if numbers and ("docs/design.md" not in line or not set(numbers) <= sections):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert bad == []


def test_the_readme_layout_has_a_line_for_every_module_and_rule_file() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout"):]
    tree = layout[layout.index("```"):layout.index("```", layout.index("```") + 3)]
    package = ROOT / "src" / "phaseflip"
    listed, folder = set(), ""
    for line in tree.splitlines():
        name = line.split()[0] if line.strip() else ""
        if line.startswith("  ") and name.endswith("/") and not line.startswith("    "):
            folder = name
        elif line.startswith("    ") and name.endswith(".py"):
            listed.add(folder + name)
        elif line.startswith("  ") and name.endswith(".py"):
            listed.add(name)
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py") if p.name != "__init__.py"}
    assert modules == listed, (modules - listed, listed - modules)
    for rule_file in RULE_FILES:
        assert f"rules/{rule_file.name}" in tree, rule_file.name
