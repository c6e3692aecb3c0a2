"""Kill-and-resume stress test: SIGKILL the extraction CLI at random points (finishing steps included), rerun it, and
check that every rerun succeeds and writes the file an uninterrupted run writes."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from common import positive
from PIL import Image

from pipeline.entry import configure_logging

log = logging.getLogger("bench.resume")

LAYERS = "conv_pw_5_relu,conv_pw_13_relu"
INPUT_SIZE = 64
BATCH_SIZE = 16
VIEWS = 2
OUT = "data/features.h5"  # the output, relative to the project folder, as under DVC
SKIPPED = "data/features.skipped.csv"
# The finishing steps take a few milliseconds (measured with strace at 2,400 images: 5 ms from the undo record to the
# rename, 2 ms more for the reuse link, the index and the skipped report; a kill arrives 1-7 ms after what announces
# it), so their kills wait at most a few ms after: the last batch's log line (then the undo record, the trim,
# /split_code, /skipped, the attributes, the close, the rename), the undo record appearing (the in-place steps and the
# rename), the rename's line (the logs removed, the reuse link), the line before the reuse link and the report.
FINISHING = {
    ("line", "images through the model"): 0.004,
    ("file", "data/.features.h5.undo.partial"): 0.002,
    ("line", "wrote "): 0.0015,
    ("line", "rows reused from earlier extractions"): 0.0015,
}
ARMING_LINE = "images through the model"  # a file trigger is polled closely only from this line on
TAIL_S = 3.0  # tail kills land at a random time in the last TAIL_S seconds of an uninterrupted run's wall time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=positive, default=30, help="kills, each followed by a rerun (default 30)")
    parser.add_argument("--images", type=positive, default=2400, help="JPEGs to extract (default 2400)")
    parser.add_argument("--broken", type=int, default=6, help="undecodable files among them (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the images and the kill points")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary folder, removed at the end")
    parser.add_argument("--json", type=Path, help="write every trial's result here")
    return parser.parse_args(argv)


def make_images(folder: Path, n: int, broken: int, seed: int) -> None:
    """``n`` distinct 32x32 JPEGs (scikit-learn digits, upscaled, with seeded noise) in ``split/class`` folders (70%
    train, 15% val, 15% test), plus ``broken`` files that are not images, spread over the splits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    splits = rng.choice(["train", "val", "test"], size=n, p=[0.7, 0.15, 0.15])
    for i in range(n):
        k = i % len(digits.target)
        grey = 255 - digits.images[k] * (255 / 16)
        pixels = np.kron(grey, np.ones((4, 4))) + rng.normal(0, 12, size=(32, 32))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L").convert("RGB")
        path = folder / splits[i] / str(digits.target[k]) / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)
    for b in range(broken):
        path = folder / ("train", "val", "test")[b % 3] / str(b % 10) / f"{b * n // max(broken, 1):05d}_broken.jpg"
        path.write_bytes(b"not a JPEG: " + bytes(rng.integers(0, 256, size=64, dtype=np.uint8)))


def write_project(folder: Path) -> None:
    """A project folder with a params.yaml whose extract section has two layers and 2 augmented views."""
    folder.mkdir(parents=True, exist_ok=True)
    params = {
        "extract": {
            "backbone": "mobilenet", "weights": "imagenet", "input_size": [INPUT_SIZE, INPUT_SIZE],
            "batch_size": BATCH_SIZE, "layers": LAYERS.split(","), "pixels": None, "on_error": "skip",
            "augment_views": VIEWS, "augment": {"flip": "none", "rotation": 10, "crop": 0.9, "seed": 0}, "reuse": 3,
        }
    }
    (folder / "params.yaml").write_text(json.dumps(params, indent=2) + "\n")  # JSON is YAML


def command(images: Path) -> list[str]:
    return [
        sys.executable, "-m", "pipeline", "extract", "--images", str(images), "--out", OUT, "--params", "params.yaml",
        "--layers", LAYERS, "--input-size", str(INPUT_SIZE), str(INPUT_SIZE), "--batch-size", str(BATCH_SIZE),
    ]


