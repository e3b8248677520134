"""`shipyard loadtest`: load-test an OpenAI-compatible endpoint, gate on SLOs, keep and compare runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shipyard.config import Settings, load_settings
from shipyard.errors import ConfigError, ShipyardError
from shipyard.loadtest.compare import compare_rows
from shipyard.loadtest.execute import run_sweep, run_test
from shipyard.loadtest.limits import DEFAULT_TARGET, check_limits, normalise_target
from shipyard.loadtest.report import write_reports
from shipyard.loadtest.runner import COUNTERS, RunPlan
from shipyard.loadtest.shapes import LoadShape
from shipyard.loadtest.slo import Slo, parse_slo, request_thresholds
from shipyard.loadtest.sources import SourceSpec

app = typer.Typer(
    help="Load-test an OpenAI-compatible endpoint; gate on SLOs; keep and compare runs.", no_args_is_help=True
)
console = Console(stderr=True)
out = Console()

EXIT_SLO_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Url = Annotated[
    str,
    typer.Option(
        help="Target: an OpenAI base URL (`http://host:port` gains /v1). Load goes only here (env: SHIPYARD_URL)."
    ),
]
Model = Annotated[str, typer.Option("--model", "-m", help="Model or deployment name sent in every request.")]
Concurrency = Annotated[int | None, typer.Option("--concurrency", "-c", help="Closed loop: requests kept in flight.")]
Rate = Annotated[float | None, typer.Option("--rate", "-r", help="Open loop: requests per second (sweep: first rate).")]
Arrivals = Annotated[str, typer.Option(help="Open-loop spacing: poisson or constant.")]
Ramp = Annotated[str | None, typer.Option(help="Open loop, rate rising linearly over the run: FROM:TO req/s.")]
Duration = Annotated[float | None, typer.Option("--duration", "-d", help="Measured seconds (default 30 without -n).")]
Requests = Annotated[int | None, typer.Option("--requests", "-n", help="Measured requests to send.")]
Warmup = Annotated[float, typer.Option(help="Seconds of load sent first and left out of the results.")]
Source = Annotated[
    str,
    typer.Option(
        help="Requests: synthetic, jsonl:PATH, dataset:NAME[:VERSION], or traces:KEY=VALUE,... (replayed calls)."
    ),
]
ServerUrl = Annotated[
    str | None,
    typer.Option(
        help="Shipyard server the dataset: and traces: sources read from (env: SHIPYARD_URL; key: SHIPYARD_API_KEY)."
    ),
]
InputTokens = Annotated[str, typer.Option(help="Synthetic prompt lengths: N, uniform:A,B, normal:MEAN,STD, ...")]
OutputTokens = Annotated[str, typer.Option(help="max_tokens per request, same forms as --input-tokens.")]
Tokenizer = Annotated[
    str | None, typer.Option(help="Folder with the target model's tokenizer.json (exact prompt lengths).")
]
Slos = Annotated[list[str] | None, typer.Option("--slo", help="Objective, e.g. 'ttft.p95<500ms', 'error_rate<1%'.")]
Workers = Annotated[int, typer.Option(help="Generator processes; results are merged exactly.")]
Endpoint = Annotated[str, typer.Option(help="chat (/chat/completions) or completions (/completions).")]
Timeout = Annotated[float, typer.Option(help="Seconds one request may take, stream included.")]
MaxInFlight = Annotated[
    int | None, typer.Option(help="Open loop: arrivals beyond this many open requests are dropped and counted.")
]
ApiKey = Annotated[str | None, typer.Option(help="Bearer key sent to the target (env: SHIPYARD_API_KEY).")]
ExtraBody = Annotated[str | None, typer.Option(help="JSON object merged into every request body.")]
Seed = Annotated[int, typer.Option(help="Seed of the arrival schedule and synthetic prompts.")]
JsonOut = Annotated[Path | None, typer.Option("--json", help="Write the JSON report here.")]
HtmlOut = Annotated[Path | None, typer.Option("--html", help="Write the self-contained HTML report here.")]
Label = Annotated[str | None, typer.Option(help="A name for this run (compare and show accept it).")]
NoStore = Annotated[bool, typer.Option("--no-store", help="Do not keep the run in Shipyard's store.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No live progress.")]
ConfigPath = Annotated[Path | None, typer.Option("--config", help="shipyard.yaml (store location, safety caps).")]
Override = Annotated[bool, typer.Option("--override-limits", help="Go beyond the configured safety caps.")]


def _settings(config: Path | None) -> Settings:
    return load_settings(config)


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    console.print(f"[red]shipyard loadtest: {message}[/red]")
    return typer.Exit(code)


def _shape(concurrency: int | None, rate: float | None, ramp: str | None, arrivals: str) -> LoadShape:
    given = [name for name, v in (("--concurrency", concurrency), ("--rate", rate), ("--ramp", ramp)) if v is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of --concurrency (closed loop), --rate or --ramp (open loop)")
    if arrivals not in ("poisson", "constant"):
        raise ConfigError("--arrivals must be poisson or constant")
    try:
        if concurrency is not None:
            return LoadShape("concurrency", concurrency=concurrency)
        if rate is not None:
            return LoadShape(arrivals, rate=rate)  # type: ignore[arg-type]
        start, sep, end = (ramp or "").partition(":")
        if not sep:
            raise ConfigError(f"--ramp takes FROM:TO requests per second, e.g. 1:50 (got {ramp!r})")
        return LoadShape("ramp", rate=float(start), rate_to=float(end), arrivals=arrivals)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _plan(options: dict[str, Any], settings: Settings, slos: list[Slo]) -> RunPlan:
    if options["endpoint"] not in ("chat", "completions"):
        raise ConfigError("--endpoint must be chat or completions")
    duration, requests = options["duration"], options["requests"]
    if duration is None and requests is None:
        duration = 30.0
    extra = {}
    if options["extra_body"]:
        try:
            extra = orjson.loads(options["extra_body"])
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"--extra-body is not valid JSON: {exc}") from None
        if not isinstance(extra, dict):
            raise ConfigError("--extra-body must be a JSON object")
    spec = SourceSpec.parse(
        options["source"],
        input_tokens=options["input_tokens"],
        output_tokens=options["output_tokens"],
        tokenizer=options["tokenizer"],
        seed=options["seed"],
        options={"server_url": options["server_url"]} if options["server_url"] else {},
    )
    for name in ("warmup", "timeout"):
        if options[name] < 0 or (name == "timeout" and options[name] == 0):
            raise ConfigError(f"--{name} must be positive")
    try:
        return _build_plan(options, settings, slos, duration, requests, extra, spec)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _build_plan(
    options: dict[str, Any],
    settings: Settings,
    slos: list[Slo],
    duration: float | None,
    requests: int | None,
    extra: dict[str, Any],
    spec: SourceSpec,
) -> RunPlan:
    api_key = options["api_key"]
    return RunPlan(
        base_url=normalise_target(options["url"]),
        model=options["model"],
        shape=_shape(options["concurrency"], options["rate"], options["ramp"], options["arrivals"]),
        source=spec,
        endpoint=options["endpoint"],
        duration=duration,
        requests=requests,
        warmup=options["warmup"],
        timeout=options["timeout"],
        max_in_flight=options["max_in_flight"] or settings.loadtest.max_concurrency,
        headers={"authorization": f"Bearer {api_key}"} if api_key else {},
        extra_body=extra,
        thresholds=request_thresholds(slos),
        seed=options["seed"],
        max_seconds=None if options["override_limits"] else settings.loadtest.max_duration,
    )


class _Live:
    """Rich progress fed by the generator processes' shared counters."""

    def __init__(self, total: float | None, quiet: bool) -> None:
        self.total = total
        self.progress = None
        if not quiet:
            self.progress = Progress(
                TextColumn("[bold]load[/bold]"),
                BarColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[stats]}"),
                console=console,
                transient=True,
            )
            self.task = self.progress.add_task("load", total=total, stats="starting")

    def __enter__(self) -> _Live:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.progress.stop()

    def tick(self, totals: list[float], elapsed: float) -> None:
        if not self.progress:
            return
        c = dict(zip(COUNTERS, totals, strict=True))
        rate = c["output_tokens"] / elapsed if elapsed > 0 else 0.0
        stats = (
            f"sent {c['sent']:.0f} · ok {c['succeeded']:.0f} · failed {c['failed']:.0f} · "
            f"in flight {c['in_flight']:.0f} · {rate:,.0f} tok/s"
        )
        self.progress.update(self.task, completed=min(elapsed, self.total or elapsed), stats=stats)


