"""Batches for the semi-causal objective: decoder ids, labels, padding mask and the docks of every encoder."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from metalm.docking import Dock


@dataclass
class Batch:
    """``input_ids``/``labels``/``attention_mask`` are ``(B, T)``; labels are aligned to the inputs (the model
    shifts them and never trains a docked position). ``docks`` carry the encoder inputs and their positions."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    docks: list[Dock] = field(default_factory=list)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.labels.to(device),
            self.attention_mask.to(device),
            [d.to(device) for d in self.docks],
        )

    def pin_memory(self) -> Batch:
        """The batch in page-locked memory: a DataLoader with ``pin_memory=True`` calls this (it cannot look inside
        a dataclass by itself), so copies to the GPU are faster."""
        docks = [
            Dock(
                d.encoder,
                {k: v.pin_memory() for k, v in d.inputs.items()},
                d.batch_index.pin_memory(),
                d.positions.pin_memory(),
                d.tokenizer,
            )
            for d in self.docks
        ]
        return Batch(self.input_ids.pin_memory(), self.labels.pin_memory(), self.attention_mask.pin_memory(), docks)
