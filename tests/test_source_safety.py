"""Nothing on a request path evaluates, imports, unpickles or shells out what a request or a stored row names.

The whole package's source is parsed and every call is checked against a list of dangerous callables: a new use
fails here and has to be argued for in ALLOWED, with the reason. (LiteLLM CVE-2024-5751 and CVE-2024-6825,
BentoML's and vLLM's pickle deserialisation RCEs.)
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "shipyard"

DANGEROUS = {
    "eval",
    "exec",
    "compile",
    "__import__",
    "pickle.load",
    "pickle.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "dill.load",
    "dill.loads",
    "marshal.loads",
    "shelve.open",
    "joblib.load",
    "importlib.import_module",
    "os.system",
    "os.popen",
    "yaml.load",
    "yaml.unsafe_load",
}
# (file relative to src/shipyard, dotted name) -> why it is safe
ALLOWED: dict[tuple[str, str], str] = {
    ("evals/base.py", "importlib.import_module"): "a custom scorer named by module path in the operator's own suite "
    "file, run from the CLI; build_scorer refuses module paths unless the caller passes allow_module_path=True, "
    "which no network-facing code does (tests/test_eval_scorers.py checks the refusal)",
    ("tracing/writer_process.py", "pickle.loads"): "the trace writer's child process unpickles only its own stdin: "
    "an anonymous pipe that its parent, the server, created and alone writes to, with tuples and lists of "
    "built-in values the server pickled itself (request data is a value inside them, never a pickle stream); "
    "nothing from the network or the store is unpickled",
}


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _calls() -> list[tuple[str, int, str, ast.Call]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = _dotted(node.func)
                if name:
                    found.append((str(path.relative_to(SRC)), node.lineno, name, node))
    return found


def test_no_dangerous_call_without_a_reason() -> None:
    offenders = [
        f"{file}:{line} {name}" for file, line, name, _ in _calls() if name in DANGEROUS and (file, name) not in ALLOWED
    ]
    assert not offenders, "dangerous calls (argue for them in ALLOWED or remove them):\n" + "\n".join(offenders)


def test_torch_load_only_with_weights_only() -> None:
    for file, line, name, node in _calls():
        if name.endswith("torch.load"):
            flags = {k.arg: k.value for k in node.keywords}
            value = flags.get("weights_only")
            assert isinstance(value, ast.Constant) and value.value is True, (
                f"{file}:{line} torch.load without weights_only"
            )


def test_subprocesses_never_go_through_a_shell() -> None:
    for file, line, name, node in _calls():
        if name.startswith("subprocess.") or name.endswith("create_subprocess_shell"):
            assert not name.endswith("create_subprocess_shell"), f"{file}:{line} runs a shell"
            shell = {k.arg: k.value for k in node.keywords}.get("shell")
            assert shell is None or (isinstance(shell, ast.Constant) and shell.value is False), f"{file}:{line}"


def test_trust_remote_code_is_never_switched_on_by_a_literal() -> None:
    for file, line, _, node in _calls():
        for keyword in node.keywords:
            if keyword.arg == "trust_remote_code":
                value = keyword.value
                assert not (isinstance(value, ast.Constant) and value.value is True), f"{file}:{line}"


def test_the_check_sees_the_calls_it_is_meant_to_see() -> None:
    names = {name for _, _, name, _ in _calls()}
    assert "asyncio.create_subprocess_exec" in names  # the supervisor's launcher: parsed, not missed
    assert len(names) > 200
