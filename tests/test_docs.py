"""The documentation runs as written: every command in README.md and docs/*.md names a script
that exists and uses only flags its parser accepts (run.py's values of choice flags included),
every relative link resolves to a file and, with #heading, to a heading of that page, the
README's test command is the one CI runs, and no page claims what "this CPU" has."""
import ast
import json
import re
import shlex
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
COMMAND_START = re.compile(r"^(\.venv/bin/)?(python3?|bash|mmnas|pip) ")


def page_name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def prose(text: str) -> str:
    """The page without its fenced code blocks and inline code (where links are not links)."""
    return INLINE.sub("", FENCE.sub("", text))


def commands(page: Path):
    """Every shell command of the page: lines of fenced blocks (continuations joined, comments
    dropped, `a && b` split) and inline code spans that start like a command."""
    text = page.read_text(encoding="utf-8")
    found = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line.strip())
            if COMMAND_START.match(line):
                found += [part.strip() for part in line.split("&&")]
    for span in INLINE.findall(FENCE.sub("", text)):
        if COMMAND_START.match(span):
            found += [part.strip() for part in span.split("&&")]
    return found


def all_commands():
    return [(page_name(page), command) for page in PAGES for command in commands(page)]


# ---- what each entry point accepts

@lru_cache(maxsize=None)
def run_py_actions():
    """run.py's flags (mmnas/cli.py builds its parser) -> their argparse actions."""
    from mmnas.cli import build_parser
    return {option: action for action in build_parser()._actions for option in action.option_strings}


# Runs each script in one interpreter (Paddle is imported once) until it asks argparse to parse:
# there the parser it really built is caught and its option strings written out, so no script
# does any work. Scripts without a parser are never run (parses_flags below).
PARSER_CHILD = """
import argparse, json, runpy, sys
out_path, scripts = sys.argv[1], sys.argv[2:]


class ParserBuilt(Exception):
    pass


def catch(parser, args=None, namespace=None):
    raise ParserBuilt(parser)


argparse.ArgumentParser.parse_known_args = catch
flags = {}
for script in scripts:
    sys.argv = [script]
    try:
        runpy.run_path(script, run_name="__main__")
        flags[script] = None
    except ParserBuilt as built:
        flags[script] = sorted(o for a in built.args[0]._actions for o in a.option_strings)
with open(out_path, "w") as f:
    json.dump(flags, f)
"""