def _prepare(
    options: dict[str, Any], override: bool, sweep_limit: float | None = None
) -> tuple[Settings, RunPlan, list[Slo]]:
    settings = _settings(options["config"])
    slos = [parse_slo(text) for text in options["slo"] or []]
    plan = _plan(options, settings, slos)
    check_limits(plan, options["workers"], settings.loadtest, override, sweep_limit)
    return settings, plan, slos


def _finish(record: dict[str, Any], settings: Settings, options: dict[str, Any]) -> None:
    write_reports(record, options["json"], options["html"])
    if not options["no_store"]:
        from shipyard.store.db import Store

        try:
            store = Store(settings.store_url)
            try:
                store.loadtest.add(record)
            finally:
                store.close()
        except ShipyardError as exc:
            console.print(f"[yellow]shipyard loadtest: the run was not stored: {exc}[/yellow]")
    _print_record(record)
    if record.get("interrupted"):
        raise typer.Exit(EXIT_INTERRUPTED)
    if record["passed"] is False:
        raise typer.Exit(EXIT_SLO_FAILED)


@app.command("run")
def run(
    model: Model,
    url: Url = os.environ.get("SHIPYARD_URL", DEFAULT_TARGET),
    concurrency: Concurrency = None,
    rate: Rate = None,
    ramp: Ramp = None,
    arrivals: Arrivals = "poisson",
    duration: Duration = None,
    requests: Requests = None,
    warmup: Warmup = 0.0,
    source: Source = "synthetic",
    server_url: ServerUrl = None,
    input_tokens: InputTokens = "256",
    output_tokens: OutputTokens = "64",
    tokenizer: Tokenizer = None,
    slo: Slos = None,
    workers: Workers = 1,
    endpoint: Endpoint = "chat",
    timeout: Timeout = 120.0,
    max_in_flight: MaxInFlight = None,
    api_key: ApiKey = os.environ.get("SHIPYARD_API_KEY"),
    extra_body: ExtraBody = None,
    seed: Seed = 0,
    json: JsonOut = None,
    html: HtmlOut = None,
    label: Label = None,
    no_store: NoStore = False,
    quiet: Quiet = False,
    config: ConfigPath = None,
    override_limits: Override = False,
) -> None:
    """Run one load test; exit 1 when an SLO fails, 2 on a usage error, 130 when stopped with Ctrl-C.

    Example: shipyard loadtest run -m smollm2 --rate 2 -d 60 --slo "ttft.p95<500ms" --html report.html
    """
    options = dict(locals())
    try:
        settings, plan, slos = _prepare(options, override_limits)
        console.print(f"[dim]{plan.shape.describe()} → {plan.url} (model {plan.model}), {workers} process(es)[/dim]")
        with _Live(plan.horizon if plan.duration is not None else None, quiet) as live:
            record = run_test(plan, slos, workers, label, on_tick=live.tick)
    except ShipyardError as exc:
        raise _fail(str(exc)) from None
    _finish(record, settings, options)


