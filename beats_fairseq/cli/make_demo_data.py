"""beats-make-demo-data: write the synthetic labelled corpus of ``beats_fairseq/data/demo.py``.

    beats-make-demo-data --out demo_data
"""

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beats-make-demo-data",
        description="Generate a small deterministic synthetic labelled audio corpus (six classes of sound events "
                    "over noise backgrounds, named at the end) with fairseq manifests (<split>.tsv), label files "
                    "(.lbl single-label, .mlbl multi-label) and labels.csv.")
    parser.add_argument("--out", default="demo_data", help="output directory (default: demo_data)")
    parser.add_argument("--num-train", type=int, default=240, help="single-label train clips (default 240)")
    parser.add_argument("--num-valid", type=int, default=60, help="single-label valid clips (default 60)")
    parser.add_argument("--num-test", type=int, default=60, help="single-label test clips (default 60)")
    parser.add_argument("--multi-ratio", type=float, default=0.5,
                        help="multi-label clips per split = ratio x single-label count (default 0.5; 0 = none)")
    parser.add_argument("--seconds", type=float, default=3.0, help="clip length in seconds (default 3.0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..data.demo import CLASSES, generate_corpus

    try:
        info = generate_corpus(args.out, args.num_train, args.num_valid, args.num_test,
                               args.seconds, args.seed, args.multi_ratio)
    except ValueError as e:
        parser.error(str(e))
    print(f"wrote demo corpus to {info['out']} ({args.seconds:g} s clips, 16 kHz mono, seed {args.seed})")
    for name, n in info["counts"].items():
        print(f"  {name + '.tsv':<18} {n:5d} clips")
    print("  classes: " + ", ".join(f"{i}={c}" for i, c in enumerate(CLASSES)))
    for split, counts in info["per_class"].items():
        print(f"  {split} clips per class: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