def parses_flags(script: str) -> bool:
    """The script builds an argparse parser: it says so itself, or it is a thin wrapper around
    the `main` of an mmnas module that does (tools/demo_web.py)."""
    source = (ROOT / script).read_text(encoding="utf-8")
    if "argparse" in source:
        return True
    wrapped = re.search(r"^from (mmnas[\w.]*) import main\b", source, re.M)
    module = wrapped and ROOT / (wrapped.group(1).replace(".", "/") + ".py")
    return bool(module and module.is_file() and "argparse" in module.read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def script_flags_all():
    """The option strings of every script (run.py aside) that the pages call with a flag."""
    scripts = sorted({script for _, command in all_commands() for script, args in [entry_point(command)]
                      if script and script.endswith(".py") and script != "run.py" and (ROOT / script).is_file()
                      and any(True for _ in flag_words(args))})
    without = [script for script in scripts if not parses_flags(script)]
    assert not without, f"the pages pass flags to {without}, which build no argparse parser"
    with tempfile.TemporaryDirectory() as tmp:
        out_path = Path(tmp) / "flags.json"
        done = subprocess.run([sys.executable, "-c", PARSER_CHILD, str(out_path), *scripts], cwd=ROOT,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"collecting the parsers of {scripts} failed:\n{done.stderr[-3000:]}"
        flags = json.loads(out_path.read_text())
    unparsed = [script for script, options in flags.items() if options is None]
    assert not unparsed, f"{unparsed} ended without parsing their arguments"
    return {script: set(options) for script, options in flags.items()}


def entry_point(command: str):
    """(script path relative to the repo, its arguments) of a command, or (None, []) for one
    that runs no script of the project (pip, visualdl, pytest, venv)."""
    tokens = shlex.split(command)
    tokens[0] = tokens[0].replace(".venv/bin/", "")
    if tokens[0] == "mmnas":
        args = tokens[1:]
        if args and not args[0].startswith("-"):
            args = [f"--RUN={args[0]}"] + args[1:]
        return "run.py", args
    if tokens[0] == "bash":
        return tokens[1], tokens[2:]
    if tokens[0] in ("python", "python3"):
        if tokens[1] == "-m":
            if tokens[2] == "paddle.distributed.launch" and "run.py" in tokens:
                return "run.py", tokens[tokens.index("run.py") + 1:]
            return None, []
        return tokens[1], tokens[2:]
    return None, []


def flag_words(args):
    """(flag, value or None) of every --FLAG in the arguments; `[--GPU=0,1]` (optional) counts."""
    for word in args:
        word = word.strip("[]")
        if word.startswith("-") and not re.fullmatch(r"-?\d+(\.\d+)?", word):
            name, _, value = word.partition("=")
            yield name, (value if "=" in word else None)


def is_placeholder(value: str) -> bool:
    return "..." in value or "<" in value or "$" in value


# ---- the tests

def test_the_pages_have_commands_to_check():
    """The extraction itself: the quick start and every docs page with commands are found."""
    found = all_commands()
    pages = {page for page, _ in found}
    assert {"README.md", "docs/training.md", "docs/data.md", "docs/search.md", "docs/predict.md",
            "docs/deployment.md", "docs/performance.md"} <= pages
    assert ("README.md", "bash tools/demo_synthetic.sh") in found
    assert len(found) > 40


@pytest.mark.parametrize("page,command", all_commands(), ids=lambda value: value[:70])
def test_every_command_names_a_script_that_exists_and_flags_it_accepts(page, command):
    script, args = entry_point(command)
    if script is None:
        return
    assert (ROOT / script).is_file(), f"{page}: `{command}` runs {script}, which does not exist"
    if script == "run.py":
        actions = run_py_actions()
        from mmnas.config import MODEL_ALIASES
        for name, value in flag_words(args):
            assert name in actions, f"{page}: `{command}` uses {name}, which run.py does not accept"
            if value is None or is_placeholder(value):
                continue
            choices = actions[name].choices
            if choices is not None:
                assert value in choices, f"{page}: `{command}`: {name}={value} is not one of {list(choices)}"
            if name == "--MODEL":
                assert value in MODEL_ALIASES or (ROOT / value).is_file(), \
                    f"{page}: `{command}`: --MODEL={value} is neither a model name nor a config file"
    elif script.endswith(".py") and any(True for _ in flag_words(args)):
        accepted = script_flags_all()[script]
        for name, _ in flag_words(args):
            assert name in accepted, f"{page}: `{command}` uses {name}, which {script} does not accept"


def test_pip_extras_named_in_the_pages_exist():
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    extras = next(set(ast.literal_eval(kw.value)) for node in ast.walk(tree) if isinstance(node, ast.Call)
                  for kw in node.keywords if kw.arg == "extras_require")
    for page, command in all_commands():
        for extra in re.findall(r'-e "\.\[(\w+)\]"', command):
            assert extra in extras, f"{page}: `{command}` installs the extra [{extra}], which setup.py lacks"


def test_pytest_paths_in_the_pages_exist():
    for page, command in all_commands():
        if " -m pytest" in command:
            for word in shlex.split(command)[3:]:
                if not word.startswith("-"):
                    assert (ROOT / word.split("::")[0]).exists(), f"{page}: `{command}`: {word} does not exist"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set:
    seen, found = {}, set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", page.read_text(encoding="utf-8")), re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_slug_follows_github():
    assert slug("Evaluation engines, measured") == "evaluation-engines-measured"
    assert slug("Visual grounding (RefCOCO, RefCOCO+, RefCOCOg)") == "visual-grounding-refcoco-refcoco-refcocog"
    assert slug("Train, evaluate, submit") == "train-evaluate-submit"
    assert slug("`binary_gate` strategy") == "binary_gate-strategy"


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            name = linked.relative_to(ROOT).as_posix() if ROOT in linked.parents else str(linked)
            if not linked.exists():
                broken.append(f"{page_name(page)}: ({target}): {name} does not exist")
                continue
            if fragment and fragment not in anchors(linked):
                broken.append(f"{page_name(page)}: ({target}): {name} has no heading #{fragment}")
    assert not broken, "\n".join(broken)


def test_readme_test_command_is_what_ci_runs():
    ci_line = next(line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
                   if "pytest" in line)
    readme_lines = [line.strip() for block in FENCE.findall((ROOT / "README.md").read_text(encoding="utf-8"))
                    for line in block.splitlines()]
    assert ci_line.strip() in readme_lines


def test_readme_step_by_step_is_what_the_demo_script_runs():
    """The README lists the demo script's steps; they must stay the same commands."""
    script = (ROOT / "tools" / "demo_synthetic.sh").read_text(encoding="utf-8")
    steps = [re.sub(r"\s+", " ", line.replace('"$PY"', "python").replace('"$EPOCHS"', "6")).strip()
             for line in script.splitlines() if line.startswith('"$PY"')]
    readme = {re.sub(r"\s+", " ", command) for command in commands(ROOT / "README.md")}
    assert len(steps) == 4
    assert [step for step in steps if step not in readme] == []


MACHINE_CLAIMS = re.compile(r"this CPU|this machine|this project's (2-core|CPU|machine|AMD)|"
                            r"the machine this was built on|on this AMD", re.I)


def test_no_page_claims_what_this_cpu_has():
    """Figures are written "measured on <CPU>, <date>"; what the running CPU has is measured at
    run time, never stated."""
    claims = [f"{page_name(page)}:{number}: {line.strip()}" for page in PAGES
              for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
              if MACHINE_CLAIMS.search(line)]
    assert not claims, "\n".join(claims)
