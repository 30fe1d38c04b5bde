"""README.md and docs/ stay true to the tree.

* configuration: the environment-variable table of ``docs/configuration.md`` lists
  exactly the variables the code under ``bus/``, ``schemas/`` and ``workers/`` reads
  (found with ``ast``: ``os.environ.get``/``[]``, ``os.getenv``, and ``.get``/``[]`` on
  an ``env``/``environ`` mapping; f-string names become patterns), and where the code
  has a literal default (``get(NAME, "x")``, ``get(NAME) or "x"``, a module constant)
  the table's default is that literal. README's short table agrees with it.
* README: a front door of at most 250 lines whose test command is ``python -m pytest``,
  the command ``.ci/run`` runs.
* links and paths: every relative link in README.md, docs/ and deploy/README.md
  points to an existing file (and heading, for ``#anchors``), and every path into the
  tree they mention (``bus/...``, ``workers/...``, ...) exists.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT

CODE_DIRS = ("bus", "schemas", "workers")
README = ROOT / "README.md"
CONFIG_DOC = ROOT / "docs" / "configuration.md"
ENV_TABLE_HEADING = "## Environment variables"
MAX_README_LINES = 250
TEST_COMMAND = "python -m pytest"
#: a string constant in the code that looks like one of our environment variables
ENV_LIKE = re.compile(r"(?:AP|NATS|OTEL)_[A-Z0-9_]*[A-Z0-9]")
ENV_CELL = re.compile(r"^`([A-Z][A-Z0-9_]*)`$")
BACKQUOTED = re.compile(r"`([^`]+)`")


# ---------------------------------------------------------------- reading the code
@dataclass(frozen=True)
class EnvRead:
    """One place the code reads an environment variable."""

    name: str  # the literal name, or a regex when the name is an f-string
    is_pattern: bool
    default: str | None  # a literal default, if the code has one
    where: str

    def matches(self, variable: str) -> bool:
        if self.is_pattern:
            return re.fullmatch(self.name, variable) is not None
        return self.name == variable


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module under CODE_DIRS."""
    found = {}
    for top in CODE_DIRS:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _string_constants(module: str) -> dict[str, str]:
    """Top-level ``NAME = "text"`` of a module, plus names it imports from our modules."""
    tree = TREES.get(module)
    if tree is None:
        return {}
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module in TREES and node.level == 0:
            source = _own_constants(node.module)
            for alias in node.names:
                if alias.name in source:
                    out[alias.asname or alias.name] = source[alias.name]
    out.update(_own_constants(module))
    return out


def _own_constants(module: str) -> dict[str, str]:
    out = {}
    for node in TREES[module].body:
        target, value = None, None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if (
            isinstance(target, ast.Name)
            and isinstance(value, ast.Constant)
            and isinstance(value.value, str)
        ):
            out[target.id] = value.value
    return out


def _is_env_mapping(node: ast.expr) -> bool:
    """``os.environ``, ``environ``, ``env``, ``self.env``, ``child_env`` ..."""
    if isinstance(node, ast.Attribute):
        return node.attr == "environ" or node.attr.endswith("env")
    if isinstance(node, ast.Name):
        return node.id == "environ" or node.id.endswith("env")
    return False


def _text(node: ast.expr | None, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def _name_of(node: ast.expr, constants: dict[str, str]) -> tuple[str, bool] | None:
    """(name, is_pattern) of the variable a read names, or None if not a name."""
    if isinstance(node, ast.JoinedStr):
        regex = ""
        for part in node.values:
            if isinstance(part, ast.Constant):
                regex += re.escape(str(part.value))
            else:
                regex += "[A-Z0-9_]+"
        return regex, True
    text = _text(node, constants)
    if text is not None and re.fullmatch(r"[A-Z][A-Z0-9_]*", text):
        return text, False
    return None


def _env_reads_in(module: str) -> Iterator[tuple[ast.expr, ast.expr, ast.expr | None]]:
    """(read node, name node, default argument) of every environment read."""
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            getenv = (isinstance(func, ast.Name) and func.id == "getenv") or (
                isinstance(func, ast.Attribute) and func.attr == "getenv"
            )
            get = (
                isinstance(func, ast.Attribute)
                and func.attr == "get"
                and _is_env_mapping(func.value)
            )
            if getenv or get:
                default = node.args[1] if len(node.args) > 1 else None
                yield node, node.args[0], default
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and _is_env_mapping(node.value)
        ):
            yield node, node.slice, None


