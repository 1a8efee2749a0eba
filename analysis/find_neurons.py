"""Knowledge neurons (Dai et al., ACL 2022) of a decoder's facts: integrated-gradient attribution over the
feed-forward neurons, refining across paraphrased prompts, suppressing / amplifying the found neurons against
random ones, and erasing and updating facts through the neurons' value rows (``analysis.knowledge_neurons``).

    python analysis/find_neurons.py --checkpoint runs/tiny/final --facts world
    python analysis/find_neurons.py --checkpoint assets/smollm2 --facts analysis/capital_facts.json --name smollm2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from analysis/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.flags import FlagParser  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = FlagParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="MetaLM checkpoint or transformers GPT-2 / Llama directory")
    p.add_argument("--facts", default="world", help="'world' (the bundled world's facts) or a JSON file of facts")
    p.add_argument("--prompts", type=int, default=5, help="prompts per world fact (world only)")
    p.add_argument("--steps", type=int, default=20, help="Riemann steps m of the integrated gradients")
    p.add_argument("--share", type=float, default=0.2, help="t: keep neurons above this share of the prompt's max")
    p.add_argument("--prompt_share", type=float, default=0.7, help="p: keep neurons found by this share of prompts")
    p.add_argument("--random_draws", type=int, default=5, help="random neuron sets each fact is compared with")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out_dir", default="results/knowledge_neurons")
    p.add_argument("--name", default=None, help="file stem of the outputs (default: the facts' name)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.random_draws < 1 or args.prompts < 1:
        p.error("--steps, --random_draws and --prompts must be at least 1")
    if not (0 < args.share <= 1 and 0 < args.prompt_share <= 1):
        p.error("--share and --prompt_share must lie in (0, 1]")
    import torch

    from analysis.knowledge_neurons import load_facts, study, world_facts, write_results
    from eval.scoring import load_decoder

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    facts = world_facts(args.prompts, args.seed) if args.facts == "world" else load_facts(args.facts)
    decoder, tokenizer = load_decoder(args.checkpoint, args.device)
    result = study(
        decoder,
        tokenizer,
        facts,
        args.steps,
        args.share,
        args.prompt_share,
        args.random_draws,
        args.seed,
        progress=lambda line: print(line, flush=True),
    )
    result["command"] = " ".join(["python", "analysis/find_neurons.py", *(argv if argv is not None else sys.argv[1:])])
    result["checkpoint"] = str(args.checkpoint)
    result["facts_source"] = args.facts
    result["seconds"] = round(time.perf_counter() - start, 1)
    name = args.name or ("world" if args.facts == "world" else Path(args.facts).stem)
    for path in write_results(result, args.out_dir, name, f"{name} ({args.checkpoint})"):
        print(path)
    print(Path(args.out_dir, f"{name}.md").read_text())
    return result


if __name__ == "__main__":
    main()
