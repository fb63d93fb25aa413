"""What scripts/plot_bench.py and scripts/plot_metrics.py share: the bad-input error, the number
test, and writing a figure as a small PNG."""
import io
import math


class BadInput(Exception):
    """An input file the scripts refuse (missing, empty, malformed); the message names it."""


def is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def save_png(fig, dest, dpi):
    """Writes the figure as a PNG, reduced to a 256-colour palette where Pillow is there (a third of
    the size, no visible change for line art)."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    data = buf.getvalue()
    try:
        from PIL import Image
        img = Image.open(io.BytesIO(data)).convert("RGB")
        dither = getattr(getattr(Image, "Dither", Image), "NONE", 0)
        small = io.BytesIO()
        img.quantize(colors=256, dither=dither).save(small, format="PNG", optimize=True)
        if small.tell() < len(data):
            data = small.getvalue()
    except Exception:  # no Pillow, or it failed: the PNG as Matplotlib wrote it
        pass
    with open(dest, "wb") as f:
        f.write(data)
