"""The ``bayesgen`` command line.

``bayesgen tour``          fit every registered model on offline data; one HTML report.
``bayesgen fit SPEC``      fit a run spec from ``models/`` and write a run folder.
``bayesgen reproduce DIR`` re-run a run folder and compare its summaries.
``bayesgen report DIR...`` one self-contained HTML report of run folders.
``bayesgen diagnose DIR``  every diagnostic of a run folder.
``bayesgen abtest ...``    Bayesian A/B(/n) test from counts or a CSV of raw events.
``bayesgen augment ...``   add synthetic rows from a Gaussian class-conditional generator.

Bad input ends with a one-line ``bayesgen: error: ...`` on stderr and exit
status 2, never a traceback. The parser and the argument checks import no torch,
Pyro, pandas or matplotlib (each command imports what it uses), so ``--help``
and a bad argument answer at once. Every output is written whole or not at all
(see :mod:`bayesgen.io`); an existing ``--out`` is replaced only with
``--overwrite``.
"""

from __future__ import annotations

import argparse
import math
import re
import sys

from bayesgen._checks import MAX_SEED, validate_counts, validate_prior
from bayesgen.registry import MODELS

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing for --help
if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping, Sequence
    from typing import NoReturn

    import pandas as pd

__all__ = ["main"]


def _parse_counts(items: Sequence[str]) -> tuple[list[float], list[float]]:
    successes, trials = [], []
    for item in items:
        parts = item.split("/")
        if len(parts) != 2:
            raise ValueError(f"count {item!r} is not SUCCESSES/TRIALS (e.g. 235/2435)")
        try:
            s, n = float(parts[0]), float(parts[1])
        except ValueError as err:
            raise ValueError(f"count {item!r} is not SUCCESSES/TRIALS with numbers (e.g. 235/2435)") from err
        successes.append(s)
        trials.append(n)
    return successes, trials


