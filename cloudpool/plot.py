"""Pictures of a job: a per-call timeline and the distributions of call times.

This module owns ``timeline()`` and ``histogram()``, which turn call records
(``ExecutorStats``, from ``executor.stats()``, or the ``times`` of a list of futures)
into PNG (or SVG/PDF) files. matplotlib is imported only when a picture is drawn, and
only its object-oriented API is used with an Agg canvas: no pyplot, so drawing never
changes the caller's matplotlib backend or global figure state and works in threads and
on machines without a display.

The timeline draws every call as one row, split into the four phases cloudpool can
tell apart: waiting on the client (submitted -> invoked), queued on the platform
(invoked -> started), running (started -> finished) and fetching the result (finished
-> fetched). A row per call stops working once there are more calls than pixel rows,
where overlapping lines would show only whichever phase was drawn last; past that
point the rows are binned into pixel rows and each pixel is coloured by the mix of the
phases its calls were in (deeper where more of them are in flight), computed with
numpy from exact per-pixel time coverage, so 100,000 calls draw in about two seconds.
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from .errors import MissingDependencyError

if TYPE_CHECKING:
    import numpy as np

    from .stats import CallRecord, ExecutorStats

__all__ = ["timeline", "histogram", "PHASE_COLOURS", "FAILURE_COLOUR"]

PathLike = Union[str, "os.PathLike[str]"]

#: Phase -> colour (Okabe-Ito palette: distinguishable with the common colour-vision deficiencies).
PHASE_COLOURS: Dict[str, str] = {
    "waiting": "#B8B8B8",   # submitted -> invoked: still on the client
    "queued": "#E69F00",    # invoked -> started: the platform had it, the function had not started
    "running": "#0072B2",   # started -> finished: the function ran
    "fetching": "#009E73",  # finished -> fetched: the result travelling back
    "unreported": "#CC79A7",  # invoked/started -> fetched with no finish reported (e.g. a lost worker)
}
PHASE_LABELS = {
    "waiting": "waiting on the client (submitted → invoked)",
    "queued": "queued on the platform (invoked → started)",
    "running": "running (started → finished)",
    "fetching": "fetching the result (finished → fetched)",
    "unreported": "no finish reported by the worker (→ failed)",
}
FAILURE_COLOUR = "#D55E00"

# Figures are sized in inches at this resolution; the density image uses the pixel grid.
_DPI = 100
_TIMELINE_SIZE = (12.0, 7.5)
_HISTOGRAM_SIZE = (12.0, 8.0)
# Room above the concurrency curves for the legend.
_HEADROOM = 1.5


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:
        raise MissingDependencyError(
            "cloudpool.plot needs matplotlib (and numpy), which are not installed: "
            "pip install cloudpool[plot]") from exc
    return numpy


def _matplotlib() -> Tuple[Any, Any]:
    """The Figure class and the Agg canvas, or an ImportError saying what to install."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError(
            "cloudpool.plot needs matplotlib, which is not installed: pip install cloudpool[plot]") from exc
    return Figure, FigureCanvasAgg


# ---------------------------------------------------------------------------- input
class _Calls:
    """The records to draw, as numpy columns (NaN where a time is unknown)."""

    def __init__(self, records: Sequence["CallRecord"], *, backend: str, name: str) -> None:
        np = _numpy()
        # One transposition instead of a pass per field; numpy turns None into NaN for floats.
        columns = dict(zip(records[0]._fields, zip(*records)))

        def times(field: str) -> "np.ndarray":
            return np.array(columns[field], dtype=float)

        self.n = len(records)
        self.backend = backend
        self.name = name
        self.submitted = times("submitted")
        self.invoked = times("invoked")
        self.started = times("started")
        self.finished = times("finished")
        self.fetched = times("fetched")
        self.ok = np.array(columns["ok"], dtype=bool)
        self.workers = list(columns["worker"])
        self.invocations = len(set(zip(columns["job"], columns["batch"])))
        self.t0 = float(np.nanmin(self.submitted))

    @property
    def duration(self) -> "np.ndarray":
        return self.finished - self.started

    @property
    def latency(self) -> "np.ndarray":
        return self.fetched - self.submitted