@dataclass
class Kill:
    """When to kill: once the progress bar passes ``images``; ``delay`` s after the log line or the file ``after``
    appears; or at ``at`` s."""

    mode: str  # progress, line, file or tail
    images: int | None = None
    after: str | None = None
    delay: float = 0.0
    at: float | None = None

    def describe(self, total: int) -> str:
        if self.mode == "progress":
            return f"progress >= {self.images}/{total} ({self.images / total:.0%})"
        if self.mode in ("line", "file"):
            return f"{self.delay * 1000:.0f} ms after {self.mode} '{self.after.strip()}'"
        return f"at {self.at:.2f} s"


@dataclass
class Run:
    returncode: int
    seconds: float
    log: str
    killed: bool = False
    killed_at: float | None = None


def run(cmd: list[str], cwd: Path, total: int, kill: Kill | None = None) -> Run:
    """Run ``cmd``; with ``kill``, SIGKILL it at that point (if it has not finished by then)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    process = subprocess.Popen(cmd, cwd=cwd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    selector = selectors.DefaultSelector()
    selector.register(process.stderr, selectors.EVENT_READ)
    text, deadline, killed = b"", None, None
    if kill is not None and kill.mode == "tail":
        deadline = started + kill.at
    watching = False
    while True:
        timeout = 0.0001 if watching and deadline is None else None
        if deadline is not None:
            timeout = max(0.0, deadline - time.monotonic())
        if selector.select(timeout):
            chunk = os.read(process.stderr.fileno(), 65536)
            if not chunk:
                break
            text += chunk
        if kill is not None and deadline is None:
            if kill.mode == "progress":
                done = [int(n) for n in _progress(text, total)]
                if done and done[-1] >= kill.images:
                    deadline = time.monotonic()
            elif (kill.mode == "line" and kill.after.encode() in text) or (
                kill.mode == "file" and (cwd / kill.after).exists()
            ):
                deadline = time.monotonic() + kill.delay
            watching = kill.mode == "file" and ARMING_LINE.encode() in text
        if deadline is not None and killed is None and time.monotonic() >= deadline:
            process.send_signal(signal.SIGKILL)
            killed = time.monotonic() - started
    process.wait()
    selector.close()
    return Run(process.returncode, time.monotonic() - started, text.decode(errors="replace"),
               process.returncode == -signal.SIGKILL, killed)


def _progress(text: bytes, total: int) -> list[bytes]:
    import re

    return re.findall(rb"extract: [^\r\n]*?(\d+)/" + str(total).encode() + rb" \[", text)


def compare(a: Path, b: Path) -> str | None:
    """None when every dataset (values, dtype, shape, chunks, compression) and every attribute of ``a`` and ``b`` are
    equal (NaN equal to NaN), else the first difference."""
    def items(path: Path) -> dict:
        found = {}

        def add(name, obj):
            found.update({f"{name}@{key}": value for key, value in obj.attrs.items()})
            if isinstance(obj, h5py.Dataset):
                found[name] = obj[()]
                found[f"{name}#layout"] = (str(obj.dtype), obj.shape, obj.chunks, obj.maxshape, obj.compression)
            else:
                found[f"{name}#group"] = sorted(obj)

        with h5py.File(path, "r") as f:
            add("/", f)
            f.visititems(add)
        return found

    x, y = items(a), items(b)
    if x.keys() != y.keys():
        return f"names differ: {sorted(x.keys() ^ y.keys())[:4]}"
    for name in x:
        u, v = x[name], y[name]
        if isinstance(u, np.ndarray) or isinstance(v, np.ndarray):
            u, v = np.asarray(u), np.asarray(v)
            if u.dtype != v.dtype or u.shape != v.shape:
                return f"{name}: {u.dtype}{u.shape} vs {v.dtype}{v.shape}"
            nan = u.dtype.kind in "fc"
            if not np.array_equal(u, v, equal_nan=nan):
                where = np.argwhere(~((u == v) | (np.isnan(u) & np.isnan(v)) if nan else u != v))
                return f"{name}: {len(where)} values differ, first at {where[0].tolist() if len(where) else '?'}"
        elif u != v:
            return f"{name}: {u!r} vs {v!r}"
    return None


def state(project: Path) -> str:
    """What a kill left: the output, the temporary files beside it."""
    data = project / "data"
    if not data.is_dir():
        return "-"
    names = ["out"] if (project / OUT).exists() else []
    return " ".join([*names, *(p.name for p in sorted(data.glob(".*")))]) or "-"


@dataclass
class Trial:
    number: int
    mode: str
    kill: str
    killed: bool
    killed_at: float | None
    left: str
    rerun_status: int
    rerun_s: float
    resumed: str
    equal: bool
    bytes_identical: bool
    problem: str | None = None
    notes: list[str] = field(default_factory=list)


def plan(trials: int, total: int, wall_s: float, rng: random.Random) -> list[Kill]:
    """A third of the kills at progress points spread over the whole run (one per stratum), half a random delay after
    what announces a finishing step (``FINISHING``, in turn), the rest at a random time in the last seconds of the
    run."""
    n_progress, n_finishing = trials // 3, trials // 2
    kills = [Kill("progress", images=max(1, int((k + rng.random()) / n_progress * total))) for k in range(n_progress)]
    steps = list(FINISHING.items())
    for k in range(n_finishing):
        (mode, after), longest = steps[k % len(steps)]
        kills.append(Kill(mode, after=after, delay=rng.uniform(0, longest)))
    kills += [Kill("tail", at=max(0.5, wall_s - rng.uniform(0, TAIL_S))) for _ in range(trials - len(kills))]
    return kills


def speed(log_text: str) -> float | None:
    """Images per second through the model, from the extraction's log line."""
    import re

    found = re.search(r"\(([\d.]+) img/s\)", log_text)
    return float(found.group(1)) if found else None