@app.command("sweep")
def sweep(
    model: Model,
    slo: Slos,
    url: Url = os.environ.get("SHIPYARD_URL", DEFAULT_TARGET),
    rate: Rate = 1.0,
    rates: Annotated[
        str | None, typer.Option(help="Rates to try, e.g. 1,2,4,8 (default: double, then bisect).")
    ] = None,
    max_rate: Annotated[float | None, typer.Option(help="Highest rate the doubling may reach.")] = None,
    refine: Annotated[int, typer.Option(help="Bisection steps after the first failing rate.")] = 3,
    arrivals: Arrivals = "poisson",
    duration: Duration = None,
    requests: Requests = None,
    warmup: Warmup = 0.0,
    source: Source = "synthetic",
    server_url: ServerUrl = None,
    input_tokens: InputTokens = "256",
    output_tokens: OutputTokens = "64",
    tokenizer: Tokenizer = None,
    workers: Workers = 1,
    endpoint: Endpoint = "chat",
    timeout: Timeout = 120.0,
    max_in_flight: MaxInFlight = None,
    api_key: ApiKey = os.environ.get("SHIPYARD_API_KEY"),
    extra_body: ExtraBody = None,
    seed: Seed = 0,
    json: JsonOut = None,
    html: HtmlOut = None,
    label: Label = None,
    no_store: NoStore = False,
    quiet: Quiet = False,
    config: ConfigPath = None,
    override_limits: Override = False,
) -> None:
    """Find the highest open-loop rate that meets every --slo; exit 1 when no rate does.

    Example: shipyard loadtest sweep -m smollm2 --slo "ttft.p95<2s" --rates 0.5,1,2,4 -d 30 --html sweep.html
    """
    options = {**locals(), "concurrency": None, "ramp": None}
    try:
        rate_list = [float(r) for r in rates.split(",")] if rates else None
    except ValueError:
        raise _fail(f"--rates takes numbers separated by commas (got {rates!r})") from None
    try:
        settings = _settings(config)
        limit = max_rate or settings.loadtest.max_rate
        settings, plan, slos = _prepare(options, override_limits, max(rate_list or [limit]))
        console.print(f"[dim]sweep of {plan.shape.kind} rates → {plan.url} (model {plan.model})[/dim]")

        def step(rate: float, result: dict[str, Any]) -> None:
            verdict = "[green]pass[/green]" if result["passed"] else "[red]FAIL[/red]"
            s = result["summary"]
            console.print(
                f"  {rate:g} req/s: {verdict}  throughput {s['throughput_rps']:g} req/s, "
                f"goodput {s['goodput_rps']:g} req/s, ttft p95 {s['latency_ms']['ttft']['p95']} ms"
            )

        record = run_sweep(plan, slos, workers, rate_list, limit, refine, label, on_step=step)
    except ShipyardError as exc:
        raise _fail(str(exc)) from None
    _finish(record, settings, options)


