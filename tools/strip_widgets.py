"""Drop ipywidgets state from executed notebooks (tqdm.auto draws widgets under Jupyter).

    python tools/strip_widgets.py notebooks/*.ipynb

Removes ``metadata.widgets`` and the widget-view part of every output (the plain-text part of a
progress bar stays), so a committed notebook holds no widget state and stays small.
"""
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
                data.pop(WIDGET_VIEW)
                if not data:
                    continue
            kept.append(out)
        cell.outputs = kept
    nbformat.write(nb, path)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        strip(p)
