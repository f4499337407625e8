"""Drawing the service map: Graphviz's ``dot`` turns :func:`podnet.calc.service_map.to_dot` into a picture.

    flows ──calc.service_map.build──▶ ServiceMap ──to_dot──▶ DOT text ──render(fmt)──▶ bytes
                                                                        svg:  dot -Tsvg
                                                                        png:  dot -Tpng
                                                                        html: the SVG in to_html's page

``dot`` runs as a child process with a timeout (a map of thousands of edges can take long); a
missing ``dot`` is a :class:`~podnet.errors.PodnetError` whose hint names the Debian package.
"""

from __future__ import annotations

import shutil
import subprocess

from podnet.calc.service_map import to_html
from podnet.errors import PodnetError

FORMATS = ("svg", "png", "html")
DOT_TIMEOUT = 60.0  # seconds
PNG_DPI = 110  # dot's default 96 makes 9-point edge labels hard to read
INSTALL_HINT = (
    "install Graphviz: apt-get install graphviz (or write the map as DOT text and draw it elsewhere)"
)


def render(dot_text: str, fmt: str, title: str = "podnet service map", timeout: float = DOT_TIMEOUT) -> bytes:
    """The map drawn as ``svg``, ``png`` or ``html`` (a standalone page: the SVG and a legend)."""
    if fmt not in FORMATS:
        raise PodnetError(f"cannot draw the service map as {fmt!r}", hint=f"one of: {', '.join(FORMATS)}")
    if fmt == "html":
        svg = run_dot(dot_text, "svg", timeout).decode("utf-8")
        return to_html(svg, title).encode("utf-8")
    return run_dot(dot_text, fmt, timeout)


def run_dot(dot_text: str, fmt: str, timeout: float = DOT_TIMEOUT) -> bytes:
    """``dot -T<fmt>`` of ``dot_text``: its output, or a :class:`PodnetError` saying why not."""
    executable = shutil.which("dot")
    if executable is None:
        raise PodnetError(
            "Graphviz's dot is not installed: the service map cannot be drawn", hint=INSTALL_HINT
        )
    command = [executable, f"-T{fmt}"]
    if fmt == "png":
        command.append(f"-Gdpi={PNG_DPI}")
    try:
        done = subprocess.run(command, input=dot_text.encode("utf-8"), capture_output=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise PodnetError(f"Graphviz's dot could not be run: {exc}", hint=INSTALL_HINT) from exc
    except subprocess.TimeoutExpired as exc:
        raise PodnetError(
            f"dot did not finish drawing the service map within {timeout:g} s",
            hint="draw fewer flows (--namespace, --since), or ask for the DOT text",
        ) from exc
    if done.returncode != 0:
        errors = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise PodnetError(
            f"dot failed (exit {done.returncode}): {errors[-1] if errors else 'no message'}",
            hint="this is a bug in podnet's DOT text; please report it with the flows",
        )
    return done.stdout
