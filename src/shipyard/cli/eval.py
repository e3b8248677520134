"""`shipyard eval ...`: run a suite against a deployment, gate on the results, list, show and compare runs."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from shipyard.cli.prompts import client_for, url_option
from shipyard.errors import ConfigError, ShipyardError
from shipyard.evals.probes import ProbeSpec, probe_rows, probe_summary
from shipyard.evals.report import GateResult, compare, compare_html, evaluate_gates
from shipyard.evals.runner import ApiSink, RowResult, run_experiment
from shipyard.evals.suite import load_suite, parse_gate
from shipyard.evals.summary import summarise
from shipyard.registry.templates import TemplateProblem

__all__ = ["app"]

app = typer.Typer(help="Evaluation: experiments over registry datasets, scored, compared and gated.",
                  no_args_is_help=True)  # fmt: skip


def _fetch_rows(client: Any, dataset: str, version: int | None) -> tuple[list[dict[str, Any]], int]:
    rows: list[dict[str, Any]] = []
    found = version
    while True:
        params: dict[str, Any] = {"offset": len(rows), "limit": 10_000}
        if found is not None:
            params["version"] = found
        page = client.request("GET", f"/datasets/{dataset}/rows", params=params)
        found = page["version"]
        rows.extend(page["data"])
        if len(rows) >= page["total"] or not page["data"]:
            return rows, found


@app.command("run")
def run(
    suite_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="The suite YAML file."),
    gate: list[str] = typer.Option([], "--gate", help="e.g. 'exact_match.mean>=0.8' (added to the suite's gates)."),
    baseline: str | None = typer.Option(None, "--baseline", help="Experiment id that relative gates compare with."),
    resume: str | None = typer.Option(None, "--resume", help="Experiment id to finish (finished rows are kept)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the experiment record here."),
    url: str = url_option(),
) -> None:
    """Run SUITE_FILE: every row of its dataset through its target, scored; exit 1 when a gate fails."""
    console = Console()
    try:
        suite = load_suite(suite_file)
        gates = [*suite.gates, *gate]
        for text in gates:
            parse_gate(text)
    except ShipyardError as exc:
        raise _fail(str(exc)) from None
    with client_for(url) as client:
        base = client.request("GET", f"/experiments/{baseline}")["summary"] if baseline else None
        name, version = suite.dataset_ref()
        rows, version = _fetch_rows(client, name, version)
        total = min(len(rows), suite.limit or len(rows))
        console.print(f"[bold]{suite.name}[/bold]: {total} rows of {name}:{version} → {suite.target.deployment}"
                      f" (concurrency {suite.concurrency})")  # fmt: skip
        record = _run_with_progress(suite, rows, client, version, resume, total)
    console.print(f"experiment [bold]{record['id']}[/bold] {record['status']}")
    _print_summary(console, record)
    if json_out is not None:
        json_out.write_text(json.dumps(record, indent=2, default=str))
    if gates:
        try:
            results = evaluate_gates(record["summary"], gates, base)
        except ShipyardError as exc:
            raise _fail(str(exc)) from None
        _print_gates(console, results)
        if not all(r.passed for r in results):
            raise typer.Exit(1)


def _run_with_progress(
    suite: Any,
    rows: list[dict[str, Any]],
    client: Any,
    version: int | None,
    resume: str | None,
    total: int,
    summarise_rows: Any = summarise,
) -> dict[str, Any]:
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[errors]} errors"), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("rows", total=total, errors=0)
        errors = 0

        def on_row(result: RowResult) -> None:
            nonlocal errors
            errors += result.status != "ok"
            progress.update(task, advance=1, errors=errors)

        if resume is not None:
            existing = [r for r in client.request("GET", f"/experiments/{resume}/rows")["data"] if r["status"] == "ok"]
            progress.update(task, completed=len(existing))
        coroutine = run_experiment(
            suite, rows, ApiSink(client), gateway_url=client.url, api_key=os.environ.get("SHIPYARD_API_KEY"),
            dataset_version=version, resume=resume, allow_module_path=True, on_row=on_row,
            summarise_rows=summarise_rows,
        )  # fmt: skip
        return asyncio.run(coroutine)


def _print_summary(console: Console, record: dict[str, Any]) -> None:
    summary = record.get("summary") or {}
    table = Table("scorer", "mean", "95% interval", "scored", "unscored", title="Scores")
    for key, s in summary.get("scorers", {}).items():
        interval = "–" if s["mean"] is None else f"[{s['low']:.3f}, {s['high']:.3f}]"
        table.add_row(key, "–" if s["mean"] is None else f"{s['mean']:.3f}", interval, str(s["n"]), str(s["unscored"]))
    console.print(table)
    run_figures = summary.get("run", {})
    if run_figures:
        p50 = run_figures.get("p50_latency_ms")
        console.print(f"rows {run_figures['rows']}, errors {run_figures['errors']}, p50 latency "
                      f"{'–' if p50 is None else f'{p50:.0f} ms'}, tokens in/out {run_figures['prompt_tokens']}/"
                      f"{run_figures['completion_tokens']}")  # fmt: skip


def _print_gates(console: Console, results: list[GateResult]) -> None:
    for result in results:
        colour = "green" if result.passed else "red"
        console.print(f"[{colour}]{result.line()}[/{colour}]", highlight=False)
    failed = sum(not r.passed for r in results)
    console.print(f"[{'red' if failed else 'green'}]{failed} of {len(results)} gate(s) failed[/]")


@app.command("probe")
def probe(
    probe_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="The probe YAML file."),
    gate: list[str] = typer.Option([], "--gate", help="e.g. 'contains.gap<=0.1' (added to the file's gates)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the experiment record here."),
    url: str = url_option(),
) -> None:
    """Run a bias/robustness probe: the score of each group and the gap between them; exit 1 on a failed gate."""
    console = Console()
    try:
        spec = _load_probe(probe_file)
        gates = [*spec.gates, *gate]
        for text in gates:
            parse_gate(text)
        rows = probe_rows(spec)
    except ShipyardError as exc:
        raise _fail(str(exc)) from None
    except TemplateProblem as exc:
        raise _fail(f"{probe_file}: template: {exc}") from None
    console.print(f"[bold]{spec.name}[/bold]: {len(rows)} rows over {len(spec.cases)} cases → "
                  f"{spec.target.deployment}")  # fmt: skip
    with client_for(url) as client:
        record = _run_with_progress(spec.suite(), rows, client, None, None, len(rows), probe_summary)
    console.print(f"experiment [bold]{record['id']}[/bold] {record['status']}")
    _print_summary(console, record)
    _print_groups(console, record)
    if json_out is not None:
        json_out.write_text(json.dumps(record, indent=2, default=str))
    if gates:
        try:
            results = evaluate_gates(record["summary"], gates)
        except ShipyardError as exc:
            raise _fail(str(exc)) from None
        _print_gates(console, results)
        if not all(r.passed for r in results):
            raise typer.Exit(1)


def _load_probe(path: Path) -> ProbeSpec:
    try:
        return ProbeSpec.model_validate(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid probe {path}: {problems}") from None


def _print_groups(console: Console, record: dict[str, Any]) -> None:
    for key, block in (record.get("summary") or {}).get("scorers", {}).items():
        table = Table("group", "mean", "95% interval", "n", title=f"{key}: gap {_num(block.get('gap'))} "
                      f"[{_num(block.get('gap_low'))}, {_num(block.get('gap_high'))}], worst: "
                      f"{block.get('worst_group')}")  # fmt: skip
        for group, interval in (block.get("groups") or {}).items():
            if interval:
                table.add_row(group, f"{interval['mean']:.3f}", f"[{interval['low']:.3f}, {interval['high']:.3f}]",
                              str(interval["n"]))  # fmt: skip
        console.print(table)


@app.command("list")
def list_runs(name: str | None = typer.Option(None, help="Only this suite."), url: str = url_option()) -> None:
    """Recent experiments, newest first."""
    with client_for(url) as client:
        data = client.request("GET", "/experiments", params={"name": name} if name else {})["data"]
    table = Table("id", "suite", "dataset", "status", "rows")
    for row in data:
        table.add_row(row["id"], row["name"], f"{row['dataset']}:{row['dataset_version']}", row["status"],
                      str(row["rows_total"]))  # fmt: skip
    Console().print(table)


@app.command("show")
def show(experiment: str = typer.Argument(...), url: str = url_option()) -> None:
    """One experiment's summary."""
    with client_for(url) as client:
        record = client.request("GET", f"/experiments/{experiment}")
    Console().print(f"experiment [bold]{record['id']}[/bold] ({record['name']}) {record['status']}")
    _print_summary(Console(), record)