def benchmark(args: argparse.Namespace, workdir: Path) -> tuple[list[Trial], str | None]:
    """Two uninterrupted runs (the reference, and a determinism check), then the trials; returns them and how the two
    uninterrupted runs differ (None: not at all)."""
    images = workdir / "images"
    log.info("writing %d JPEGs (%d undecodable) to %s", args.images, args.broken, images)
    make_images(images, args.images - args.broken, args.broken, args.seed)
    total = args.images
    cmd = command(images)
    log.info("command: %s", " ".join(cmd))
    references, speeds = [], []
    for name in ("reference-1", "reference-2"):
        project = workdir / name
        write_project(project)
        done = run(cmd, project, total)
        if done.returncode != 0:
            raise SystemExit(f"uninterrupted run failed with status {done.returncode}:\n{done.log[-3000:]}")
        references.append((project, done))
        speeds.append(speed(done.log))
        log.info("%s: uninterrupted run in %.1f s, %s img/s through the model", name, done.seconds, speeds[-1])
    (ref, _), (other, _) = references
    difference = compare(ref / OUT, other / OUT)
    same_bytes = (ref / OUT).read_bytes() == (other / OUT).read_bytes()
    log.info(
        "two uninterrupted runs: %s; file bytes %s",
        "every dataset and attribute equal" if difference is None else f"DIFFER ({difference})",
        "identical" if same_bytes else "differ",
    )
    rng = random.Random(args.seed)
    results = []
    fastest = min(done.seconds for _, done in references)
    for number, kill in enumerate(plan(args.trials, total, fastest, rng), start=1):
        project = workdir / f"trial-{number:03d}"
        write_project(project)
        killed = run(cmd, project, total, kill)
        left = state(project)
        rerun = run(cmd, project, total)
        resumed = "resumed" if "resuming " in rerun.log else "fresh"
        if "rolled back" in rerun.log:
            resumed = "rolled back"
        if "discarding" in rerun.log:
            line = next(line for line in rerun.log.splitlines() if "discarding" in line)
            resumed = "discarded: " + line.split(": ", 1)[-1][:60]
        trial = Trial(
            number, kill.mode, kill.describe(total), killed.killed, killed.killed_at, left, rerun.returncode,
            rerun.seconds, resumed, equal=False, bytes_identical=False,
        )
        if not killed.killed:
            trial.notes.append(f"finished before the kill (status {killed.returncode})")
        if rerun.returncode != 0:
            tail = [line for line in rerun.log.splitlines() if line.strip()][-3:]
            trial.problem = f"rerun exited {rerun.returncode}: {' | '.join(tail)[-300:]}"
        else:
            trial.problem = compare(project / OUT, ref / OUT)
            trial.equal = trial.problem is None
            trial.bytes_identical = (project / OUT).read_bytes() == (ref / OUT).read_bytes()
            if (project / SKIPPED).read_text() != (ref / SKIPPED).read_text():
                trial.equal, trial.problem = False, "the skipped report differs"
            stale = [name for name in state(project).split() if name.endswith(".partial")]
            if stale:
                trial.equal, trial.problem = False, f"temporary files left: {stale}"
        results.append(trial)
        log.info(
            "trial %d/%d: kill %s (%s), left [%s]; rerun status %d in %.1f s, %s, %s%s", number, args.trials,
            trial.kill, f"killed at {killed.killed_at:.2f} s" if killed.killed else "not killed", left,
            rerun.returncode, rerun.seconds, resumed, "equal" if trial.equal else f"FAILED: {trial.problem}",
            ", bytes identical" if trial.bytes_identical else "",
        )
        if trial.equal:
            shutil.rmtree(project)
    report(results, args, difference, same_bytes, [done.seconds for _, done in references], speeds)
    return results, difference


