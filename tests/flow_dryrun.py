"""Offline apolo-flow helpers for tests: parse, validate and dry-run render flows/actions.

No platform is needed: a stand-in client answers the few config lookups apolo-flow makes,
storage is apolo-flow's in-memory one, and the released action reference
`gh:neuro-inc/mlops-wandb-bucket-ref@vVERSION` is served from this checkout's action.yml by
apolo-flow's own local config loader (only the `git clone` step is replaced; any other `gh:`
reference, including a wrong tag, fails). `ws:` references load from the workspace as usual.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import shlex
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from yarl import URL

ROOT = Path(__file__).resolve().parent.parent
ACTION_FILE = ROOT / "action.yml"
# This project continues the original tool's repository: users call the action, install the
# package and find the sources under this name.
REPOSITORY = "neuro-inc/mlops-wandb-bucket-ref"
# The image as users keep it in the platform registry (README: "The image in the platform registry").
PLATFORM_IMAGE = "image:wabucket"


def project_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def release_tag() -> str:
    return f"v{project_version()}"


def action_ref() -> str:
    """The action reference of this release, as users write it in a live flow."""
    return f"gh:{REPOSITORY}@{release_tag()}"


class _Parse:
    def str_to_uri(self, s: str, **kwargs: Any) -> URL:
        scheme, _, rest = s.partition(":")
        return URL(f"{scheme}://test-cluster/test-org/test-project/{rest.lstrip('/')}")

    def str_to_remote_image(self, s: str, **kwargs: Any) -> Any:  # pragma: no cover
        raise NotImplementedError


class _Config:
    project_name = "test-project"
    project_name_or_raise = "test-project"
    username = "test-user"
    cluster_name = "test-cluster"
    org_name = "test-org"


class FakeClient:
    """Just enough of apolo_sdk.Client for apolo-flow's dry-run paths."""

    config = _Config()
    parse = _Parse()


class _GlobalOptions:
    verbosity = 0
    show_traceback = False


def make_workspace(
    root: Path,
    flows: Mapping[str, str],
    *,
    action_text: str | None = None,
    config_dir: str = ".neuro",
) -> Path:
    """A workspace with `config_dir/NAME.yml` flows; with action_text, also a `ws:action.yml`.

    Flows should call the action as users do, `action_ref()`: render_live serves it from this
    checkout's action.yml. action_text is for flows that call a modified action (`ws:action.yml`).
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / config_dir).mkdir(exist_ok=True)
    for name, text in flows.items():
        (root / config_dir / f"{name}.yml").write_text(text)
    if action_text is not None:
        (root / "action.yml").write_text(action_text)
    return root


class UnknownGitHubAction(LookupError):
    """A `gh:` reference that is not this release's action (the loader does not clone)."""


def _local_github_loader_class():
    from apolo_flow.config_loader import LiveLocalCL

    class LocalGitHubCL(LiveLocalCL):
        """apolo-flow's LiveLocalCL with `git clone` replaced for this repository's release tag.

        apolo-flow itself parses the `gh:` reference, looks for action.yml/action.yaml in the
        folder the clone step returns, and parses it: only the clone is local.
        """

        resolved: list[str]

        async def _clone_github_repo(self, action_spec: str) -> Path:
            repo, _, tag = action_spec.partition("@")
            if repo != REPOSITORY or tag != release_tag():
                raise UnknownGitHubAction(
                    f"gh:{action_spec}: the test loader serves only {action_ref()} (this checkout)"
                )
            target = Path(self._get_tempdir()) / repo.replace("/", "__")
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(ACTION_FILE, target / "action.yml")
            self.resolved.append(f"gh:{action_spec}")
            return target

    return LocalGitHubCL


def _config_dir(ws: Path):
    from apolo_flow.parser import ConfigDir

    for name in (".apolo", ".neuro"):
        if (ws / name).is_dir():
            return ConfigDir(ws, ws / name)
    raise FileNotFoundError(f"no .apolo/.neuro folder in {ws}")


async def _render_live(ws: Path, job_id: str, params: Mapping[str, str], resolved: list[str]) -> str:
    from apolo_flow.context import RunningLiveFlow
    from apolo_flow.live_runner import LiveRunner
    from apolo_flow.storage.in_memory import InMemoryStorage
    from rich.console import Console

    loader_class = _local_github_loader_class()

    class Runner(LiveRunner):
        # LiveRunner.init_flow with the local GitHub loader in place of LiveLocalCL.
        async def init_flow(self) -> None:
            if self._flow is not None:
                return
            loader = loader_class(self._config_dir, self._client)
            loader.resolved = resolved
            self._config_loader = loader
            try:
                self._flow = await RunningLiveFlow.create(loader, dry_run=self._dry_run)
            except Exception:
                await loader.close()
                raise

    buf = io.StringIO()
    console = Console(
        file=buf, width=100_000, color_system=None, markup=False, highlight=False,
        emoji=False, force_terminal=False,
    )
    async with Runner(
        _config_dir(ws),
        console,
        FakeClient(),  # type: ignore[arg-type]
        InMemoryStorage(),
        _GlobalOptions(),
        dry_run=True,
    ) as runner:
        await runner.run(job_id, None, dict(params))
    return buf.getvalue().strip()