def _records_from_futures(futures: Sequence[Any]) -> List["CallRecord"]:
    from .executor import CloudFuture
    from .stats import CallRecord

    records = []
    for i, f in enumerate(futures):
        if not isinstance(f, CloudFuture):
            raise TypeError(f"item {i} of the futures list is a {type(f).__name__}, not a CloudFuture "
                            f"(a future returned by CloudPoolExecutor.submit)")
        times = f.times
        if "fetched" not in times or not f.done() or f.cancelled():
            continue  # not finished (or never ran): nothing to draw for it yet
        records.append(CallRecord("futures", i, 0, times["submitted"], times.get("invoked"),
                                  times.get("started"), times.get("finished"), times["fetched"],
                                  times.get("worker"), times.get("maxrss_kb"), f.exception() is None))
    return records


def _calls_from(source: Any, function: str) -> _Calls:
    """Accept an executor, an ExecutorStats or a list of CloudFutures; refuse anything else early."""
    from .executor import CloudPoolExecutor
    from .stats import ExecutorStats

    if isinstance(source, CloudPoolExecutor):
        stats = source.stats()
        if not stats.calls:
            raise ValueError(f"nothing to draw: executor {source.executor_id} has no finished calls yet "
                             f"(a call is recorded once its result is fetched); submit work and wait "
                             f"for it before calling {function}()")
        return _Calls(stats.calls, backend=stats.backend, name=source.executor_id)
    if isinstance(source, ExecutorStats):
        if not source.calls:
            raise ValueError("nothing to draw: these ExecutorStats hold no calls (a call is recorded "
                             "once its result is fetched); take executor.stats() after the work has "
                             "finished")
        return _Calls(source.calls, backend=source.backend, name=_stats_name(source))
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("nothing to draw: the list of futures is empty; pass the futures "
                             "returned by executor.submit()")
        records = _records_from_futures(source)
        if not records:
            raise ValueError(f"nothing to draw: none of the {len(source)} futures has finished; wait for "
                             f"them (concurrent.futures.wait) before calling {function}()")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(min(r.submitted for r in records)))
        return _Calls(records, backend="futures", name=f"futures-{stamp}")
    raise TypeError(f"{function}() takes a CloudPoolExecutor, an ExecutorStats (executor.stats()) or a "
                    f"list of CloudFutures, not {type(source).__name__}")


def _stats_name(stats: "ExecutorStats") -> str:
    jobs = sorted({c.job for c in stats.calls})
    job = jobs[0] if len(jobs) == 1 else f"{len(jobs)}jobs"
    # The time of the first submission keeps names from different runs apart.
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(min(c.submitted for c in stats.calls)))
    return f"{stats.backend}-{job}-{stamp}"


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _headline(calls: _Calls) -> str:
    return (f"cloudpool {calls.backend}: {_plural(calls.n, 'call')}, "
            f"{_plural(calls.invocations, 'invocation')}")


def _output_path(path: Optional[PathLike], calls: _Calls, kind: str, canvas_cls: Any) -> str:
    """Where to write: checked before drawing, so a bad path fails fast."""
    default_name = f"cloudpool-{calls.name}-{kind}.png"
    if path is None:
        return os.path.abspath(default_name)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
    target = os.fspath(path)
    if os.path.isdir(target):
        return os.path.join(target, default_name)
    parent = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot write {target!r}: its directory {parent!r} does not exist; "
                                f"create it first or pick another path")
    ext = os.path.splitext(target)[1].lstrip(".").lower()
    supported = canvas_cls.get_supported_filetypes()
    if ext not in supported:
        raise ValueError(f"cannot write {target!r}: the file name must end in one of "
                         f"{', '.join('.' + e for e in sorted(supported))} (e.g. .png)")
    return target