@app.command("compare")
def compare_cmd(
    a: str = typer.Argument(..., help="The baseline experiment."),
    b: str = typer.Argument(..., help="The experiment compared with it."),
    output_format: str = typer.Option("table", "--format", help="table, json or html."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write json/html here instead of stdout."),
    url: str = url_option(),
) -> None:
    """B against A: mean deltas with a paired significance test, and the rows that changed most."""
    if output_format not in ("table", "json", "html"):
        raise _fail("--format must be table, json or html")
    with client_for(url) as client:
        first, second = (client.request("GET", f"/experiments/{x}") for x in (a, b))
        result = compare(first, _rows(client, a), second, _rows(client, b))
    if output_format != "table":
        text = json.dumps(result, indent=2, default=str) if output_format == "json" else compare_html(result)
        if output is not None:
            output.write_text(text)
        else:
            typer.echo(text)
        return
    console = Console()
    table = Table("scorer", "A", "B", "B − A", "p (paired)", "pairs", title=f"{b} against {a}")
    for key, s in result["scorers"].items():
        table.add_row(key, *(_num(s[k]) for k in ("a", "b", "delta", "p_value")), str(s["pairs"]))
    console.print(table)
    changed = Table("row", "change", "input", "A output", "B output", title="Rows that changed most")
    for row in result["changed_rows"]:
        changed.add_row(str(row["index"]), f"{row['move']:+.3f}", str(row["input"])[:60], str(row["a_output"])[:60],
                        str(row["b_output"])[:60])  # fmt: skip
    console.print(changed)


def _rows(client: Any, experiment: str) -> list[dict[str, Any]]:
    return client.request("GET", f"/experiments/{experiment}/rows")["data"]


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:.4g}"


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(2)
