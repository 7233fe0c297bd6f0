"""The run behind ``kmtools explain``: NEON on the data itself or on a network's clusters.

Paper: Kauffmann et al., "From Clustering to Cluster Explanations via Neural Networks"
(``papers/neon-cluster-explanations.txt``). :func:`run_explain` loads the inputs, calls
:func:`kmtools.explain.explain_data` (k-means on the data, Sec. II-III) or
:func:`kmtools.explain.explain_network` (a layer's activations or a Gauss network's
centroids, Sec. IV), adds Table I's row for the wine setting and writes ``explain.json``,
``relevance.npz`` and the heatmap PNGs. Its terminal view is
:mod:`kmtools.report.views.explain`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset

from kmtools.data import DataInfo, load_dataset, subset
from kmtools.data.registry import check_compatible
from kmtools.errors import ConfigError, OutputExistsError
from kmtools.explain import METHODS, TABLE_I_WINER, NeonRun, auc_key, explain_data, explain_network
from kmtools.features import as_tensors, loader
from kmtools.io import write_json
from kmtools.models import KmModel
from kmtools.runs.context import RunContext, save_npz

JSON_NAME = "explain.json"
NPZ_NAME = "relevance.npz"
GRID_NAME = "heatmaps.png"
GRID_MAX = 32  # inputs shown in heatmaps.png
CLUSTER_MAX = 16  # members shown per cluster_<k>.png


@dataclass
class ExplainRun:
    """What ``kmtools explain`` computed: the JSON document, the NEON run and the data."""

    doc: dict[str, Any]
    neon: NeonRun
    info: DataInfo

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``explain.json``)."""
        return self.doc


def load_split(name: str | None, root: Path | None, split: str, image_size: str | None = None) -> DataInfo:
    """``--data`` for one split, or both concatenated for ``--split all``."""
    if not name:
        raise ConfigError("this command needs --data NAME|PATH (e.g. --data wine)")
    if split not in ("train", "test", "all"):
        raise ConfigError(f"--split must be train, test or all, not {split!r}")
    if split != "all":
        return load_dataset(name, root=root, split=split, image_size=image_size)
    tr = load_dataset(name, root=root, split="train", image_size=image_size)
    te = load_dataset(name, root=root, split="test", image_size=image_size)
    if tr.source == te.source and len(tr) == len(te) and tr.fingerprint() == te.fingerprint():
        return tr  # a source without splits (e.g. an .npz with plain x, y)
    return DataInfo(ConcatDataset([tr.dataset, te.dataset]), tr.name, "all", tr.classes, tr.input_shape,
                    tr.source, tr.mean, tr.std, tr.image_size)


def inputs_of(info: DataInfo, limit: int | None = None) -> torch.Tensor:
    """The inputs of ``info`` (the first ``limit``) as one float tensor."""
    if limit is not None and limit < len(info):
        info = subset(info, limit)
    pair = as_tensors(info.dataset)
    if pair is not None:
        return pair[0].float()
    xs = [x for x, _ in loader(info.dataset, 256, torch.device("cpu"))]
    return torch.cat(xs).float()


def parse_methods(spec: str | None) -> list[str] | None:
    """``--methods`` (names or AUC keys, comma-separated) -> method names of :data:`METHODS`."""
    if spec is None:
        return None
    by_key = {auc_key(m): m for m in METHODS} | {m.lower(): m for m in METHODS}
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part.lower() not in by_key:
            raise ConfigError(f"unknown method {part!r} in --methods: choose from {', '.join(METHODS)}")
        out.append(by_key[part.lower()])
    if not out:
        raise ConfigError("--methods is empty")
    return out


