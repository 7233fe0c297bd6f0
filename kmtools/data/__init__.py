"""Dataset registry: names and paths -> tensors-in-[0,1] datasets from local roots."""

from kmtools.data.registry import DataInfo, load_dataset, subset, data_roots

__all__ = ["DataInfo", "data_roots", "load_dataset", "subset"]