def report(
    results: list[Trial], args, difference: str | None, same_bytes: bool, walls: list[float], speeds: list[float | None]
) -> None:
    print()
    print(f"{'#':>3}  {'kill point':<58} {'killed at':>9}  {'left behind':<78} {'rerun':>5} {'s':>5}  {'resume':<11}"
          f" {'equal':<5} {'bytes':<5}  problem")
    for t in results:
        at = f"{t.killed_at:.2f}s" if t.killed else "-"
        print(
            f"{t.number:>3}  {t.kill:<58} {at:>9}  {t.left[:78]:<78} {t.rerun_status:>5} {t.rerun_s:>5.1f}  "
            f"{t.resumed[:11]:<11} {'yes' if t.equal else 'NO':<5} {'yes' if t.bytes_identical else 'no':<5}  "
            f"{t.problem or ''}{' ' + '; '.join(t.notes) if t.notes else ''}"
        )
    failed = [t for t in results if not t.equal]
    print()
    print(f"images: {args.images} ({args.broken} undecodable), MobileNet {LAYERS} at {INPUT_SIZE}x{INPUT_SIZE}, "
          f"batch {BATCH_SIZE}, {VIEWS} views per train image; uninterrupted runs "
          f"{' and '.join(f'{s:.1f} s' for s in walls)}, {' and '.join(str(v) for v in speeds)} img/s through the "
          "model")
    print(f"determinism: two uninterrupted runs {'equal' if difference is None else 'DIFFER: ' + difference}, "
          f"file bytes {'identical' if same_bytes else 'differ'}")
    modes = {mode: sum(t.mode == mode for t in results) for mode in ("progress", "line", "file", "tail")}
    print(f"trials: {len(results)} (kills at progress points {modes['progress']}, after a finishing step's log line "
          f"{modes['line']}, after the undo record of the finishing steps appeared {modes['file']}, in the last "
          f"{TAIL_S:.0f} s {modes['tail']}); actually killed {sum(t.killed for t in results)}")
    left = {}
    for t in results:
        left[t.left] = left.get(t.left, 0) + 1
    ranked = sorted(left.items(), key=lambda item: -item[1])
    print("left behind by the kills: " + ", ".join(f"[{state}] {count}" for state, count in ranked))
    print(f"reruns: {sum(t.rerun_status == 0 for t in results)} succeeded, "
          f"{sum(t.rerun_status != 0 for t in results)} failed; "
          f"resumed {sum(t.resumed == 'resumed' for t in results)}, "
          f"finishing steps rolled back and resumed {sum(t.resumed == 'rolled back' for t in results)}, "
          f"partial file discarded {sum(t.resumed.startswith('discarded') for t in results)}, "
          f"started fresh {sum(t.resumed == 'fresh' for t in results)}")
    print(f"results equal to the uninterrupted run: {len(results) - len(failed)}/{len(results)}; file bytes identical: "
          f"{sum(t.bytes_identical for t in results)}/{len(results)}")
    print("PASS" if not failed and difference is None else f"FAIL: trials {[t.number for t in failed]}")


def main() -> None:
    configure_logging()
    args = parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="resume-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results, difference = benchmark(args, workdir)
    finally:
        if args.workdir is None and not any(p.name.startswith("trial-") for p in workdir.iterdir()):
            shutil.rmtree(workdir)
    if args.json:
        args.json.write_text(json.dumps([t.__dict__ for t in results], indent=2) + "\n")
    sys.exit(0 if difference is None and all(t.equal for t in results) else 1)


if __name__ == "__main__":
    main()
