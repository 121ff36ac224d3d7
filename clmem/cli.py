"""The ``clmem`` command line: run, grid, compare, ui, validate, list.

Exit codes: 0 success, 1 a trial failed, 2 bad input (experiment file, dataset, arguments).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from clmem.options import ConfigError

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clmem", description="continual learning with memory: grids, runs, comparisons")
    sub = p.add_subparsers(dest="command", required=True)
    uri_help = "MLflow tracking URI (default: the file's tracking_uri, $MLFLOW_TRACKING_URI, ./mlflow.db)"

    run = sub.add_parser("run", help="run one trial in this process (no Ray), tracked in MLflow")
    run.add_argument("file")
    run.add_argument("--trial", type=int, default=0, help="index of the grid trial to run (default 0)")
    run.add_argument("--tracking-uri", help=uri_help)

    grid = sub.add_parser("grid", help="run the experiment's grid on Ray Tune (a folder: each of its files)")
    grid.add_argument("file", help="an experiment file, or a folder: every *.yaml in it, in name order")
    grid.add_argument("--address", help="Ray cluster address (e.g. auto); default: a local Ray")
    grid.add_argument("--tracking-uri", help=uri_help)
    grid.add_argument("--max-concurrent", type=int, default=None, help="at most N trials at once")
    grid.add_argument("--resume", action="store_true",
                      help="continue the latest interrupted grid of this file: run only missing trials")

    cmp_ = sub.add_parser("compare", help="mean ± sd over seeds per grid-axis combination")
    cmp_.add_argument("name", help="experiment name")
    cmp_.add_argument("--metric", default="ACC", help="sort by this metric (default ACC)")
    cmp_.add_argument("--group-by", help="comma-separated params to group by, e.g. strategy.name "
                                         "(default: the grid's axes; seeds are always averaged)")
    cmp_.add_argument("--run-id", help="parent run of the grid (default: the latest grid)")
    cmp_.add_argument("--format", choices=("text", "md", "csv"), default="text")
    cmp_.add_argument("--output", help="also write the table to this file")
    cmp_.add_argument("--plots", metavar="DIR", help="write plots (R heatmaps, curves, ACC/BWT bars) here "
                                                     "and log them to the grid's parent run")
    cmp_.add_argument("--tracking-uri", help=uri_help)

    ui = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 over the same store")
    ui.add_argument("--tracking-uri", help=uri_help)
    ui.add_argument("--port", type=int, default=5000)

    val = sub.add_parser("validate", help="check an experiment file (or every *.yaml of a folder)")
    val.add_argument("file")
    sub.add_parser("list", help="list benchmarks, models and strategies")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as err:
        print(f"clmem: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except FileNotFoundError as err:
        print(f"clmem: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as err:
        print(f"clmem: interrupted{': ' + str(err) if str(err) else ''}", file=sys.stderr)
        return 130


def _load(file: str, machine: bool = True):
    """Load and check an experiment file: its values, its datasets, and (``machine``) whether its trials
    fit this machine's memory, CPUs and GPUs (``clmem grid`` checks the Ray cluster's instead)."""
    from clmem.datafiles import preflight
    from clmem.config import load_experiment
    from clmem.sizing import available_memory, check_fits, local_node, plan_request

    experiment = load_experiment(file)
    try:
        for trial in experiment.trials:
            preflight(trial["benchmark"])
        if machine:
            free = available_memory()
            for trial in experiment.trials:
                check_fits(trial, free)
            _, experiment.gpu_fallback = plan_request(experiment.trials[0]["resources"], [local_node()],
                                                      "this machine")
    except ConfigError as err:
        raise err.in_file(file) from None
    return experiment


def _check_uri_arg(uri: str | None) -> None:
    if uri is not None:
        from clmem.tracking import check_tracking_uri

        check_tracking_uri(uri, "--tracking-uri")


def experiment_files(path: str) -> list[str]:
    """``[path]`` for a file; for a folder, its ``*.yaml`` / ``*.yml`` files in name order (none: one line)."""
    folder = Path(path)
    if not folder.is_dir():
        return [path]
    files = sorted(str(f) for f in folder.iterdir() if f.suffix in (".yaml", ".yml") and f.is_file())
    if not files:
        raise ConfigError("", "no experiment files (*.yaml) in this folder", file=path)
    return files


def cmd_validate(args) -> int:
    from clmem import manifest

    manifest.use()  # declarations only: no torch / Avalanche import unless a check needs one
    for file in experiment_files(args.file):
        experiment = _load(file)
        print(f"{file}: ok — experiment {experiment.name!r}, {len(experiment.trials)} trials, "
              f"axes: {', '.join(experiment.axes) or 'none'}")
        if experiment.gpu_fallback:
            print(f"note: resources.gpu is {experiment.trials[0]['resources']['gpu']:g} but this machine has no "
                  f"GPU: here its trials run on the CPU")
    return 0


def cmd_list(args) -> int:
    from clmem import manifest
    from clmem.registries import BENCHMARKS, MODELS, STRATEGIES

    manifest.use()
    for registry in (BENCHMARKS, MODELS, STRATEGIES):
        print(f"{registry.kind}s:")
        for name in registry.names():
            entry = registry.get(name)
            opts = ", ".join(f"{k}={o.default!r}" for k, o in entry.options.items())
            print(f"  {name:16s} {entry.description}" + (f"  [{opts}]" if opts else ""))
    return 0


def cmd_run(args) -> int:
    from clmem.runner import run_trial
    from clmem.tracking import Tracker

    _check_uri_arg(args.tracking_uri)
    experiment = _load(args.file)
    if not 0 <= args.trial < len(experiment.trials):
        raise ConfigError("--trial", f"expected 0 <= trial < {len(experiment.trials)}, got {args.trial}")
    trial = experiment.trials[args.trial]
    tracker = Tracker(args.tracking_uri or experiment.tracking_uri)
    parent = tracker.start_parent(experiment, "run", tags={"clmem.trial_index": str(args.trial)})
    run_id = tracker.start_trial(parent, experiment.name, trial)
    last: dict = {}

    def on_experience(i: int, report: dict) -> None:
        last.update(report)
        tracker.log_experience(run_id, report)
        metric = report.get("metric", "accuracy")
        print(f"experience {i + 1}/{report['experiences_total']}: {metric} on experiences seen "
              f"{report['seen_acc']:.3f}, on the whole stream {report['stream_acc']:.3f}", flush=True)

    status = "FAILED"
    try:
        result = run_trial(trial, on_experience)
        status = "FINISHED"
    finally:
        tracker.finish_trial(run_id, last, status)
        tracker.end_run(parent, status)
    print(" ".join(f"{k}={v:.4f}" for k, v in result.summary.items()))
    print(f"tracked in {tracker.uri} (run {run_id}); look at it with: clmem ui --tracking-uri {tracker.uri}")
    return 0


def cmd_grid(args) -> int:
    from clmem.grid import init_ray, shutdown_ray

    _check_uri_arg(args.tracking_uri)
    # every file is checked before anything runs; a local Ray is this machine, a cluster's nodes are
    # checked by run_grid once it is connected
    experiments = [_load(file, machine=not args.address) for file in experiment_files(args.file)]
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError("--max-concurrent", f"expected an integer >= 1, got {args.max_concurrent}")
    from clmem.tracking import Tracker

    # the MLflow store opens (a new SQLite file: schema migrations) in a thread while Ray starts
    tracker = Tracker(args.tracking_uri or experiments[0].tracking_uri, connect_in_background=True)
    started = init_ray(args.address)
    try:
        codes = []
        for i, experiment in enumerate(experiments):
            if i:
                tracker = Tracker(args.tracking_uri or experiment.tracking_uri)
            codes.append(_grid(args, experiment, tracker))
        if len(experiments) > 1:
            print(f"\n{len(experiments)} experiment files: {sum(c == 0 for c in codes)} without failed trials")
        return max(codes)
    finally:
        shutdown_ray(started)


def _grid(args, experiment, tracker) -> int:
    from clmem.grid import run_grid

    print(f"grid {experiment.name!r}: {len(experiment.trials)} trials "
          f"(axes: {', '.join(experiment.axes) or 'none'}; seeds: {experiment.raw['seeds']})", flush=True)
    parent, failed = run_grid(experiment, tracker, args.address, args.max_concurrent,
                              progress=lambda line: print(line, flush=True), resume=args.resume)
    print()
    _log_grid_plots(tracker, parent)
    _print_comparison(tracker, experiment.name, parent, "ACC")
    print(f"\ntracked in {tracker.uri} (parent run {parent}); look at it with: "
          f"clmem ui --tracking-uri {tracker.uri}")
    if failed:
        print(f"clmem: {failed} trial(s) failed", file=sys.stderr)
        return 1
    return 0


def _print_comparison(tracker, name: str, run_id: str | None, metric: str, fmt: str = "text",
                      output: str | None = None, plots_dir: str | None = None,
                      group_by: str | None = None) -> int:
    from clmem.compare import COLUMNS, format_table, group_rows, sort_rows
    from clmem.tracking import parse_axes, runs_table

    parent = (tracker.client.get_run(run_id) if run_id else
              tracker.latest_parent(name, "grid") or tracker.latest_parent(name, "run"))
    if parent is None:
        raise ConfigError("name", f"no grid or run of experiment {name!r} in {tracker.uri}")
    axes = parse_axes(parent) or ["strategy.name"]
    runs = runs_table(tracker.children(parent))
    if group_by:
        axes = [a.strip() for a in group_by.split(",") if a.strip()]
        known = sorted({k for r in runs for k in r["params"]} - {"seed"})
        for axis in axes:
            if axis not in known:
                raise ConfigError("--group-by", f"unknown param {axis!r} (expected one of: {', '.join(known)})")
    columns = COLUMNS if metric in COLUMNS else (*COLUMNS, metric)
    rows = group_rows(runs, axes, columns)
    if rows and metric not in rows[0]:
        raise ConfigError("--metric", f"unknown metric {metric!r}")
    table = format_table(sort_rows(rows, metric), axes, columns, fmt, ranked_by=metric)
    print(f"{name}: {len(runs)} trial runs under parent {parent.info.run_id}, "
          f"mean ± sd over seeds, best first by {metric}; ACC/BWT/FWT: Lopez-Paz & Ranzato 2017, "
          f"Forgetting: Chaudhry et al. 2018 (max over earlier rows)")
    print(table, end="")
    if output:
        Path(output).write_text(table)
        print(f"written to {output}")
    if plots_dir:
        from clmem.report import export_plots

        files = export_plots(tracker, parent, plots_dir)
        print(f"{len(files)} plots written to {plots_dir} and logged to run {parent.info.run_id} (plots/)")
    return 0


def _log_grid_plots(tracker, parent_id: str) -> None:
    import tempfile

    from clmem.report import export_plots

    with tempfile.TemporaryDirectory() as tmp:
        export_plots(tracker, tracker.client.get_run(parent_id), tmp)


def cmd_compare(args) -> int:
    from clmem.tracking import Tracker

    return _print_comparison(Tracker(args.tracking_uri), args.name, args.run_id, args.metric,
                             args.format, args.output, args.plots, args.group_by)


def cmd_ui(args) -> int:
    from clmem.tracking import Tracker

    _check_uri_arg(args.tracking_uri)
    uri = Tracker(args.tracking_uri).uri  # a new SQLite store is created under its lock, not by the UI
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(args.port)]
    print(f"MLflow UI over {uri} at http://127.0.0.1:{args.port} (Ctrl-C to stop)", flush=True)
    os.execv(sys.executable, cmd)  # become the UI process: signals reach it directly


COMMANDS = {"run": cmd_run, "grid": cmd_grid, "compare": cmd_compare, "ui": cmd_ui,
            "validate": cmd_validate, "list": cmd_list}

if __name__ == "__main__":
    sys.exit(main())