def _open_store(config: Path | None) -> Any:
    from shipyard.store.db import Store

    try:
        return Store(_settings(config).store_url)
    except ShipyardError as exc:
        raise _fail(str(exc)) from None


def _resolve(store: Any, ref: str) -> dict[str, Any]:
    ids = store.loadtest.find(ref)
    if not ids:
        raise _fail(f"no load-test run {ref!r} (see `shipyard loadtest list`)")
    if len(ids) > 1:
        raise _fail(f"{ref!r} matches {len(ids)} runs: {', '.join(ids[:5])}; give more of the id")
    return store.loadtest.get(ids[0])


@app.command("list")
def list_runs(
    limit: Annotated[int, typer.Option(help="How many runs, newest first.")] = 20,
    config: ConfigPath = None,
) -> None:
    """List stored load-test runs."""
    import time

    store = _open_store(config)
    try:
        rows = store.loadtest.list(limit)
    finally:
        store.close()
    table = Table()
    table.add_column("id", no_wrap=True)
    for name in ("when (UTC)", "label", "kind", "shape", "target", "model", "requests", "req/s", "SLOs"):
        table.add_column(name, overflow="fold")
    verdict = {True: "[green]pass[/green]", False: "[red]FAIL[/red]", None: "–"}
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["created_at"]))
        rps = f"{r['throughput_rps']:.2f}" if r["throughput_rps"] is not None else "–"
        table.add_row(
            r["id"],
            when,
            r["label"] or "",
            r["kind"],
            r["shape"],
            r["target"],
            r["model"],
            str(r["requests"]),
            rps,
            verdict[r["passed"]],
        )
    out.print(table)


