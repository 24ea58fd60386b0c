"""Docs that cannot rot: what README.md, benchmarks/README.md and docs/*.md
name must exist.

For every page (found by glob, so pages added later are checked too):
- every relative link and image resolves, and its #anchor is a heading of
  the target page (GitHub's slugs);
- every repository path the page names in code (configs, tools, scripts,
  docs) exists, and every `mmdet::` config base is in the installed mmdet;
- every `--option` given to a repository tool is in that tool's argparse
  parser (read from the parser itself, one subprocess for all tools); an
  option named alone must belong to a tool the page names;
- every `make` target exists in the Makefile;
- every Python snippet (```python blocks, and inline `...dict(...)` config
  fragments) parses, and every `type='Name'` in it names a class of this
  package, mmdet, mmengine, mmcv or torch;
- every `damex_mmdet.x.y` it names (and every name a snippet imports from
  damex_mmdet) can be imported.
Comments in the code that point at a page (`benchmarks/README.md#...`) must
resolve too.
"""
import ast
import functools
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from glob import glob
from importlib.util import find_spec
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import pytest

from .tool_options import MARKER

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted({REPO / 'README.md', REPO / 'benchmarks' / 'README.md',
                *(REPO / 'docs').rglob('*.md')})
TOOL_DIRS = ('tools', 'benchmarks')
# Top-level folders of the repository whose paths a page may name; paths
# under others (data/, work_dirs/, ../shared) are the user's or generated.
CHECKED_ROOTS = ('configs', 'tools', 'benchmarks', 'damex_mmdet', 'tests',
                 'docs', 'requirements', '.ci')
# docs/design.md names the package's files from inside it (`models/grow.py`).
PACKAGE_DIRS = tuple(sorted(p.name for p in (REPO / 'damex_mmdet').iterdir()
                            if (p / '__init__.py').is_file()))
PATH_RE = re.compile(r'(?<![\w./-])((?:%s)/[\w./*<>{},-]*)' % '|'.join(
    map(re.escape, CHECKED_ROOTS + PACKAGE_DIRS)))