# ---------------------------------------------------------------------------- timeline
def _phase_bounds(calls: _Calls) -> Dict[str, Tuple["np.ndarray", "np.ndarray"]]:
    """Start and end (seconds since the first submission) of each phase of each call.

    A phase whose edge is unknown is dropped for that call (NaN), except that the
    client-side wait runs to the first later time known, so a call always has a row,
    and a call whose worker never reported a finish (a lost worker) shows the time from
    its last known step to the client's verdict as "unreported".
    """
    np = _numpy()
    t0 = calls.t0
    sub = calls.submitted - t0
    inv = calls.invoked - t0
    sta = calls.started - t0
    fin = calls.finished - t0
    fet = calls.fetched - t0
    wait_end = np.where(np.isnan(inv), np.where(np.isnan(sta), fet, sta), inv)
    last_known = np.where(np.isnan(sta), inv, sta)
    return {
        "waiting": (sub, wait_end),
        "queued": (inv, sta),
        "running": (sta, fin),
        "fetching": (fin, fet),
        "unreported": (np.where(np.isnan(fin), last_known, np.nan), fet),
    }


def _draw_rows(ax: Any, bounds: Dict[str, Tuple["np.ndarray", "np.ndarray"]], rows: "np.ndarray",
               n: int, axes_height_px: float) -> None:
    """One horizontal line per call and phase: a single NaN-separated path per phase."""
    np = _numpy()
    # Line thickness fills ~70% of a row, so neighbouring calls stay apart.
    row_px = axes_height_px / max(n, 1)
    linewidth = max(0.5, min(14.0, 0.7 * row_px * 72.0 / _DPI))
    for phase, (start, end) in bounds.items():
        keep = ~(np.isnan(start) | np.isnan(end))
        if not keep.any():
            continue
        m = int(keep.sum())
        xs = np.full(3 * m, np.nan)
        ys = np.full(3 * m, np.nan)
        xs[0::3], xs[1::3] = start[keep], end[keep]
        ys[0::3] = ys[1::3] = rows[keep]
        ax.plot(xs, ys, color=PHASE_COLOURS[phase], linewidth=linewidth, solid_capstyle="butt",
                antialiased=n <= 200)


def _density_image(bounds: Dict[str, Tuple["np.ndarray", "np.ndarray"]], rows: "np.ndarray", n: int,
                   x_max: float, height: int, width: int) -> "np.ndarray":
    """An RGB image, one pixel row per group of calls, coloured by the phases its calls were in.

    For each phase, the time each call spends in each pixel column is added up with a
    difference array (whole columns) plus the two partial columns at the ends, all with
    ``bincount``; dividing by the calls in the pixel row gives the fraction of that pixel
    in each phase.
    """
    np = _numpy()
    from matplotlib.colors import to_rgb

    row_bin = np.minimum((rows * height / n).astype(np.int64), height - 1)
    calls_per_bin = np.bincount(row_bin, minlength=height).astype(float)
    scale = width / x_max if x_max > 0 else 0.0
    mixed = np.zeros((height, width, 3))  # sum over phases of fraction x colour
    busy = np.zeros((height, width))      # fraction of the row's calls in any phase
    for phase, (start, end) in bounds.items():
        keep = ~(np.isnan(start) | np.isnan(end)) & (end > start)
        if not keep.any():
            continue
        a = np.clip(start[keep] * scale, 0, width)
        b = np.clip(end[keep] * scale, 0, width)
        r = row_bin[keep]
        ia = np.minimum(np.floor(a).astype(np.int64), width - 1)
        ib = np.minimum(np.floor(b).astype(np.int64), width - 1)
        same = ia == ib
        cover = np.zeros(height * (width + 1))
        # Segments inside one pixel column.
        cover += np.bincount(r[same] * (width + 1) + ia[same], weights=(b - a)[same], minlength=cover.size)
        # Longer ones: partial first and last columns, whole columns in between.
        d = ~same
        rd, iad, ibd = r[d], ia[d], ib[d]
        cover += np.bincount(rd * (width + 1) + iad, weights=(iad + 1 - a[d]), minlength=cover.size)
        cover += np.bincount(rd * (width + 1) + ibd, weights=(b[d] - ibd), minlength=cover.size)
        diff = np.zeros(height * (width + 1))
        diff += np.bincount(rd * (width + 1) + iad + 1, minlength=diff.size)
        diff -= np.bincount(rd * (width + 1) + ibd, minlength=diff.size)
        full = np.cumsum(diff.reshape(height, width + 1), axis=1)
        coverage = cover.reshape(height, width + 1) + full
        fraction = coverage[:, :width] / np.maximum(calls_per_bin, 1)[:, None]
        mixed += fraction[:, :, None] * np.array(to_rgb(PHASE_COLOURS[phase]))[None, None, :]
        busy += fraction
    # Hue: the phases' mix among the calls that are anywhere in flight. Depth: the share
    # of the row's calls in flight, square-rooted so that a pixel where a few of its
    # hundreds of calls run is still visible against the white background.
    busy = np.clip(busy, 0.0, 1.0)
    hue = mixed / np.maximum(busy, 1e-12)[:, :, None]
    depth = np.sqrt(busy)[:, :, None]
    return np.clip(1.0 - depth * (1.0 - hue), 0.0, 1.0)


