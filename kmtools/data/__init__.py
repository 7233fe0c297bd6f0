"""Dataset registry: names and paths -> tensors-in-[0,1] datasets from local roots."""

from kmtools.data.registry import DataInfo, data_roots, load_dataset, subset, to_tensors

__all__ = ["DataInfo", "data_roots", "load_dataset", "subset", "to_tensors"]