def _parse_prior(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError(f"--prior {text!r} must be ALPHA,BETA (e.g. 1,1)")
    try:
        return float(parts[0]), float(parts[1])
    except ValueError as err:
        raise ValueError(f"--prior {text!r} must be two numbers ALPHA,BETA") from err


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``bayesgen: error: ...``, with exit status 2."""

    def error(self, message: str) -> NoReturn:
        # "argument --seed: must be ..." (a type function's refusal) reads as "--seed must be ...".
        message = re.sub(r"^argument ([^:]+): must ", r"\1 must ", message)
        self.exit(2, f"bayesgen: error: {message} (see '{self.prog} --help')\n")


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            where = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise argparse.ArgumentTypeError(f"must be an integer {where}, got {text!r}")
        return value

    return parse


def _real(
    low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = True
) -> Callable[[str], float]:
    """An argparse type: a number between ``low`` and ``high`` (NaN never)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            if high == math.inf:
                where = f"a finite number {'>' if low_open else '>='} {low:g}"
            else:
                where = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be {where}, got {text!r}")
        return value

    return parse


_positive = _integer(1)


def _rank(text: str) -> int | str:
    """``--rank``: a positive integer or ``auto``."""
    return text if text == "auto" else _positive(text)


_seed = _integer(0, MAX_SEED)
_probability = _real(0.0, 1.0, low_open=True, high_open=True)
_tolerance = _real(0.0)


def _format_ab_table(table: pd.DataFrame, ci_prob: float, control: str) -> str:
    import pandas as pd

    from bayesgen.plots import format_probability

    pct = f"{100 * ci_prob:g}%"
    lower, upper = f"rate_{pct}_lower", f"rate_{pct}_upper"
    llo, lhi = f"lift_{pct}_lower", f"lift_{pct}_upper"
    rows = []
    for name, r in table.iterrows():
        lift = (
            "control"
            if name == control
            else f"{100 * r['lift_mean']:+.1f}% [{100 * r[llo]:+.1f}%, {100 * r[lhi]:+.1f}%]"
        )
        rows.append(
            {
                "variant": name,
                "successes/trials": f"{int(r['successes'])}/{int(r['trials'])}",
                f"rate [{pct} CI]": f"{100 * r['rate_mean']:.2f}% [{100 * r[lower]:.2f}%, {100 * r[upper]:.2f}%]",
                "P(best)": format_probability(r["prob_best"], 4),
                "expected loss": f"{100 * r['expected_loss']:.3f} pp",
                "lift vs control": lift,
            }
        )
    return pd.DataFrame(rows).to_string(index=False)


def _ab_monte_carlo_note(table: pd.DataFrame, ci_prob: float, method: str) -> str:
    """Which printed figures are exact and which are Monte Carlo, with the Monte Carlo standard error."""
    pct = f"{100 * ci_prob:g}%"
    largest = float(table[[f"lift_{pct}_lower_mcse", f"lift_{pct}_upper_mcse"]].max().max())
    worst = "n/a" if math.isnan(largest) else f"{100 * largest:.2f}"
    draws = f"{table.attrs['num_draws']:,}"
    source = "conjugate Beta posterior" if method == "exact" else "the SVI fit's Beta posterior of each variant"
    return (
        f"exact ({source}): rate, its {pct} interval, P(best), expected loss, mean lift\n"
        f"Monte Carlo ({draws} posterior draws): the lift intervals; "
        f"standard error of their ends at most {worst} (percentage points of lift)"
    )


def _cmd_abtest(args: argparse.Namespace) -> int:
    from bayesgen.io import atomic_path, check_not_input, check_target

    # The arguments are checked before the model's module (torch, Pyro) is imported.
    prior = validate_prior(_parse_prior(args.prior))
    if args.csv:
        if args.counts:
            raise ValueError("give either counts or --csv, not both")
        if not args.variant_col or not args.outcome_col:
            raise ValueError("--csv needs --variant-col and --outcome-col")
    elif not args.counts:
        raise ValueError("give counts as SUCCESSES/TRIALS per variant (e.g. 235/2435 157/2435) or --csv")
    else:
        names = args.names.split(",") if args.names else None
        successes, trials, names = validate_counts(*_parse_counts(args.counts), names)
    if args.plot:  # before the fit, so a refused --plot costs no work
        check_target(args.plot, overwrite=args.overwrite, what="--plot")
        check_not_input(args.plot, args.csv)

    from bayesgen.datasets import read_csv
    from bayesgen.models.ab_test import BetaBinomialTest

    est = BetaBinomialTest(
        prior=prior,
        method=args.method,
        num_steps=args.num_steps,
        ci_prob=args.ci,
        device=args.device,
        seed=args.seed,
        progress=not args.quiet,
        batch_size=args.batch_size,
    )
    if args.csv:
        est.fit_events(read_csv(args.csv), variant_col=args.variant_col, outcome_col=args.outcome_col)
    else:
        est.fit(successes, trials, names=names)
    control = args.control if args.control is not None else 0
    table = est.summary(control=control)
    print(f"Beta-Binomial A/B test — prior Beta({prior[0]:g}, {prior[1]:g}), method {args.method}")
    if args.csv:
        print(
            "fitted on the events' sufficient statistics (successes and trials per variant)"
            if est.data_path_ == "counts"
            else f"fitted on the events in minibatches of {args.batch_size} (--batch-size)"
        )
    print(_format_ab_table(table, args.ci, est._variant_name(control)))
    print(_ab_monte_carlo_note(table, args.ci, args.method))
    if args.method == "svi":
        gap = est.exact_gap_
        print(
            f"SVI vs exact posterior: largest mean gap {gap['max_mean_gap_sd']:.3f} sd, "
            f"largest sd error {100 * gap['max_sd_rel_error']:.1f}% ({est.n_steps_} steps)"
        )
    if args.plot:
        with atomic_path(args.plot, overwrite=args.overwrite) as tmp:
            est.plot().savefig(tmp, dpi=110)
        print(f"plot written to {args.plot}")
    return 0


def _launch_fit(args: argparse.Namespace) -> int:
    """``bayesgen fit --nproc N``: the same command in N ranks on this machine, into one run folder."""
    from bayesgen.distributed import launch
    from bayesgen.runs.folder import default_run_folder
    from bayesgen.runs.spec import load_spec

    out = args.out if args.out is not None else str(default_run_folder(load_spec(args.spec)))
    argv = ["fit", args.spec, "--out", out]
    for flag, value in (("--device", args.device), ("--checkpoint-every", args.checkpoint_every)):
        if value is not None:
            argv += [flag, str(value)]
    argv += [
        flag for flag, on in (("--quiet", args.quiet), ("--overwrite", args.overwrite), ("--resume", args.resume)) if on
    ]
    if args.verbose:
        argv.insert(0, "--verbose")
    return launch(argv, args.nproc)


def _cmd_fit(args: argparse.Namespace) -> int:
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out DIR, the run folder of the interrupted fit")
    import os

    ranks = int(os.environ.get("WORLD_SIZE", 0)) if "RANK" in os.environ else 0
    if args.nproc is not None and not ranks:
        return _launch_fit(args)
    if args.nproc is not None and args.nproc != ranks:
        raise ValueError(f"--nproc {args.nproc} inside a torchrun launch of {ranks} processes: drop --nproc")
    import pandas as pd

    from bayesgen.runs.folder import RunInterrupted, run_spec

    rank = int(os.environ.get("RANK", 0)) if ranks else 0
    try:
        out = run_spec(
            args.spec,
            args.out,
            device=args.device,
            progress=not args.quiet and rank == 0,
            overwrite=args.overwrite,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            distributed=bool(ranks),
        )
    except RunInterrupted as err:
        if rank:
            return 130
        if err.resumable:
            import shlex

            command = ["bayesgen", "fit", args.spec, "--out", str(err.folder), "--resume"]
            if args.device is not None:
                command += ["--device", args.device]
            if args.checkpoint_every is not None:
                command += ["--checkpoint-every", str(args.checkpoint_every)]
            if ranks:
                command += ["--nproc", str(ranks)]
            print(f"bayesgen: interrupted; the fit is saved: continue it with {shlex.join(command)}", file=sys.stderr)
        else:
            print(f"bayesgen: interrupted; nothing was written to {err.folder}", file=sys.stderr)
        return 130
    if out is None:  # a rank other than 0 of a data-parallel fit: rank 0 writes and reports
        return 0
    est = out.estimator
    print(f"fitted {out.folder.name}: {est.n_steps_} steps, converged={est.converged_}, device={est.device_}")
    with pd.option_context("display.width", 140, "display.max_columns", 20):
        shown = out.summary.head(20)
        print(shown.to_string(float_format=lambda v: f"{v:.4g}"))
        if len(out.summary) > len(shown):
            print(f"... {len(out.summary) - len(shown)} more rows in {out.folder / 'summary.csv'}")
        print()
        print(out.report.to_string(float_format=lambda v: f"{v:.4g}"))
    import json

    diag = json.loads((out.folder / "diagnostics.json").read_text())
    for i, line in enumerate(_diagnostic_lines(diag)):
        print(("diagnostics: " if i == 0 else "             ") + line)
    for line in diag["warnings"]:
        print(f"bayesgen: warning: {line}", file=sys.stderr)
    print(f"run folder: {out.folder}")
    return 0


def _diagnostic_lines(report: dict) -> list[str]:
    """One line per diagnostic of a diagnostics.json report."""
    lines = [report["convergence"]["message"]]
    for key, what in (
        ("psis", "PSIS k-hat"),
        ("psis_rows", "per-row PSIS k-hat"),
        ("amortised", "amortised guide"),
        ("psis_means", "PSIS means"),
        ("nuts", "NUTS cross-check"),
        ("sbc", "SBC"),
    ):
        part = report.get(key)
        if part is not None:
            lines.append(part.get("message", f"{what} not available: {part.get('error')}"))
    return lines


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from pathlib import Path

    folder = Path(args.run_dir)
    if not (folder / "model").is_dir():
        raise ValueError(f"{folder} is not a run folder (no model/ inside); make one with 'bayesgen fit SPEC'")
    from bayesgen.diagnostics import write_diagnostics
    from bayesgen.models import BayesianEstimator

    est = BayesianEstimator.load(folder / "model", device=args.device)
    report = write_diagnostics(
        est,
        folder,
        num_samples=args.num_samples,
        seed=args.seed,
        nuts=args.nuts,
        nuts_samples=args.nuts_samples,
        nuts_warmup=args.nuts_warmup,
        sbc_simulations=args.sbc,
        sbc_steps=args.sbc_steps,
    )
    print(f"{report['model']} in {folder}")
    for line in _diagnostic_lines(report):
        print("  " + line)
    for line in report["warnings"]:
        print(f"bayesgen: warning: {line}", file=sys.stderr)
    print(f"written: {folder / 'diagnostics.json'}")
    return 0


def _cmd_tour(args: argparse.Namespace) -> int:
    from bayesgen.tour import TOUR_SPECS, run_tour

    names = [n.strip() for n in args.only.split(",")] if args.only else list(TOUR_SPECS)

    def on_event(kind: str, name: str, i: int, total: int, detail: object) -> None:
        if kind == "start":
            print(f"[{i + 1}/{total}] {name}", flush=True)
        elif kind == "done":
            run = detail
            print(f"      done in {run.estimator.fit_seconds_:.1f} s of SVI → {run.folder}", flush=True)
        else:
            print(f"bayesgen: error: {name} failed: {detail}", file=sys.stderr, flush=True)

    result = run_tour(
        args.out,
        device=args.device,
        specs=args.specs,
        names=names,
        smoke=args.smoke,
        progress=not args.quiet,
        on_event=on_event,
        overwrite=args.overwrite,
    )
    print(f"tour finished in {result.seconds['total']:.1f} s; report: {result.report}")
    return 1 if result.errors else 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import pandas as pd

    from bayesgen.runs.reproduce import reproduce

    result = reproduce(
        args.run_dir,
        args.out,
        device=args.device,
        tolerance=args.tolerance,
        rtol=args.rtol,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    bad = result.table[~result.table["ok"]]
    with pd.option_context("display.width", 140):
        shown = bad if len(bad) else result.table.head(10)
        print(shown.to_string(float_format=lambda v: f"{v:.5g}"))
    print(result.message())
    print(f"re-run folder: {result.folder}")
    return 0 if result.match else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    for folder in args.run_dirs:  # before the report's imports; write_report also checks run.json's contents
        if not (Path(folder) / "run.json").is_file():
            raise ValueError(f"{folder} is not a run folder (no run.json inside)")
    from bayesgen.report import write_report

    path = write_report(args.run_dirs, args.out, title=args.title, overwrite=args.overwrite)
    print(f"report: {path}")
    return 0


def _cmd_augment(args: argparse.Namespace) -> int:
    from bayesgen.io import atomic_path, check_not_input, check_target

    check_not_input(args.out, args.csv)
    check_target(args.out, overwrite=args.overwrite)
    clip = _parse_pair(args.clip, "--clip") if args.clip else None
    import pandas as pd

    from bayesgen.augment import augment, check_output_memory
    from bayesgen.datasets import read_csv
    from bayesgen.models.gaussian_generator import GaussianGenerator, validate_xy

    table = read_csv(args.csv)
    unlabelled = None
    if args.label in table.columns:
        column = table[args.label]
        blank = (column.isna() | column.astype(str).str.strip().eq("")).to_numpy()
        if blank.any() and not args.unlabelled:
            raise ValueError(
                f"{int(blank.sum())} rows have no label in column {args.label!r}; pass --unlabelled "
                "to fit semi-supervised with them (EM; needs --method exact), or drop them"
            )
        if blank.all():
            raise ValueError(f"no row has a label in column {args.label!r}")
        if blank.any():
            if args.method != "exact":
                raise ValueError("--unlabelled needs --method exact (EM on the exact conjugate posterior)")
            unlabelled = table.loc[blank].drop(columns=args.label)
            table = table.loc[~blank].copy()
            labels = table[args.label]
            if labels.dtype.kind == "f" and (labels % 1 == 0).all():  # integer labels read as float beside blanks
                table[args.label] = labels.astype("int64")
    X, y, names = validate_xy(table, label=args.label)
    n_classes = len(pd.unique(y))
    check_output_memory(args.num_per_class * n_classes, n_classes, len(names), f"--num-per-class {args.num_per_class}")
    features = pd.DataFrame(X, columns=names)
    if unlabelled is not None:
        unlabelled = unlabelled[names]  # the labelled rows' feature columns, so a stray column is no feature
    gen = GaussianGenerator(
        covariance=args.covariance,
        rank=args.rank,
        subspace=args.subspace,
        method=args.method,
        constant_features="keep" if args.keep_constant else "error",
        clip=clip,
        num_steps=args.num_steps,
        device=args.device,
        seed=args.seed,
        progress=not args.quiet,
    ).fit(features, y, unlabelled=unlabelled)
    data = augment(features, y, gen, num_per_class=args.num_per_class, seed=args.seed)
    out = data.to_frame(label=args.label)
    with atomic_path(args.out, overwrite=args.overwrite) as tmp:
        out.to_csv(tmp, index=False)
    n_syn = int(data.synthetic.sum())
    print(
        f"wrote {args.out}: {len(out) - n_syn} real rows + {n_syn} synthetic rows "
        f"({args.num_per_class} per class, column 'synthetic' marks them)"
    )
    if unlabelled is not None and gen.unlabelled_history_ is None:
        print(
            f"the generator did not learn from the {len(unlabelled)} unlabelled rows: EM classified held-out "
            "labelled rows worse (see the warning); they are not in the output"
        )
    elif unlabelled is not None:
        print(
            f"the generator also learnt from {len(unlabelled)} unlabelled rows (EM, "
            f"{len(gen.unlabelled_history_) - 1} passes, each row weighted {gen.unlabelled_weight_:g}); "
            "they are not in the output"
        )
    return 0


def _cmd_anomaly(args: argparse.Namespace) -> int:
    from bayesgen.io import atomic_path, check_not_input, check_target

    check_not_input(args.out, args.csv)
    check_target(args.out, overwrite=args.overwrite)
    from bayesgen.datasets import read_csv
    from bayesgen.models.anomaly import MixtureAnomalyDetector, binary_labels

    table = read_csv(args.csv)
    if args.labels is not None and args.labels not in table.columns:
        raise ValueError(f"{args.csv} has no --labels column {args.labels!r}; columns are {list(table.columns)[:20]}")
    columns = (
        [c.strip() for c in args.columns.split(",")] if args.columns else [c for c in table.columns if c != args.labels]
    )
    if len(set(columns)) != len(columns):
        raise ValueError(f"--columns names a column more than once: {columns}")
    if args.labels in columns:
        raise ValueError(f"--labels column {args.labels!r} cannot also be a feature in --columns")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{args.csv} has no columns {missing}; columns are {list(table.columns)[:20]}")
    if args.labels is not None:  # checked before the fit, not after it
        known = table[args.labels].notna().to_numpy()
        if not known.any():
            raise ValueError(f"--labels column {args.labels!r} has no labelled rows (all empty)")
        labels = binary_labels(
            table.loc[known, args.labels].to_numpy(), int(known.sum()), f"--labels column {args.labels!r}"
        )
    det = MixtureAnomalyDetector(
        num_components=args.components,
        covariance=args.covariance,
        anomaly=args.anomaly,
        num_steps=args.num_steps,
        device=args.device,
        seed=args.seed,
        progress=not args.quiet,
    ).fit(table[columns])
    if args.labels is not None:
        det.calibrate(table.loc[known, columns], labels)
        print(
            f"calibrated on {int(known.sum())} labelled rows ({det.calibration_['anomalies']} anomalies): "
            f"slope {det.calibration_['slope']:.3g}, intercept {det.calibration_['intercept']:.3g}"
        )
    out = table.copy()
    out["anomaly_probability"] = det.predict_proba(table[columns])
    out["anomaly"] = (out["anomaly_probability"] > args.threshold).astype(int)
    with atomic_path(args.out, overwrite=args.overwrite) as tmp:
        out.to_csv(tmp, index=False)
    frac = det.anomaly_fraction()
    print(
        f"wrote {args.out}: {int(out['anomaly'].sum())} of {len(out)} rows flagged (P(anomaly) > {args.threshold}); "
        f"anomaly fraction {frac['mean']:.3f} [{frac['low']:.3f}, {frac['high']:.3f}]"
    )
    return 0


def _components(text: str) -> int | str:
    """``--components``: a positive integer or ``auto``."""
    return "auto" if text.strip().lower() == "auto" else _positive(text)


def _parse_pair(text: str, flag: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"{flag} {text!r} must be two numbers LOW,HIGH") from None


_OVERWRITE_HELP = "replace an existing --out (only once the new output is complete)"
_DEVICE_HELP = "auto, cpu or cuda (default auto: a GPU when one is present)"
_SEED_HELP = "random seed: the same seed repeats the fit on the CPU (default 0)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bayesgen`` command."""
    # Over 80 lines: one declaration per command and option, in the order `--help` shows them (the
    # command line's table, read top to bottom; the docs' CLI reference is generated from it).
    parser = _Parser(prog="bayesgen", description="Bayesian generative models in Pyro.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True)

    tour = sub.add_parser(
        "tour", help=f"fit all {len(MODELS)} models ({', '.join(MODELS)}) on offline data and write an HTML report"
    )
    tour.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    tour.add_argument("--out", default="runs/tour", help="folder for the run folders and report.html")
    tour.add_argument("--specs", default=None, help="folder of the run specs (default: the checkout's models/)")
    tour.add_argument("--only", default=None, help=f"comma-separated spec names to fit (default: all {len(MODELS)})")
    tour.add_argument("--smoke", action="store_true", help="a twentieth of the steps: checks the setup, not results")
    tour.add_argument("--quiet", action="store_true", help="no progress bars")
    tour.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    tour.set_defaults(func=_cmd_tour)

    rep = sub.add_parser("reproduce", help="re-run a run folder and compare its summaries within tolerance")
    rep.add_argument("run_dir", help="a folder written by 'bayesgen fit' or 'bayesgen tour'")
    rep.add_argument("--out", default=None, help="re-run folder (default RUN_DIR/reproduced)")
    rep.add_argument("--device", default=None, help="default: the original's device when available, else cpu")
    rep.add_argument(
        "--tolerance", type=_tolerance, default=0.1, help="allowed change of a mean, in posterior sds (default 0.1)"
    )
    rep.add_argument(
        "--rtol", type=_tolerance, default=0.05, help="allowed relative change of a report figure (default 0.05)"
    )
    rep.add_argument("--quiet", action="store_true", help="no progress bar")
    rep.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    rep.set_defaults(func=_cmd_reproduce)

    hr = sub.add_parser("report", help="one self-contained HTML report of run folders")
    hr.add_argument("run_dirs", nargs="+", help="folders written by 'bayesgen fit'")
    hr.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
    hr.add_argument(
        "--title", default="bayesgen report", help="the page's title and heading (default 'bayesgen report')"
    )
    hr.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    hr.set_defaults(func=_cmd_report)

    fit = sub.add_parser(
        "fit",
        help="fit a run spec (a TOML file, as in models/) and write a run folder; its [run] "
        f"model is one of {', '.join(MODELS)}",
    )
    fit.add_argument("spec", help="path to a TOML run spec")
    fit.add_argument("--device", default=None, help="auto, cpu or cuda (overrides the spec)")
    fit.add_argument("--out", default=None, help="run folder (default runs/<name>-<time>)")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    fit.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="N",
        help="write a checkpoint every N SVI steps (one is always written on Ctrl-C)",
    )
    fit.add_argument(
        "--resume", action="store_true", help="continue the fit that Ctrl-C interrupted in --out DIR (needs --out)"
    )
    fit.add_argument(
        "--nproc",
        type=_integer(1),
        default=None,
        metavar="N",
        help="fit data-parallel in N processes on this machine (as torchrun would; one GPU each with --device cuda); "
        "the spec's batch_size is per process",
    )
    fit.set_defaults(func=_cmd_fit)

    ab = sub.add_parser("abtest", help="Bayesian A/B(/n) test of conversion rates")
    ab.add_argument("counts", nargs="*", help="SUCCESSES/TRIALS per variant, e.g. 235/2435 157/2435")
    ab.add_argument("--names", help="comma-separated variant names")
    ab.add_argument("--prior", default="1,1", help="Beta prior ALPHA,BETA (default 1,1)")
    ab.add_argument("--control", help="control variant for the lift (default: the first)")
    ab.add_argument("--csv", help="CSV of raw events (one row per visitor)")
    ab.add_argument("--variant-col", help="variant column of --csv")
    ab.add_argument("--outcome-col", help="0/1 outcome column of --csv")
    ab.add_argument(
        "--method",
        choices=["svi", "exact"],
        default="svi",
        help="svi: fit by SVI and compare with the exact posterior; exact: the conjugate Beta posterior (default svi)",
    )
    ab.add_argument(
        "--num-steps", type=_positive, default=3000, help="SVI steps (default 3000; ignored by --method exact)"
    )
    ab.add_argument(
        "--batch-size",
        type=_positive,
        default=None,
        help="fit --csv events in SVI minibatches of this size (default: sum them to counts per variant)",
    )
    ab.add_argument("--ci", type=_probability, default=0.94, help="credible interval mass (default 0.94)")
    ab.add_argument("--device", default="auto", help=_DEVICE_HELP)
    ab.add_argument("--seed", type=_seed, default=0, help=_SEED_HELP)
    ab.add_argument("--plot", help="write the posterior plot to this file (PNG, PDF, SVG)")
    ab.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    ab.add_argument("--quiet", action="store_true", help="no progress bar")
    ab.set_defaults(func=_cmd_abtest)

    aug = sub.add_parser("augment", help="add synthetic rows from a Gaussian class-conditional generator")
    aug.add_argument("--csv", required=True, help="CSV with numeric feature columns and a label column")
    aug.add_argument("--label", required=True, help="label column")
    aug.add_argument("--num-per-class", type=_integer(0), default=100, help="synthetic rows per class (default 100)")
    aug.add_argument("--out", required=True, help="output CSV: real + synthetic rows, with a 'synthetic' column")
    aug.add_argument(
        "--covariance",
        choices=["diag", "full", "lowrank"],
        default="lowrank",
        help="per-class covariance: diagonal, full, or low rank plus diagonal (default lowrank)",
    )
    aug.add_argument(
        "--rank",
        type=_rank,
        default="auto",
        help="factors of the lowrank covariance (default auto: 10, or one fewer than the features)",
    )
    aug.add_argument(
        "--subspace",
        type=_positive,
        default=None,
        help="model the classes in this many principal components (pixels with few rows per class)",
    )
    aug.add_argument("--method", choices=["svi", "exact"], default="svi", help="exact: diag/full only")
    aug.add_argument("--clip", help="clip samples to LOW,HIGH (e.g. 0,1 for pixels)")
    aug.add_argument("--keep-constant", action="store_true", help="hold constant features fixed instead of failing")
    aug.add_argument(
        "--unlabelled",
        action="store_true",
        help="rows with an empty label are unlabelled data: the generator learns from them too "
        "(semi-supervised EM; needs --method exact); they are not written out",
    )
    aug.add_argument(
        "--num-steps", type=_positive, default=2000, help="SVI steps (default 2000; ignored by --method exact)"
    )
    aug.add_argument("--device", default="auto", help=_DEVICE_HELP)
    aug.add_argument("--seed", type=_seed, default=0, help=_SEED_HELP)
    aug.add_argument("--quiet", action="store_true", help="no progress bar")
    aug.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    aug.set_defaults(func=_cmd_augment)

    an = sub.add_parser("anomaly", help="posterior anomaly probability of every row of a CSV")
    an.add_argument("--csv", required=True, help="CSV of numeric columns")
    an.add_argument("--columns", help="comma-separated columns to model (default: all)")
    an.add_argument("--out", required=True, help="output CSV: the rows plus anomaly_probability and anomaly (0/1)")
    an.add_argument(
        "--components",
        type=_components,
        default=1,
        help="Gaussian components of normal behaviour, or 'auto' (chosen by BIC, refusing a number that "
        "absorbs the anomalies; default 1)",
    )
    an.add_argument(
        "--covariance",
        choices=["diag", "full", "lowrank"],
        default="full",
        help="covariance of each normal component: diagonal, full, or low rank plus diagonal (default full)",
    )
    an.add_argument(
        "--anomaly",
        choices=["inflated", "student_t"],
        default="inflated",
        help="the anomaly component: a learnt, inflated Gaussian or a fixed Student-t",
    )
    an.add_argument(
        "--labels",
        metavar="COLUMN",
        help="a 0/1 column (1 = anomaly; empty where unknown): not a feature; its labelled rows "
        "calibrate the probability (Platt scaling, see MixtureAnomalyDetector.calibrate)",
    )
    an.add_argument("--threshold", type=_probability, default=0.5, help="flag rows with P(anomaly) above this")
    an.add_argument("--num-steps", type=_positive, default=300, help="SVI steps after the EM start (default 300)")
    an.add_argument("--device", default="auto", help=_DEVICE_HELP)
    an.add_argument("--seed", type=_seed, default=0, help=_SEED_HELP)
    an.add_argument("--quiet", action="store_true", help="no progress bar")
    an.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    an.set_defaults(func=_cmd_anomaly)

    dg = sub.add_parser("diagnose", help="diagnostics of a run folder: convergence, PSIS k-hat, NUTS, SBC")
    dg.add_argument("run_dir", help="a folder written by 'bayesgen fit'")
    dg.add_argument("--num-samples", type=_integer(2), default=1000, help="guide draws for PSIS (default 1000)")
    dg.add_argument("--nuts", action="store_true", help="cross-check with NUTS (small models only)")
    dg.add_argument("--nuts-samples", type=_integer(2), default=1000, help="NUTS draws per chain (default 1000)")
    dg.add_argument("--nuts-warmup", type=_integer(0), default=500, help="NUTS warm-up steps per chain (default 500)")
    dg.add_argument(
        "--sbc", type=_integer(0), default=0, metavar="N", help="simulation-based calibration with N refits"
    )
    dg.add_argument("--sbc-steps", type=_positive, default=None, help="SVI steps per SBC refit")
    dg.add_argument("--device", default="auto", help=_DEVICE_HELP)
    dg.add_argument(
        "--seed", type=_seed, default=0, help="seed of the guide draws, NUTS chains and SBC simulations (default 0)"
    )
    dg.set_defaults(func=_cmd_diagnose)
    return parser


#: OpenMP threads that finish early spin this many times before they sleep (libgomp's default is 300,000).
#: A long spin keeps a core busy that another process on the machine could use, and is waited
#: out by the thread's partner when that process takes its core.
OMP_SPIN_COUNT = "1000"


def _short_omp_spin(environ: MutableMapping[str, str]) -> None:
    """Give torch's OpenMP threads a short spin before they sleep, unless the user chose a wait policy or
    torch is loaded already (OpenMP reads the setting once, when torch loads)."""
    if "torch" in sys.modules or any(environ.get(k) for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")):
        return
    environ["GOMP_SPINCOUNT"] = OMP_SPIN_COUNT


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, or a bad argument (already reported in one line)
        return stop.code if isinstance(stop.code, int) else 2
    import logging  # after parsing: --help and argument errors need neither logging nor what it imports
    import warnings

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # font fallbacks are not the user's business
    import os

    _short_omp_spin(os.environ)
    # Under torchrun every rank reports; each line says which one.
    who = f" (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", 1)) > 1 and "RANK" in os.environ else ""
    default_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202 (warnings' hook)
        if issubclass(category, UserWarning):  # bayesgen's warnings: one line, as its errors are
            print(f"bayesgen: warning{who}: {message}", file=sys.stderr)
        else:
            default_show(message, category, filename, lineno, file, line)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", UserWarning)
            warnings.showwarning = show
            return args.func(args)
    except (ValueError, TypeError, OSError, FloatingPointError, MemoryError) as err:
        # FloatingPointError: a fit whose loss became NaN/inf (e.g. a learning rate far too high);
        # MemoryError: estimators raise NotEnoughMemoryError, naming the method and what to ask for instead.
        print(f"bayesgen: error{who}: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if type(err).__name__ != "DistributedError":  # another rank failed: its own line says why
            raise
        print(f"bayesgen: error{who}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bayesgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