def check_outputs(out_dir: Path, force: bool) -> None:
    """Refuse (before any work) to overwrite an earlier run's files without ``force``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file: give a folder")
    if force or not out_dir.is_dir():
        return
    clash = [p for p in (out_dir / JSON_NAME, out_dir / NPZ_NAME, out_dir / GRID_NAME) if p.exists()]
    clash += sorted(out_dir.glob("cluster_*.png"))
    if clash:
        raise OutputExistsError(f"{clash[0]} already exists: pass --force to overwrite it (or another --out)")


def _feature_names(info: DataInfo, d: int) -> list[str]:
    if info.name == "wine" and d == 13:
        from sklearn.datasets import load_wine

        return list(load_wine().feature_names)
    return [f"x{i}" for i in range(d)]


def write_files(run: NeonRun, out_dir: Path, names: list[str], force: bool) -> dict[str, Any]:
    """relevance.npz, heatmaps.png (images) and cluster_<k>.png; their paths for the document."""
    from kmtools.explain.plots import feature_bars, heatmap_grid

    files: dict[str, Any] = {"npz": str(save_npz(out_dir / NPZ_NAME, run.arrays(), force))}
    pngs: list[str] = []
    c = run.assignments
    image = run.inputs.dim() == 4
    if image:
        shown = min(GRID_MAX, len(c))
        titles = [f"#{i} c={int(c[i])}" for i in range(shown)]
        pngs.append(str(heatmap_grid(out_dir / GRID_NAME, run.inputs[:shown], run.relevance[:shown],
                                     titles=titles, force=force)))
    for k in range(run.num_clusters):
        members = torch.nonzero(c == k).view(-1)
        if members.numel() == 0:
            continue
        path = out_dir / f"cluster_{k}.png"
        if image:
            sel = members[:CLUSTER_MAX]
            pngs.append(str(heatmap_grid(path, run.inputs[sel], run.relevance[sel],
                                         titles=[f"#{int(i)}" for i in sel], force=force)))
        else:
            rel = run.relevance[members].reshape(members.numel(), -1)
            title = f"cluster {k} ({members.numel()} inputs): mean relevance"
            pngs.append(str(feature_bars(path, rel, names, title=title, force=force)))
    files["png"] = pngs
    return files


def _reference(run: NeonRun, info: DataInfo, results: dict[str, Any]) -> dict[str, Any] | None:
    """Table I's winer row when the run is that setting (wine, K = 6, standardised, all 178)."""
    if (results["mode"] == "data" and info.name == "wine" and run.num_clusters == 6 and run.clusters == "kmeans"
            and results["n"] == 178 and results.get("standardized")):
        return {"source": "paper Table I, row winer", "auc": {auc_key(m): v for m, v in TABLE_I_WINER.items()}}
    return None


def run_explain(
    ctx: RunContext,
    data: DataInfo,
    *,
    model: KmModel | None = None,
    model_path: Path | None = None,
    n: int | None = None,
    k: int | None = None,
    layer: str | None = None,
    kernel: int = 0,
    standardize: bool | None = None,
    beta: float | None = None,
    gamma: float = 0.25,
    lrp_engine: str = "auto",
    fit_n: int = 1000,
    evaluate: bool = False,
    methods: list[str] | None = None,
    repeats: int = 10,
    steps: int | None = None,
    batch_size: int = 256,
) -> ExplainRun:
    """``kmtools explain``: without ``model`` k-means and NEON on the first ``n`` inputs of
    ``data`` (each feature standardised when ``standardize``, default for tabular data);
    with ``model`` NEON on its clusters for the first ``n`` inputs (default 64), the clusters
    and β fitted on the first ``max(fit_n, n)``. ``evaluate`` adds Table I's AUC."""
    seed = int(ctx.seed or 0)
    with ctx.progress("explain", None) as bar:  # type: ignore[arg-type]

        def progress(stage: str, done: int, total: int) -> None:
            bar(done, total, stage)
            ctx.check()

        if model is None:
            with ctx.timer("load"):
                info = subset(data, n)
                x = inputs_of(info)
            std_on = standardize if standardize is not None else len(info.input_shape) == 1
            with ctx.timer("explain"):
                neon = explain_data(x, k, standardize_features=std_on, kernel=kernel, beta=beta, seed=seed,
                                    evaluate=evaluate, methods=methods, repeats=repeats, steps=steps,
                                    progress=progress)
        else:
            with ctx.timer("load"):
                info = data
                check_compatible(info, model.num_classes, model.input_shape)
                n_explain = len(subset(info, n)) if n is not None else min(64, len(info))
                fit = inputs_of(info, min(max(fit_n, n_explain), len(info)))
            with ctx.timer("explain"):
                neon = explain_network(model, fit[:n_explain], fit, k=k, layer=layer, gamma=gamma, beta=beta,
                                       seed=seed, evaluate=evaluate, methods=methods, repeats=repeats, steps=steps,
                                       batch_size=batch_size, device=ctx.device, progress=progress, engine=lrp_engine)
    ctx.check()
    results = neon.to_dict()
    results["mode"] = "data" if model is None else "network"
    reference = _reference(neon, info, results)
    if reference is not None:
        results["reference"] = reference
    if ctx.out_dir is not None:
        with ctx.timer("write"):
            names = _feature_names(info, int(neon.inputs[0].numel()))
            results["files"] = write_files(neon, ctx.out_dir, names, ctx.force)
            results["files"]["json"] = str(ctx.out_dir / JSON_NAME)
    doc = ctx.doc(results, model=model, model_path=model_path, data=info)
    if ctx.out_dir is not None:
        write_json(ctx.out_dir / JSON_NAME, doc, ctx.force)
        ctx.info(f"wrote {ctx.out_dir / JSON_NAME}, {ctx.out_dir / NPZ_NAME} and {len(results['files']['png'])} PNGs")
    return ExplainRun(doc, neon, info)
