"""The bundled world's scene metric on captions: whether a caption names the scene's shapes, colours and unseen
colour-shape pair."""

from __future__ import annotations

import json
from pathlib import Path


def scene_naming(world: Path, split: str):
    """Metric on captions: the share that name exactly the scene's set of shapes, and of colours; on scenes that
    show a held-out colour-shape pair, the share that name that pair itself."""
    from data.world import COLORS, HELDOUT_PAIRS, SHAPES, mentions

    scenes = {}
    for line in (world / f"scenes_{split}.jsonl").read_text().splitlines():
        row = json.loads(line)
        scenes[row.get("image_id", row["file_name"])] = row["things"]

    def metric(ids: list, captions: list[str]) -> dict[str, float]:
        shapes = colors = unseen = unseen_named = 0
        for image_id, text in zip(ids, captions, strict=True):
            words = set(text.replace(",", " ").replace(".", " ").lower().split())
            things = scenes[image_id]
            shapes += {w for w in words if w in SHAPES} == {t[1] for t in things}
            colors += {w for w in words if w in COLORS} == {t[0] for t in things}
            pairs = {(c, s) for c, s, _ in things} & set(HELDOUT_PAIRS)
            if pairs:
                unseen += 1
                unseen_named += all(mentions(text, c, s) for c, s in pairs)
        out = {"shapes_named": shapes / max(len(ids), 1), "colors_named": colors / max(len(ids), 1)}
        if unseen:
            out["unseen_pair_named"] = unseen_named / unseen
        return out

    return metric
