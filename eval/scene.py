"""Whether a caption names a world scene: exactly its set of shapes, its set of colours, and (on scenes that show
a colour-shape pair never seen in training) that pair itself. One rule for pretraining's summary and eval/world.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from data.layout import IMAGE_OFFSET, DockLayout, image_ids, image_tensor
from data.pipeline import PipelineConfig
from data.tokenizer import Tokenizer
from data.world import COLORS, HELDOUT_PAIRS, SHAPES, mentions
from metalm import MetaLM
from metalm.io import read_jsonl


def names_scene(text: str, things: list, fold_case: bool) -> tuple[bool, bool, bool | None]:
    """(the caption names exactly the scene's shapes, exactly its colours, its unseen pair or None when the scene
    shows none). ``fold_case`` lower-cases the words first (eval/world.py does, pretraining's summary does not)."""
    words = text.replace(",", " ").replace(".", " ")
    words = (words.lower() if fold_case else words).split()
    shapes = {w for w in words if w in SHAPES} == {t[1] for t in things}
    colors = {w for w in words if w in COLORS} == {t[0] for t in things}
    pairs = {(c, s) for c, s, _ in things} & set(HELDOUT_PAIRS)
    unseen = all(mentions(text, c, s) for c, s in pairs) if pairs else None
    return shapes, colors, unseen


def scene_naming(world: Path, split: str) -> Callable[[list, list[str]], dict[str, float]]:
    """Metric on captions: the share that name exactly the scene's set of shapes, and of colours; on scenes that
    show a held-out colour-shape pair, the share that name that pair itself."""
    rows = read_jsonl(world / f"scenes_{split}.jsonl", "the world's scenes")
    scenes = {row.get("image_id", row["file_name"]): row["things"] for row in rows}

    def metric(ids: list, captions: list[str]) -> dict[str, float]:
        shapes = colors = unseen = unseen_named = 0
        for image_id, text in zip(ids, captions, strict=True):
            shapes_ok, colors_ok, pair_ok = names_scene(text, scenes[image_id], fold_case=True)
            shapes += shapes_ok
            colors += colors_ok
            if pair_ok is not None:
                unseen += 1
                unseen_named += pair_ok
        out = {"shapes_named": shapes / max(len(ids), 1), "colors_named": colors / max(len(ids), 1)}
        if unseen:
            out["unseen_pair_named"] = unseen_named / unseen
        return out

    return metric


@torch.no_grad()
def caption(
    model: MetaLM,
    tokenizer: Tokenizer,
    pcfg: PipelineConfig,
    image: Image.Image,
    device: torch.device,
    max_new_tokens: int = 24,
) -> str:
    """Greedy caption of one PIL image: the prompt is the docked image between ``<image>`` and ``</image>`` (a
    joint vision-language encoder reads it with an empty text prefix)."""
    ids = image_ids(tokenizer, pcfg.image_tokens)
    input_ids = torch.tensor([ids])
    pixels = image_tensor(image, pcfg.image_size, pcfg.image_mean, pcfg.image_std)
    layout = DockLayout(pcfg.vision_encoder, None, pcfg.image_tokens, joint=pcfg.joint_encoder)
    layout.add_image(0, IMAGE_OFFSET, pixels)
    docks = [dock.to(device) for dock in layout.docks(input_ids, tokenizer.pad_id)]
    out = model.generate(
        input_ids.to(device),
        docks,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )
    return tokenizer.decode(out[0, len(ids) :].tolist()).strip()


def caption_split(
    model: MetaLM,
    tokenizer: Tokenizer,
    pcfg: PipelineConfig,
    world: Path,
    device: torch.device,
    split: str,
    n: int = 50,
) -> dict:
    """Greedy captions of a split's first ``n`` images, scored against the scene: does the caption name exactly the
    scene's set of shapes, and of colours? (``heldout`` images each show a colour-shape pair never seen in
    training; ``val`` images show only seen pairs.)"""
    scenes = read_jsonl(world / f"scenes_{split}.jsonl", "the world's scenes")[:n]
    rows, shapes_ok, colors_ok, unseen, unseen_ok = [], 0, 0, 0, 0
    for scene in scenes:
        with Image.open(world / scene["file_name"]) as img:
            got = caption(model, tokenizer, pcfg, img.convert("RGB"), device)
        shapes, colors, pair = names_scene(got, scene["things"], fold_case=False)
        shapes_ok += shapes
        colors_ok += colors
        if pair is not None:
            unseen += 1
            unseen_ok += pair
        rows.append({"image": scene["file_name"], "caption": got, "scene": scene["things"], "shapes_named": shapes})
    # show captions that name the right shapes first, then ones that do not
    examples = [r for r in rows if r["shapes_named"]][:3] + [r for r in rows if not r["shapes_named"]][:3]
    return {
        "n": len(scenes),
        "shapes_named": shapes_ok / max(len(scenes), 1),
        "colors_named": colors_ok / max(len(scenes), 1),
        "unseen_pair_named": unseen_ok / max(unseen, 1),
        "examples": examples,
    }