def _or_default(
    read: ast.expr,
    parents: dict[ast.AST, ast.AST],
    constants: dict[str, str],
    env_reads: set[int],
) -> str | None:
    """The literal in ``get(NAME) or "x"`` (through ``.strip()`` and the like, and past
    further environment reads, which fall back to the same literal)."""
    node: ast.AST = read
    parent = parents.get(node)
    while isinstance(parent, ast.Attribute) or (
        isinstance(parent, ast.Call) and parent.func is node
    ):
        node, parent = parent, parents.get(parent)
    if not (isinstance(parent, ast.BoolOp) and isinstance(parent.op, ast.Or)):
        return None
    position = next(i for i, value in enumerate(parent.values) if value is node)
    for value in parent.values[position + 1 :]:
        text = _text(value, constants)
        if text:
            return text
        if id(value) not in env_reads:
            return None
    return None


def code_env_reads() -> list[EnvRead]:
    reads = []
    for module, path in MODULES.items():
        tree = TREES[module]
        constants = _string_constants(module)
        parents = {
            child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)
        }
        found = list(_env_reads_in(module))
        env_reads = {id(read) for read, _, _ in found}
        for read, name_node, default_node in found:
            named = _name_of(name_node, constants)
            if named is None:
                continue
            default = _text(default_node, constants) or _or_default(
                read, parents, constants, env_reads
            )
            where = f"{path.relative_to(ROOT)}:{read.lineno}"
            reads.append(EnvRead(named[0], named[1], default or None, where))
    return reads