def _concurrency(start: "np.ndarray", end: "np.ndarray") -> Tuple["np.ndarray", "np.ndarray"]:
    """Step function: how many [start, end) intervals are open at each change."""
    np = _numpy()
    keep = ~(np.isnan(start) | np.isnan(end))
    times = np.concatenate([start[keep], end[keep]])
    steps = np.concatenate([np.ones(int(keep.sum())), -np.ones(int(keep.sum()))])
    order = np.argsort(times, kind="stable")
    return times[order], np.cumsum(steps[order])


def timeline(source: Any, path: Optional[PathLike] = None, *, title: Optional[str] = None) -> str:
    """Draw when each call waited, queued, ran and was fetched; return the file written.

    ``source`` is a ``CloudPoolExecutor``, its ``stats()`` or a list of the
    ``CloudFuture``s it returned (unfinished futures are left out). The top panel has one
    row per call, in submission order, x = seconds since the first submission, with
    failed calls marked; the bottom panel shows how many calls were running (and how
    many were submitted but not yet fetched) over time. ``path`` defaults to
    ``cloudpool-<executor or job>-timeline.png`` in the current directory; a directory
    puts that name in it; the suffix picks the format (.png, .svg, .pdf...).
    """
    np = _numpy()
    Figure, Canvas = _matplotlib()
    calls = _calls_from(source, "timeline")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str, not {type(title).__name__}")
    out = _output_path(path, calls, "timeline", Canvas)

    bounds = _phase_bounds(calls)
    order = np.lexsort((np.arange(calls.n), calls.submitted))  # by submission, stable
    rows = np.empty(calls.n)
    rows[order] = np.arange(calls.n)
    x_max = float(np.nanmax(np.concatenate([e for _s, e in bounds.values()] + [bounds["waiting"][0]])))
    x_max = x_max if x_max > 0 else 1e-3

    fig = Figure(figsize=_TIMELINE_SIZE, dpi=_DPI, layout="constrained")
    Canvas(fig)
    grid = fig.add_gridspec(2, 1, height_ratios=(3.2, 1))
    ax = fig.add_subplot(grid[0])
    ax_conc = fig.add_subplot(grid[1], sharex=ax)

    axes_height_px = _TIMELINE_SIZE[1] * _DPI * 0.62  # the top panel's share, before layout
    axes_width_px = _TIMELINE_SIZE[0] * _DPI * 0.85
    dense = calls.n > axes_height_px
    if dense:
        height = int(axes_height_px)
        width = int(axes_width_px)
        image = _density_image(bounds, rows, calls.n, x_max, height, width)
        ax.imshow(image, extent=(0, x_max, calls.n - 0.5, -0.5), aspect="auto",
                  interpolation="nearest", origin="upper")
    else:
        _draw_rows(ax, bounds, rows, calls.n, axes_height_px)

    failed = ~calls.ok
    if failed.any():
        # A failure is marked where the call ended (or, with no end known, where it was fetched).
        fin = bounds["running"][1]
        where = np.where(np.isnan(fin), bounds["fetching"][1], fin)[failed]
        ax.scatter(where, rows[failed], marker="x", s=90 if calls.n <= 200 else 14,
                   color=FAILURE_COLOUR, linewidths=1.5, zorder=3)

    ax.set_xlim(0, x_max * 1.01)
    ax.set_ylim(calls.n - 0.5, -0.5)  # first submitted at the top, as in a Gantt chart
    if calls.n <= 20:
        ax.set_yticks(range(calls.n))
    ax.set_ylabel("call (in submission order)")
    ax.tick_params(labelbottom=False)
    ax.grid(axis="x", alpha=0.3)

    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    start, end = bounds["unreported"]
    shown = [p for p in PHASE_COLOURS
             if p != "unreported" or bool((~(np.isnan(start) | np.isnan(end))).any())]
    handles = [Patch(color=PHASE_COLOURS[p], label=PHASE_LABELS[p]) for p in shown]
    n_failed = int(failed.sum())
    if n_failed:
        handles.append(Line2D([], [], color=FAILURE_COLOUR, marker="x", linestyle="none",
                              markersize=8, label=f"failed ({n_failed})"))
    ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.9)
    if dense:
        ax.text(0.005, 0.005, f"{calls.n:,} calls: each pixel row merges ~{calls.n / height:.0f} calls; "
                f"hue = mix of their phases, depth = share in flight", transform=ax.transAxes, fontsize=7,
                color="#444444", va="bottom")

    # Bottom panel: concurrency.
    sta, fin = bounds["running"]
    t_run, running = _concurrency(sta, fin)
    t_out, outstanding = _concurrency(bounds["waiting"][0], bounds["fetching"][1])
    handles = []
    if t_out.size:
        # On its own axis: a big backlog would otherwise flatten the running curve.
        ax_out = ax_conc.twinx()
        handles += ax_out.step(np.concatenate([[0], t_out]), np.concatenate([[0], outstanding]), where="post",
                               color="#555555", linewidth=1, linestyle="--",
                               label="submitted, not yet fetched (right axis)")
        ax_out.set_ylim(0, max(1.0, float(outstanding.max())) * _HEADROOM)
        ax_out.set_ylabel("calls outstanding", color="#555555")
    if t_run.size:
        ax_conc.fill_between(np.concatenate([[0], t_run]), np.concatenate([[0], running]), step="post",
                             color=PHASE_COLOURS["running"], alpha=0.35, linewidth=0)
        handles += ax_conc.step(np.concatenate([[0], t_run]), np.concatenate([[0], running]), where="post",
                                color=PHASE_COLOURS["running"], linewidth=1.2, label="running (left axis)")
        ax_conc.text(0.995, 0.95, f"peak running: {int(running.max())}", transform=ax_conc.transAxes,
                     ha="right", va="top", fontsize=8)
    ax_conc.set_ylim(0, max(1.0, float(running.max()) if t_run.size else 1.0) * _HEADROOM)
    ax_conc.set_xlabel("seconds since the first submission")
    ax_conc.set_ylabel("calls running", color=PHASE_COLOURS["running"])
    ax_conc.legend(handles=handles, loc="upper left", fontsize=8)
    ax_conc.grid(alpha=0.3)

    wall = float(np.max(calls.fetched)) - calls.t0
    workers = len({w for w in calls.workers if w is not None})
    fig.suptitle(title if title is not None else
                 f"{_headline(calls)}, {_plural(workers, 'worker')}, {n_failed} failed, "
                 f"{wall:.2f} s from first submission to last result", fontsize=11)
    fig.savefig(out)
    return out


