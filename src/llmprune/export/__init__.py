"""Export: plain checkpoints with masks (later: compressed sparse formats, structured slices)."""

from llmprune.export.checkpoint import check_output_path, load_masks, save_pruned, write_checkpoint

__all__ = ["check_output_path", "load_masks", "save_pruned", "write_checkpoint"]
