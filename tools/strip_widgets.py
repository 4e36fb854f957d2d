"""Drop ipywidgets state from executed notebooks and show text progress bars as they ended.

    python tools/strip_widgets.py notebooks/*.ipynb

Removes ``metadata.widgets`` and every output that is a widget view (with ipywidgets installed —
nbgrader brings it — tqdm draws widget bars whose plain-text part is only the bar's first frame,
"0%"), so a committed notebook holds no widget state and stays small. Without ipywidgets, tqdm
writes text bars that redraw themselves with carriage returns, one stream output
per redraw: consecutive stream outputs are joined and each line keeps only what follows its last
carriage return — what a terminal or Jupyter shows, i.e. every bar in its final state.
"""
import re
import sys

import nbformat

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def strip(path: str) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.outputs:
            data = out.get("data")
            if data is not None and WIDGET_VIEW in data:
                continue
            kept.append(out)
        cell.outputs = _coalesce_streams(kept)
    nbformat.write(nb, path)


def _coalesce_streams(outputs: list) -> list:
    """Join consecutive stream outputs of the same name and apply carriage returns per line."""
    joined = []
    for out in outputs:
        if (out.get("output_type") == "stream" and joined
                and joined[-1].get("output_type") == "stream" and joined[-1].name == out.name):
            joined[-1].text += out.text
        else:
            joined.append(out)
    for out in joined:
        if out.get("output_type") == "stream":
            out.text = "\n".join(re.sub(r"^.*\r(?=[^\r]*$)", "", line.rstrip("\r"))
                                 if "\r" in line.rstrip("\r") else line.rstrip("\r")
                                 for line in out.text.split("\n"))
    return joined


if __name__ == "__main__":
    for p in sys.argv[1:]:
        strip(p)