# Options whose value is a file the command writes, not one that must exist.
OUTPUT_OPTIONS = ('--out', '--out-dir', '--work-dir')
SHELL_SEPARATORS = re.compile(r'\s(?:&&|\|\||;|\|)\s|;\s*$|;\s')
LINK_RE = re.compile(r'!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
CODE_SPAN_RE = re.compile(r'(`+)(.+?)(?<!`)\1(?!`)', re.S)
FENCE_RE = re.compile(r'^(\s*)(`{3,}|~{3,})\s*([\w+-]*)')


def page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


# --------------------------------------------------------------------------
# Reading a page


@dataclass
class CodeBlock:
    language: str
    text: str
    line: int


@dataclass
class Unit:
    """A paragraph, a heading or one table row."""
    text: str
    line: int
    spans: List[str] = field(default_factory=list)


@dataclass
class Page:
    path: Path
    blocks: List[CodeBlock]
    units: List[Unit]
    headings: List[str]


@functools.lru_cache(maxsize=None)
def read_page(path: Path) -> Page:
    """Split a markdown page into fenced code blocks, prose units (with
    their inline code spans) and headings."""
    blocks, units, headings = [], [], []
    lines = path.read_text(encoding='utf-8').split('\n')
    fence = None
    block_lines: List[str] = []
    prose: List[str] = []
    prose_start = 0

    def add_unit(text, line):
        units.append(Unit(text, line, [m.group(2) for m in CODE_SPAN_RE.finditer(text)]))

    def flush_prose():
        if prose:
            add_unit('\n'.join(prose), prose_start)
            prose.clear()

    for number, line in enumerate(lines, 1):
        if fence is not None:
            if line.strip().startswith(fence[0]) and set(line.strip()) <= {fence[0][0]}:
                blocks.append(CodeBlock(fence[1], textwrap.dedent('\n'.join(block_lines)),
                                        fence[2]))
                fence = None
            else:
                block_lines.append(line)
            continue
        opening = FENCE_RE.match(line)
        if opening:
            flush_prose()
            fence = (opening.group(2), opening.group(3).lower(), number + 1)
            block_lines = []
            continue
        stripped = line.strip()
        if not stripped:
            flush_prose()
        elif stripped.startswith('#'):
            flush_prose()
            headings.append(stripped.lstrip('#').strip())
            add_unit(stripped, number)
        elif stripped.startswith('|'):
            flush_prose()
            add_unit(stripped, number)
        else:
            if not prose:
                prose_start = number
            prose.append(line)
    flush_prose()
    assert fence is None, f'{page_id(path)}: a code fence opened at line {fence[2] - 1} is never closed'
    return Page(path, blocks, units, headings)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: link targets and markup dropped,
    lower case, punctuation removed, spaces to hyphens."""
    text = LINK_RE.sub(lambda m: m.group(1), heading)
    text = re.sub(r'[^\w\- ]', '', text.lower())
    return text.replace(' ', '-')


@functools.lru_cache(maxsize=None)
def anchors(path: Path) -> Set[str]:
    seen: Dict[str, int] = {}
    result = set()
    for heading in read_page(path).headings:
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f'{slug}-{count}')
    return result


# --------------------------------------------------------------------------
# Commands and the tools they run


@functools.lru_cache(maxsize=None)
def repo_tools() -> Dict[str, str]:
    """Every command-line tool of the repository, by path and by file name
    (a name shared by two tools is left out)."""
    paths = sorted(
        str(p.relative_to(REPO)) for d in TOOL_DIRS for p in (REPO / d).rglob('*.py')
        if p.name != '__init__.py')
    names: Dict[str, Optional[str]] = {}
    for path in paths:
        name = Path(path).name
        names[name] = None if name in names else path
    tools = {path: path for path in paths}
    tools.update({name: path for name, path in names.items() if path})
    return tools


@functools.lru_cache(maxsize=None)
def tool_options() -> Dict[str, object]:
    """Each tool's option strings, read from its parser in one subprocess."""
    paths = sorted(set(repo_tools().values()))
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    result = subprocess.run(
        [sys.executable, str(Path(__file__).with_name('tool_options.py')), *paths],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith(MARKER)]
    assert result.returncode == 0 and lines, (
        f'reading the tools\' parsers failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    found = json.loads(lines[-1][len(MARKER):])
    return dict(options={k: set(v) for k, v in found['options'].items()},
                errors=found['errors'])


def options_of(tool: str) -> Set[str]:
    found = tool_options()
    assert tool not in found['errors'], (
        f'{tool}: its parser could not be read:\n{found["errors"][tool]}')
    return found['options'][tool]


def split_words(command: str) -> List[str]:
    try:
        return shlex.split(command, comments=True)
    except ValueError:  # an unbalanced quote in a fragment of prose
        return command.split()


def commands(text: str, first_line: int) -> Iterator[tuple]:
    """(words, line) of each simple command of a shell fragment whose first
    line is ``first_line`` of the page; a backslash continues a line."""
    logical, start_line = '', first_line
    for number, line in enumerate(text.split('\n') + [''], first_line):
        if not logical:
            start_line = number
        logical += line
        if line.endswith('\\'):
            logical = logical[:-1] + ' '
            continue
        for part in SHELL_SEPARATORS.split(logical):
            words = split_words(part)
            if words:
                yield words, start_line
        logical = ''


def without_checkout_variable(word: str) -> str:
    """`$DAMEX/tools/infer.py` -> `tools/infer.py`: a page may spell paths
    from a variable that holds the checkout, to run from any folder."""
    return re.sub(r'^\$\{?\w+\}?/', '', word)


def tool_of(word: str) -> Optional[str]:
    """The repository tool a command word runs, if any."""
    word = without_checkout_variable(word)
    return repo_tools().get(word.lstrip('./')) if word.endswith('.py') else None


def option_name(word: str) -> Optional[str]:
    if re.match(r'^--[A-Za-z][\w-]*(=.*)?$', word):
        return word.split('=', 1)[0]
    return None


# --------------------------------------------------------------------------
# What a page names


def shell_fragments(page: Page) -> Iterator[tuple]:
    """(text, line) of every shell-like piece of a page: its non-Python code
    blocks and its inline code spans."""
    for block in page.blocks:
        if block.language not in ('python', 'py'):
            yield block.text, block.line
    for unit in page.units:
        for span in unit.spans:
            yield span, unit.line


def named_paths(page: Page) -> Iterator[tuple]:
    """(path, line) of every repository path a page names in code."""
    for text, line in shell_fragments(page):
        for words, command_line in commands(text, line):
            for index, word in enumerate(words):
                if index and words[index - 1] in OUTPUT_OPTIONS:
                    continue
                value = without_checkout_variable(word.split('=', 1)[-1])
                for match in PATH_RE.finditer(value):
                    yield match.group(1), command_line
    for snippet, line in python_snippets(page):
        try:
            tree = parse_snippet(snippet)
        except SyntaxError:
            continue  # reported by test_python_snippets_parse
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for match in PATH_RE.finditer(node.value):
                    yield match.group(1), line


def path_exists(path: str) -> bool:
    """A path, or a pattern with *, <placeholder> or {a,b} alternatives."""
    path = path.rstrip('.,')
    alternatives = [path]
    brace = re.search(r'\{([^{}]*)\}', path)
    if brace:
        alternatives = [path[:brace.start()] + choice + path[brace.end():]
                        for choice in brace.group(1).split(',')]
    for candidate in alternatives:
        pattern = re.sub(r'<[^<>]*>', '*', candidate)
        if glob(str(REPO / pattern)) or glob(str(REPO / 'damex_mmdet' / pattern)):
            return True
    return False


def python_snippets(page: Page) -> Iterator[tuple]:
    """(code, line) of every Python block and every inline config fragment
    (a code span with a `dict(` in it)."""
    for block in page.blocks:
        if block.language in ('python', 'py'):
            yield block.text, block.line
    for unit in page.units:
        for span in unit.spans:
            if 'dict(' in span and not span.lstrip().startswith(('python ', '--')):
                yield ' '.join(span.split()), unit.line


def parse_snippet(code: str) -> ast.AST:
    # mmengine substitutes {{_base_.x}} before parsing; so does this test.
    return ast.parse(re.sub(r'\{\{[^{}]*\}\}', '_base_value', code))


@functools.lru_cache(maxsize=None)
def known_types() -> Set[str]:
    """Class names (and registered names) defined by this package and by
    the libraries its configs draw components from."""
    roots = [REPO / 'damex_mmdet']
    for package in ('mmdet', 'mmengine', 'mmcv'):
        spec = find_spec(package)
        roots += [Path(p) for p in spec.submodule_search_locations]
    torch_root = Path(find_spec('torch').submodule_search_locations[0])
    roots += [torch_root / 'nn' / 'modules', torch_root / 'optim']
    names = set()
    pattern = re.compile(r'^class (\w+)|register_module\(\s*(?:name\s*=\s*)?[\'"](\w+)[\'"]', re.M)
    for root in roots:
        for source in root.rglob('*.py'):
            if '.mim' in source.parts:
                continue
            for match in pattern.finditer(source.read_text(encoding='utf-8', errors='replace')):
                names.add(match.group(1) or match.group(2))
    return names


def config_types(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == 'type' and \
                isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            yield node.value.value
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == 'type' and \
                        isinstance(value, ast.Constant) and isinstance(value.value, str):
                    yield value.value


@functools.lru_cache(maxsize=None)
def make_targets() -> Set[str]:
    text = (REPO / 'Makefile').read_text(encoding='utf-8')
    return set(re.findall(r'^([\w.-]+)\s*:(?!=)', text, re.M))


# --------------------------------------------------------------------------
# The checks: each returns its problems, one line each


def link_problems(path: Path) -> List[str]:
    """The problems of a page's relative links."""
    problems = []
    for unit in read_page(path).units:
        prose = CODE_SPAN_RE.sub('', unit.text)
        for match in LINK_RE.finditer(prose):
            target = match.group(2)
            if re.match(r'^[a-z][a-z0-9+.-]*:', target):  # http:, mailto:, ...
                continue
            path_part, _, anchor = target.partition('#')
            resolved = (path.parent / path_part).resolve() if path_part else path
            if not resolved.exists():
                problems.append(f'line {unit.line}: {target}: no such file')
                continue
            if anchor and resolved.suffix == '.md' and anchor not in anchors(resolved):
                problems.append(f'line {unit.line}: {target}: no heading with the anchor '
                                f'#{anchor} in {resolved.name}')
    return problems


def path_problems(path: Path) -> List[str]:
    page = read_page(path)
    problems = [f'line {line}: {named}: no such path in the repository'
                for named, line in named_paths(page) if not path_exists(named)]
    mmdet_roots = [Path(p) / '.mim' / 'configs'
                   for p in find_spec('mmdet').submodule_search_locations]
    for piece in page.units + page.blocks:
        for base in re.findall(r'mmdet::([\w./-]+\.py)', piece.text):
            if not any((root / base).is_file() for root in mmdet_roots):
                problems.append(f'line {piece.line}: mmdet::{base} is not in the installed mmdet')
    return problems


def option_problems(path: Path) -> List[str]:
    page = read_page(path)
    problems = []
    for text, first_line in shell_fragments(page):
        for words, line in commands(text, first_line):
            tools = [tool_of(w) for w in words]
            tool = next((t for t in tools if t), None)
            if tool is None:
                if option_name(words[0]):
                    problems += standalone_option_problems(page, words, line)
                continue
            for word in words[tools.index(tool) + 1:]:
                name = option_name(word)
                if name and name not in options_of(tool):
                    problems.append(f'line {line}: {tool} has no option {name}')
    return problems


def tools_named(text: str) -> Set[str]:
    """The tools a text names, by path, by file name or by a pattern such as
    `tools/dataset_converters/<format>2coco.py`."""
    named = set()
    for word in re.split(r'[\s`]+', text):
        word = word.strip('()[],;:.')
        if re.search(r'<[^<>]*>|\*', word) and word.endswith('.py'):
            pattern = re.sub(r'<[^<>]*>', '*', word)
            named.update(str(Path(p).relative_to(REPO)) for p in glob(str(REPO / pattern)))
        elif tool_of(word):
            named.add(tool_of(word))
    return named


def standalone_option_problems(page: Page, words: List[str], line: int) -> List[str]:
    """An option named alone (`--fix-sizes`) must be an option of a tool the
    page names (or, on a page that names none, of some tool of the
    repository)."""
    named = set().union(*(tools_named(u.text) for u in page.units),
                        *(tools_named(b.text) for b in page.blocks))
    candidates = named or set(repo_tools().values())
    known = set().union(*(options_of(t) for t in candidates))
    where = 'any tool this page names' if named else 'any tool of the repository'
    return [f'line {line}: {name} is not an option of {where}'
            for name in map(option_name, words) if name and name not in known]


def make_problems(path: Path) -> List[str]:
    problems = []
    for text, first_line in shell_fragments(read_page(path)):
        for words, line in commands(text, first_line):
            words = [w for w in words if not re.match(r'^[A-Z_]+=', w)]
            if words and words[0] == 'make':
                problems += [f'line {line}: make {t}: no such Makefile target'
                             for t in words[1:] if not t.startswith('-') and '=' not in t
                             and t not in make_targets()]
    return problems


def snippet_problems(path: Path) -> List[str]:
    problems = []
    for code, line in python_snippets(read_page(path)):
        try:
            tree = parse_snippet(code)
        except SyntaxError as error:
            problems.append(f'line {line}: {error.msg}: {code[:200]!r}')
            continue
        problems += [f'line {line}: type={name!r} is no class of damex_mmdet, mmdet, '
                     'mmengine, mmcv or torch' for name in config_types(tree)
                     if name not in known_types()]
    return problems


def package_name_exists(dotted: str) -> bool:
    """Whether ``damex_mmdet.a.b`` is a module, or a name in one."""
    parts = dotted.split('.')
    for split in range(len(parts), 0, -1):
        try:
            value = importlib.import_module('.'.join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            if not hasattr(value, attribute):
                return False
            value = getattr(value, attribute)
        return True
    return False


def package_name_problems(path: Path) -> List[str]:
    page = read_page(path)
    named = [(name, unit.line) for unit in page.units for span in unit.spans
             for name in re.findall(r'\bdamex_mmdet(?:\.\w+)+', span)]
    for code, line in python_snippets(page):
        try:
            tree = parse_snippet(code)
        except SyntaxError:
            continue  # reported by test_python_snippets_parse
        named += [(f'{node.module}.{alias.name}', line) for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('damex_mmdet')
                  for alias in node.names]
    return sorted({f'line {line}: {name} cannot be imported'
                   for name, line in named if not package_name_exists(name)})


# --------------------------------------------------------------------------
# The tests


@pytest.mark.parametrize('page', PAGES, ids=page_id)
def test_links_resolve(page):
    problems = link_problems(page)
    assert not problems, f'{page_id(page)}: broken links:\n' + '\n'.join(problems)


@pytest.mark.parametrize('page', PAGES, ids=page_id)
def test_named_paths_exist(page):
    problems = path_problems(page)
    assert not problems, f'{page_id(page)} (paths from the repository root):\n' + '\n'.join(problems)


@pytest.mark.parametrize('page', PAGES, ids=page_id)
def test_tool_options_exist(page):
    problems = option_problems(page)
    assert not problems, f'{page_id(page)}:\n' + '\n'.join(problems)


@pytest.mark.parametrize('page', PAGES, ids=page_id)
def test_make_targets_exist(page):
    problems = make_problems(page)
    assert not problems, f'{page_id(page)}:\n' + '\n'.join(problems)


@pytest.mark.parametrize('page', PAGES, ids=page_id)
def test_python_snippets_parse(page):
    problems = snippet_problems(page)
    assert not problems, f'{page_id(page)}: Python snippets:\n' + '\n'.join(problems)


@pytest.mark.parametrize('page', PAGES, ids=page_id)
def test_package_names_exist(page):
    problems = package_name_problems(page)
    assert not problems, f'{page_id(page)}:\n' + '\n'.join(problems)


def test_pages_referenced_by_the_code_resolve():
    """Comments and docstrings point readers at pages and their sections
    (`benchmarks/README.md#does-damex-win`): a renamed heading breaks
    them silently."""
    reference = re.compile(r'((?:benchmarks/|docs/)?[\w/-]*\b[\w-]+\.md)(?:#([\w-]+))?')
    problems = []
    sources = [p for d in ('configs', 'damex_mmdet', 'tools', 'benchmarks')
               for p in (REPO / d).rglob('*.py')]
    for source in sources:
        for number, line in enumerate(source.read_text(encoding='utf-8').split('\n'), 1):
            for path, anchor in reference.findall(line):
                target = REPO / path
                where = f'{source.relative_to(REPO)}:{number}'
                if not target.is_file():
                    if path.startswith(('benchmarks/', 'docs/')) or path == 'README.md':
                        problems.append(f'{where}: {path}: no such page')
                    continue
                if anchor and anchor not in anchors(target):
                    problems.append(f'{where}: {path}#{anchor}: no such heading')
    assert not problems, 'the code points at missing pages or sections:\n' + '\n'.join(problems)


def unreached_pages(readme: Path, pages: List[Path]) -> List[Path]:
    """The pages no chain of links from ``readme`` leads to."""
    reached, todo = set(), [readme]
    while todo:
        page = todo.pop()
        if page in reached or page.suffix != '.md' or not page.is_file():
            continue
        reached.add(page)
        for unit in read_page(page).units:
            for match in LINK_RE.finditer(CODE_SPAN_RE.sub('', unit.text)):
                target = match.group(2).partition('#')[0]
                if target and not re.match(r'^[a-z][a-z0-9+.-]*:', target):
                    todo.append((page.parent / target).resolve())
    return [page for page in pages if page not in reached]


def test_every_page_is_reachable_from_the_readme():
    """A page no link leads to is found by nobody and kept up by nobody."""
    unreached = [page_id(p) for p in unreached_pages(REPO / 'README.md', PAGES)]
    assert not unreached, f'no link from README.md leads to {unreached}'


def test_readme_names_the_test_command():
    """CI's .ci/run runs `make test`; the README tells users the same."""
    readme = read_page(REPO / 'README.md')
    assert any('make test' in block.text for block in readme.blocks)
    assert 'make test' in (REPO / '.ci' / 'run').read_text(encoding='utf-8')


# --------------------------------------------------------------------------
# The checks catch what they are for (a page written for the test)


def test_github_slugs():
    assert github_slug("The planned expert map on the demo mixture's own features") == \
        'the-planned-expert-map-on-the-demo-mixtures-own-features'
    assert github_slug('Whole detector: DAMEX vs DINO') == 'whole-detector-damex-vs-dino'
    assert github_slug('Using `tools/infer.py` (CPU)') == 'using-toolsinferpy-cpu'
    assert github_slug('[Results](results.md) and more') == 'results-and-more'


def test_checks_find_rot(tmp_path):
    page = tmp_path / 'page.md'
    page.write_text("""# A page

## Twice

## Twice

[ok](#twice-1) [gone](missing.md) [bad anchor](#nowhere)
[readme section](README.md#no-such-heading)

```bash
python tools/infer.py photo.png configs/demo/damex_demo.py ckpt.pth --no-such-option
python tools/infer.py photo.png configs/demo/no_such_config.py ckpt.pth --dataset photo
make no-such-target
make test
```

`--score-thr` is fine; `--not-an-option` is not.

```python
model = dict(type='DAMEX', head=dict(type='NoSuchHead'))
```

Inline: `moe_cfg=dict(shared_expert=True` and `mmdet::dino/no_such.py`.
`damex_mmdet.apis.infer` exists, `damex_mmdet.apis.no_such_function` does not;
`python $DAMEX/tools/infer.py photo.png $DAMEX/configs/demo/gone.py ckpt.pth --nope`.
""", encoding='utf-8')
    (tmp_path / 'README.md').write_text('# Readme\n', encoding='utf-8')

    assert [p.split(': ')[1] for p in link_problems(page)] == [
        'missing.md', '#nowhere', 'README.md#no-such-heading']
    assert path_problems(page) == [
        'line 12: configs/demo/no_such_config.py: no such path in the repository',
        'line 23: configs/demo/gone.py: no such path in the repository',
        'line 23: mmdet::dino/no_such.py is not in the installed mmdet']
    assert option_problems(page) == [
        'line 11: tools/infer.py has no option --no-such-option',
        'line 17: --not-an-option is not an option of any tool this page names',
        'line 23: tools/infer.py has no option --nope']
    assert make_problems(page) == ['line 13: make no-such-target: no such Makefile target']
    snippets = snippet_problems(page)
    assert len(snippets) == 2
    assert "type='NoSuchHead'" in snippets[0] and "'(' was never closed" in snippets[1]
    assert package_name_problems(page) == [
        'line 23: damex_mmdet.apis.no_such_function cannot be imported']
    orphan = tmp_path / 'orphan.md'
    orphan.write_text('# Nobody links here\n', encoding='utf-8')
    assert unreached_pages(page, [page, orphan]) == [orphan]
