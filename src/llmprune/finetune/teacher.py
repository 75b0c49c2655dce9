"""Where the teacher of a distillation lives: beside the student, offloaded to CPU memory,
or only as its top-k log-probabilities in a file on disk.

A teacher the size of the student doubles the memory of a run. Offloaded, its weights
stay in CPU memory and each layer visits the training device only while it runs
(accelerate's `cpu_offload`). Cached, it runs once over every training window before
training starts, its top-k log-probabilities at the distillation temperature go to a
safetensors file, and the teacher is freed: training then holds no teacher at all and
reads a few windows' rows per step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

# a teacher, or what loads it (so that a cached teacher can be freed once it has run)
TeacherSource = nn.Module | Callable[[], nn.Module] | None


def resolve(teacher: TeacherSource) -> nn.Module | None:
    if teacher is None or isinstance(teacher, nn.Module):
        return teacher
    return teacher()


def offloaded(teacher: nn.Module, device: torch.device | str) -> nn.Module:
    """The teacher with its weights in CPU memory, run layer by layer on `device`."""
    from accelerate import cpu_offload

    return cpu_offload(teacher.to("cpu"), execution_device=torch.device(device))


class TopKCache:
    """The teacher's top-k log p_T per token of every training window, read by window."""

    LOGPROBS, INDICES = "logprobs", "indices"

    def __init__(self, path: str | Path, k: int, temperature: float):
        self.path = Path(path)
        self.k = k
        self.temperature = temperature

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        teacher: nn.Module,
        windows: torch.Tensor,
        k: int,
        temperature: float,
        path: str | Path,
        batch_size: int = 4,
        device: torch.device | str = "cpu",
        progress: bool = False,
    ) -> TopKCache:
        """Run `teacher` over `windows` ([n, seqlen]) once and write the file."""
        n, length = windows.shape
        k = min(k, teacher.get_output_embeddings().weight.shape[0])
        logprobs = torch.empty(n, length, k, dtype=torch.float32)
        indices = torch.empty(n, length, k, dtype=torch.int32)
        teacher.eval()
        for start in tqdm(range(0, n, batch_size), desc="teacher top-k", disable=not progress):
            batch = windows[start : start + batch_size].to(device)
            logits = teacher(input_ids=batch).logits.float()
            values, chosen = F.log_softmax(logits / temperature, dim=-1).topk(k, dim=-1)
            logprobs[start : start + batch_size] = values.cpu()
            indices[start : start + batch_size] = chosen.to(torch.int32).cpu()
        metadata = {"k": str(k), "temperature": repr(temperature)}
        save_file({cls.LOGPROBS: logprobs, cls.INDICES: indices}, str(path), metadata=metadata)
        return cls(path, k, temperature)

    def rows(self, window_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities and token ids of these windows, [len(ids), seqlen, k] each."""
        with safe_open(str(self.path), framework="pt") as handle:
            values = handle.get_slice(self.LOGPROBS)
            tokens = handle.get_slice(self.INDICES)
            ids = [int(i) for i in window_ids.reshape(-1)]
            return (
                torch.stack([values[i : i + 1][0] for i in ids]),
                torch.stack([tokens[i : i + 1][0] for i in ids]),
            )