# ---------------------------------------------------------------------------- histogram
_BIN_RULES = ("auto", "fd", "doane", "scott", "stone", "rice", "sturges", "sqrt")


def _check_bins(bins: Any) -> Any:
    if isinstance(bins, bool) or not isinstance(bins, (int, str)):
        raise TypeError(f"bins must be an int or one of {', '.join(map(repr, _BIN_RULES))}, "
                        f"not {type(bins).__name__}")
    if isinstance(bins, int) and bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if isinstance(bins, str) and bins not in _BIN_RULES:
        raise ValueError(f"unknown bins rule {bins!r}; use an int or one of {', '.join(map(repr, _BIN_RULES))}")
    return bins


def _hist_panel(ax: Any, values: "np.ndarray", ok: "np.ndarray", bins: Any, what: str) -> None:
    np = _numpy()
    from matplotlib.ticker import MaxNLocator

    keep = ~np.isnan(values)
    values, ok = values[keep], ok[keep]
    if values.size == 0:
        ax.text(0.5, 0.5, f"no call reported its {what}", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    edges = np.histogram_bin_edges(values, bins=bins)
    ax.hist([values[ok], values[~ok]], bins=edges, stacked=True,
            color=[PHASE_COLOURS["running"], FAILURE_COLOUR],
            label=[f"ok ({int(ok.sum())})", f"failed ({int((~ok).sum())})"])
    median, p95 = np.percentile(values, [50, 95])
    ax.axvline(median, color="#222222", linewidth=1, linestyle="--", label=f"median {median:.3g} s")
    ax.axvline(p95, color="#222222", linewidth=1, linestyle=":", label=f"p95 {p95:.3g} s")
    ax.set_xlabel("seconds")
    ax.set_ylabel("calls")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    ax.grid(alpha=0.3)


def histogram(source: Any, path: Optional[PathLike] = None, *, bins: Union[int, str] = "auto") -> str:
    """Draw the distributions of call durations and end-to-end latencies, and calls per worker.

    ``source`` is as for ``timeline()``. Panels: how long the function ran
    (started -> finished), how long each call took end to end (submitted -> fetched),
    both split into ok and failed with the median and p95 marked, and how many calls
    each worker ran. ``bins`` is an int or a numpy rule name (``"auto"``, ``"fd"``...).
    Returns the file written (default ``cloudpool-<executor or job>-histogram.png``).
    """
    np = _numpy()
    Figure, Canvas = _matplotlib()
    from matplotlib.ticker import MaxNLocator

    bins = _check_bins(bins)
    calls = _calls_from(source, "histogram")
    out = _output_path(path, calls, "histogram", Canvas)

    fig = Figure(figsize=_HISTOGRAM_SIZE, dpi=_DPI, layout="constrained")
    Canvas(fig)
    grid = fig.add_gridspec(2, 2)
    ax_dur = fig.add_subplot(grid[0, 0])
    ax_lat = fig.add_subplot(grid[0, 1])
    ax_wrk = fig.add_subplot(grid[1, :])

    _hist_panel(ax_dur, calls.duration, calls.ok, bins, "run time")
    ax_dur.set_title("call duration (started → finished)", fontsize=10)
    _hist_panel(ax_lat, calls.latency, calls.ok, bins, "end-to-end time")
    ax_lat.set_title("end-to-end latency (submitted → fetched)", fontsize=10)

    counts: Dict[str, int] = {}
    for w in calls.workers:
        key = w if w is not None else "(unknown)"
        counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) <= 64:
        labels = [k for k, _v in ranked]
        ax_wrk.bar(range(len(ranked)), [v for _k, v in ranked], color=PHASE_COLOURS["running"])
        ax_wrk.set_xticks(range(len(ranked)))
        ax_wrk.set_xticklabels(labels, rotation=90 if len(ranked) > 8 else 0, fontsize=7)
        ax_wrk.set_xlabel("worker")
        ax_wrk.set_ylabel("calls")
        ax_wrk.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        # Too many workers to name: show how evenly the calls were spread instead.
        per_worker = np.array([v for _k, v in ranked])
        ax_wrk.hist(per_worker, bins=bins, color=PHASE_COLOURS["running"])
        ax_wrk.set_xlabel("calls run by one worker")
        ax_wrk.set_ylabel("workers")
    ax_wrk.set_title(f"calls per worker ({len(ranked)} workers)", fontsize=10)
    ax_wrk.grid(axis="y", alpha=0.3)

    n_failed = int((~calls.ok).sum())
    fig.suptitle(f"{_headline(calls)}, {n_failed} failed", fontsize=11)
    fig.savefig(out)
    return out