def code_env_like_strings() -> dict[str, str]:
    """Every string constant in the code that looks like one of our variables (a safety
    net for reads the AST scan does not recognise), docstrings left out."""
    out: dict[str, str] = {}
    for module, path in MODULES.items():
        tree = TREES[module]
        docstrings = {
            id(node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        }
        joined_parts = {
            id(part)
            for node in ast.walk(tree)
            if isinstance(node, ast.JoinedStr)
            for part in node.values
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and id(node) not in joined_parts
                and ENV_LIKE.fullmatch(node.value)
            ):
                out.setdefault(node.value, f"{path.relative_to(ROOT)}:{node.lineno}")
    return out


# ---------------------------------------------------------------- reading the docs
def _table_after(text: str, heading: str) -> list[list[str]]:
    """Body rows (cells) of the first table after ``heading``."""
    lines = text.splitlines()
    assert heading in lines, f"no {heading!r} heading"
    rows: list[list[str]] = []
    for line in lines[lines.index(heading) + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows or line.startswith("#"):
            break
    assert len(rows) > 2, f"no table after {heading!r}"
    return rows[2:]  # header and separator


@dataclass(frozen=True)
class Row:
    name: str
    default: str | None  # first backquoted text of the default cell


def config_table(text: str | None = None) -> dict[str, Row]:
    text = CONFIG_DOC.read_text() if text is None else text
    table: dict[str, Row] = {}
    for cells in _table_after(text, ENV_TABLE_HEADING):
        assert len(cells) == 3, f"want | variable | default | meaning |, got {cells}"
        match = ENV_CELL.match(cells[0])
        assert match, f"first cell must be one `VARIABLE`, got {cells[0]!r}"
        assert match.group(1) not in table, f"{match.group(1)} listed twice"
        quoted = BACKQUOTED.search(cells[1])
        table[match.group(1)] = Row(match.group(1), quoted.group(1) if quoted else None)
    return table


def check_config_table(table: dict[str, Row], reads: list[EnvRead]) -> list[str]:
    """Every disagreement between the table and the code, as readable lines."""
    problems = []
    for read in reads:
        if not any(read.matches(name) for name in table):
            problems.append(f"{read.where} reads {read.name} but the table lacks it")
    for name, row in sorted(table.items()):
        matching = [r for r in reads if r.matches(name)]
        if not matching:
            problems.append(f"table lists {name}, which the code does not read")
        for read in matching:
            if read.default is not None and row.default != read.default:
                problems.append(
                    f"{name}: table default {row.default!r}, code default "
                    f"{read.default!r} ({read.where})"
                )
    return problems


def test_env_scan_finds_the_known_reads() -> None:
    """The scanner itself works: reads in every style the code uses are found."""
    reads = code_env_reads()

    def default(name: str, file: str) -> str | None:
        (read,) = [r for r in reads if r.name == name and r.where.startswith(file + ":")]
        return read.default

    assert default("NATS_URL", "bus/config.py") == "nats://127.0.0.1:4222"  # or CONSTANT
    assert default("AP_PREFIX", "bus/config.py") == "ap"  # or an imported constant
    assert default("AP_JS_REPLICAS", "bus/config.py") == "1"  # .strip() or "1"
    assert default("AP_LOG_LEVEL", "bus/runtime.py") == "INFO"  # get(NAME, "INFO")
    names = {r.name for r in reads if not r.is_pattern}
    assert "AP_MASTER_KEY" in names  # env[NAME]
    assert "WATCHDOG_USEC" in names  # a Mapping parameter called env
    assert any(r.matches("OTEL_TRACES_EXPORTER") for r in reads if r.is_pattern)  # f-string


def test_configuration_table_is_true_to_the_code() -> None:
    problems = check_config_table(config_table(), code_env_reads())
    assert not problems, "docs/configuration.md vs the code:\n" + "\n".join(problems)


def test_every_variable_named_in_the_code_is_in_the_table() -> None:
    table = config_table()
    missing = {n: w for n, w in code_env_like_strings().items() if n not in table}
    assert not missing, f"variables named in the code but not in the table: {missing}"


def test_a_broken_configuration_table_fails() -> None:
    """The check can fail: a wrong default, a missing row and an extra row are reported."""
    text = CONFIG_DOC.read_text()
    reads = code_env_reads()
    assert "| `AP_LOG_LEVEL` | `INFO` |" in text
    wrong_default = text.replace("| `AP_LOG_LEVEL` | `INFO` |", "| `AP_LOG_LEVEL` | `DEBUG` |")
    assert any(
        "AP_LOG_LEVEL: table default" in p
        for p in check_config_table(config_table(wrong_default), reads)
    )
    missing = "\n".join(line for line in text.splitlines() if not line.startswith("| `AP_PREFIX`"))
    assert any("reads AP_PREFIX" in p for p in check_config_table(config_table(missing), reads))
    extra = text.replace(
        "| `AP_LOG_LEVEL` |", "| `AP_NOT_READ` | — | nothing |\n| `AP_LOG_LEVEL` |"
    )
    assert any("AP_NOT_READ" in p for p in check_config_table(config_table(extra), reads))


def test_readme_configuration_agrees_with_docs() -> None:
    table = config_table()
    rows = _table_after(README.read_text(), "## Configuration")
    for cells in rows:
        names = [n for n in BACKQUOTED.findall(cells[0]) if re.fullmatch(r"[A-Z][A-Z0-9_]*", n)]
        assert names, f"README configuration row without a variable: {cells}"
        for name in names:
            assert name in table, f"README names {name}, docs/configuration.md does not"
        if len(names) == 1:
            quoted = BACKQUOTED.search(cells[1])
            default = quoted.group(1) if quoted else None
            assert default == table[names[0]].default, (
                f"{names[0]}: README default {default!r}, docs {table[names[0]].default!r}"
            )


# ---------------------------------------------------------------- README
def test_readme_is_a_front_door() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"
    assert any(TEST_COMMAND in line for line in lines)


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert any(line.strip() == TEST_COMMAND for line in ci)


# ---------------------------------------------------------------- links and paths
def markdown_files() -> list[Path]:
    return [README, ROOT / "deploy" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def _prose(text: str) -> str:
    """The text with fenced code blocks blanked out (links inside them are not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_\[\]()]", "", heading)  # markup (link targets keep their text)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {
        slug(m.group(1))
        for line in _prose(path.read_text()).splitlines()
        if (m := HEADING.match(line))
    }


def broken_links(path: Path, text: str) -> list[str]:
    problems = []
    for target in LINK.findall(_prose(text)):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{path.relative_to(ROOT)}: link {target} -> no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{path.relative_to(ROOT)}: link {target} -> no such heading")
    return problems


#: top-level directories of the tree: a mention starting with one of them is a path
TOP_DIRS = sorted(
    [".ci", *(p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))]
)
TREE_PATH = re.compile(
    r"(?<![\w./$~-])((?:" + "|".join(re.escape(d) for d in TOP_DIRS) + r")/[\w.*/-]*)"
)


def missing_paths(path: Path, text: str) -> list[str]:
    """Paths into the tree (``bus/state.py``, ``deploy/``, globs) that do not exist,
    in prose and code blocks alike."""
    problems = []
    for found in TREE_PATH.findall(text):
        candidate = found.rstrip(".,:;")
        ok = any(ROOT.glob(candidate)) if "*" in candidate else (ROOT / candidate).exists()
        if not ok:
            problems.append(f"{path.relative_to(ROOT)}: {candidate} does not exist")
    return problems


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_point_to_existing_files(path: Path) -> None:
    problems = broken_links(path, path.read_text())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_mentioned_paths_exist(path: Path) -> None:
    problems = missing_paths(path, path.read_text())
    assert not problems, "\n".join(problems)


def test_broken_links_and_paths_are_reported() -> None:
    text = (
        "see [x](docs/nowhere.md), [y](docs/configuration.md#no-such-heading)"
        " and `workers/quorum.py`"
    )
    assert len(broken_links(README, text)) == 2
    assert "README.md: workers/quorum.py does not exist" in missing_paths(README, text)
    assert missing_paths(README, "`bus/config.py`, `bench/results/*.json`, `deploy/`") == []
    assert broken_links(README, "[ok](docs/configuration.md#environment-variables)") == []