def render_live_resolving(
    ws: Path, job_id: str, params: Mapping[str, str] | None = None
) -> tuple[str, list[str]]:
    """render_live, plus the `gh:` references that were served from this checkout."""
    resolved: list[str] = []
    line = asyncio.run(_render_live(ws, job_id, params or {}, resolved))
    return line, resolved


def render_live(ws: Path, job_id: str, params: Mapping[str, str] | None = None) -> str:
    """The `apolo run ... IMAGE -- ARGS` line that `apolo-flow run JOB` would execute."""
    return render_live_resolving(ws, job_id, params)[0]


@dataclasses.dataclass
class RunLine:
    options: list[str]  # apolo run options, e.g. --volume=..., --env=K=V, --pass-config
    image: str
    args: list[str]  # container command (wabucket arguments)

    def option_values(self, name: str) -> list[str]:
        prefix = f"--{name}="
        return [o[len(prefix):] for o in self.options if o.startswith(prefix)]

    def has_flag(self, name: str) -> bool:
        return f"--{name}" in self.options


def split_run_line(line: str) -> RunLine:
    words = shlex.split(line)
    assert words[:2] == ["apolo", "run"], line
    sep = words.index("--")
    return RunLine(options=words[2 : sep - 1], image=words[sep - 1], args=words[sep + 1 :])


def iter_exprs(obj: Any) -> Iterator[Any]:
    """Every expression inside an AST value (plain, sequence items, mapping values)."""
    from apolo_flow import expr as E

    if obj is None:
        return
    if isinstance(obj, E.SequenceItemsExpr):
        for item in obj._items:
            yield from iter_exprs(item)
    elif isinstance(obj, E.MappingItemsExpr):
        for item in obj._items.values():
            yield from iter_exprs(item)
    elif isinstance(obj, E.ConcatSequenceExpr):
        for item in obj._seqs:
            yield from iter_exprs(item)
    elif isinstance(obj, E.MergeMappingsExpr):
        for item in obj._mappings:
            yield from iter_exprs(item)
    elif isinstance(obj, E.Expr):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from iter_exprs(item)


def validate_live_action(path: Path) -> list[Any]:
    """Expression errors (undefined inputs, unknown contexts/attributes) in a live action."""
    from apolo_flow import ast
    from apolo_flow.context import LiveActionContext
    from apolo_flow.expr_validation import validate_expr
    from apolo_flow.parser import parse_action

    action = parse_action(path)
    assert isinstance(action, ast.LiveAction), type(action)
    known_inputs = set((action.inputs or {}).keys())
    errors: list[Any] = []
    for field in dataclasses.fields(ast.Job):
        for e in iter_exprs(getattr(action.job, field.name, None)):
            errors += validate_expr(e, LiveActionContext, known_inputs=known_inputs)
    return errors


async def _load_batch(ws: Path, name: str):
    from apolo_flow.batch_runner import check_expressions, check_local_deps, check_no_cycles
    from apolo_flow.config_loader import BatchLocalCL
    from apolo_flow.context import RunningBatchFlow

    cl = BatchLocalCL(_config_dir(ws), FakeClient())  # type: ignore[arg-type]
    try:
        flow = await RunningBatchFlow.create(cl, name, "fake-bake-id")
        await check_no_cycles(flow)
        await check_local_deps(flow)
        await check_expressions(flow)  # raises MultiError listing every bad expression
        return flow
    finally:
        await cl.close()


def load_batch(ws: Path, name: str):
    """RunningBatchFlow after apolo-flow's own bake-time checks (cycles, expressions)."""
    return asyncio.run(_load_batch(ws, name))


def render_batch_task(
    ws: Path, name: str, task_id: str, needs_outputs: Mapping[str, Mapping[str, str]] | None = None
):
    """The Task (image, cmd, env, volumes...) a bake would run, given the needs' outputs."""
    from apolo_flow.context import DepCtx
    from apolo_flow.types import TaskStatus

    async def go():
        flow = await _load_batch(ws, name)
        needs = {
            k: DepCtx(result=TaskStatus.SUCCEEDED, outputs=dict(v))
            for k, v in (needs_outputs or {}).items()
        }
        return await flow.get_task((), task_id, needs, {})

    return asyncio.run(go())