@app.command("show")
def show(run_id: Annotated[str, typer.Argument(help="Run id, id prefix or label.")], config: ConfigPath = None) -> None:
    """Print a stored run's results."""
    store = _open_store(config)
    try:
        record = _resolve(store, run_id)
    finally:
        store.close()
    _print_record(record)


@app.command("report")
def report(
    run_id: Annotated[str, typer.Argument(help="Run id, id prefix or label.")],
    json: JsonOut = None,
    html: HtmlOut = None,
    config: ConfigPath = None,
) -> None:
    """Write the JSON and/or HTML report of a stored run."""
    if json is None and html is None:
        raise _fail("give --json PATH and/or --html PATH")
    store = _open_store(config)
    try:
        record = _resolve(store, run_id)
    finally:
        store.close()
    write_reports(record, json, html)
    console.print(f"wrote {', '.join(str(p) for p in (json, html) if p)}")


@app.command("compare")
def compare(
    run_a: Annotated[str, typer.Argument(help="Baseline run (id, prefix or label).")],
    run_b: Annotated[str, typer.Argument(help="Candidate run (id, prefix or label).")],
    config: ConfigPath = None,
) -> None:
    """Show the differences between two stored runs (B against A)."""
    store = _open_store(config)
    try:
        a, b = _resolve(store, run_a), _resolve(store, run_b)
    finally:
        store.close()
    table = Table("metric", f"A {a['id']}", f"B {b['id']}", "Δ", "Δ %", title="B against A")
    for row in compare_rows(a, b):
        table.add_row(*row)
    out.print(f"A: {a['shape']} → {a['target']} ({a['model']})\nB: {b['shape']} → {b['target']} ({b['model']})")
    out.print(table)


def _print_record(record: dict[str, Any]) -> None:
    s = record.get("summary") or {}
    head = f"run {record['id']}" + (f" ({record['label']})" if record.get("label") else "")
    out.print(f"[bold]{head}[/bold]: {record['shape']} → {record['target']} ({record['model']})")
    if record.get("kind") == "sweep":
        for step in record.get("steps", []):
            verdict = "pass" if step["passed"] else "FAIL"
            out.print(f"  {step['rate']:g} req/s: {verdict}, throughput {step['summary']['throughput_rps']:g} req/s")
        best = record.get("best_rate")
        out.print(f"highest rate meeting every SLO: {best:g} req/s" if best is not None else "no rate met every SLO")
    if s:
        overview = Table("requests", "ok", "failed", "req/s", "goodput/s", "out tok/s", "error rate", title="summary")
        overview.add_row(
            str(s["requests"]),
            str(s["succeeded"]),
            str(s["failed"]),
            f"{s['throughput_rps']:g}",
            f"{s['goodput_rps']:g}",
            f"{s['output_tps']:g}",
            "–" if s["error_rate"] is None else f"{s['error_rate']:.2%}",
        )
        out.print(overview)
        latency = Table("ms", "p50", "p90", "p95", "p99", "max", title="latency")
        for name, v in s["latency_ms"].items():
            if v.get("count"):
                latency.add_row(name, *(str(v[k]) for k in ("p50", "p90", "p95", "p99", "max")))
        out.print(latency)
        if s.get("errors"):
            out.print("errors: " + ", ".join(f"{k} {v}" for k, v in s["errors"].items()))
    if record.get("slos"):
        slo_table = Table("SLO", "measured", "result", title="SLOs")
        for r in record["slos"]:
            slo_table.add_row(r["slo"], str(r["value"]), "[green]pass[/green]" if r["passed"] else "[red]FAIL[/red]")
        out.print(slo_table)
    verdict = {True: "[green]all SLOs met[/green]", False: "[red]SLO failed[/red]", None: "no SLOs given"}
    out.print(verdict[record.get("passed")])
    if record.get("interrupted"):
        out.print("[yellow]interrupted (Ctrl-C): the results cover the part of the run that happened[/yellow]")
