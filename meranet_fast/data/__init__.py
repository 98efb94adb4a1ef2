"""Micro-expression data: release loaders, the synthetic generator, clips, cache and protocols."""
from meranet_fast.data.dataset import ClipDataset, clip_to_tensor
from meranet_fast.data.frames import ClipCache, default_cache_dir
from meranet_fast.data.registry import DATASETS, DatasetSpec, load_dataset
from meranet_fast.data.samples import AnnotationError, FrameError, Sample, SampleIndex, clip_indices
from meranet_fast.data.splits import Split, holdout_protocol, loso_protocol, stratified_split
from meranet_fast.data.synthetic import SYNTH_CLASSES, make_synthetic, write_casme2_style

__all__ = [
    "ClipDataset", "clip_to_tensor", "ClipCache", "default_cache_dir", "DATASETS", "DatasetSpec",
    "load_dataset", "AnnotationError", "FrameError", "Sample", "SampleIndex", "clip_indices", "Split",
    "holdout_protocol", "loso_protocol", "stratified_split", "SYNTH_CLASSES", "make_synthetic",
    "write_casme2_style",
]
